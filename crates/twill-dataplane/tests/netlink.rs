//! The netlink layer against the real kernel, in a throw-away namespace per test: device
//! create/adopt/replace, peer entries added, replaced and deleted, checked with netlink
//! reads and with iproute2's view.

use std::collections::BTreeMap;

use ipnetwork::{IpNetwork, Ipv4Network};
use twill_dataplane::{
    diff, nexthop_id, Actual, Family, Mac, Netlink, PeerEntry, RouteForm, VxlanSpec,
};

const PLAIN: RouteForm = RouteForm::Plain;
use twill_testutil::Netns;

/// A namespace with an underlay veth `eth0` at 198.18.0.1 (its peer is left in the same
/// namespace, down: nothing leaves).
fn ns(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.sh("ip link add eth0 type veth peer name eth0-peer && ip addr add 198.18.0.1/24 dev eth0 && ip link set eth0 up");
    ns
}

fn spec(ns: &Netns) -> VxlanSpec {
    let index: u32 = ns
        .sh("cat /sys/class/net/eth0/ifindex")
        .trim()
        .parse()
        .unwrap();
    VxlanSpec {
        tx_checksum: None,
        name: "flannel.1".into(),
        vni: 1,
        local: "198.18.0.1".parse().unwrap(),
        dev_index: index,
        port: 8472,
        gbp: false,
        learning: false,
        mtu: 1450,
        mac: None,
    }
}

/// The device, with its lease's address as twilld gives it (an onlink nexthop's gateway is
/// checked against the local table, which an address-less namespace lacks).
async fn addressed_device(nl: &Netlink, s: &VxlanSpec) -> twill_dataplane::DeviceState {
    let dev = nl.ensure_vxlan(s).await.unwrap();
    nl.ensure_address(
        dev.index,
        "10.244.9.0".parse().unwrap(),
        "10.244.0.0/16".parse().unwrap(),
    )
    .await
    .unwrap();
    dev
}

fn peers(n: u8) -> BTreeMap<IpNetwork, PeerEntry> {
    (1..=n)
        .map(|i| {
            let subnet: IpNetwork = format!("10.244.{i}.0/24").parse().unwrap();
            (
                subnet,
                PeerEntry {
                    subnet,
                    vtep_ip: subnet.network(),
                    mac: Some(Mac([0x0a, 0, 0, 0, 0, i])),
                    public_ip: format!("198.18.0.{}", 100 + i as u16).parse().unwrap(),
                },
            )
        })
        .collect()
}

#[test]
fn device_create_adopt_fix_mtu_and_replace() {
    let ns = ns("nl-dev");
    let s = spec(&ns);
    let s2 = s.clone();
    let first = ns.run(move || {
        Box::pin(async move { Netlink::connect().unwrap().ensure_vxlan(&s2).await.unwrap() })
    });
    assert!(first.created);
    let link = ns.sh("ip -d link show flannel.1");
    for want in [
        "vxlan id 1 local 198.18.0.1 dev eth0",
        "dstport 8472",
        "nolearning",
        "mtu 1450",
        "UP",
    ] {
        assert!(link.contains(want), "{want}: {link}");
    }
    assert!(link.contains(&first.mac.to_string()));

    // Same attributes, wrong MTU: adopted in place, MTU corrected, same index and MAC.
    ns.sh("ip link set flannel.1 mtu 1400 && ip link set flannel.1 down");
    let s2 = s.clone();
    let again = ns.run(move || {
        Box::pin(async move { Netlink::connect().unwrap().ensure_vxlan(&s2).await.unwrap() })
    });
    assert!(!again.created);
    assert_eq!((again.index, again.mac), (first.index, first.mac));
    let link = ns.sh("ip -d link show flannel.1");
    assert!(link.contains("mtu 1450") && link.contains(",UP"), "{link}");

    // Different VNI: replaced, keeping the MAC peers know.
    let mut s3 = s.clone();
    s3.vni = 7;
    let replaced = ns.run(move || {
        Box::pin(async move { Netlink::connect().unwrap().ensure_vxlan(&s3).await.unwrap() })
    });
    assert!(replaced.created);
    assert_eq!(replaced.mac, first.mac);
    assert!(ns.sh("ip -d link show flannel.1").contains("vxlan id 7 "));

    // Backend.Learning: honoured on the device, and a device without it is replaced.
    let mut s4 = s.clone();
    s4.vni = 7;
    s4.learning = true;
    let learning = ns.run(move || {
        Box::pin(async move { Netlink::connect().unwrap().ensure_vxlan(&s4).await.unwrap() })
    });
    assert!(learning.created);
    let link = ns.sh("ip -d link show flannel.1");
    assert!(!link.contains("nolearning"), "{link}");
}

