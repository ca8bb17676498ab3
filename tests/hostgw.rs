//! flannel's host-gw backend end to end: nodes on one switch (198.18.0.0/24 and
//! 2001:2::/64) route each other's pod subnets via their underlay addresses, with no VXLAN
//! device and no encapsulation; a peer off that link is refused and reported; routes are
//! repaired in milliseconds and survive a restart; the real flanneld's host-gw beside
//! twilld; a switch between vxlan and host-gw (SIGHUP or restart) leaves nothing behind.

use twill_e2e::{
    doctor_check, ip6, loss_during, metric_in, seen_source, tcp_from, Cluster, Node, PREFIX,
};
use twill_testutil::{require_root, wait_until};

const HOST_GW: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}"#;
const VXLAN: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;

/// Routes into the pod network on the underlay device, as "<subnet> via <gateway>", both
/// families, sorted.
fn routes(node: &Node) -> Vec<String> {
    node.gateway_routes(
        "ip -4 route show dev eth0 root 10.244.0.0/16; ip -6 route show dev eth0 root fd00:10:244::/56",
    )
}

/// What node `i` should route: every other running node's subnets via its addresses.
fn expected(c: &Cluster, i: usize, nodes: &[usize]) -> Vec<String> {
    let mut v: Vec<String> = nodes
        .iter()
        .filter(|k| **k != i)
        .flat_map(|&k| {
            let n = &c.nodes[k];
            [
                format!("{} via {}", n.lease(), n.ip),
                format!("{} via 2001:2::{}", n.lease6(), k + 1),
            ]
        })
        .collect();
    v.sort();
    v
}

fn vxlan_devices(node: &Node) -> String {
    node.ns.sh("ip -br link show type vxlan")
}

/// `n` dual-stack nodes (the real flanneld where `flanneld[i]`, twilld elsewhere) on
/// `config`, a pod each, every node routing to every other.
fn cluster(tag: &str, config: &str, flanneld: &[bool], args: &[&str]) -> Cluster {
    require_root();
    let mut c = Cluster::new_dual(tag);
    c.put_config(config);
    c.add_nodes(flanneld, args);
    let all: Vec<usize> = (0..flanneld.len()).collect();
    for i in all.clone() {
        c.add_pod(i);
    }
    if config == HOST_GW {
        for i in all.clone() {
            wait_until(20, "host-gw routes to every peer", || {
                routes(&c.nodes[i]) == expected(&c, i, &all)
            });
        }
    }
    c.assert_mesh_both();
    c
}

