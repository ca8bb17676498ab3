//! CNI migration without NAT between the two pod networks: twill's pods beside a second
//! pod network on the same nodes, built from plain bridge + host-local and routed between
//! the nodes over the underlay — a stand-in for the CNI a cluster is moving to (Cilium on
//! 172.20.0.0/16, say). With `NonMasqueradeCIDRs` each side sees the other's real pod
//! address (tcpdump at the receiver); traffic to anything outside every pod network is
//! still masqueraded.

use std::path::Path;

use twill_e2e::{cni, Cluster};
use twill_testutil::{wait_until, Netns};

/// The second network's per-node subnets.
fn other_subnet(i: usize) -> String {
    format!("172.20.{}.0/24", i + 1)
}

/// A pod on node `i` of the second network; its address.
fn other_pod(c: &Cluster, i: usize, pod: &Netns) -> String {
    let node = &c.nodes[i];
    pod.sh("ip link set lo up");
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"other","type":"bridge","bridge":"cni1","isGateway":true,"ipMasq":false,
            "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"{}"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}}"#,
        node.dir.join("ipam-other").display(),
        other_subnet(i)
    );
    let out = cni(
        &node.ns,
        Path::new("/usr/lib/cni/bridge"),
        "ADD",
        &pod.name,
        &conf,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// Sends one ping from `from` to `to` while tcpdump on `at`'s `dev` captures ICMP echo
/// requests to `to`: the source address the receiver saw.
fn seen_source(from: &Netns, to: &str, at: &Netns, dev: &str) -> String {
    let cap = std::process::Command::new("ip")
        .args([
            "netns", "exec", &at.name, "timeout", "5", "tcpdump", "-ni", dev, "-c", "1", "-l",
        ])
        .arg(format!("icmp[icmptype] == icmp-echo and dst host {to}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = from.try_sh(&format!("ping -c 3 -i 0.2 -W 1 -q {to}"));
    let out = cap.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    // "12:00:00.000000 IP 10.244.1.2 > 172.20.2.2: ICMP echo request, ..."
    line.split_whitespace()
        .skip_while(|w| *w != "IP")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

#[test]
fn two_pod_networks_see_each_others_real_addresses() {
    let mut c = Cluster::with_pods(
        "mig",
        r#"{"Network":"10.244.0.0/16","NonMasqueradeCIDRs":["172.20.0.0/16"],"Backend":{"Type":"vxlan"}}"#,
        2,
        &["--ip-masq"],
    );
    let others: Vec<Netns> = (0..2)
        .map(|i| Netns::new(&format!("mig-q{}", i + 1)))
        .collect();
    let other_ips: Vec<String> = (0..2).map(|i| other_pod(&c, i, &others[i])).collect();
    // The second network's own routing between the nodes, over the underlay.
    for i in 0..2 {
        let j = 1 - i;
        c.nodes[i].ns.sh(&format!(
            "ip route add {} via {} dev eth0",
            other_subnet(j),
            c.nodes[j].ip
        ));
    }
    let twill_pod = |i: usize| &c.pod(i).ns;
    wait_until(10, "the second network's pods reach each other", || {
        others[0].try_sh(&format!("ping -c 1 -W 1 -q {}", other_ips[1]))
    });

    // twill's pod on node 1 -> the other network's pod on node 2, and back.
    let src = seen_source(twill_pod(0), &other_ips[1], &others[1], "eth0");
    assert_eq!(src, c.pod(0).ip, "not NATed towards the other pod network");
    let src = seen_source(&others[1], &c.pod(0).ip, twill_pod(0), "eth0");
    assert_eq!(
        src, other_ips[1],
        "the other network's pod not NATed into ours"
    );
    // Same node too: twill's pod on node 2 -> the other network's pod on node 2.
    let src = seen_source(twill_pod(1), &other_ips[1], &others[1], "eth0");
    assert_eq!(src, c.pod(1).ip);

    // Outside every pod network (node 2's underlay address): still masqueraded.
    let src = seen_source(twill_pod(0), &c.nodes[1].ip, &c.nodes[1].ns, "eth0");
    assert_eq!(
        src, c.nodes[0].ip,
        "traffic leaving the pod networks is masqueraded"
    );

    // The list follows the config on SIGHUP.
    let exempt = |c: &Cluster| {
        c.nodes[0]
            .ns
            .sh("iptables -t nat -S FLANNEL-POSTRTG")
            .contains("-d 172.20.0.0/16")
    };
    c.put_config(r#"{"Network":"10.244.0.0/16","NonMasqueradeCIDRs":["172.21.0.0/16"],"Backend":{"Type":"vxlan"}}"#);
    c.nodes[0].signal(libc::SIGHUP);
    wait_until(10, "the exemption follows the config", || {
        !exempt(&c)
            && c.nodes[0]
                .ns
                .sh("iptables -t nat -S FLANNEL-POSTRTG")
                .contains("-d 172.21.0.0/16")
    });
    c.put_config(r#"{"Network":"10.244.0.0/16","NonMasqueradeCIDRs":["172.20.0.0/16"],"Backend":{"Type":"vxlan"}}"#);
    c.nodes[0].signal(libc::SIGHUP);
    wait_until(10, "and back", || exempt(&c));

    // Without the exemption, the same traffic is NATed to the node (the flannel behaviour
    // that breaks the pod network model during a migration). twilld would put the rule
    // back at once, so it is stopped first; stopping leaves the rules in place.
    c.nodes[0].stop(libc::SIGTERM);
    c.nodes[0].ns.sh("iptables -t nat -D FLANNEL-POSTRTG -s 10.244.0.0/16 -d 172.20.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN");
    let src = seen_source(&c.pod(0).ns, &other_ips[1], &others[1], "eth0");
    assert_eq!(
        src, c.nodes[0].ip,
        "the exemption was what kept the address"
    );
}
