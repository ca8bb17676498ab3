//! The overlay end to end: etcd in its own namespace, nodes running twilld, pods wired by
//! Debian's CNI bridge plugin. Asserts pod connectivity without NAT, the kernel state per
//! node, convergence on join/leave, self-repair, and restarts.

use std::time::Duration;

use twill_e2e::{Cluster, PREFIX};
use twill_testutil::wait_until;

const CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn cluster(tag: &str, n: usize) -> Cluster {
    let mut c = Cluster::new(tag);
    c.put_config(CONF);
    for _ in 0..n {
        c.add_node(&["--ip-masq", "--iptables-resync=1"]);
    }
    for i in 0..n {
        c.add_pod(i);
    }
    for i in 0..n {
        wait_converged(&c, i, n - 1);
    }
    c
}

fn routes(c: &Cluster, i: usize) -> Vec<String> {
    let mut v: Vec<String> = c.nodes[i]
        .ns
        .sh("ip route show dev flannel.1")
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    v.sort();
    v
}

fn wait_converged(c: &Cluster, i: usize, peers: usize) {
    wait_until(
        20,
        &format!("node {} to program {peers} peers", i + 1),
        || routes(c, i).len() == peers,
    );
}

/// What the reference lab (../shared/netlab.sh) builds for each peer, exactly.
fn assert_reference_state(c: &Cluster, i: usize) {
    let node = &c.nodes[i];
    let link = node.ns.sh("ip -d link show flannel.1");
    for want in [
        "vxlan id 1 ",
        &format!("local {} dev eth0", node.ip),
        "dstport 8472",
        "nolearning",
        "mtu 1450",
    ] {
        assert!(link.contains(want), "flannel.1 lacks {want:?}:\n{link}");
    }
    let own = node.lease();
    let addr = node.ns.sh("ip -4 -br addr show dev flannel.1");
    assert!(
        addr.contains(&format!("{}/32", own.trim_end_matches("/24"))),
        "{addr}"
    );
    let neigh = node.ns.sh("ip neigh show dev flannel.1");
    let fdb = node.ns.sh("bridge fdb show dev flannel.1");
    let r = routes(c, i);
    for (j, peer) in c.nodes.iter().enumerate() {
        if j == i || !peer.subnet_env().exists() {
            continue;
        }
        let subnet = peer.lease();
        let vtep = subnet.trim_end_matches("/24");
        let mac = peer.vtep_mac();
        assert!(
            r.contains(&format!("{subnet} via {vtep} proto static onlink")),
            "{r:?}"
        );
        assert!(
            neigh.contains(&format!("{vtep} lladdr {mac} PERMANENT")),
            "{neigh}"
        );
        assert!(
            fdb.contains(&format!("{mac} dst {} self permanent", peer.ip)),
            "{fdb}"
        );
    }
    let nat = node.ns.sh("iptables -t nat -S FLANNEL-POSTRTG");
    let expect = [
        "-N FLANNEL-POSTRTG".to_string(),
        r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#.into(),
        format!(r#"-A FLANNEL-POSTRTG -s {own} -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d {own} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d {own} -m comment --comment "flanneld masq" -j RETURN"#),
        r#"-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#.into(),
        r#"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#.into(),
    ];
    assert_eq!(nat.lines().collect::<Vec<_>>(), expect);
    let post = node.ns.sh("iptables -t nat -S POSTROUTING");
    assert_eq!(post.matches("-j FLANNEL-POSTRTG").count(), 1, "{post}");
    let fwd = node.ns.sh("iptables -S FORWARD");
    assert_eq!(
        fwd.lines().nth(1),
        Some(r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#),
        "{fwd}"
    );
    let fwd_chain = node.ns.sh("iptables -S FLANNEL-FWD");
    assert!(fwd_chain.contains(
        r#"-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#
    ));
    assert!(fwd_chain.contains(
        r#"-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#
    ));
    // Flannel leaves the VXLAN flows tracked; so does twilld unless told otherwise.
    assert!(notrack_rules(c, i).is_empty(), "{:?}", notrack_rules(c, i));
}

/// twilld's raw-table rules on node `i`, one line per chain and jump, as `iptables -S`.
fn notrack_rules(c: &Cluster, i: usize) -> Vec<String> {
    let raw = c.nodes[i].ns.sh("iptables -t raw -S");
    let mut v: Vec<String> = raw
        .lines()
        .filter(|l| l.contains("TWILL") || l.contains("twilld"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn untracked(ip: &str) -> Vec<String> {
    let c = r#"-m comment --comment "twilld vxlan notrack""#;
    let mut v: Vec<String> = vec![
        "-N TWILL-NOTRACK-OUT".into(),
        "-N TWILL-NOTRACK-PRE".into(),
        format!("-A PREROUTING {c} -j TWILL-NOTRACK-PRE"),
        format!("-A OUTPUT {c} -j TWILL-NOTRACK-OUT"),
        format!("-A TWILL-NOTRACK-OUT -s {ip}/32 -p udp -m udp --dport 8472 {c} -j NOTRACK"),
        format!("-A TWILL-NOTRACK-PRE -d {ip}/32 -p udp -m udp --dport 8472 {c} -j NOTRACK"),
    ];
    v.sort();
    v
}

/// Node `i`'s conntrack entries (its namespace's /proc/net/nf_conntrack).
fn conntrack(c: &Cluster, i: usize) -> String {
    c.nodes[i].ns.sh("cat /proc/net/nf_conntrack")
}

#[test]
fn vxlan_notrack_keeps_tunnel_packets_out_of_conntrack() {
    let mut c = Cluster::new("o-notrack");
    c.put_config(CONF);
    c.add_node(&["--iptables-resync=1", "--vxlan-notrack"]);
    c.add_node(&["--iptables-resync=1"]);
    c.add_pod(0);
    c.add_pod(1);
    wait_converged(&c, 0, 1);
    wait_converged(&c, 1, 1);
    c.assert_full_mesh();
    let (p0, p1) = (c.pod(0).ip.clone(), c.pod(1).ip.clone());
    // Node 1 untracks its own tunnel packets both ways; the pods' packets inside them are
    // tracked as before (kube-proxy needs them).
    let ct0 = conntrack(&c, 0);
    assert!(!ct0.contains("dport=8472"), "{ct0}");
    assert!(
        ct0.contains("icmp     1 ") && ct0.contains(&format!("src={p0} dst={p1}")),
        "{ct0}"
    );
    // Node 2 runs with the default: its tunnel flows are tracked, flannel's way.
    let ct1 = conntrack(&c, 1);
    assert!(
        ct1.contains("udp      17 ") && ct1.contains("dport=8472"),
        "{ct1}"
    );
    assert!(
        notrack_rules(&c, 1).is_empty(),
        "{:?}",
        notrack_rules(&c, 1)
    );

    // Turned off on a node that had it: the next twilld removes the chains and jumps.
    c.nodes[0].stop(libc::SIGTERM);
    assert_eq!(notrack_rules(&c, 0), untracked(&c.nodes[0].ip));
    c.nodes[0].args.retain(|a| a != "--vxlan-notrack");
    c.nodes[0].start();
    wait_until(10, "node 1 to drop its notrack rules", || {
        notrack_rules(&c, 0).is_empty()
    });
    // And a flushed chain is put back by the periodic check while it is on.
    c.nodes[1].stop(libc::SIGTERM);
    c.nodes[1].args.push("--vxlan-notrack".into());
    c.nodes[1].start();
    let ip1 = c.nodes[1].ip.clone();
    wait_until(10, "node 2 to add its notrack rules", || {
        notrack_rules(&c, 1) == untracked(&ip1)
    });
    c.nodes[1].ns.sh("iptables -t raw -F TWILL-NOTRACK-PRE");
    wait_until(10, "node 2 to repair TWILL-NOTRACK-PRE", || {
        notrack_rules(&c, 1) == untracked(&ip1)
    });
    c.assert_full_mesh();
}

#[test]
fn three_nodes_pods_ping_without_nat_and_state_matches_reference() {
    let c = cluster("o-mesh", 3);
    c.assert_full_mesh();
    for i in 0..3 {
        assert_reference_state(&c, i);
    }
    // The receiving pod sees the sending pod's address: no NAT inside the pod network.
    let (src, dst) = (c.pod(0).ip.clone(), c.pod(1).ip.clone());
    let capture = std::thread::spawn({
        let ns = c.pod(1).ns.name.clone();
        let dst = dst.clone();
        move || {
            twill_testutil::sh(&format!(
                "timeout 10 ip netns exec {ns} tcpdump -lni eth0 -c 1 'icmp and dst host {dst}' 2>/dev/null"
            ))
        }
    });
    std::thread::sleep(Duration::from_millis(800));
    c.pod(0)
        .ns
        .sh(&format!("ping -c 3 -i 0.2 -W 1 {dst} >/dev/null || true"));
    let line = capture.join().unwrap();
    assert!(line.contains(&format!("{src} > {dst}")), "{line}");
}

#[test]
fn join_and_leave_converge_everywhere() {
    let mut c = cluster("o-join", 3);
    let i = c.add_node(&["--ip-masq", "--iptables-resync=1"]);
    c.add_pod(i);
    for k in 0..4 {
        wait_converged(&c, k, 3);
    }
    c.assert_full_mesh();
    // The fourth node goes away for good and its lease is deleted: every trace of it
    // vanishes from the other nodes.
    let gone = c.nodes[i].lease();
    let mac = c.nodes[i].vtep_mac();
    c.nodes[i].stop(libc::SIGKILL);
    c.etcd.ctl(&[
        "del",
        &format!("{PREFIX}/subnets/{}", gone.replace('/', "-")),
    ]);
    for k in 0..3 {
        wait_converged(&c, k, 2);
        let node = &c.nodes[k];
        assert!(!node.ns.sh("ip neigh show dev flannel.1").contains(&mac));
        assert!(!node.ns.sh("bridge fdb show dev flannel.1").contains(&mac));
    }
    c.pods[i] = None;
    c.assert_full_mesh();
}

#[test]
fn damage_is_repaired_within_a_resync() {
    let c = cluster("o-heal", 3);
    let n0 = &c.nodes[0].ns;
    let peer = c.nodes[1].lease();

    n0.sh("iptables -t nat -F FLANNEL-POSTRTG");
    n0.sh(&format!("ip route del {peer}"));
    wait_until(10, "rules and route restored", || {
        let nat = n0.sh("iptables -t nat -S FLANNEL-POSTRTG");
        nat.lines().count() == 7 && routes(&c, 0).iter().any(|r| r.starts_with(&peer))
    });
    c.assert_full_mesh();

    let mac = c.nodes[0].vtep_mac();
    n0.sh("ip link del flannel.1");
    wait_until(10, "flannel.1 recreated with every peer", || {
        n0.try_sh("ip link show flannel.1") && routes(&c, 0).len() == 2
    });
    assert_eq!(c.nodes[0].vtep_mac(), mac, "recreated with the same MAC");
    assert_reference_state(&c, 0);
    c.assert_full_mesh();

    // A FORWARD DROP inserted ahead of us doesn't shadow our accept rules for long.
    n0.sh("iptables -I FORWARD 1 -j DROP");
    wait_until(10, "FORWARD jump back on top", || {
        n0.sh("iptables -S FORWARD").lines().nth(1)
            == Some(r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#)
    });
}

#[test]
fn sigkill_restart_keeps_subnet_mac_and_traffic_and_drops_stale_entries() {
    let mut c = cluster("o-kill", 3);
    let (lease, mac) = (c.nodes[0].lease(), c.nodes[0].vtep_mac());
    c.nodes[0].stop(libc::SIGKILL);
    // While it's down: pods keep working (nothing was torn down), and a stale entry for a
    // subnet nobody leases any more appears on its device.
    c.assert_full_mesh();
    let gone = c.unleased_subnet();
    let n0 = &c.nodes[0].ns;
    n0.sh(&format!(
        "ip neigh replace {gone} lladdr 0a:00:00:00:02:50 dev flannel.1 nud permanent"
    ));
    n0.sh("bridge fdb append 0a:00:00:00:02:50 dev flannel.1 dst 198.18.0.250 self permanent");
    n0.sh(&format!(
        "ip route replace {gone}/24 via {gone} dev flannel.1 onlink"
    ));
    c.nodes[0].start();
    wait_until(20, "restart ready", || {
        c.nodes[0].log().matches("ready").count() >= 2
    });
    assert_eq!(c.nodes[0].lease(), lease);
    assert_eq!(c.nodes[0].vtep_mac(), mac);
    let stale = |c: &Cluster| {
        let n0 = &c.nodes[0].ns;
        let state = format!(
            "{}{}{}",
            n0.sh("ip route show dev flannel.1"),
            n0.sh("ip neigh show dev flannel.1"),
            n0.sh("bridge fdb show dev flannel.1")
        );
        (state.contains(&format!("{gone} ")) || state.contains("0a:00:00:00:02:50"))
            .then_some(state)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Some(state) = stale(&c) {
        assert!(
            std::time::Instant::now() < deadline,
            "stale entries remain:\n{state}\n{}",
            c.nodes[0].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_reference_state(&c, 0);
    c.assert_full_mesh();
}

#[test]
fn deleted_device_is_recreated_at_once_not_at_the_next_resync() {
    let mut c = Cluster::new("o-dell");
    c.put_config(CONF);
    for _ in 0..2 {
        c.add_node(&["--iptables-resync=60"]);
    }
    for i in 0..2 {
        c.add_pod(i);
        wait_converged(&c, i, 1);
    }
    let mac = c.nodes[0].vtep_mac();
    c.nodes[0].ns.sh("ip link del flannel.1");
    // Well inside the 60 s resync: only the RTM_DELLINK monitor can be this fast.
    wait_until(10, "flannel.1 back with its peer", || {
        c.nodes[0].ns.try_sh("ip link show flannel.1") && routes(&c, 0).len() == 1
    });
    assert_eq!(c.nodes[0].vtep_mac(), mac);
    c.assert_full_mesh();
}
