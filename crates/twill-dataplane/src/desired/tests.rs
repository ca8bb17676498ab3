use super::*;
use std::net::Ipv4Addr;
use twill_store::{Lease, LeaseAttrs, LeaseKey, PeerTable, StoredLease, WatchEvent};

fn lease_of(key: LeaseKey, attrs: LeaseAttrs) -> Lease {
    Lease::parse(key, attrs).unwrap().unwrap()
}

fn entries(t: &[(LeaseKey, LeaseAttrs)]) -> Vec<PeerEntry> {
    t.iter()
        .flat_map(|(k, a)| lease_of(*k, a.clone()).entries.iter())
        .collect()
}

fn attrs(ip: &str, mac: &str) -> LeaseAttrs {
    LeaseAttrs::vxlan(ip.parse().unwrap(), 1, mac)
}

fn table() -> Vec<(LeaseKey, LeaseAttrs)> {
    vec![
        (
            "10.244.1.0-24".parse().unwrap(),
            attrs("198.18.0.1", "0a:00:00:00:00:01"),
        ),
        (
            "10.244.2.0-24".parse().unwrap(),
            attrs("198.18.0.2", "0a:00:00:00:00:02"),
        ),
        (
            "10.244.3.0-24".parse().unwrap(),
            attrs("198.18.0.3", "0a:00:00:00:00:03"),
        ),
    ]
}

#[test]
fn host_gw_peers_are_routes_and_nothing_on_a_vxlan_device() {
    let key: LeaseKey = "10.244.9.0-24".parse().unwrap();
    let hg = lease_of(key, LeaseAttrs::host_gw("198.18.0.9".parse().unwrap()));
    let moved = lease_of(key, LeaseAttrs::host_gw("198.18.0.10".parse().unwrap()));
    let d = desired_peers(hg.entries.iter());
    assert!(diff(&d, &Actual::default(), RouteForm::Plain).is_empty());
    let events = [PeerEvent::Added(hg.clone())];
    assert!(incremental(&events, RouteForm::Plain, Family::V4).is_empty());

    let net: IpNetwork = "10.244.9.0/24".parse().unwrap();
    let via = |ip: &str| (net, ip.parse::<IpAddr>().unwrap());
    let ops = incremental_direct(&events, Family::V4);
    assert_eq!((ops.add, ops.del), (vec![via("198.18.0.9")], vec![]));
    let changed = [PeerEvent::Changed {
        new: moved,
        old: hg.clone(),
    }];
    // Replaced in place, never deleted first.
    let ops = incremental_direct(&changed, Family::V4);
    assert_eq!((ops.add, ops.del), (vec![via("198.18.0.10")], vec![]));
    let ops = incremental_direct(&[PeerEvent::Removed(hg)], Family::V4);
    assert_eq!((ops.add, ops.del), (vec![], vec![via("198.18.0.9")]));
    assert!(incremental_direct(&events, Family::V6).is_empty());
}

#[test]
fn desired_skips_own_and_non_vxlan() {
    let mut t = table();
    let mut wg = attrs("198.18.0.9", "0a:00:00:00:00:09");
    wg.backend_type = "wireguard".into();
    t.push(("10.244.9.0-24".parse().unwrap(), wg));
    t.push((
        "10.244.8.0-24".parse().unwrap(),
        attrs("198.18.0.8", "garbage"),
    ));
    let own: LeaseKey = "10.244.1.0-24".parse().unwrap();
    let mut table = PeerTable::new();
    table.set_own(own, t[0].1.clone());
    for (key, a) in &t {
        table.apply(WatchEvent::Put(StoredLease {
            key: *key,
            attrs: Some(a.clone()),
            reservation: false,
            mod_revision: 1,
        }));
    }
    let d = desired_peers(table.entries());
    assert_eq!(d.len(), 2);
    let p = &d[&"10.244.2.0/24".parse().unwrap()];
    assert_eq!(p.vtep_ip.to_string(), "10.244.2.0");
    assert_eq!(p.public_ip.to_string(), "198.18.0.2");
}

