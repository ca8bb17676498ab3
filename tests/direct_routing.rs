//! `Backend.DirectRouting` end to end: peers on the node's own underlay link are reached by
//! a plain route via their address (no encapsulation), peers behind a router stay on
//! VXLAN; direct routes are repaired, follow leases, go when the option is turned off, and
//! `twilld cleanup` removes them.

use twill_e2e::{doctor_check, Cluster, PREFIX};
use twill_testutil::wait_until;

const DIRECT: &str =
    r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// Routes to pod subnets on the underlay device, as "<subnet> via <gateway>".
fn direct_routes(c: &Cluster, i: usize) -> Vec<String> {
    c.nodes[i].gateway_routes("ip -4 route show dev eth0 root 10.244.0.0/16")
}

fn vxlan_routes(c: &Cluster, i: usize) -> Vec<String> {
    c.nodes[i].vxlan_subnets()
}

/// The direct routes node `i` should have: every other node's subnet via its address.
fn expected(c: &Cluster, i: usize, nodes: &[usize]) -> Vec<String> {
    let mut v: Vec<String> = nodes
        .iter()
        .filter(|k| **k != i)
        .map(|k| format!("{} via {}", c.nodes[*k].lease(), c.nodes[*k].ip))
        .collect();
    v.sort();
    v
}

fn tx_packets(c: &Cluster, i: usize) -> u64 {
    let out = c.nodes[i]
        .ns
        .sh("cat /sys/class/net/flannel.1/statistics/tx_packets");
    out.trim().parse().unwrap()
}

#[test]
fn peers_on_the_underlay_link_get_direct_routes_others_vxlan() {
    let mut c = Cluster::with_pods(
        "dr",
        DIRECT,
        3,
        &["--iptables-resync=1", "--metrics-port=8471"],
    );
    for i in 0..3 {
        wait_until(20, "direct routes to both peers", || {
            direct_routes(&c, i) == expected(&c, i, &[0, 1, 2])
        });
        assert!(vxlan_routes(&c, i).is_empty(), "{:?}", vxlan_routes(&c, i));
        let fdb = c.nodes[i].ns.sh("bridge fdb show dev flannel.1");
        for k in 0..3 {
            assert!(!fdb.contains(&c.nodes[k].vtep_mac()), "{fdb}");
        }
    }
    // The metrics count them by kind.
    wait_until(10, "entries by kind in /metrics", || {
        let m = c.nodes[0].ns.sh("curl -s http://127.0.0.1:8471/metrics");
        m.contains("twill_kernel_entries{kind=\"direct_route\"} 2")
            && m.contains("twill_kernel_entries{kind=\"fdb\"} 0")
    });
    // Pod traffic is routed, not encapsulated: the VXLAN device sends nothing.
    let before = tx_packets(&c, 0);
    c.assert_full_mesh();
    assert_eq!(tx_packets(&c, 0), before, "pings went through flannel.1");

    // A peer behind a router (not on 198.18.0.0/24) stays on VXLAN. Nothing is sent to it.
    // Its subnet is one no node holds (a fixed one could be a node's random lease).
    let routed = c.unleased_subnet();
    c.etcd.ctl(&[
        "put",
        &format!("{PREFIX}/subnets/{routed}-24"),
        r#"{"PublicIP":"198.19.5.4","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:c8:01"}}"#,
    ]);
    wait_until(10, "the routed peer on VXLAN", || {
        vxlan_routes(&c, 0) == [format!("{routed}/24")]
            && c.nodes[0]
                .ns
                .sh("bridge fdb show dev flannel.1")
                .contains("0a:00:00:00:c8:01 dst 198.19.5.4")
    });
    assert_eq!(direct_routes(&c, 0), expected(&c, 0, &[0, 1, 2]));

    // A direct route deleted by hand is back within a resync.
    let lost = c.nodes[1].lease();
    c.nodes[0].ns.sh(&format!("ip route del {lost} dev eth0"));
    wait_until(10, "the direct route repaired", || {
        direct_routes(&c, 0) == expected(&c, 0, &[0, 1, 2])
    });

    // doctor counts direct routes as the peers' entries.
    let conf_dir = format!("--cni-conf-dir={}", c.nodes[0].dir.join("net.d").display());
    let (_, out) = c.nodes[0].subcommand(&["doctor", "--output=json", &conf_dir]);
    let peers = doctor_check(&out, "peers");
    assert_eq!(peers["status"], "pass", "{peers}");
    assert_eq!(
        peers["detail"],
        "3 peers in etcd (2 by direct route); 0 entries missing, 0 extra"
    );

    // A node that leaves takes its direct route with it.
    let gone = c.nodes[2].lease();
    c.nodes[2].stop(libc::SIGKILL);
    c.pods[2] = None;
    c.etcd.ctl(&[
        "del",
        &format!("{PREFIX}/subnets/{}", gone.replace('/', "-")),
    ]);
    for i in 0..2 {
        wait_until(10, "the departed node's route removed", || {
            direct_routes(&c, i) == expected(&c, i, &[0, 1])
        });
    }

    // DirectRouting turned off (SIGHUP re-reads the config): node 1 goes back to VXLAN
    // for everyone; node 2, still direct, keeps reaching it.
    c.put_config(VXLAN);
    c.nodes[0].signal(libc::SIGHUP);
    wait_until(10, "node 1 back on VXLAN", || {
        direct_routes(&c, 0).is_empty() && vxlan_routes(&c, 0).len() == 2
    });
    let before = tx_packets(&c, 0);
    assert!(c.pings(0, 1) && c.pings(1, 0));
    assert!(tx_packets(&c, 0) > before, "node 1 sends over VXLAN again");

    // cleanup removes direct routes: node 2's, with its daemon stopped.
    c.nodes[1].stop(libc::SIGTERM);
    let state = format!(
        "--cni-data-dir={}",
        c.nodes[1].dir.join("cni-state").display()
    );
    let (ok, out) = c.nodes[1].subcommand(&["cleanup", "--keep-cni-files", &state]);
    assert!(ok, "{out}");
    assert!(
        out.contains("would remove: 1 direct routes to 10.244.0.0/16 subnets on eth0"),
        "{out}"
    );
    assert_eq!(direct_routes(&c, 1).len(), 1, "a dry run removes nothing");
    let (ok, out) = c.nodes[1].subcommand(&["cleanup", "--keep-cni-files", &state, "--yes"]);
    assert!(ok, "{out}");
    assert!(direct_routes(&c, 1).is_empty(), "{out}");
}
