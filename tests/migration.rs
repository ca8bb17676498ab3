//! CNI migration without NAT between the two pod networks: twill's pods beside a second
//! pod network on the same nodes, built from plain bridge + host-local and routed between
//! the nodes over the underlay — a stand-in for the CNI a cluster is moving to (Cilium on
//! 172.20.0.0/16, say). With `NonMasqueradeCIDRs` each side sees the other's real pod
//! address (tcpdump at the receiver); traffic to anything outside every pod network is
//! still masqueraded.

use std::path::Path;

use twill_e2e::{cni, seen_source, Cluster};
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

/// flannel -> twill in place, node by node: a node still run by flanneld (its data plane
/// written here exactly as flanneld writes it — lease with a TTL in etcd, flannel.1 with
/// its MAC, FDB + neighbour + onlink route per peer, subnet.env — since flanneld itself is
/// not installable here) beside twilld nodes; pods ping across the mixed cluster; then the
/// last flanneld node gets twilld, which adopts its lease, device and MAC without taking
/// the pods' traffic down.
#[test]
fn flanneld_nodes_move_to_twilld_in_place() {
    let mut c = twill_e2e::Cluster::new("mig-fl");
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    for _ in 0..2 {
        c.add_node(&["--iptables-resync=1"]);
    }
    let f = c.add_node_stopped(&["--iptables-resync=1"]);
    for i in 0..2 {
        c.nodes[i].wait_ready();
    }
    // The flanneld node: its lease (flanneld's JSON, on a 24 h etcd lease), on a subnet
    // the twilld nodes' random leases did not take...
    let vtep = c.unleased_subnet();
    let (subnet, mac) = (format!("{vtep}/24"), "0a:0f:00:00:00:03");
    let grant = c.etcd.ctl(&["lease", "grant", "86400"]);
    let id = grant.split_whitespace().nth(1).unwrap().to_string();
    c.etcd.ctl(&[
        "put",
        "--lease",
        &id,
        &format!("{}/subnets/{vtep}-24", twill_e2e::PREFIX),
        &format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#,
            c.nodes[f].ip
        ),
    ]);
    // ...its device and its entries for each twilld peer, and its subnet.env.
    let ns = &c.nodes[f].ns;
    ns.sh(&format!(
        "ip link add flannel.1 type vxlan id 1 local {} dev eth0 dstport 8472 nolearning \
         && ip link set flannel.1 address {mac} mtu 1450 up && ip addr add {vtep}/32 dev flannel.1",
        c.nodes[f].ip
    ));
    for i in 0..2 {
        let peer = c.nodes[i].lease();
        let pvtep = peer.trim_end_matches("/24");
        ns.sh(&format!(
            "bridge fdb append {m} dev flannel.1 dst {ip} && \
             ip neigh replace {pvtep} lladdr {m} dev flannel.1 nud permanent && \
             ip route replace {peer} via {pvtep} dev flannel.1 onlink",
            m = c.nodes[i].vtep_mac(),
            ip = c.nodes[i].ip
        ));
    }
    std::fs::write(
        c.nodes[f].subnet_env(),
        format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={}.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            vtep.trim_end_matches(".0")
        ),
    )
    .unwrap();
    for i in 0..3 {
        c.add_pod(i);
    }
    // The twilld nodes took the flanneld node's lease as a peer.
    wait_until(20, "twilld nodes route to the flanneld node", || {
        (0..2).all(|i| c.nodes[i].vxlan_subnets().contains(&subnet.to_string()))
    });
    c.assert_full_mesh();

    // The flanneld node moves to twilld while a pod on another node pings one on it.
    let target = c.pod(f).ip.clone();
    let pinger = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.pod(0).ns.name,
            "ping",
            "-i",
            "0.02",
            "-w",
            "6",
            "-q",
            &target,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    c.nodes[f].start();
    c.nodes[f].wait_ready();
    let out = pinger.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    let lost: f64 = summary
        .split(", ")
        .find_map(|p| p.strip_suffix("% packet loss"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(100.0);
    assert!(
        lost <= 2.0,
        "pings lost while the node moved to twilld: {summary}"
    );
    assert_eq!(c.nodes[f].lease(), subnet, "the flanneld lease was adopted");
    assert_eq!(
        c.nodes[f].vtep_mac(),
        mac,
        "and its MAC, so no peer had to change"
    );
    c.assert_full_mesh();
}