#[test]
fn incremental_ops_match_full_diff_results() {
    let t = table();
    let lease = |i: usize| lease_of(t[i].0, t[i].1.clone());
    let moved = lease_of(t[1].0, attrs("198.18.0.22", "0a:00:00:00:00:22"));
    let ops = incremental(
        &[
            PeerEvent::Added(lease(0)),
            PeerEvent::Changed {
                new: moved,
                old: lease(1),
            },
            PeerEvent::Removed(lease(2)),
        ],
        RouteForm::Plain,
        Family::V4,
    );
    assert_eq!(ops.add_routes.len(), 2);
    assert_eq!(
        ops.add_fdb,
        vec![
            (
                "0a:00:00:00:00:01".parse().unwrap(),
                "198.18.0.1".parse().unwrap()
            ),
            (
                "0a:00:00:00:00:22".parse().unwrap(),
                "198.18.0.22".parse().unwrap()
            ),
        ]
    );
    assert_eq!(
        ops.del_fdb,
        vec![
            (
                "0a:00:00:00:00:02".parse().unwrap(),
                "198.18.0.2".parse().unwrap()
            ),
            (
                "0a:00:00:00:00:03".parse().unwrap(),
                "198.18.0.3".parse().unwrap()
            ),
        ]
    );
    assert_eq!(
        ops.del_routes,
        vec![("10.244.3.0/24".parse().unwrap(), plain("10.244.3.0"))]
    );
    assert_eq!(
        ops.del_neighs,
        vec!["10.244.3.0".parse::<IpAddr>().unwrap()]
    );
    assert!(ops.add_nexthops.is_empty() && ops.del_nexthops.is_empty());
}

fn plain(gw: &str) -> Via {
    Via {
        gw: Some(gw.parse().unwrap()),
        nhid: None,
    }
}

fn by_nexthop(gw: &str) -> Via {
    let gw: Ipv4Addr = gw.parse().unwrap();
    Via {
        gw: Some(IpAddr::V4(gw)),
        nhid: Some(u32::from(gw)),
    }
}

#[test]
fn incremental_nexthop_form_adds_the_nexthop_before_its_route_and_deletes_it_after() {
    let t = table();
    let lease = |i: usize| lease_of(t[i].0, t[i].1.clone());
    let ops = incremental(
        &[PeerEvent::Added(lease(0)), PeerEvent::Removed(lease(2))],
        RouteForm::Nexthop,
        Family::V4,
    );
    let id1 = u32::from("10.244.1.0".parse::<Ipv4Addr>().unwrap());
    assert_eq!(ops.add_nexthops, [(id1, "10.244.1.0".parse().unwrap())]);
    assert_eq!(
        ops.add_routes,
        [("10.244.1.0/24".parse().unwrap(), by_nexthop("10.244.1.0"))]
    );
    assert_eq!(
        ops.del_routes,
        [("10.244.3.0/24".parse().unwrap(), by_nexthop("10.244.3.0"))]
    );
    assert_eq!(
        ops.del_nexthops,
        [u32::from("10.244.3.0".parse::<Ipv4Addr>().unwrap())]
    );
}

#[test]
fn empty_kernel_gets_everything_in_order() {
    let t = table();
    let d = desired_peers(entries(&t));
    let ops = diff(&d, &Actual::default(), RouteForm::Plain);
    assert_eq!(ops.add_neighs.len(), 3);
    assert_eq!(ops.add_fdb.len(), 3);
    assert_eq!(ops.add_routes.len(), 3);
    assert!(ops.del_routes.is_empty() && ops.del_neighs.is_empty() && ops.del_fdb.is_empty());
}

fn actual_for(d: &BTreeMap<IpNetwork, PeerEntry>, form: RouteForm) -> Actual {
    Actual {
        neighs: d.values().map(|p| (p.vtep_ip, p.mac)).collect(),
        fdb: d.values().map(|p| (p.mac.unwrap(), p.public_ip)).collect(),
        routes: d.values().map(|p| (p.subnet, form.route(p))).collect(),
        nexthops: d
            .values()
            .filter_map(|p| Some((form.nhid(p.subnet)?, Some(p.vtep_ip))))
            .collect(),
    }
}

