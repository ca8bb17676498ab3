//! IPv6-only end to end (`EnableIPv4: false`): an underlay with no IPv4 address anywhere
//! (the nodes and etcd on 2001:2::/64 alone), pods with an IPv6 address only, carried by
//! `flannel-v6.1` alone, leases and subnet.env as flanneld writes them for such a network,
//! and the real flanneld as one of the nodes.

use twill_e2e::{doctor_check, ip6, seen_source, tcp_from, Cluster, Node, ETCD_IP6, PREFIX};
use twill_testutil::{require_root, wait_until};

const V6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;

/// The IPv6 peer routes on `flannel-v6.1`.
fn routes6(node: &Node) -> Vec<String> {
    node.ns
        .sh("ip -6 route show dev flannel-v6.1 2>/dev/null || true")
        .lines()
        .filter(|l| l.starts_with("fd00:10:244:") && l.contains(" via "))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

/// The etcd lease (key, value) whose value names `public_ipv6`.
fn lease_of(c: &Cluster, public_ipv6: &str) -> (String, serde_json::Value) {
    let out = c
        .etcd
        .ctl(&["get", "--prefix", &format!("{PREFIX}/subnets/")]);
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .filter_map(|kv| {
            let v: serde_json::Value = serde_json::from_str(kv.get(1)?.trim()).ok()?;
            (v["PublicIPv6"] == public_ipv6).then(|| (kv[0].to_string(), v))
        })
        .next()
        .unwrap_or_else(|| panic!("no lease for {public_ipv6}:\n{out}"))
}

fn cluster(tag: &str, flanneld: &[bool]) -> Cluster {
    require_root();
    let mut c = Cluster::new_v6_only(tag);
    c.put_config(V6_ONLY);
    c.add_nodes(flanneld, &["--ip-masq"]);
    let n = flanneld.len();
    for i in 0..n {
        c.add_pod(i);
    }
    let converged = (0..300).any(|_| {
        let done = c.nodes.iter().all(|node| routes6(node).len() == n - 1);
        if !done {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        done
    });
    assert!(
        converged,
        "not every node routes to every other over IPv6:\n{}",
        c.nodes
            .iter()
            .map(|node| format!(
                "{}\n{}\n{}",
                node.ns.sh("ip -6 route; ip addr"),
                c.lease_values(),
                node.log()
            ))
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
    c
}

/// Every pod pings every other pod's (only) address.
fn assert_mesh6(c: &Cluster) {
    let n = c.pods.len();
    for a in 0..n {
        for b in (0..n).filter(|b| *b != a) {
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

#[test]
fn ipv6_only_pods_reach_each_other_with_no_ipv4_anywhere() {
    let mut c = cluster("v6o-mesh", &[false, false, false]);
    assert_mesh6(&c);

    for (i, node) in c.nodes.iter().enumerate() {
        let n = i + 1;
        // Nothing of IPv4: no address on the underlay, no IPv4 device, pods without one.
        assert!(
            !node.ns.sh("ip -4 addr show dev eth0").contains("inet "),
            "the underlay has no IPv4"
        );
        assert!(
            !node.ns.try_sh("ip link show flannel.1 2>/dev/null"),
            "no IPv4 VXLAN device on an IPv6-only network"
        );
        assert!(!c.pod(i).ns.sh("ip -4 addr show dev eth0").contains("inet "));
        let link = node.ns.sh("ip -d link show flannel-v6.1");
        assert!(
            link.contains(&format!("vxlan id 1 local 2001:2::{n} dev eth0"))
                && link.contains("mtu 1430"),
            "{link}"
        );
        // subnet.env as flanneld writes it without IPv4: the IPv6 lines alone.
        let env = std::fs::read_to_string(node.subnet_env()).unwrap();
        assert!(
            !env.contains("FLANNEL_NETWORK=") && !env.contains("FLANNEL_SUBNET="),
            "{env}"
        );
        assert!(
            env.contains("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n")
                && env.contains("FLANNEL_MTU=1430\n")
                && env.contains("FLANNEL_IPMASQ=true\n"),
            "{env}"
        );
        // The lease as flanneld writes it: key 0.0.0.0-0&<v6>, PublicIP 0.0.0.0, and the
        // IPv6 device's MAC in BackendV6Data (no BackendData).
        let (key, lease) = lease_of(&c, &format!("2001:2::{n}"));
        let subnet = node.lease6().replace('/', "-");
        assert_eq!(key, format!("{PREFIX}/subnets/0.0.0.0-0&{subnet}"));
        assert_eq!(lease["PublicIP"], "0.0.0.0", "{lease}");
        assert!(lease.get("BackendData").is_none(), "{lease}");
        let mac6 = node.ns.sh("cat /sys/class/net/flannel-v6.1/address");
        assert_eq!(lease["BackendV6Data"]["VtepMAC"], mac6.trim(), "{lease}");
    }

    // The largest packet of the pod MTU crosses with DF set (1430 = 1500 - 70).
    let (p0, p1) = (c.pod(0), c.pod(1));
    assert!(
        p0.ns
            .try_sh(&format!("ping -6 -M do -s 1382 -c 2 -W 2 -q {}", ip6(p1))),
        "a 1430-byte IPv6 packet"
    );
    // TCP, and the receiver sees the sender's own address; leaving the pod network the
    // source is the node's.
    assert_eq!(tcp_from(&p0.ns, &p1.ns, ip6(p1)), ip6(p0));
    let p2 = c.pod(2);
    assert_eq!(seen_source(&p2.ns, ip6(p0), &p0.ns, "eth0"), ip6(p2));
    assert_eq!(
        seen_source(&p0.ns, ETCD_IP6, c.etcd_host(), "eth0"),
        "2001:2::1"
    );

    // doctor reads the IPv6-only node: its underlay, its lease, its IPv6 peers.
    let (_, out) = c.nodes[0].subcommand(&["doctor", "--output=json"]);
    for check in ["underlay", "subnet.env"] {
        let v = doctor_check(&out, check);
        assert_eq!(v["status"], "pass", "{v}");
    }
    let v = doctor_check(&out, "peers (IPv6)");
    assert_eq!(v["status"], "pass", "{v}");
    assert_eq!(
        v["detail"], "2 peers in etcd; 0 entries missing, 0 extra",
        "{v}"
    );

    // `twilld status` names the node by its IPv6 address, not PublicIP's 0.0.0.0.
    let (ok, status) = c.nodes[0].subcommand(&["status", "--output=json"]);
    let v: serde_json::Value =
        serde_json::from_str(&status).unwrap_or_else(|e| panic!("{e}: {status}"));
    assert!(ok && v["node"]["public_ip"] == "2001:2::1", "{status}");

    // A deleted peer route is put back; a restart keeps the lease and the MAC.
    let peer = c.nodes[1].lease6();
    c.nodes[0]
        .ns
        .sh(&format!("ip -6 route del {peer} dev flannel-v6.1"));
    wait_until(5, "the deleted IPv6 route back", || {
        routes6(&c.nodes[0]).contains(&peer)
    });
    let (lease_before, mac_before) = (
        c.nodes[0].lease6(),
        c.nodes[0].ns.sh("cat /sys/class/net/flannel-v6.1/address"),
    );
    c.nodes[0].stop(libc::SIGTERM);
    c.nodes[0].start();
    wait_until(20, "node 1 back with its peers", || {
        c.nodes[0].log().matches("wrote subnet.env").count() >= 2 && routes6(&c.nodes[0]).len() == 2
    });
    assert_eq!(c.nodes[0].lease6(), lease_before);
    assert_eq!(
        c.nodes[0].ns.sh("cat /sys/class/net/flannel-v6.1/address"),
        mac_before
    );
    assert_mesh6(&c);
}

/// Kubernetes mode on an IPv6-only cluster (against the fake API): nodes with an IPv6
/// podCIDR alone publish the IPv6 annotations and no IPv4 ones (flanneld reads public-ip
/// only with IPv4 on), a peer without public-ip is read as IPv6-only, node-public-ipv6
/// pins the published address (flannel #2045), and pods reach each other.
#[test]
fn ipv6_only_in_kubernetes_mode() {
    require_root();
    let mut c = Cluster::new_v6_only("v6o-kube");
    let fake = c.fake_kube();
    let conf = c.dir.path().join("net-conf.json");
    std::fs::write(&conf, V6_ONLY).unwrap();
    let args = [
        "--kube-subnet-mgr".to_string(),
        format!("--kube-api-url={}", fake.url()),
        format!("--net-config-path={}", conf.display()),
        "--ip-masq".into(),
    ];
    for n in 1..=2 {
        let name = format!("kn{n}");
        fake.add_node(&name, Some(&format!("fd00:10:244:{n}::/64")));
        if n == 2 {
            // An operator's pin: a second address on node 2's underlay.
            fake.update_node(&name, |node| {
                node["metadata"]["annotations"]["flannel.alpha.coreos.com/node-public-ipv6"] =
                    "2001:2::22".into();
            });
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let i = c.add_node_stopped(&a);
        if n == 2 {
            c.nodes[i].ns.sh("ip addr add 2001:2::22/64 dev eth0 nodad");
        }
        c.nodes[i].env.push(("NODE_NAME".into(), name));
        c.nodes[i].start();
    }
    for i in 0..2 {
        c.add_pod(i);
    }
    for i in 0..2 {
        let n = i + 1;
        wait_until(20, "the peer's IPv6 route", || {
            routes6(&c.nodes[i]).contains(&format!("fd00:10:244:{}::/64", 3 - n))
        });
        let node = fake.node(&format!("kn{n}")).unwrap();
        let ann = &node["metadata"]["annotations"];
        let key = |k: &str| format!("flannel.alpha.coreos.com/{k}");
        let public6 = if n == 2 { "2001:2::22" } else { "2001:2::1" };
        assert_eq!(ann[key("public-ipv6")], public6, "{ann}");
        assert!(
            ann.get(key("public-ip")).is_none(),
            "no IPv4 annotations: {ann}"
        );
        assert!(ann.get(key("backend-data")).is_none(), "{ann}");
        let v6: serde_json::Value =
            serde_json::from_str(ann[key("backend-v6-data")].as_str().unwrap()).unwrap();
        let mac6 = c.nodes[i].ns.sh("cat /sys/class/net/flannel-v6.1/address");
        assert_eq!(v6["VtepMAC"], mac6.trim(), "{ann}");
    }
    // Node 1 sends node 2's VXLAN packets to the pinned address.
    let fdb = c.nodes[0].ns.sh("bridge fdb show dev flannel-v6.1");
    assert!(fdb.contains("dst 2001:2::22"), "{fdb}");
    assert_mesh6(&c);
}

/// The real flanneld (v0.28.9) on an IPv6-only etcd network beside two twilld nodes.
/// Its lease has the shape twilld writes (key `0.0.0.0-0&<v6>`, PublicIP 0.0.0.0), and
/// the twilld nodes route to it. flanneld itself programs no peer there: its etcd
/// registry marks every lease IPv4-enabled, and its event handler takes the IPv4 path
/// with no IPv4 device; it also finds its own lease by PublicIP, 0.0.0.0 on every node.
/// Checked here so README's note on it stays true for the pinned version.
#[test]
fn ipv6_only_beside_the_real_flanneld() {
    require_root();
    let mut c = Cluster::new_v6_only("v6o-fl");
    c.put_config(V6_ONLY);
    // flanneld first: on a network with leases it would take the first one as its own.
    c.add_nodes(&[true, false, false], &["--ip-masq"]);
    for i in 0..3 {
        c.add_pod(i);
    }
    wait_until(30, "each twilld node routes to both peers", || {
        c.nodes[1..].iter().all(|n| routes6(n).len() == 2)
    });
    let (key, lease) = lease_of(&c, "2001:2::1");
    let subnet = c.nodes[0].lease6().replace('/', "-");
    assert_eq!(key, format!("{PREFIX}/subnets/0.0.0.0-0&{subnet}"));
    assert_eq!(lease["PublicIP"], "0.0.0.0", "{lease}");
    assert!(lease.get("BackendData").is_none(), "{lease}");
    for twilld in 1..3 {
        let (k, _) = lease_of(&c, &format!("2001:2::{}", twilld + 1));
        assert!(k.contains("/0.0.0.0-0&fd00:10:244:"), "{k}");
        assert!(routes6(&c.nodes[twilld]).contains(&c.nodes[0].lease6()));
    }
    let (p1, p2) = (c.pod(1), c.pod(2));
    assert_eq!(tcp_from(&p1.ns, &p2.ns, ip6(p2)), ip6(p1));
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        routes6(&c.nodes[0]).is_empty(),
        "flanneld v0.28.9 now routes on an IPv6-only etcd network: update README's note\n{}",
        c.nodes[0].log()
    );
}

/// ICMPv6 neighbour advertisements a node's namespace has received.
fn advertisements_in(node: &Node) -> u64 {
    node.ns
        .sh("cat /proc/net/snmp6")
        .lines()
        .find_map(|l| l.strip_prefix("Icmp6InNeighborAdvertisements"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Icmp6InNeighborAdvertisements in /proc/net/snmp6")
}

/// A parent NIC made again comes with a new MAC: a peer holding the node's address as
/// reachable at the old one would send there for up to 45 s. twilld advertises the address
/// (unsolicited, Override) as it does by gratuitous ARP over IPv4.
#[test]
fn a_parent_made_again_is_announced_by_neighbour_advertisement() {
    let c = cluster("v6o-na", &[false, false]);
    assert_mesh6(&c);
    let addr = c.nodes[0].ip.clone();
    let mac_of_eth0 = || {
        c.nodes[0]
            .ns
            .sh("cat /sys/class/net/eth0/address")
            .trim()
            .to_string()
    };
    let old_mac = mac_of_eth0();
    c.nodes[1].ns.sh(&format!(
        "ip -6 neigh replace {addr} lladdr {old_mac} dev eth0 nud reachable"
    ));
    let before = advertisements_in(&c.nodes[1]);
    c.nodes[0].ns.sh("ip link del eth0");
    c.add_underlay6(0, "eth0", &addr);
    let new_mac = mac_of_eth0();
    assert_ne!(new_mac, old_mac, "a new veth, a new MAC");
    // Within 3 s: an advertisement the peer asked for comes no sooner than its entry's
    // 5 s DELAY after a solicitation of the node's (probes, traffic) made it STALE.
    wait_until(3, "an unsolicited advertisement reaches the peer", || {
        advertisements_in(&c.nodes[1]) > before
    });
    wait_until(5, "the peer holds the address at the new MAC", || {
        c.nodes[1]
            .ns
            .sh(&format!("ip -6 neigh show {addr} dev eth0"))
            .contains(&new_mac)
    });
    wait_until(5, "pods reach each other again", || {
        let (p0, p1) = (c.pod(0), c.pod(1));
        p0.ns.try_sh(&format!("ping -6 -c 1 -W 1 -q {}", ip6(p1)))
            && p1.ns.try_sh(&format!("ping -6 -c 1 -W 1 -q {}", ip6(p0)))
    });
}