#[test]
fn peer_entries_added_replaced_and_removed() {
    let ns = ns("nl-peer");
    let s = spec(&ns);
    ns.run(move || {
        Box::pin(async move {
            let nl = Netlink::connect().unwrap();
            let dev = nl.ensure_vxlan(&s).await.unwrap();
            let want = peers(3);
            let ops = diff(
                &want,
                &nl.read_actual(dev.index, Family::V4).await.unwrap(),
                PLAIN,
            );
            let r = nl.apply(dev.index, &ops).await;
            assert!(r.failed.is_empty(), "{:?}", r.failed);
            assert_eq!(r.applied, 9);
            let actual = nl.read_actual(dev.index, Family::V4).await.unwrap();
            assert!(
                diff(&want, &actual, PLAIN).is_empty(),
                "converged: {actual:?}"
            );

            // Peer 2 moves to a new underlay address and peer 3 leaves.
            let mut next = peers(2);
            next.get_mut(&"10.244.2.0/24".parse().unwrap())
                .unwrap()
                .public_ip = "198.18.0.222".parse().unwrap();
            let ops = diff(&next, &actual, PLAIN);
            assert_eq!(
                (
                    ops.del_routes.len(),
                    ops.del_neighs.len(),
                    ops.add_fdb.len(),
                    ops.del_fdb.len()
                ),
                (1, 1, 1, 2)
            );
            let r = nl.apply(dev.index, &ops).await;
            assert!(r.failed.is_empty(), "{:?}", r.failed);
            let actual = nl.read_actual(dev.index, Family::V4).await.unwrap();
            assert!(
                diff(&next, &actual, PLAIN).is_empty(),
                "converged again: {actual:?}"
            );

            // Everything gone.
            let r = nl
                .apply(dev.index, &diff(&BTreeMap::new(), &actual, PLAIN))
                .await;
            assert!(r.failed.is_empty(), "{:?}", r.failed);
            assert_eq!(
                nl.read_actual(dev.index, Family::V4).await.unwrap(),
                Actual::default()
            );
        })
    });
    // iproute2 agrees that nothing is left.
    assert_eq!(ns.sh("bridge fdb show dev flannel.1").trim(), "");
    assert_eq!(ns.sh("ip neigh show dev flannel.1").trim(), "");
    assert_eq!(ns.sh("ip route show dev flannel.1").trim(), "");
}

