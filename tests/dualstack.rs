//! Dual stack end to end: an IPv4 and an IPv6 underlay on one switch (198.18.0.0/24 and
//! 2001:2::/64), pods with an address of each family, each family carried by its own VXLAN
//! device (`flannel.1` over IPv4, `flannel-v6.1` over IPv6), as flanneld builds it; the
//! real flanneld beside twilld on both families; repairs and restarts of the IPv6 half.

use twill_e2e::{doctor_check, ip6, seen_source, tcp_from, Cluster, ETCD_IP, ETCD_IP6};
use twill_testutil::{require_root, wait_until, Netns};

const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;

/// `n` nodes (twilld, or the real flanneld where `flanneld[i]`) with --ip-masq and a pod
/// each, every node routing to every other on both families.
fn cluster(tag: &str, flanneld: &[bool]) -> Cluster {
    require_root();
    let mut c = Cluster::new_dual(tag);
    c.put_config(DUAL);
    c.add_nodes(flanneld, &["--ip-masq"]);
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
                    .filter(|l| l.starts_with("fd00:10:244:") && l.contains(" via "))
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

#[test]
fn dual_stack_pods_reach_each_other_on_both_families_without_nat() {
    let mut c = cluster("ds-mesh", &[false, false, false]);
    c.assert_mesh_both();

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

    // doctor checks each family's entries: both pass; with the daemon stopped, an IPv6
    // route deleted by hand is named as missing.
    let doctor = |c: &Cluster| c.nodes[0].subcommand(&["doctor", "--output=json"]).1;
    let out = doctor(&c);
    for check in ["peers", "peers (IPv6)"] {
        let v = doctor_check(&out, check);
        assert_eq!(v["status"], "pass", "{v}");
        assert_eq!(
            v["detail"], "2 peers in etcd; 0 entries missing, 0 extra",
            "{v}"
        );
    }
    c.nodes[0].stop(libc::SIGTERM);
    let peer = c.nodes[1].lease6();
    c.nodes[0]
        .ns
        .sh(&format!("ip -6 route del {peer} dev flannel-v6.1"));
    let v = doctor_check(&doctor(&c), "peers (IPv6)");
    assert_eq!(v["status"], "fail", "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("1 entries missing"),
        "{v}"
    );
}

fn mac_of(ns: &Netns, dev: &str) -> String {
    ns.sh(&format!("cat /sys/class/net/{dev}/address"))
        .trim()
        .to_string()
}

#[test]
fn ipv6_entries_rules_and_device_are_repaired_and_restarts_keep_both_macs() {
    let mut c = cluster("ds-fix", &[false, false]);
    c.assert_mesh_both();
    let peer = c.nodes[1].lease6();
    let vtep = peer.trim_end_matches("/64").to_string();
    let peer_mac = mac_of(&c.nodes[1].ns, "flannel-v6.1");
    let routes = |c: &Cluster| c.nodes[0].ns.sh("ip -6 route show dev flannel-v6.1");
    let t = std::time::Instant::now();
    c.nodes[0]
        .ns
        .sh(&format!("ip -6 route del {peer} dev flannel-v6.1"));
    wait_until(5, "the IPv6 route put back", || routes(&c).contains(&peer));
    c.nodes[0]
        .ns
        .sh(&format!("ip -6 neigh del {vtep} dev flannel-v6.1"));
    wait_until(5, "the IPv6 neighbour put back", || {
        c.nodes[0]
            .ns
            .sh("ip -6 neigh show dev flannel-v6.1")
            .contains(&format!("{vtep} lladdr {peer_mac} PERMANENT"))
    });
    c.nodes[0].ns.sh(&format!(
        "bridge fdb del {peer_mac} dev flannel-v6.1 dst 2001:2::2 self"
    ));
    wait_until(5, "the IPv6 FDB entry put back", || {
        c.nodes[0]
            .ns
            .sh("bridge fdb show dev flannel-v6.1")
            .contains(&format!("{peer_mac} dst 2001:2::2 self permanent"))
    });
    c.nodes[0].ns.sh("ip6tables -t nat -F FLANNEL-POSTRTG");
    wait_until(10, "the IPv6 NAT chain put back", || {
        c.nodes[0]
            .ns
            .sh("ip6tables -t nat -S FLANNEL-POSTRTG")
            .contains("MASQUERADE")
    });
    let mine = mac_of(&c.nodes[0].ns, "flannel-v6.1");
    c.nodes[0].ns.sh("ip link del flannel-v6.1");
    wait_until(
        10,
        "flannel-v6.1 recreated, with its MAC and its peers",
        || {
            c.nodes[0].ns.try_sh("test -e /sys/class/net/flannel-v6.1")
                && mac_of(&c.nodes[0].ns, "flannel-v6.1") == mine
                && routes(&c).contains(&peer)
        },
    );
    eprintln!(
        "four IPv6 repairs and a recreated device in {:?}",
        t.elapsed()
    );
    assert!(
        c.nodes[0].log().contains("flannel-v6.1"),
        "the repair is logged"
    );
    c.assert_mesh_both();

    // A reboot: the daemon gone, both devices gone with it. Both MACs come back from the
    // lease (BackendData, BackendV6Data), so no peer needs an FDB update.
    let mine4 = mac_of(&c.nodes[0].ns, "flannel.1");
    c.nodes[0].stop(libc::SIGKILL);
    c.nodes[0]
        .ns
        .sh("ip link del flannel.1 && ip link del flannel-v6.1");
    c.nodes[0].start();
    wait_until(20, "both devices back with their MACs and peers", || {
        c.nodes[0]
            .ns
            .try_sh("test -e /sys/class/net/flannel-v6.1 && test -e /sys/class/net/flannel.1")
            && mac_of(&c.nodes[0].ns, "flannel.1") == mine4
            && mac_of(&c.nodes[0].ns, "flannel-v6.1") == mine
            && routes(&c).contains(&peer)
    });
    c.assert_mesh_both();
}

/// The real flanneld v0.28.9 on one node of three, dual stack: each daemon reads the
/// other's dual-stack leases and programs both families; pods reach each other without
/// NAT on both.
#[test]
fn dual_stack_beside_the_real_flanneld() {
    twill_e2e::flanneld_bin();
    let c = cluster("ds-fl", &[false, false, true]);
    c.assert_mesh_both();
    let lease = c.lease_value(2).expect("flanneld's lease");
    let mac6 = mac_of(&c.nodes[2].ns, "flannel-v6.1");
    assert_eq!(lease["BackendV6Data"]["VtepMAC"], mac6.as_str(), "{lease}");
    assert_eq!(lease["PublicIPv6"], "2001:2::3", "{lease}");
    let fdb = c.nodes[0].ns.sh("bridge fdb show dev flannel-v6.1");
    assert!(
        fdb.contains(&format!("{mac6} dst 2001:2::3 self permanent")),
        "{fdb}"
    );
    // flanneld programmed ours the same way.
    let ours = mac_of(&c.nodes[0].ns, "flannel-v6.1");
    let fdb = c.nodes[2].ns.sh("bridge fdb show dev flannel-v6.1");
    assert!(fdb.contains(&format!("{ours} dst 2001:2::1")), "{fdb}");
    for (a, b) in [(0, 2), (2, 1)] {
        let (pa, pb) = (c.pod(a), c.pod(b));
        assert_eq!(seen_source(&pa.ns, ip6(pb), &pb.ns, "eth0"), ip6(pa));
        assert_eq!(tcp_from(&pa.ns, &pb.ns, ip6(pb)), ip6(pa));
    }
}

/// Kubernetes mode (the fake API): both podCIDRs are the lease, the v6 half published in
/// `backend-v6-data` and `public-ipv6`, and pods reach each other on both families.
#[test]
fn dual_stack_in_kubernetes_mode() {
    require_root();
    let mut c = Cluster::new_dual("ds-kube");
    let fake = c.fake_kube();
    let conf = c.dir.path().join("net-conf.json");
    std::fs::write(&conf, DUAL).unwrap();
    let port = fake.url().rsplit(':').next().unwrap().to_string();
    let args = [
        "--kube-subnet-mgr".to_string(),
        format!("--kube-api-url=http://{ETCD_IP}:{port}"),
        format!("--net-config-path={}", conf.display()),
        "--ip-masq".into(),
    ];
    for n in 1..=2 {
        let name = format!("kn{n}");
        fake.add_node(&name, Some(&format!("10.244.{n}.0/24")));
        fake.update_node(&name, |node| {
            node["spec"]["podCIDRs"] =
                serde_json::json!([format!("10.244.{n}.0/24"), format!("fd00:10:244:{n}::/64")]);
        });
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let i = c.add_node_stopped(&a);
        c.nodes[i].env.push(("NODE_NAME".into(), name));
        c.nodes[i].start();
    }
    for i in 0..2 {
        c.add_pod(i);
    }
    for i in 0..2 {
        let node = &c.nodes[i];
        wait_until(20, "routes on both families", || {
            node.vxlan_subnets().len() == 1
                && node
                    .ns
                    .sh("ip -6 route show dev flannel-v6.1")
                    .contains(&format!("fd00:10:244:{}::/64", 2 - i))
        });
        let ann = fake.node(&format!("kn{}", i + 1)).unwrap()["metadata"]["annotations"].clone();
        let v6: serde_json::Value = serde_json::from_str(
            ann["flannel.alpha.coreos.com/backend-v6-data"]
                .as_str()
                .expect("backend-v6-data"),
        )
        .unwrap();
        assert_eq!(v6["VtepMAC"], mac_of(&node.ns, "flannel-v6.1"), "{ann}");
        assert_eq!(
            ann["flannel.alpha.coreos.com/public-ipv6"],
            format!("2001:2::{}", i + 1)
        );
    }
    c.assert_mesh_both();
}

/// SIGHUP turns IPv6 on (the IPv6 device, a dual-stack lease keeping the IPv4 subnet,
/// subnet.env's IPv6 lines, pods created since get both families) and off again (the
/// device, the IPv6 rules and the lease's IPv6 half go; IPv4 never stops).
#[test]
fn sighup_turns_ipv6_on_and_off() {
    require_root();
    let mut c = Cluster::new_dual("ds-hup");
    let path = c.dir.path().join("net-conf.json");
    let v4only = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    std::fs::write(&path, v4only).unwrap();
    let arg = format!("--net-config-path={}", path.display());
    for _ in 0..2 {
        c.add_node(&[&arg, "--ip-masq"]);
    }
    c.add_pod(0);
    c.add_pod(1);
    c.assert_full_mesh();
    let leases: Vec<String> = c.nodes.iter().map(|n| n.lease()).collect();
    let has6 = |c: &Cluster, i: usize| c.nodes[i].ns.try_sh("test -e /sys/class/net/flannel-v6.1");
    assert!(!has6(&c, 0));

    std::fs::write(&path, DUAL).unwrap();
    for n in &c.nodes {
        n.signal(libc::SIGHUP);
    }
    wait_until(20, "both nodes on dual stack", || {
        (0..2).all(|i| {
            let env = std::fs::read_to_string(c.nodes[i].subnet_env()).unwrap_or_default();
            has6(&c, i)
                && env.contains("FLANNEL_IPV6_SUBNET=")
                && c.nodes[i]
                    .ns
                    .sh("ip -6 route show dev flannel-v6.1")
                    .contains("fd00:10:244:")
        })
    });
    for (i, l) in leases.iter().enumerate() {
        assert_eq!(&c.nodes[i].lease(), l, "the IPv4 subnet is kept");
        let v = c.lease_value(i).expect("lease");
        assert!(v["BackendV6Data"]["VtepMAC"].is_string(), "{v}");
    }
    c.assert_full_mesh();
    // Pods made from now on get both families.
    for i in 0..2 {
        c.remove_pod(i);
        c.add_pod(i);
    }
    c.assert_mesh_both();

    std::fs::write(&path, v4only).unwrap();
    for n in &c.nodes {
        n.signal(libc::SIGHUP);
    }
    wait_until(20, "both nodes back on IPv4 only", || {
        (0..2).all(|i| {
            let env = std::fs::read_to_string(c.nodes[i].subnet_env()).unwrap_or_default();
            !has6(&c, i)
                && !env.contains("IPV6")
                && !c.nodes[i]
                    .ns
                    .sh("ip6tables -t nat -S")
                    .contains("FLANNEL-POSTRTG")
                && c.lease_value(i)
                    .is_some_and(|v| v.get("BackendV6Data").is_none())
        })
    });
    for (i, l) in leases.iter().enumerate() {
        assert_eq!(&c.nodes[i].lease(), l, "the IPv4 subnet is kept");
    }
    assert!(
        c.leases().iter().all(|k| !k.contains('&')),
        "{:?}",
        c.leases()
    );
    c.assert_full_mesh();
}

/// DirectRouting on both families: peers on the node's own IPv6 link get
/// `<v6 subnet> via <PublicIPv6> dev eth0` and nothing goes through flannel-v6.1.
#[test]
fn direct_routing_on_both_families() {
    require_root();
    let mut c = Cluster::new_dual("ds-dr");
    c.put_config(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
    );
    for _ in 0..2 {
        c.add_node(&["--ip-masq"]);
    }
    for i in 0..2 {
        c.add_pod(i);
    }
    let peer6 = c.nodes[1].lease6();
    let want = format!("{peer6} via 2001:2::2");
    wait_until(20, "a direct IPv6 route to the peer", || {
        c.nodes[0]
            .ns
            .sh("ip -6 route show dev eth0")
            .contains(&want)
    });
    assert!(
        !c.nodes[0]
            .ns
            .sh("ip -6 route show dev flannel-v6.1")
            .contains(&peer6),
        "the peer is not on VXLAN as well"
    );
    let tx = |c: &Cluster| {
        c.nodes[0]
            .ns
            .sh("cat /sys/class/net/flannel-v6.1/statistics/tx_packets")
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let before = tx(&c);
    c.assert_mesh_both();
    assert_eq!(tx(&c), before, "IPv6 pod traffic went around the tunnel");
    // Deleted: put back like the IPv4 one.
    c.nodes[0]
        .ns
        .sh(&format!("ip -6 route del {peer6} dev eth0"));
    wait_until(10, "the direct IPv6 route put back", || {
        c.nodes[0]
            .ns
            .sh("ip -6 route show dev eth0")
            .contains(&want)
    });
}

#[test]
fn vxlan_notrack_and_the_blackhole_route_cover_ipv6() {
    require_root();
    let mut c = Cluster::new_dual("ds-nt");
    c.put_config(DUAL);
    c.add_nodes(
        &[false, false],
        &["--ip-masq", "--vxlan-notrack", "--ip-blackhole-route"],
    );
    for i in 0..2 {
        c.add_pod(i);
    }
    wait_until(20, "routes on both families", || {
        c.nodes[0]
            .ns
            .sh("ip -6 route show dev flannel-v6.1")
            .contains("fd00:10:244:")
    });
    c.assert_mesh_both();
    let raw6 = c.nodes[0].ns.sh("ip6tables -t raw -S");
    for rule in [
        r#"-A TWILL-NOTRACK-PRE -d 2001:2::1/128 -p udp -m udp --dport 8472 -m comment --comment "twilld vxlan notrack" -j NOTRACK"#,
        r#"-A TWILL-NOTRACK-OUT -s 2001:2::1/128 -p udp -m udp --dport 8472 -m comment --comment "twilld vxlan notrack" -j NOTRACK"#,
    ] {
        assert!(raw6.contains(rule), "{rule} in\n{raw6}");
    }
    let raw4 = c.nodes[0].ns.sh("iptables -t raw -S");
    assert!(raw4.contains("-d 198.18.0.1/32 -p udp"), "{raw4}");
    // The untracked VXLAN packets still count: pings cross and are counted by the rule.
    let counted = |ns: &Netns| {
        ns.sh("ip6tables -t raw -L TWILL-NOTRACK-PRE -v -n -x")
            .lines()
            .filter(|l| !l.starts_with("Chain"))
            .find(|l| l.contains("NOTRACK"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = counted(&c.nodes[0].ns);
    c.assert_mesh_both();
    assert!(
        counted(&c.nodes[0].ns) > before,
        "IPv6 VXLAN packets untracked"
    );
    // --ip-blackhole-route: a blackhole for each family's subnet, behind cni0's route.
    let own6 = c.nodes[0].lease6();
    let bh6 = c.nodes[0].ns.sh("ip -6 route show type blackhole");
    assert!(
        bh6.contains(&format!(
            "blackhole {own6} dev lo proto static metric 4294967295"
        )),
        "{bh6}"
    );
    let bh4 = c.nodes[0].ns.sh("ip -4 route show type blackhole");
    assert!(bh4.contains(&c.nodes[0].lease()), "{bh4}");
    c.assert_mesh_both();
    let (_, out) = c.nodes[0].subcommand(&[
        "doctor",
        "--output=json",
        "--vxlan-notrack",
        "--ip-blackhole-route",
    ]);
    let rules = doctor_check(&out, "rules");
    assert_eq!(rules["status"], "pass", "{rules}");
    for check in ["blackhole route", "blackhole route (IPv6)"] {
        let v = doctor_check(&out, check);
        assert_eq!(v["status"], "pass", "{v}");
    }
    // Deleted, it comes back.
    c.nodes[0].ns.sh(&format!(
        "ip -6 route del blackhole {own6} metric 4294967295"
    ));
    wait_until(5, "the IPv6 blackhole back", || {
        c.nodes[0]
            .ns
            .sh("ip -6 route show type blackhole")
            .contains(&own6)
    });
}