#[test]
fn switching_route_form_replaces_routes_in_place_and_drops_old_nexthops_last() {
    let t = table();
    let d = desired_peers(entries(&t));
    for form in [RouteForm::Plain, RouteForm::Nexthop] {
        assert!(diff(&d, &actual_for(&d, form), form).is_empty());
    }

    let ops = diff(&d, &actual_for(&d, RouteForm::Plain), RouteForm::Nexthop);
    assert_eq!(ops.add_nexthops.len(), 3);
    assert_eq!(ops.add_routes.len(), 3);
    assert!(ops.add_routes.iter().all(|(_, v)| v.nhid.is_some()));
    assert_eq!(ops.len(), 6, "nothing deleted: {ops:?}");

    let ops = diff(&d, &actual_for(&d, RouteForm::Nexthop), RouteForm::Plain);
    assert!(ops.add_routes.iter().all(|(_, v)| v.nhid.is_none()));
    assert_eq!(ops.add_routes.len(), 3);
    assert_eq!(ops.del_nexthops.len(), 3);
    assert!(
        ops.del_routes.is_empty(),
        "routes replaced, not deleted: {ops:?}"
    );

    // A nexthop of ours pointing elsewhere is rewritten; a peer gone takes its own.
    let mut a = actual_for(&d, RouteForm::Nexthop);
    let id2 = nexthop_id("10.244.2.0/24".parse().unwrap());
    a.nexthops.insert(id2, Some("10.244.99.0".parse().unwrap()));
    a.nexthops
        .insert(nexthop_id("10.244.7.0/24".parse().unwrap()), None);
    let ops = diff(&d, &a, RouteForm::Nexthop);
    assert_eq!(ops.add_nexthops, [(id2, "10.244.2.0".parse().unwrap())]);
    assert_eq!(
        ops.del_nexthops,
        [nexthop_id("10.244.7.0/24".parse().unwrap())]
    );
    assert!(ops.add_routes.is_empty());
}

#[test]
fn direct_routing_splits_on_the_underlay_prefixes() {
    let mut t = table();
    // Behind a router: not on our link, stays on VXLAN.
    t.push((
        "10.244.4.0-24".parse().unwrap(),
        attrs("198.19.5.4", "0a:00:00:00:00:04"),
    ));
    let d = desired_peers(entries(&t));
    let (vxlan, direct) = split_direct(&d, &["198.18.0.0/24".parse().unwrap()]);
    assert_eq!(
        vxlan.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
        ["10.244.4.0/24"]
    );
    assert_eq!(direct.len(), 3);
    assert_eq!(
        direct[&"10.244.2.0/24".parse().unwrap()].to_string(),
        "198.18.0.2"
    );
    // No connected prefix: everything on VXLAN.
    let (vxlan, direct) = split_direct(&d, &[]);
    assert_eq!((vxlan.len(), direct.len()), (4, 0));
}

#[test]
fn direct_routes_diff() {
    let net = |s: &str| s.parse::<IpNetwork>().unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let want = BTreeMap::from([
        (net("10.244.2.0/24"), ip("198.18.0.2")),
        (net("10.244.3.0/24"), ip("198.18.0.3")),
    ]);
    let actual = BTreeMap::from([
        (net("10.244.2.0/24"), ip("198.18.0.2")),
        // Peer 3 moved; peer 7 is gone.
        (net("10.244.3.0/24"), ip("198.18.0.33")),
        (net("10.244.7.0/24"), ip("198.18.0.7")),
    ]);
    let ops = diff_direct(&want, &actual);
    assert_eq!(ops.add, [(net("10.244.3.0/24"), ip("198.18.0.3"))]);
    assert_eq!(ops.del, [(net("10.244.7.0/24"), ip("198.18.0.7"))]);
    assert!(diff_direct(&want, &want).is_empty());
}

#[test]
fn converged_state_is_a_noop() {
    let t = table();
    let d = desired_peers(entries(&t));
    assert!(diff(&d, &actual_for(&d, RouteForm::Plain), RouteForm::Plain).is_empty());
}

