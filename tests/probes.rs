//! Per-peer overlay probes end to end: three nodes (two twilld, one the real flanneld)
//! probing each other every second; VXLAN's UDP port dropped between the two twilld
//! nodes both ways and then one way (an nftables rule on one of them), the underlay path to the flanneld node
//! narrowed below the pod MTU, that node stopped and its link taken down: each is named
//! by its verdict in `twilld status`, `doctor`, the metrics and /readyz, and clears when
//! undone. Then the VXLAN device's checksum offload, set and kept.

use twill_e2e::{doctor_check, metric_in, Cluster, Node};
use twill_testutil::{require_root, wait_until};

const CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const ARGS: &[&str] = &[
    "--ip-masq",
    "--peer-probe-interval=1",
    "--peer-probe-timeout=1",
    "--healthz-port=8470",
    "--metrics-port=8471",
    "--ready-requires-peers=1",
];

fn status(node: &Node) -> (bool, serde_json::Value) {
    let (ok, out) = node.subcommand(&[
        "status",
        "--output=json",
        "--healthz-port=8470",
        "--metrics-port=8471",
    ]);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    (ok, v)
}

/// The verdict node `node` has for the peer at `peer`.
fn verdict(node: &Node, peer: &str) -> String {
    let (_, v) = status(node);
    v["probes"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["peer"] == peer))
        .map(|p| p["verdict"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn metrics(node: &Node) -> String {
    node.ns.sh("curl -s http://127.0.0.1:8471/metrics")
}

/// /readyz as "<code> <body>".
fn readyz(node: &Node) -> String {
    let out = node
        .ns
        .sh("curl -s -w '\n%{http_code}' http://127.0.0.1:8470/readyz");
    let (body, code) = out.trim().rsplit_once('\n').unwrap_or(("", out.trim()));
    format!("{code} {body}")
}

#[test]
fn each_overlay_failure_is_named_by_its_verdict_and_clears() {
    require_root();
    twill_e2e::flanneld_bin();
    let mut c = Cluster::new("pr");
    c.put_config(CONF);
    c.add_node(ARGS);
    c.add_node(ARGS);
    let fl = c.add_node_stopped(&["--ip-masq"]);
    c.nodes[fl].start_flanneld();
    for i in 0..3 {
        c.add_pod(i);
    }
    let (n1, n2, n3) = ("198.18.0.1", "198.18.0.2", "198.18.0.3");
    // Everyone answers, flanneld's VTEP included.
    for (i, peers) in [(0, [n2, n3]), (1, [n1, n3])] {
        wait_until(15, "every peer ok", || {
            peers.iter().all(|p| verdict(&c.nodes[i], p) == "ok")
        });
    }
    let (ok, st) = status(&c.nodes[0]);
    assert!(ok, "{st}");
    assert_eq!(st["node"]["peers"], 2);
    assert!(readyz(&c.nodes[0]).starts_with("200"));
    let (_, text) = c.nodes[0].subcommand(&["status"]);
    assert!(text.contains("2/2 reachable over the overlay"), "{text}");

    // VXLAN dropped between nodes 1 and 2, in both directions, on node 2's side.
    c.nodes[1].ns.sh(&format!(
        "nft add table inet twtest && \
         nft add chain inet twtest in '{{ type filter hook input priority -400; }}' && \
         nft add chain inet twtest out '{{ type filter hook output priority -400; }}' && \
         nft add rule inet twtest in ip saddr {n1} udp dport 8472 drop && \
         nft add rule inet twtest out ip daddr {n1} udp dport 8472 drop"
    ));
    wait_until(10, "both name each other vxlan-blocked", || {
        verdict(&c.nodes[0], n2) == "vxlan-blocked" && verdict(&c.nodes[1], n1) == "vxlan-blocked"
    });
    assert_eq!(
        verdict(&c.nodes[0], n3),
        "ok",
        "the other peer is untouched"
    );
    let m = metrics(&c.nodes[0]);
    let reach = |peer: &str, p: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("twill_peer_reachable{")
                    && l.contains(&format!("peer=\"{peer}\""))
                    && l.contains(&format!("path=\"{p}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
            .unwrap_or_default()
    };
    assert_eq!(reach(n2, "overlay"), "0", "{m}");
    assert_eq!(reach(n2, "underlay"), "1", "{m}");
    assert_eq!(reach(n3, "overlay"), "1", "{m}");
    assert_eq!(metric_in(&m, "twill_peers_unreachable", None), 1.0);
    let (ok, text) = c.nodes[0].subcommand(&["status"]);
    assert!(!ok, "status exits 1 with a peer unreachable");
    assert!(
        text.contains(&format!("{n2} vxlan-blocked: UDP 8472 is dropped")),
        "{text}"
    );
    let (ok, out) = c.nodes[0].subcommand(&["doctor", "--output=json"]);
    assert!(!ok);
    let overlay = doctor_check(&out, "overlay");
    assert_eq!(overlay["status"], "fail", "{overlay}");
    assert!(
        overlay["hint"]
            .as_str()
            .unwrap()
            .contains("UDP 8472 is dropped between this node and 198.18.0.2: open it in the firewall/security group"),
        "{overlay}"
    );
    let r = readyz(&c.nodes[0]);
    assert!(
        r.starts_with("503") && r.contains("1 of 2 peers reachable"),
        "{r}"
    );
    let log = c.nodes[0].log();
    let said = log
        .lines()
        .filter(|l| l.contains("vxlan-blocked") && l.contains(n2))
        .count();
    assert_eq!(said, 1, "a change of verdict is logged once:\n{log}");
    c.nodes[1].ns.sh("nft delete table inet twtest");
    wait_until(10, "ok again", || {
        verdict(&c.nodes[0], n2) == "ok" && verdict(&c.nodes[1], n1) == "ok"
    });
    wait_until(5, "ready again", || readyz(&c.nodes[0]).starts_with("200"));

    // The switch port to node 3 carries 1400 bytes: small probes cross, the 1450-byte
    // pod MTU does not (1500 with VXLAN's 50).
    let port = "ul-n3";
    let ul = c.switch();
    ul.sh(&format!("ip link set {port} mtu 1400"));
    wait_until(20, "an mtu verdict", || verdict(&c.nodes[0], n3) == "mtu");
    let (_, st) = status(&c.nodes[0]);
    let p = st["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == n3)
        .unwrap()
        .clone();
    let fix = p["fix"].as_str().unwrap();
    // 1400 on the port (the bridge lets 4 bytes more through, room for a VLAN tag) less
    // VXLAN's 50: 1354 crosses; the search stops within 8 bytes of it.
    let passes: u32 = fix
        .split("-byte packets pass")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{fix}"));
    assert!((1347..=1354).contains(&passes), "{fix}");
    assert!(fix.starts_with("1450-byte packets"), "{fix}");
    ul.sh(&format!("ip link set {port} mtu 1500"));
    wait_until(20, "ok after the MTU is back", || {
        verdict(&c.nodes[0], n3) == "ok"
    });

    // Node 3 stopped and its link down: nothing answers.
    c.nodes[fl].stop(libc::SIGTERM);
    c.nodes[fl].ns.sh("ip link set eth0 down");
    wait_until(10, "peer-down", || verdict(&c.nodes[0], n3) == "peer-down");
    c.nodes[fl].ns.sh("ip link set eth0 up");
    c.nodes[fl].start_flanneld();
    wait_until(20, "back", || verdict(&c.nodes[0], n3) == "ok");

    // VXLAN dropped one way, from node 1 to node 2 (node 2's ingress): node 1 still hears
    // node 2's probes, so it can tell; node 2 hears nothing from node 1.
    c.nodes[1].ns.sh(&format!(
        "nft add table inet twtest && \
         nft add chain inet twtest in '{{ type filter hook input priority -400; }}' && \
         nft add rule inet twtest in ip saddr {n1} udp dport 8472 drop"
    ));
    wait_until(10, "asymmetric on one side, blocked on the other", || {
        verdict(&c.nodes[0], n2) == "asymmetric" && verdict(&c.nodes[1], n1) == "vxlan-blocked"
    });
    let (_, text) = c.nodes[0].subcommand(&["status"]);
    assert!(
        text.contains(&format!(
            "{n2} asymmetric: {n2}'s overlay packets reach this node, ours to it are lost: UDP 8472 is dropped one way only, from this node to {n2}"
        )),
        "{text}"
    );
    assert_eq!(verdict(&c.nodes[0], n3), "ok", "{text}");

    // Without the control socket, status asks the daemon's listeners it is given.
    let sock = c.nodes[0].subnet_env().with_file_name("twilld.sock");
    std::fs::remove_file(&sock).unwrap();
    let (ok, st) = status(&c.nodes[0]);
    assert!(!ok);
    assert!(
        st["not_ready"].as_str().unwrap().contains("1 of 2 peers"),
        "{st}"
    );
    assert_eq!(verdict(&c.nodes[0], n2), "asymmetric", "{st}");
    assert_eq!(st["node"]["peers"], 2, "{st}");
    let (ok, out) = c.nodes[0].subcommand(&["status"]);
    assert!(
        !ok && out.contains("no twilld answering at") && out.contains("--metrics-port"),
        "{out}"
    );
}

#[test]
fn probing_off_says_so() {
    require_root();
    let mut c = Cluster::new("pr-off");
    c.put_config(CONF);
    c.add_node(&["--peer-probe-interval=0"]);
    c.add_node(&["--peer-probe-interval=0"]);
    c.nodes[0].wait_ready();
    wait_until(10, "status answers", || {
        c.nodes[0].subcommand(&["status"]).0
    });
    let (_, text) = c.nodes[0].subcommand(&["status"]);
    assert!(text.contains("probes off"), "{text}");
    let (_, out) = c.nodes[0].subcommand(&["doctor", "--output=json"]);
    assert_eq!(doctor_check(&out, "overlay")["status"], "warn");
    // And with no daemon behind the socket, status says where it looked.
    c.nodes[0].stop(libc::SIGTERM);
    let (ok, text) = c.nodes[0].subcommand(&["status"]);
    assert!(!ok && text.contains("no twilld answering at"), "{text}");
}

/// `ethtool -k flannel.1`'s generic transmit checksum: "on" or "off".
fn tx_checksum(node: &Node) -> String {
    let out = node.ns.sh("ethtool -k flannel.1");
    out.lines()
        .find_map(|l| l.trim().strip_prefix("tx-checksum-ip-generic: "))
        .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no tx-checksum-ip-generic in {out}"))
}

#[test]
fn vxlan_tx_checksum_offload_is_set_and_kept() {
    require_root();
    let mut c = Cluster::new("pr-csum");
    c.put_config(CONF);
    c.add_node(&["--vxlan-tx-checksum-offload=off", "--iptables-resync=1"]);
    c.add_node(&[]);
    for i in 0..2 {
        c.add_pod(i);
    }
    c.assert_full_mesh();
    wait_until(5, "offload off on node 1", || {
        tx_checksum(&c.nodes[0]) == "off"
    });
    // auto on this kernel (6.x) and a veth underlay: on.
    assert_eq!(tx_checksum(&c.nodes[1]), "on");
    // Turned back on by hand: twilld turns it off again.
    c.nodes[0]
        .ns
        .sh("ethtool -K flannel.1 tx-checksum-ip-generic on");
    wait_until(5, "offload off again", || tx_checksum(&c.nodes[0]) == "off");
    c.assert_full_mesh();
    let (_, out) =
        c.nodes[0].subcommand(&["doctor", "--output=json", "--vxlan-tx-checksum-offload=off"]);
    let check = doctor_check(&out, "tx checksum offload");
    assert_eq!(check["status"], "pass", "{check}");
    assert_eq!(
        check["detail"],
        "flannel.1: off (--vxlan-tx-checksum-offload=off)"
    );
    // doctor given other flags than the daemon's says so.
    let (_, out) = c.nodes[0].subcommand(&["doctor", "--output=json"]);
    assert_eq!(doctor_check(&out, "tx checksum offload")["status"], "warn");
}