#[test]
fn host_gw_nodes_route_pods_on_both_families_without_encapsulation() {
    let mut c = cluster(
        "hg-mesh",
        HOST_GW,
        &[false, false, false],
        &["--ip-masq", "--iptables-resync=1", "--metrics-port=8471"],
    );
    for (i, node) in c.nodes.iter().enumerate() {
        assert_eq!(vxlan_devices(node), "", "host-gw has no VXLAN device");
        let env = std::fs::read_to_string(node.subnet_env()).unwrap();
        assert!(env.contains("FLANNEL_MTU=1500\n"), "no overhead: {env}");
        // flanneld's host-gw lease: type and addresses, no backend data.
        let lease = c.lease_value(i).expect("lease JSON");
        assert_eq!(
            lease,
            serde_json::json!({
                "PublicIP": node.ip,
                "PublicIPv6": format!("2001:2::{}", i + 1),
                "BackendType": "host-gw",
            })
        );
    }
    // Full-size packets with DF cross on both families: nothing is added to them.
    let (p0, p1, p2) = (c.pod(0), c.pod(1), c.pod(2));
    assert!(p0
        .ns
        .try_sh(&format!("ping -M do -s 1472 -c 2 -W 2 -q {}", p1.ip)));
    assert!(p0
        .ns
        .try_sh(&format!("ping -6 -M do -s 1452 -c 2 -W 2 -q {}", ip6(p1))));
    // TCP, and no NAT between pods: each side sees the other's own address.
    assert_eq!(tcp_from(&p0.ns, &p1.ns, &p1.ip), p0.ip);
    assert_eq!(tcp_from(&p0.ns, &p1.ns, ip6(p1)), ip6(p0));
    assert_eq!(seen_source(&p2.ns, &p0.ip, &p0.ns, "eth0"), p2.ip);
    assert_eq!(seen_source(&p2.ns, ip6(p0), &p0.ns, "eth0"), ip6(p2));

    // A deleted route is back in milliseconds (the monitor sees the deletion), on both
    // families.
    let all = [0, 1, 2];
    for peer in [c.nodes[1].lease(), c.nodes[1].lease6()] {
        c.nodes[0].ns.sh(&format!("ip route del {peer} dev eth0"));
        wait_until(2, "the host-gw route put back", || {
            routes(&c.nodes[0]) == expected(&c, 0, &all)
        });
    }
    wait_until(5, "the repairs counted", || {
        let m = c.nodes[0].ns.sh("curl -s http://127.0.0.1:8471/metrics");
        metric_in(&m, "twill_repair_passes_total", None) >= 2.0
    });

    // A peer whose PublicIP is not on our link is refused by name, never routed. On a
    // subnet no node holds.
    let far = c.unleased_subnet();
    c.etcd.ctl(&[
        "put",
        &format!("{PREFIX}/subnets/{far}-24"),
        r#"{"PublicIP":"198.19.5.4","PublicIPv6":null,"BackendType":"host-gw"}"#,
    ]);
    wait_until(10, "the off-link peer refused", || {
        let m = c.nodes[0].ns.sh("curl -s http://127.0.0.1:8471/metrics");
        metric_in(
            &m,
            "twill_leases_rejected_total",
            Some(("reason", "not-on-link")),
        ) == 1.0
    });
    let log = c.nodes[0].log();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&far) && l.contains("not-on-link"))
        .collect();
    assert_eq!(said.len(), 1, "logged once: {said:?}");
    assert!(
        said[0].contains("198.19.5.4 is not on this node's link"),
        "{}",
        said[0]
    );
    assert_eq!(routes(&c.nodes[0]), expected(&c, 0, &all));
    let conf_dir = format!("--cni-conf-dir={}", c.nodes[0].dir.join("net.d").display());
    let (_, out) = c.nodes[0].subcommand(&["doctor", "--output=json", &conf_dir]);
    let leases = doctor_check(&out, "leases");
    assert_eq!(leases["status"], "warn", "{leases}");
    assert!(
        leases["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("{far}-24 (not-on-link: PublicIP 198.19.5.4")),
        "{leases}"
    );
    let peers = doctor_check(&out, "peers");
    assert_eq!(peers["status"], "pass", "{peers}");
    assert_eq!(
        peers["detail"],
        "2 peers in etcd (host-gw routes); 0 entries missing, 0 extra"
    );
    assert_eq!(doctor_check(&out, "backend")["status"], "pass");
    assert_eq!(doctor_check(&out, "mtu")["status"], "pass");
    c.etcd.ctl(&["del", &format!("{PREFIX}/subnets/{far}-24")]);

    // A restart keeps every route in place: pods on the other nodes lose nothing.
    let to = c.pod(0).ip.clone();
    let from = c.pod(1).ns.name.clone();
    let (lost, summary) = loss_during(&from, &to, 4, || {
        c.nodes[0].stop(libc::SIGTERM);
        assert_eq!(routes(&c.nodes[0]), expected(&c, 0, &all), "kept on stop");
        c.nodes[0].start();
        c.nodes[0].wait_ready();
    });
    assert_eq!(lost, 0.0, "{summary}");
    wait_until(10, "routes after the restart", || {
        routes(&c.nodes[0]) == expected(&c, 0, &all)
    });

    // A node that leaves takes its routes with it.
    let gone = c.nodes[2].lease();
    c.nodes[2].stop(libc::SIGKILL);
    c.pods[2] = None;
    c.etcd.ctl(&[
        "del",
        &format!("{PREFIX}/subnets/{}", gone.replace('/', "-")),
        "--prefix",
    ]);
    for i in 0..2 {
        wait_until(10, "the departed node's routes removed", || {
            routes(&c.nodes[i]) == expected(&c, i, &[0, 1])
        });
    }

    // cleanup lists the routes and removes them.
    c.nodes[1].stop(libc::SIGTERM);
    let state = format!(
        "--cni-data-dir={}",
        c.nodes[1].dir.join("cni-state").display()
    );
    let (ok, out) = c.nodes[1].subcommand(&["cleanup", "--keep-cni-files", &state, "--yes"]);
    assert!(ok, "{out}");
    for net in ["10.244.0.0/16", "fd00:10:244::/56"] {
        assert!(
            out.contains(&format!(
                "removed: 1 direct routes to {net} subnets on eth0"
            )),
            "{out}"
        );
    }
    assert!(routes(&c.nodes[1]).is_empty(), "{:?}", routes(&c.nodes[1]));
}

#[test]
fn host_gw_beside_the_real_flanneld_and_a_node_programmed_by_hand() {
    twill_e2e::flanneld_bin();
    let mut c = cluster("hg-fl", HOST_GW, &[false, false, true], &["--ip-masq"]);
    // flanneld's lease is the shape twilld writes.
    let lease = c.lease_value(2).expect("flanneld's lease");
    assert_eq!(lease["BackendType"], "host-gw", "{lease}");
    assert!(lease.get("BackendData").is_none(), "{lease}");
    assert_eq!(lease["PublicIPv6"], "2001:2::3", "{lease}");
    for (a, b) in [(0, 2), (2, 1)] {
        let (pa, pb) = (c.pod(a), c.pod(b));
        assert_eq!(tcp_from(&pa.ns, &pb.ns, &pb.ip), pa.ip);
        assert_eq!(seen_source(&pa.ns, ip6(pb), &pb.ns, "eth0"), ip6(pa));
    }

    // A fourth node with no daemon, programmed as flanneld's host-gw programs one: its
    // lease written by hand, a route per peer via the peer's address.
    let net = c.unleased_subnet();
    let subnet = format!("{net}/24");
    let addr = format!("{}.1", net.strip_suffix(".0").unwrap());
    let i = c.add_node_stopped(&[]);
    let node = &c.nodes[i];
    node.ns.sh(&format!(
        "ip link add cni0 type bridge && ip addr add {addr}/24 dev cni0 && ip link set cni0 up"
    ));
    for k in 0..3 {
        let peer = &c.nodes[k];
        node.ns.sh(&format!(
            "ip route add {} via {} dev eth0",
            peer.lease(),
            peer.ip
        ));
    }
    c.etcd.ctl(&[
        "put",
        &format!("{PREFIX}/subnets/{net}-24"),
        &format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"host-gw"}}"#,
            node.ip
        ),
    ]);
    for k in 0..3 {
        wait_until(20, "every node routes the hand-made one", || {
            c.nodes[k]
                .ns
                .sh("ip -4 route show dev eth0")
                .contains(&format!("{subnet} via {}", c.nodes[i].ip))
        });
        let pod = &c.pod(k).ip;
        assert!(
            c.nodes[i]
                .ns
                .try_sh(&format!("ping -c 2 -W 2 -q -I {addr} {pod}")),
            "the hand-made node cannot reach pod {}",
            k + 1
        );
    }
}

