//! The real flanneld (v0.28.9, built from its Go module by `scripts/setup.sh reference`)
//! beside twilld in one cluster, on one real etcd: each reads the other's leases and
//! programs them, pods on every node reach each other without NAT, and a node moves from
//! one daemon to the other in place while its pod is pinged. Pods on flanneld nodes are
//! wired by flannel's own CNI plugin (see scripts/reference-versions for its release), and
//! a pod keeps the plugin that added it when its node moves: the other one deletes it.

use twill_e2e::{loss_during, seen_source, Cluster, ETCD_IP, PREFIX};
use twill_testutil::{require_root, wait_until};

const CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// A cluster whose nodes run flanneld where `flanneld[i]`, twilld elsewhere, each with
/// --ip-masq and one pod, every pod reaching every other.
fn mixed(tag: &str, flanneld: &[bool]) -> Cluster {
    require_root();
    twill_e2e::flanneld_bin();
    let mut c = Cluster::new(tag);
    c.put_config(CONF);
    c.add_nodes(flanneld, &["--ip-masq"]);
    for i in 0..flanneld.len() {
        c.add_pod(i);
    }
    let n = flanneld.len();
    wait_until(30, "every node routes to every other", || {
        c.nodes
            .iter()
            .all(|node| node.vxlan_subnets().len() == n - 1)
    });
    c.assert_full_mesh();
    c
}

/// What flanneld wrote for its lease: flannel's JSON, as twilld reads it.
fn lease_json(c: &Cluster, i: usize) -> serde_json::Value {
    c.lease_value(i).expect("the node's lease in etcd, as JSON")
}

/// Each pod sees the others' own addresses: nothing between two pod subnets is NATed,
/// whichever daemon wrote the rules on either side.
fn assert_no_nat(c: &Cluster) {
    for a in 0..c.nodes.len() {
        for b in 0..c.nodes.len() {
            if a == b {
                continue;
            }
            let seen = seen_source(&c.pod(a).ns, &c.pod(b).ip, &c.pod(b).ns, "eth0");
            assert_eq!(
                seen,
                c.pod(a).ip,
                "pod {} -> pod {}: the receiver saw {seen:?}",
                a + 1,
                b + 1
            );
        }
    }
}

#[test]
fn two_twilld_nodes_and_one_flanneld_node_share_one_overlay() {
    let c = mixed("fl21", &[false, false, true]);
    let lease = lease_json(&c, 2);
    assert_eq!(lease["BackendType"], "vxlan", "{lease}");
    assert_eq!(
        lease["BackendData"]["VtepMAC"].as_str().unwrap(),
        c.nodes[2].vtep_mac(),
        "flanneld advertises its device's MAC"
    );
    // twilld programmed flanneld's lease exactly as flanneld programs twilld's.
    let mac = c.nodes[2].vtep_mac();
    let fdb = c.nodes[0].ns.sh("bridge fdb show dev flannel.1");
    assert!(
        fdb.contains(&format!("{mac} dst {}", c.nodes[2].ip)),
        "{fdb}"
    );
    let twilld_mac = c.nodes[0].vtep_mac();
    let fdb = c.nodes[2].ns.sh("bridge fdb show dev flannel.1");
    assert!(
        fdb.contains(&format!("{twilld_mac} dst {}", c.nodes[0].ip)),
        "flanneld's view of twilld: {fdb}"
    );
    assert_no_nat(&c);

    // A lease written by hand with keys in other cases: flanneld takes it (Go's decoder
    // matches keys ignoring case), and so does twilld. On a subnet no node holds.
    let by_hand = c.unleased_subnet();
    c.etcd.ctl(&[
        "put",
        &format!("{PREFIX}/subnets/{by_hand}-24"),
        r#"{"publicIP":"198.18.0.50","backendtype":"vxlan","backendData":{"vni":1,"vtepMAC":"0a:00:00:00:00:50"}}"#,
    ]);
    wait_until(10, "both daemons route the hand-written lease", || {
        [0, 2].iter().all(|&i| {
            c.nodes[i]
                .vxlan_subnets()
                .contains(&format!("{by_hand}/24"))
        })
    });
    let fdb = c.nodes[0].ns.sh("bridge fdb show dev flannel.1");
    assert!(fdb.contains("0a:00:00:00:00:50 dst 198.18.0.50"), "{fdb}");
}

#[test]
fn one_twilld_node_among_two_flanneld_nodes() {
    let c = mixed("fl12", &[true, false, true]);
    assert_no_nat(&c);
    // Traffic leaving the pod network is masqueraded on both kinds of node.
    for i in [0, 1] {
        let seen = seen_source(&c.pod(i).ns, ETCD_IP, c.etcd_host(), "eth0");
        assert_eq!(seen, c.nodes[i].ip, "node {}: {seen:?}", i + 1);
    }
}