/// A peer's route must not reach the kernel before its neighbour entry (on a nolearning
/// device the first packets would find no neighbour). The neighbours and the routes of a
/// batch share one pipeline; the kernel's own notifications, on one socket, in the order
/// it made the changes, show the order held for every peer of a batch larger than the
/// pipeline's depth.
#[test]
fn every_peer_route_follows_its_neighbour() {
    // 3 requests a peer: 450 in flight, beyond the pipeline depth of 256.
    const N: u8 = 150;
    let ns = ns("nl-order");
    let s = spec(&ns);
    // Killed however the test ends: a failed apply must not leave it running.
    let mut monitor = twill_testutil::KillOnDrop(
        std::process::Command::new("ip")
            .args(["-n", &ns.name, "monitor", "neigh", "route"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("ip monitor"),
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    ns.run(move || {
        Box::pin(async move {
            let nl = Netlink::connect().unwrap();
            let dev = nl.ensure_vxlan(&s).await.unwrap();
            let ops = diff(&peers(N), &Actual::default(), PLAIN);
            let r = nl.apply(dev.index, &ops).await;
            assert!(r.failed.is_empty(), "{:?}", r.failed);
        })
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    monitor.0.kill().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut monitor.0.stdout.take().unwrap(), &mut out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    for i in 1..=N {
        let gw = format!("10.244.{i}.0");
        let at = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix));
        let neigh = at(&format!("{gw} dev flannel.1 lladdr"));
        let route = at(&format!("{gw}/24 via {gw} dev flannel.1"));
        let (Some(neigh), Some(route)) = (neigh, route) else {
            panic!("peer {i}: neighbour {neigh:?}, route {route:?} in {lines:#?}");
        };
        assert!(neigh < route, "peer {i}: route before its neighbour");
    }
}

#[test]
fn entries_look_exactly_like_flannels() {
    let ns = ns("nl-look");
    let s = spec(&ns);
    ns.run(move || {
        Box::pin(async move {
            let nl = Netlink::connect().unwrap();
            let dev = addressed_device(&nl, &s).await;
            let ops = diff(&peers(1), &Actual::default(), PLAIN);
            assert!(nl.apply(dev.index, &ops).await.failed.is_empty());
        })
    });
    assert_eq!(
        ns.sh("ip route show dev flannel.1").trim(),
        "10.244.1.0/24 via 10.244.1.0 proto static onlink"
    );
    assert_eq!(
        ns.sh("ip neigh show dev flannel.1").trim(),
        "10.244.1.0 lladdr 0a:00:00:00:00:01 PERMANENT"
    );
    assert_eq!(
        ns.sh("bridge fdb show dev flannel.1").trim(),
        "0a:00:00:00:00:01 dst 198.18.0.101 self permanent"
    );
    assert!(ns
        .sh("ip -4 -br addr show dev flannel.1")
        .contains("10.244.9.0/32"));
}

#[test]
fn leftovers_made_by_hand_are_removed() {
    let ns = ns("nl-left");
    let s = spec(&ns);
    let s2 = s.clone();
    ns.run(move || {
        Box::pin(async move { Netlink::connect().unwrap().ensure_vxlan(&s2).await.unwrap() })
    });
    // What a previous run (or flanneld, or a human) may have left: proto boot, appended fdb.
    ns.sh("ip neigh replace 10.244.250.0 lladdr 0a:00:00:00:02:50 dev flannel.1 nud permanent");
    ns.sh("bridge fdb append 0a:00:00:00:02:50 dev flannel.1 dst 198.18.0.250 self permanent");
    ns.sh("ip route replace 10.244.250.0/24 via 10.244.250.0 dev flannel.1 onlink");
    ns.run(move || {
        Box::pin(async move {
            let nl = Netlink::connect().unwrap();
            let dev = nl.ensure_vxlan(&s).await.unwrap();
            let want = peers(1);
            let r = nl
                .apply(
                    dev.index,
                    &diff(
                        &want,
                        &nl.read_actual(dev.index, Family::V4).await.unwrap(),
                        PLAIN,
                    ),
                )
                .await;
            assert!(r.failed.is_empty(), "{:?}", r.failed);
            assert!(diff(
                &want,
                &nl.read_actual(dev.index, Family::V4).await.unwrap(),
                PLAIN
            )
            .is_empty());
        })
    });
    let state = ns.sh(
        "ip route show dev flannel.1; ip neigh show dev flannel.1; bridge fdb show dev flannel.1",
    );
    assert!(
        !state.contains("10.244.250.0") && !state.contains("0a:00:00:00:02:50"),
        "{state}"
    );
}

/// Correctness at scale; the time is printed (benchmarks compare it, tests don't).
#[test]
fn a_thousand_peers_programmed_and_removed() {
    let ns = ns("nl-1k");
    let s = spec(&ns);
    let (add, noop, del) = ns.run(move || {
        Box::pin(async move {
            let nl = Netlink::connect().unwrap();
            let dev = nl.ensure_vxlan(&s).await.unwrap();
            let want: BTreeMap<IpNetwork, PeerEntry> = (0..1000u32)
                .map(|i| {
                    let subnet = IpNetwork::V4(
                        Ipv4Network::new(
                            std::net::Ipv4Addr::from(0x0af4_0000 + (i << 8) + 256),
                            24,
                        )
                        .unwrap(),
                    );
                    let mac = Some(Mac([0x0a, 0, 0, (i >> 8) as u8, i as u8, 1]));
                    let public_ip = std::net::Ipv4Addr::from(0xc612_0000 + 256 + i).into();
                    (
                        subnet,
                        PeerEntry {
                            subnet,
                            vtep_ip: subnet.network(),
                            mac,
                            public_ip,
                        },
                    )
                })
                .collect();
            let t = std::time::Instant::now();
            let r = nl
                .apply(
                    dev.index,
                    &diff(
                        &want,
                        &nl.read_actual(dev.index, Family::V4).await.unwrap(),
                        PLAIN,
                    ),
                )
                .await;
            let add = t.elapsed();
            assert!(
                r.failed.is_empty(),
                "{:?}",
                &r.failed[..r.failed.len().min(3)]
            );
            assert_eq!(r.applied, 3000);
            let t = std::time::Instant::now();
            let actual = nl.read_actual(dev.index, Family::V4).await.unwrap();
            assert!(diff(&want, &actual, PLAIN).is_empty());
            let noop = t.elapsed();
            let t = std::time::Instant::now();
            let r = nl
                .apply(dev.index, &diff(&BTreeMap::new(), &actual, PLAIN))
                .await;
            let del = t.elapsed();
            assert!(r.failed.is_empty());
            assert_eq!(
                nl.read_actual(dev.index, Family::V4).await.unwrap(),
                Actual::default()
            );
            (add, noop, del)
        })
    });
    eprintln!("1000 peers: program {add:?}, no-op read+diff {noop:?}, remove {del:?}");
}

#[test]
fn nexthop_form_programs_switches_back_and_forth_and_leaves_foreign_ids_alone() {
    let ns = ns("nl-nh");
    let s = spec(&ns);
    let id = |net: &str| nexthop_id(net.parse().unwrap());
    // Someone else's nexthop holding peer 3's id, on another device (a carrier needs the
    // veth's other end up; no route uses it, nothing is sent).
    ns.sh(&format!(
        "ip link set eth0-peer up && ip nexthop add id {} via 198.18.0.254 dev eth0",
        id("10.244.3.0/24")
    ));
    let state = |ns: &Netns| ns.sh("ip route show dev flannel.1; ip nexthop show");
    let s2 = s.clone();
    let failed = ns.run(move || {
        Box::pin(async move {
            let nl = Netlink::connect().unwrap();
            let dev = addressed_device(&nl, &s2).await;
            let form = RouteForm::Nexthop;
            let ops = diff(
                &peers(3),
                &nl.read_actual(dev.index, Family::V4).await.unwrap(),
                form,
            );
            assert_eq!((ops.add_nexthops.len(), ops.add_routes.len()), (3, 3));
            nl.apply(dev.index, &ops).await.failed
        })
    });
    // Peer 3's id is taken: reported, never overwritten, and no route of ours uses it;
    // the other two are in place.
    assert_eq!(failed.len(), 1, "peer 3's nexthop: {failed:?}");
    assert!(
        matches!(
            &failed[0],
            twill_dataplane::EntryError::Nexthop {
                source: twill_dataplane::nexthop::EnsureError::Taken { .. },
                ..
            }
        ),
        "{failed:?}"
    );
    assert!(
        failed[0]
            .to_string()
            .contains("held by a nexthop on another device"),
        "{failed:?}"
    );
    let st = state(&ns);
    for want in [
        format!(
            "10.244.1.0/24 nhid {} via 10.244.1.0 proto static onlink",
            id("10.244.1.0/24")
        ),
        format!(
            "id {} via 10.244.2.0 dev flannel.1 scope link proto static onlink",
            id("10.244.2.0/24")
        ),
        format!("id {} via 198.18.0.254 dev eth0", id("10.244.3.0/24")),
    ] {
        assert!(st.contains(&want), "{want}\n{st}");
    }
    assert!(!st.contains("10.244.3.0/24"), "{st}");
    ns.sh(&format!("ip nexthop del id {}", id("10.244.3.0/24")));

    ns.run(move || {
        Box::pin(async move {
            let nl = Netlink::connect().unwrap();
            let dev = nl.ensure_vxlan(&s).await.unwrap();
            let want = peers(3);
            let converge = |form| {
                let nl = &nl;
                let want = &want;
                async move {
                    let ops = diff(
                        want,
                        &nl.read_actual(dev.index, Family::V4).await.unwrap(),
                        form,
                    );
                    let r = nl.apply(dev.index, &ops).await;
                    assert!(r.failed.is_empty(), "{:?}", r.failed);
                    let actual = nl.read_actual(dev.index, Family::V4).await.unwrap();
                    assert!(diff(want, &actual, form).is_empty(), "{actual:?}");
                    (ops, actual)
                }
            };
            let (_, actual) = converge(RouteForm::Nexthop).await;
            assert_eq!(actual.nexthops.len(), 3);
            assert!(actual.routes.values().all(|v| v.nhid.is_some()));

            // To flanneld's form: routes replaced in place, nexthops gone.
            let (ops, actual) = converge(PLAIN).await;
            assert!(ops.del_routes.is_empty(), "{ops:?}");
            assert!(actual.nexthops.is_empty() && actual.routes.len() == 3);
            // And back.
            let (ops, actual) = converge(RouteForm::Nexthop).await;
            assert!(
                ops.del_routes.is_empty() && ops.del_nexthops.is_empty(),
                "{ops:?}"
            );
            assert_eq!(actual.nexthops.len(), 3);

            // Removing everything takes the nexthops too.
            let r = nl
                .apply(
                    dev.index,
                    &diff(&BTreeMap::new(), &actual, RouteForm::Nexthop),
                )
                .await;
            assert!(r.failed.is_empty(), "{:?}", r.failed);
            assert_eq!(
                nl.read_actual(dev.index, Family::V4).await.unwrap(),
                Actual::default()
            );
        })
    });
    assert_eq!(state(&ns).trim(), "");
}

/// An IPv6 overlay device over an IPv6 underlay, as the `flannel-v6.<VNI>` device is:
/// created with an IPv6 local address, addressed without DAD, its peers' entries written,
/// read back, replaced and removed in both route forms, as iproute2 shows them.
#[test]
fn ipv6_device_and_peer_entries() {
    let ns = ns("nl-v6");
    ns.sh("ip addr add 2001:2::1/64 dev eth0 nodad");
    let mut s = spec(&ns);
    s.name = "flannel-v6.1".into();
    s.local = "2001:2::1".parse().unwrap();
    s.mtu = 1430;
    let want = |n: u8| -> BTreeMap<IpNetwork, PeerEntry> {
        (1..=n)
            .map(|i| {
                let subnet: IpNetwork = format!("fd00:10:0:{i}::/64").parse().unwrap();
                let p = PeerEntry {
                    subnet,
                    vtep_ip: subnet.network(),
                    mac: Some(Mac([0x0a, 0, 0, 0, 6, i])),
                    public_ip: format!("2001:2::{}", 100 + i).parse().unwrap(),
                };
                (subnet, p)
            })
            .collect()
    };
    let s2 = s.clone();
    ns.run(move || {
        Box::pin(async move {
            let nl = Netlink::connect().unwrap();
            let dev = nl.ensure_vxlan(&s2).await.unwrap();
            assert!(dev.created);
            nl.ensure_address(
                dev.index,
                "fd00:10:0:9::".parse().unwrap(),
                "fd00:10::/56".parse().unwrap(),
            )
            .await
            .unwrap();
            // Adopted as it is on a second look.
            assert!(!nl.ensure_vxlan(&s2).await.unwrap().created);
            for form in [RouteForm::Plain, RouteForm::Nexthop] {
                let w = want(3);
                let ops = diff(
                    &w,
                    &nl.read_actual(dev.index, Family::V6).await.unwrap(),
                    form,
                );
                let r = nl.apply(dev.index, &ops).await;
                assert!(r.failed.is_empty(), "{form:?}: {:?}", r.failed);
                let actual = nl.read_actual(dev.index, Family::V6).await.unwrap();
                assert!(diff(&w, &actual, form).is_empty(), "{form:?}: {actual:?}");
                // The IPv4 view of the same device has none of it.
                assert!(nl
                    .read_actual(dev.index, Family::V4)
                    .await
                    .unwrap()
                    .routes
                    .is_empty());
            }
        })
    });
    let link = ns.sh("ip -d link show flannel-v6.1");
    assert!(
        link.contains("vxlan id 1 local 2001:2::1 dev eth0") && link.contains("mtu 1430"),
        "{link}"
    );
    let addr = ns.sh("ip -6 addr show dev flannel-v6.1");
    assert!(
        addr.contains("inet6 fd00:10:0:9::/128 scope global nodad"),
        "not tentative: {addr}"
    );
    let routes = ns.sh("ip -6 route show dev flannel-v6.1");
    assert!(routes.contains("fd00:10:0:2::/64 nhid "), "{routes}");
    let neigh = ns.sh("ip -6 neigh show dev flannel-v6.1");
    assert!(
        neigh.contains("fd00:10:0:2:: lladdr 0a:00:00:00:06:02 PERMANENT"),
        "{neigh}"
    );
    let fdb = ns.sh("bridge fdb show dev flannel-v6.1");
    assert!(
        fdb.contains("0a:00:00:00:06:02 dst 2001:2::102 self permanent"),
        "{fdb}"
    );

    // Back to plain routes, then one peer leaves: its three entries and nexthop go.
    ns.run(move || {
        Box::pin(async move {
            let nl = Netlink::connect().unwrap();
            let dev = nl.ensure_vxlan(&s).await.unwrap();
            let w = want(2);
            let plain = RouteForm::Plain;
            let ops = diff(
                &w,
                &nl.read_actual(dev.index, Family::V6).await.unwrap(),
                plain,
            );
            let r = nl.apply(dev.index, &ops).await;
            assert!(r.failed.is_empty(), "{:?}", r.failed);
            let actual = nl.read_actual(dev.index, Family::V6).await.unwrap();
            assert!(diff(&w, &actual, plain).is_empty(), "{actual:?}");
            assert!(actual.nexthops.is_empty());
        })
    });
    let routes = ns.sh("ip -6 route show dev flannel-v6.1");
    assert!(
        routes.contains("fd00:10:0:2::/64 via fd00:10:0:2:: metric 1024 onlink")
            || routes.contains("fd00:10:0:2::/64 via fd00:10:0:2:: ") && routes.contains("onlink"),
        "{routes}"
    );
    assert!(!routes.contains("fd00:10:0:3::"), "{routes}");
    assert!(!ns
        .sh("bridge fdb show dev flannel-v6.1")
        .contains("2001:2::103"));
}
