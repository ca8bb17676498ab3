//! `--ip-blackhole-route` end to end: each node has a blackhole route for its own subnet
//! behind cni0's route (pods still reach each other), it catches the subnet when cni0 has
//! no address, it is repaired when deleted, flanneld's metric-0 form (which shadows cni0)
//! is replaced at start, doctor and cleanup know it, and a restart without the flag
//! removes it.

use twill_e2e::{doctor_check, Cluster, ETCD_IP};
use twill_testutil::wait_until;

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const METRIC: &str = "4294967295";

fn blackholes(c: &Cluster, i: usize) -> Vec<String> {
    c.nodes[i]
        .ns
        .sh("ip -4 route show type blackhole")
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

fn ours(c: &Cluster, i: usize) -> String {
    format!(
        "blackhole {} proto static metric {METRIC}",
        c.nodes[i].lease()
    )
}

/// An address of node `i`'s subnet that no pod holds.
fn unused_pod_ip(c: &Cluster, i: usize) -> String {
    let lease = c.nodes[i].lease();
    let net = lease.split('/').next().unwrap();
    format!("{}.200", net.rsplit_once('.').unwrap().0)
}

/// `ip route get` in node `i`: its output, or its error (stderr) when the lookup fails.
fn route_get(c: &Cluster, i: usize, ip: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", &c.nodes[i].ns.name, "route", "get", ip])
        .output()
        .unwrap();
    String::from_utf8_lossy(if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    })
    .into_owned()
}

fn cni0_addr(c: &Cluster, i: usize) -> String {
    let lease = c.nodes[i].lease();
    let (net, len) = lease.split_once('/').unwrap();
    format!("{}.1/{len}", net.rsplit_once('.').unwrap().0)
}

#[test]
fn own_subnet_blackholed_behind_cni0_repaired_and_removed() {
    let mut c = Cluster::with_pods(
        "bh",
        VXLAN,
        2,
        &["--ip-blackhole-route", "--iptables-resync=1"],
    );
    for i in 0..2 {
        wait_until(20, "the blackhole route", || {
            blackholes(&c, i) == [ours(&c, i)]
        });
    }
    // Behind cni0's route: pods and the rest of the subnet are still routed to cni0.
    c.assert_full_mesh();
    let spare = unused_pod_ip(&c, 0);
    assert!(route_get(&c, 0, &spare).contains("dev cni0"));

    // Without cni0's address the subnet is dropped here (EINVAL from a blackhole) rather
    // than looked up further (ENETUNREACH: this lab node has no default route).
    let addr = cni0_addr(&c, 0);
    c.nodes[0].ns.sh(&format!("ip addr del {addr} dev cni0"));
    let got = route_get(&c, 0, &spare);
    c.nodes[0].ns.sh(&format!("ip addr add {addr} dev cni0"));
    assert!(got.contains("Invalid argument"), "{got}");
    assert!(c.pings(1, 0));

    // Deleted by hand: back within a resync.
    c.nodes[0].ns.sh(&format!(
        "ip route del blackhole {} metric {METRIC}",
        c.nodes[0].lease()
    ));
    wait_until(10, "the deleted blackhole repaired", || {
        blackholes(&c, 0) == [ours(&c, 0)]
    });

    // flanneld's form for node 1's subnet, added while cni0 had no address: it now sits in
    // front of cni0's route and node 1's pod is cut off. A twilld restart replaces it.
    let (lease1, addr1) = (c.nodes[1].lease(), cni0_addr(&c, 1));
    c.nodes[1].stop(libc::SIGTERM);
    c.nodes[1].ns.sh(&format!(
        "ip addr del {addr1} dev cni0 && ip route add blackhole {lease1} && ip addr add {addr1} dev cni0"
    ));
    assert!(!c.pings(0, 1), "flanneld's blackhole should shadow cni0");
    c.nodes[1].start();
    wait_until(20, "flanneld's blackhole replaced by ours", || {
        blackholes(&c, 1) == [ours(&c, 1)]
    });
    assert!(c.pings(0, 1) && c.pings(1, 0));

    let etcd = format!("--etcd-endpoints=http://{ETCD_IP}:2379");
    let env = format!("--subnet-file={}", c.nodes[1].subnet_env().display());
    let (_, out) = c.nodes[1].twilld(&[
        "doctor",
        "--output=json",
        "--ip-blackhole-route",
        &etcd,
        &env,
        "--iface=eth0",
    ]);
    let check = doctor_check(&out, "blackhole route");
    assert_eq!(check["status"], "pass", "{check}");
    let (_, out) = c.nodes[1].twilld(&["cleanup", &env]);
    assert!(
        out.contains(&format!(
            "would remove: route blackhole {lease1} metric {METRIC}"
        )),
        "{out}"
    );

    // Restarted without the flag: no blackhole left.
    c.nodes[0].stop(libc::SIGTERM);
    c.nodes[0].args.retain(|a| a != "--ip-blackhole-route");
    c.nodes[0].start();
    wait_until(20, "the blackhole removed", || blackholes(&c, 0).is_empty());
    assert!(c.pings(0, 1) && c.pings(1, 0));
}