#[test]
fn switching_between_vxlan_and_host_gw_leaves_nothing_behind() {
    let mut c = cluster(
        "hg-sw",
        VXLAN,
        &[false, false],
        &["--ip-masq", "--vxlan-notrack"],
    );
    let both = [0, 1];
    let notrack = |node: &Node| node.ns.sh("iptables-save -t raw | grep -c NOTRACK || true");
    assert_ne!(
        notrack(&c.nodes[0]).trim(),
        "0",
        "vxlan keeps its packets untracked"
    );

    // SIGHUP: vxlan -> host-gw.
    c.put_config(HOST_GW);
    for i in both {
        c.nodes[i].signal(libc::SIGHUP);
    }
    for i in both {
        wait_until(20, "host-gw after SIGHUP", || {
            vxlan_devices(&c.nodes[i]).is_empty()
                && routes(&c.nodes[i]) == expected(&c, i, &both)
                && c.lease_value(i)
                    .is_some_and(|l| l["BackendType"] == "host-gw")
        });
        assert_eq!(
            notrack(&c.nodes[i]).trim(),
            "0",
            "no VXLAN flows to untrack"
        );
        let env = std::fs::read_to_string(c.nodes[i].subnet_env()).unwrap();
        assert!(env.contains("FLANNEL_MTU=1500\n"), "{env}");
    }
    c.assert_mesh_both();

    // SIGHUP: host-gw -> vxlan. The routes on eth0 go; both devices come back.
    c.put_config(VXLAN);
    for i in both {
        c.nodes[i].signal(libc::SIGHUP);
    }
    let on_vxlan = |c: &Cluster, i: usize| {
        routes(&c.nodes[i]).is_empty()
            && c.nodes[i].vxlan_subnets() == [c.nodes[1 - i].lease()]
            && vxlan_devices(&c.nodes[i]).contains("flannel-v6.1")
    };
    for i in both {
        wait_until(20, "vxlan after SIGHUP", || on_vxlan(&c, i));
    }
    c.assert_mesh_both();

    // Restart: vxlan -> host-gw (the devices an earlier run left go at start) and back
    // (the host-gw routes are swept).
    for (config, host_gw) in [(HOST_GW, true), (VXLAN, false)] {
        c.put_config(config);
        for i in both {
            c.nodes[i].stop(libc::SIGTERM);
            c.nodes[i].start();
        }
        for i in both {
            c.nodes[i].wait_ready();
            wait_until(20, "the other backend after a restart", || {
                if host_gw {
                    vxlan_devices(&c.nodes[i]).is_empty()
                        && routes(&c.nodes[i]) == expected(&c, i, &both)
                } else {
                    on_vxlan(&c, i)
                }
            });
        }
        c.assert_mesh_both();
    }
}