/// flanneld -> twilld -> flanneld on one node, its pod pinged from another node all along:
/// each daemon adopts the other's lease, device and MAC, so peers change nothing.
#[test]
fn a_node_moves_from_flanneld_to_twilld_and_back_in_place() {
    let mut c = mixed("flmv", &[false, true, false]);
    let subnet = c.nodes[1].lease();
    let mac = c.nodes[1].vtep_mac();
    let target = c.pod(1).ip.clone();

    c.nodes[1].stop(libc::SIGTERM);
    let pinger = c.pod(0).ns.name.clone();
    let (lost, summary) = loss_during(&pinger, &target, 6, || {
        c.nodes[1].start();
        c.nodes[1].wait_ready();
    });
    eprintln!("flanneld -> twilld: {lost}% lost ({summary})");
    assert!(lost <= 2.0, "flanneld -> twilld: {summary}");
    assert_eq!(
        c.nodes[1].lease(),
        subnet,
        "twilld adopted flanneld's lease"
    );
    assert_eq!(c.nodes[1].vtep_mac(), mac, "and its device's MAC");
    c.assert_full_mesh();

    // The pod flannel's plugin added goes by ours (the node's plugin now), and the pod
    // that replaces it, added by ours, goes by flannel's after the move back.
    c.remove_pod(1);
    assert!(reserved(&c, 1).is_empty(), "twill's DEL released it");
    let target = c.add_pod(1);
    c.assert_full_mesh();

    c.nodes[1].stop(libc::SIGTERM);
    let (lost, summary) = loss_during(&pinger, &target, 6, || {
        c.nodes[1].start_flanneld();
        std::thread::sleep(std::time::Duration::from_secs(2));
    });
    eprintln!("twilld -> flanneld: {lost}% lost ({summary})");
    assert!(lost <= 2.0, "twilld -> flanneld: {summary}");
    assert_eq!(c.nodes[1].lease(), subnet, "flanneld kept the lease");
    assert_eq!(c.nodes[1].vtep_mac(), mac, "and the MAC");
    c.assert_full_mesh();
    assert_eq!(reserved(&c, 1), vec![target]);
    c.remove_pod(1);
    assert!(reserved(&c, 1).is_empty(), "flannel's DEL released it");
}

/// The pod addresses host-local holds on node `i`.
fn reserved(c: &Cluster, i: usize) -> Vec<String> {
    twill_e2e::host_local_reserved(&c.nodes[i].dir.join("ipam"))
}

/// The peer routes in node `i`'s kernel: (by nexthop id, in flanneld's form).
fn route_forms(c: &Cluster, i: usize) -> (usize, usize) {
    let out = c.nodes[i].ns.sh("ip -4 route show dev flannel.1");
    let nhid = out.lines().filter(|l| l.contains(" nhid ")).count();
    (nhid, out.lines().count() - nhid)
}

/// Whether `--route-nexthops` could be the default, asked of the real flanneld: twilld
/// nodes routing by nexthop id among flanneld nodes, then one of them handed to flanneld
/// in place (the way back of a migration), which must adopt those routes and remove one
/// when its peer's lease goes.
#[test]
fn nexthop_routes_mix_with_flanneld_and_flanneld_takes_them_over() {
    require_root();
    twill_e2e::flanneld_bin();
    let mut c = Cluster::new("flnh");
    c.put_config(CONF);
    for (i, args) in [
        &["--ip-masq", "--route-nexthops"][..],
        &["--ip-masq"],
        &["--ip-masq", "--route-nexthops"],
    ]
    .into_iter()
    .enumerate()
    {
        c.add_node_stopped(args);
        if i == 1 {
            c.nodes[i].start_flanneld();
        } else {
            c.nodes[i].start();
        }
        c.add_pod(i);
    }
    wait_until(30, "twilld nodes route by nexthop, flanneld's way", || {
        route_forms(&c, 0) == (2, 0) && route_forms(&c, 2) == (2, 0) && route_forms(&c, 1) == (0, 2)
    });
    c.assert_full_mesh();
    assert_no_nat(&c);

    // Node 3 to flanneld, in place: it replaces each nexthop route with its own form (the
    // nexthop objects stay behind, unused: flanneld does not know them).
    c.nodes[2].stop(libc::SIGTERM);
    c.nodes[2].args.retain(|a| a != "--route-nexthops");
    let pinger = c.pod(0).ns.name.clone();
    let target = c.pod(2).ip.clone();
    let (lost, summary) = loss_during(&pinger, &target, 6, || {
        c.nodes[2].start_flanneld();
        std::thread::sleep(std::time::Duration::from_secs(2));
    });
    eprintln!("twilld with nexthops -> flanneld: {lost}% lost ({summary})");
    assert!(lost <= 2.0, "twilld with nexthops -> flanneld: {summary}");
    wait_until(20, "flanneld's form on the handed-over node", || {
        route_forms(&c, 2) == (0, 2)
    });
    let left = c.nodes[2].ns.sh("ip nexthop show");
    eprintln!("nexthops left unused on the handed-over node:\n{left}");
    c.assert_full_mesh();

    // A peer that goes: flanneld deletes the route it adopted (by gateway and device,
    // which a route still held by nexthop id would not match).
    let gone = c.nodes[0].lease();
    c.remove_pod(0);
    c.nodes[0].stop(libc::SIGTERM);
    let (ok, out) = c.nodes[0].subcommand(&["cleanup", "--yes", "--release-lease"]);
    assert!(ok, "{out}");
    wait_until(
        30,
        "the gone peer's route removed on both flanneld nodes",
        || {
            !c.nodes[2].vxlan_subnets().contains(&gone)
                && !c.nodes[1].vxlan_subnets().contains(&gone)
        },
    );
    assert!(c.pings(1, 2) && c.pings(2, 1));
}