#[test]
fn stale_and_changed_entries() {
    let t = table();
    let d = desired_peers(entries(&t));
    let mut a = actual_for(&d, RouteForm::Plain);
    // A leftover of a previous run for a subnet no longer leased.
    a.routes
        .insert("10.244.7.0/24".parse().unwrap(), plain("10.244.7.0"));
    a.neighs.insert(
        "10.244.7.0".parse().unwrap(),
        Some("0a:00:00:00:00:07".parse().unwrap()),
    );
    a.fdb.insert((
        "0a:00:00:00:00:07".parse().unwrap(),
        "198.18.0.7".parse().unwrap(),
    ));
    // Peer 2 moved to a new underlay address; peer 3's route was deleted by hand.
    a.fdb.remove(&(
        "0a:00:00:00:00:02".parse().unwrap(),
        "198.18.0.2".parse().unwrap(),
    ));
    a.fdb.insert((
        "0a:00:00:00:00:02".parse().unwrap(),
        "198.18.0.22".parse().unwrap(),
    ));
    a.routes.remove(&"10.244.3.0/24".parse().unwrap());
    let ops = diff(&d, &a, RouteForm::Plain);
    assert_eq!(
        ops.del_routes,
        vec![("10.244.7.0/24".parse().unwrap(), plain("10.244.7.0"))]
    );
    assert_eq!(
        ops.del_neighs,
        vec!["10.244.7.0".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        ops.add_routes,
        vec![("10.244.3.0/24".parse().unwrap(), plain("10.244.3.0"))]
    );
    assert_eq!(
        ops.add_fdb,
        vec![(
            "0a:00:00:00:00:02".parse().unwrap(),
            "198.18.0.2".parse().unwrap()
        )]
    );
    assert_eq!(ops.del_fdb.len(), 2);
    assert!(ops.add_neighs.is_empty());
}

mod family_tests {
    use super::super::*;
    use twill_store::{Lease, LeaseAttrs, LeaseKey, PeerEntries, RawJson, VxlanBackendData};

    fn dual(key: &str, n: u8) -> Lease {
        let key: LeaseKey = key.parse().unwrap();
        let attrs = LeaseAttrs {
            public_ipv6: Some(format!("2001:2::{n}").parse().unwrap()),
            backend_v6_data: Some(RawJson::of(&VxlanBackendData {
                vni: 1,
                vtep_mac: format!("0a:00:00:00:06:0{n}"),
            })),
            ..LeaseAttrs::vxlan(
                format!("198.18.0.{n}").parse().unwrap(),
                1,
                &format!("0a:00:00:00:04:0{n}"),
            )
        };
        Lease::parse(key, attrs).unwrap().unwrap()
    }

    #[test]
    fn each_family_takes_its_own_half_of_an_event() {
        let a = dual("10.244.2.0-24&fd00:10:0:2::-64", 2);
        let v4only = Lease {
            entries: PeerEntries {
                v6: None,
                ..a.entries
            },
            ..a.clone()
        };
        let ev = [PeerEvent::Added(a.clone())];
        let ops6 = incremental(&ev, RouteForm::Plain, Family::V6);
        assert_eq!(
            ops6.add_routes,
            [(
                "fd00:10:0:2::/64".parse().unwrap(),
                Via {
                    gw: Some("fd00:10:0:2::".parse().unwrap()),
                    nhid: None
                }
            )]
        );
        assert_eq!(
            ops6.add_fdb,
            [(
                "0a:00:00:00:06:02".parse().unwrap(),
                "2001:2::2".parse().unwrap()
            )]
        );
        let ops4 = incremental(&ev, RouteForm::Plain, Family::V4);
        assert_eq!(ops4.add_neighs[0].0.to_string(), "10.244.2.0");

        // A peer that turns IPv6 off loses its v6 entries only.
        let ev = [PeerEvent::Changed {
            new: v4only,
            old: a,
        }];
        let ops6 = incremental(&ev, RouteForm::Plain, Family::V6);
        assert_eq!(ops6.del_routes.len(), 1);
        assert_eq!(ops6.del_neighs.len(), 1);
        assert!(ops6.add_routes.is_empty());
        let ops4 = incremental(&ev, RouteForm::Plain, Family::V4);
        assert!(ops4.del_routes.is_empty() && ops4.del_fdb.is_empty());
    }

    #[test]
    fn nexthop_ids_of_one_network_differ_and_never_meet_ipv4s() {
        let ids: std::collections::BTreeSet<u32> = (0..=255u16)
            .map(|i| nexthop_id(format!("fd00:10:0:{i:x}::/64").parse().unwrap()))
            .collect();
        assert_eq!(ids.len(), 256);
        assert!(ids.iter().all(|id| *id >= 0xf000_0000));
        assert!(nexthop_id("223.255.255.0/24".parse().unwrap()) < 0xf000_0000);
        // Subnets longer than /64 too: the bits above the prefix, not the top of the address.
        let a = nexthop_id("fd00:10::1:0/112".parse().unwrap());
        let b = nexthop_id("fd00:10::2:0/112".parse().unwrap());
        assert_ne!(a, b);
    }
}
