//! Dual stack end to end: an IPv4 and an IPv6 underlay on one switch (198.18.0.0/24 and
//! 2001:2::/64), pods with an address of each family, each family carried by its own VXLAN
//! device (`flannel.1` over IPv4, `flannel-v6.1` over IPv6), as flanneld builds it; the
//! real flanneld beside twilld on both families; repairs and restarts of the IPv6 half.

use std::process::{Command, Stdio};

use twill_e2e::{dies_with_the_test, seen_source, Cluster, Pod, ETCD_IP, ETCD_IP6};
use twill_testutil::{require_root, wait_until, Netns};

const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;

/// `n` nodes (twilld, or the real flanneld where `flanneld[i]`) with --ip-masq and a pod
/// each, every node routing to every other on both families.
fn cluster(tag: &str, flanneld: &[bool]) -> Cluster {
    require_root();
    let mut c = Cluster::new_dual(tag);
    c.put_config(DUAL);
    for &f in flanneld {
        let i = c.add_node_stopped(&["--ip-masq"]);
        if f {
            c.nodes[i].start_flanneld();
        } else {
            c.nodes[i].start();
        }
    }
    let n = flanneld.len();
    for i in 0..n {
        c.add_pod(i);
    }
    let routes6 = |node: &twill_e2e::Node| {
        node.ns
            .sh("ip -6 route show dev flannel-v6.1 2>/dev/null || true")
    };
    let converged = (0..300).any(|_| {
        let done = c.nodes.iter().all(|node| {
            node.vxlan_subnets().len() == n - 1
                && routes6(node)
                    .lines()
                    .filter(|l| l.starts_with("fd00:10:244:"))
                    .count()
                    == n - 1
        });
        if !done {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        done
    });
    assert!(
        converged,
        "not every node routes to every other on both families:\n{}",
        c.nodes
            .iter()
            .map(|node| format!(
                "{}\n{}\n{}",
                node.ns.sh("ip route; ip -6 route"),
                c.lease_values(),
                node.log()
            ))
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
    c
}

fn ip6(p: &Pod) -> &str {
    p.ip6.as_deref().expect("the pod has an IPv6 address")
}

/// Every pod pings every other's address of both families.
fn assert_mesh_both(c: &Cluster) {
    c.assert_full_mesh();
    let n = c.pods.len();
    for a in 0..n {
        for b in 0..n {
            if a == b {
                continue;
            }
            let to = ip6(c.pod(b));
            assert!(
                c.pod(a)
                    .ns
                    .try_sh(&format!("ping -6 -c 2 -i 0.2 -W 2 -q {to}")),
                "pod {} cannot reach pod {} at {to}\n{}",
                a + 1,
                b + 1,
                c.nodes[a].log()
            );
        }
    }
}

/// A TCP connection from `from` to `addr` in `to` (iperf3 for a second): the peer address
/// the server accepted it from.
fn tcp_from(from: &Netns, to: &Netns, addr: &str) -> String {
    let mut server = Command::new("ip");
    server
        .args([
            "netns",
            "exec",
            &to.name,
            "timeout",
            "20",
            "iperf3",
            "-s",
            "-1",
            "--forceflush",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    dies_with_the_test(&mut server);
    let server = server.spawn().unwrap();
    let target = if addr.contains(':') {
        format!("-6 -c {addr}")
    } else {
        format!("-c {addr}")
    };
    wait_until(10, "the iperf3 server listening", || {
        from.try_sh(&format!("iperf3 {target} -t 1 2>&1 | grep -q receiver"))
    });
    let out = server.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "Accepted connection from 10.244.3.2, port 45678"
    text.lines()
        .find_map(|l| l.strip_prefix("Accepted connection from "))
        .and_then(|l| l.split(',').next())
        .unwrap_or_else(|| panic!("no connection accepted: {text}"))
        .to_string()
}

#[test]
fn dual_stack_pods_reach_each_other_on_both_families_without_nat() {
    let c = cluster("ds-mesh", &[false, false, false]);
    assert_mesh_both(&c);

    for (i, node) in c.nodes.iter().enumerate() {
        let n = i + 1;
        let link = node.ns.sh("ip -d link show flannel-v6.1");
        assert!(
            link.contains(&format!("vxlan id 1 local 2001:2::{n} dev eth0"))
                && link.contains("mtu 1430"),
            "{link}"
        );
        assert!(node.ns.sh("ip -d link show flannel.1").contains("mtu 1450"));
        let env = std::fs::read_to_string(node.subnet_env()).unwrap();
        assert!(env.contains("FLANNEL_MTU=1430\n"), "{env}");
        let lease = c.lease_value(i).expect("lease JSON");
        assert_eq!(lease["PublicIPv6"], format!("2001:2::{n}"), "{lease}");
        let mac6 = node.ns.sh("cat /sys/class/net/flannel-v6.1/address");
        assert_eq!(lease["BackendV6Data"]["VtepMAC"], mac6.trim(), "{lease}");
        assert_eq!(lease["BackendV6Data"]["VNI"], 1, "{lease}");
    }

    // The pod MTU's largest packet crosses on both families with DF set: 1430 bytes is
    // what fits VXLAN over IPv6 (70 bytes) on a 1500 underlay.
    let (p0, p1) = (c.pod(0), c.pod(1));
    assert!(
        p0.ns
            .try_sh(&format!("ping -6 -M do -s 1382 -c 2 -W 2 -q {}", ip6(p1))),
        "a 1430-byte IPv6 packet"
    );
    assert!(
        p0.ns
            .try_sh(&format!("ping -M do -s 1402 -c 2 -W 2 -q {}", p1.ip)),
        "a 1430-byte IPv4 packet"
    );

    // TCP on both families, and the receiver sees the sender's own addresses.
    assert_eq!(tcp_from(&p0.ns, &p1.ns, ip6(p1)), ip6(p0));
    assert_eq!(tcp_from(&p0.ns, &p1.ns, &p1.ip), p0.ip);
    let p2 = c.pod(2);
    assert_eq!(seen_source(&p2.ns, ip6(p0), &p0.ns, "eth0"), ip6(p2));

    // Leaving the pod networks, both families are masqueraded to the node's addresses.
    let etcd = c.etcd_host();
    assert_eq!(seen_source(&p0.ns, ETCD_IP6, etcd, "eth0"), "2001:2::1");
    assert_eq!(seen_source(&p0.ns, ETCD_IP, etcd, "eth0"), "198.18.0.1");
}
