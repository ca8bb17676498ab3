//! `--route-nexthops` end to end: each peer's route goes through a nexthop object of its
//! own, pods reach each other, a nexthop deleted by hand (which silently takes its route
//! with it) is repaired, doctor agrees, and restarting without the flag goes back to
//! flanneld's route form with no nexthop left behind.

use twill_e2e::{doctor_check, Cluster};
use twill_testutil::wait_until;

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// The lines `cmd` prints in node `i`'s namespace.
fn lines(c: &Cluster, i: usize, cmd: &str) -> Vec<String> {
    c.nodes[i]
        .ns
        .sh(cmd)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

fn routes(c: &Cluster, i: usize) -> Vec<String> {
    lines(c, i, "ip -4 route show dev flannel.1")
}

fn nexthops(c: &Cluster, i: usize) -> Vec<String> {
    lines(c, i, "ip nexthop show")
}

/// The subnet's nexthop id: its network address as a number.
fn id_of(subnet: &str) -> u32 {
    let ip: std::net::Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
    u32::from(ip)
}

fn by_nexthop(c: &Cluster, i: usize) -> bool {
    let mut want: Vec<String> = (0..c.nodes.len())
        .filter(|k| *k != i)
        .map(|k| {
            let s = c.nodes[k].lease();
            let gw = s.split('/').next().unwrap().to_string();
            format!("{s} nhid {} via {gw} proto static onlink", id_of(&s))
        })
        .collect();
    let mut have = routes(c, i);
    have.sort();
    want.sort();
    have == want && nexthops(c, i).len() == want.len()
}

#[test]
fn peers_routed_through_nexthops_repaired_and_switched_back() {
    let mut c = Cluster::with_pods("nh", VXLAN, 3, &["--route-nexthops", "--iptables-resync=1"]);
    for i in 0..3 {
        wait_until(20, "peer routes by nexthop", || by_nexthop(&c, i));
        let nh = nexthops(&c, i).join("\n");
        assert!(
            nh.contains("dev flannel.1 scope link proto static onlink"),
            "{nh}"
        );
    }
    c.assert_full_mesh();

    // Deleting a nexthop takes its route without a route event; the nexthop's own
    // deletion notice brings both back (within milliseconds: by the time a check could
    // look, they may already be back).
    let peer = c.nodes[1].lease();
    c.nodes[0]
        .ns
        .sh(&format!("ip nexthop del id {}", id_of(&peer)));
    wait_until(10, "the deleted nexthop and its route repaired", || {
        by_nexthop(&c, 0)
    });
    assert!(c.pings(0, 1) && c.pings(1, 0));

    // doctor reads the form off the kernel: all in place.
    let conf_dir = format!("--cni-conf-dir={}", c.nodes[0].dir.join("net.d").display());
    let (_, out) = c.nodes[0].twilld(&[
        "doctor",
        "--output=json",
        &conf_dir,
        &format!("--etcd-endpoints=http://{}:2379", twill_e2e::ETCD_IP),
        &format!("--subnet-file={}", c.nodes[0].subnet_env().display()),
        "--iface=eth0",
    ]);
    let peers = doctor_check(&out, "peers");
    assert_eq!(peers["status"], "pass", "{peers}");
    assert_eq!(
        peers["detail"],
        "2 peers in etcd (routes by nexthop id); 0 entries missing, 0 extra"
    );

    // Restarted without the flag: flanneld's form again, every nexthop gone, pods reach.
    c.nodes[0].stop(libc::SIGTERM);
    c.nodes[0].args.retain(|a| a != "--route-nexthops");
    c.nodes[0].start();
    wait_until(20, "plain routes again", || {
        let r = routes(&c, 0);
        r.len() == 2
            && r.iter().all(|l| l.contains(" via ") && !l.contains("nhid"))
            && nexthops(&c, 0).is_empty()
    });
    assert!(c.pings(0, 1) && c.pings(0, 2) && c.pings(2, 0));
}
