use proptest::prelude::*;

use super::*;
use crate::lease::LeaseAttrs;
use crate::peers::{PeerEvent, PeerTable, WatchEvent};
use crate::{Mac, StoredLease};

fn policy() -> LeasePolicy {
    LeasePolicy {
        ipv4: Some(("10.244.0.0/16".parse().unwrap(), 24)),
        ipv6: None,
        backend_type: "vxlan".into(),
        vni: 1,
        local_addrs: vec!["198.18.0.1".parse().unwrap()],
        protected: vec![
            "198.18.0.0/24".parse().unwrap(),
            "10.244.200.0/22".parse().unwrap(),
        ],
        onlink: None,
    }
}

fn attrs(ip: &str, vni: u32, mac: &str) -> LeaseAttrs {
    LeaseAttrs::vxlan(ip.parse().unwrap(), vni, mac)
}

fn verdict(key: &str, a: Option<LeaseAttrs>) -> Verdict {
    let own: LeaseKey = "10.244.1.0-24".parse().unwrap();
    policy().check(&key.parse().unwrap(), a.as_ref(), Some(&own))
}

fn reason(key: &str, a: Option<LeaseAttrs>) -> &'static str {
    match verdict(key, a) {
        Verdict::Rejected(r) => r.reason(),
        v => panic!("{key}: expected a rejection, got {v:?}"),
    }
}

const MAC: &str = "02:00:00:00:00:02";

#[test]
fn a_good_peer_is_usable() {
    let Verdict::Usable(e) = verdict("10.244.2.0-24", Some(attrs("198.18.0.2", 1, MAC))) else {
        panic!("usable");
    };
    let e = e.v4.expect("a v4 peer");
    assert_eq!(e.subnet.to_string(), "10.244.2.0/24");
    assert_eq!(e.vtep_ip.to_string(), "10.244.2.0");
    assert_eq!(e.public_ip.to_string(), "198.18.0.2");
    assert_eq!(e.mac.unwrap().to_string(), MAC);
}

#[test]
fn the_key_is_checked_against_network_length_underlay_and_own() {
    let good = || Some(attrs("198.18.0.2", 1, MAC));
    // The report that started this: the underlay's own network as a lease.
    assert_eq!(reason("198.18.0.0-24", good()), "outside-network");
    assert_eq!(reason("10.99.0.0-24", good()), "outside-network");
    assert_eq!(reason("10.244.0.0-16", good()), "subnet-length");
    assert_eq!(reason("10.244.2.0-25", good()), "subnet-length");
    assert_eq!(reason("10.244.201.0-24", good()), "underlay-overlap");
    assert_eq!(reason("10.244.1.0-24&fd00::-64", good()), "own-subnet");
    assert!(
        "0.0.0.0-0".parse::<LeaseKey>().is_err(),
        "a default route is not even a key"
    );
}

#[test]
fn the_value_is_checked() {
    assert_eq!(reason("10.244.2.0-24", None), "malformed");
    for ip in [
        "0.0.0.0",
        "127.0.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "240.0.0.1",
    ] {
        assert_eq!(
            reason("10.244.2.0-24", Some(attrs(ip, 1, MAC))),
            "public-ip",
            "{ip}"
        );
    }
    assert_eq!(
        reason("10.244.2.0-24", Some(attrs("198.18.0.1", 1, MAC))),
        "public-ip-ours"
    );
    assert_eq!(
        reason("10.244.2.0-24", Some(attrs("198.18.0.2", 2, MAC))),
        "vni"
    );
    for mac in [
        "01:00:5e:00:00:01",
        "ff:ff:ff:ff:ff:ff",
        "00:00:00:00:00:00",
        "nope",
    ] {
        assert_eq!(
            reason("10.244.2.0-24", Some(attrs("198.18.0.2", 1, mac))),
            "vtep-mac",
            "{mac}"
        );
    }
    let mut wg = attrs("198.18.0.2", 1, MAC);
    wg.backend_type = "wireguard".into();
    assert_eq!(reason("10.244.2.0-24", Some(wg)), "backend-type");
    let mut junk = attrs("198.18.0.2", 1, MAC);
    junk.backend_data = crate::RawJson::parse(r#"{"VNI":"one"}"#);
    assert_eq!(reason("10.244.2.0-24", Some(junk)), "backend-data");
}

#[test]
fn a_reservation_without_backend_is_pending_not_rejected() {
    let a: LeaseAttrs = serde_json::from_str(r#"{"PublicIP":"198.18.0.9"}"#).unwrap();
    assert_eq!(verdict("10.244.2.0-24", Some(a)), Verdict::Pending);
}

const MAC6: &str = "02:00:00:00:06:02";

/// A dual-stack lease as flanneld writes it: both backends' data, both public addresses.
fn dual(ip6: &str, vni6: u32, mac6: &str) -> LeaseAttrs {
    LeaseAttrs {
        public_ipv6: Some(ip6.parse().unwrap()),
        backend_v6_data: Some(crate::RawJson::of(&crate::VxlanBackendData {
            vni: vni6,
            vtep_mac: mac6.into(),
        })),
        ..attrs("198.18.0.2", 1, MAC)
    }
}

fn dual_policy() -> LeasePolicy {
    LeasePolicy {
        ipv6: Some(("fd00:10::/56".parse().unwrap(), 64)),
        local_addrs: vec!["198.18.0.1".parse().unwrap(), "2001:2::1".parse().unwrap()],
        protected: vec![
            "198.18.0.0/24".parse().unwrap(),
            "2001:2::/64".parse().unwrap(),
            "fd00:10:0:80::/57".parse().unwrap(),
        ],
        ..policy()
    }
}

/// EnableIPv4=false: keys are `0.0.0.0-0&<v6>` and PublicIP is 0.0.0.0, as flanneld
/// writes them; only the v6 half is judged, and a key without one is refused.
#[test]
fn ipv6_only_judges_the_v6_half_alone() {
    let p = LeasePolicy {
        ipv4: None,
        ..dual_policy()
    };
    let k = |s: &str| s.parse::<LeaseKey>().unwrap();
    let a = LeaseAttrs {
        public_ip: std::net::Ipv4Addr::UNSPECIFIED,
        backend_data: None,
        ..dual("2001:2::2", 1, MAC6)
    };
    let Verdict::Usable(e) = p.check(&k("0.0.0.0-0&fd00:10:0:2::-64"), Some(&a), None) else {
        panic!("usable");
    };
    assert!(e.v4.is_none(), "no v4 peer in an IPv6-only network");
    assert_eq!(e.v6.unwrap().public_ip.to_string(), "2001:2::2");
    // A dual-stack key's v4 half is ignored, not judged: its subnet is no business of ours.
    assert!(matches!(
        p.check(&k("10.99.2.0-24&fd00:10:0:2::-64"), Some(&a), None),
        Verdict::Usable(_)
    ));
    let r = |key: &str, a: &LeaseAttrs| match p.check(&k(key), Some(a), None) {
        Verdict::Rejected(r) => r.reason(),
        v => panic!("{key}: {v:?}"),
    };
    assert_eq!(r("10.244.2.0-24", &a), "no-ipv6-subnet");
    assert_eq!(r("0.0.0.0-0&fd00:99::-64", &a), "outside-network");
    assert_eq!(r("0.0.0.0-0&fd00:10:0:81::-64", &a), "underlay-overlap");
    let own = k("0.0.0.0-0&fd00:10:0:2::-64");
    assert!(matches!(
        p.check(&own, Some(&a), Some(&own)),
        Verdict::Rejected(Rejection::OwnSubnet { .. })
    ));
    let no_ip6 = LeaseAttrs {
        public_ipv6: None,
        ..a.clone()
    };
    assert_eq!(r("0.0.0.0-0&fd00:10:0:2::-64", &no_ip6), "no-public-ipv6");
}

#[test]
fn ipv6_half_is_judged_when_enabled() {
    let p = dual_policy();
    let k = |s: &str| s.parse::<LeaseKey>().unwrap();
    let a = dual("2001:2::2", 1, MAC6);
    let Verdict::Usable(e) = p.check(&k("10.244.2.0-24&fd00:10:0:2::-64"), Some(&a), None) else {
        panic!("usable");
    };
    let v6 = e.v6.expect("a v6 peer");
    assert_eq!(v6.subnet.to_string(), "fd00:10:0:2::/64");
    assert_eq!(v6.vtep_ip.to_string(), "fd00:10:0:2::");
    assert_eq!(v6.public_ip.to_string(), "2001:2::2");
    assert_eq!(v6.mac.unwrap().to_string(), MAC6);
    assert_eq!(
        e.v4.unwrap().mac.unwrap().to_string(),
        MAC,
        "each half its own MAC"
    );

    let r = |key: &str, a: &LeaseAttrs| match p.check(&k(key), Some(a), None) {
        Verdict::Rejected(r) => r.reason(),
        v => panic!("{key}: {v:?}"),
    };
    assert_eq!(r("10.244.2.0-24&fd00:99::-64", &a), "outside-network");
    assert_eq!(r("10.244.2.0-24&fd00:10::-60", &a), "subnet-length");
    assert_eq!(r("10.244.2.0-24&fd00:10:0:81::-64", &a), "underlay-overlap");
    for ip in ["::", "::1", "ff02::1"] {
        assert_eq!(
            r("10.244.2.0-24&fd00:10:0:2::-64", &dual(ip, 1, MAC6)),
            "public-ip",
            "{ip}"
        );
    }
    let key = "10.244.2.0-24&fd00:10:0:2::-64";
    assert_eq!(r(key, &dual("2001:2::1", 1, MAC6)), "public-ip-ours");
    assert_eq!(r(key, &dual("2001:2::2", 2, MAC6)), "vni");
    assert_eq!(
        r(key, &dual("2001:2::2", 1, "33:33:00:00:00:01")),
        "vtep-mac"
    );
    let no_ip6 = LeaseAttrs {
        public_ipv6: None,
        ..a.clone()
    };
    assert_eq!(r(key, &no_ip6), "no-public-ipv6");
    let no_data6 = LeaseAttrs {
        backend_v6_data: None,
        ..a.clone()
    };
    assert_eq!(r(key, &no_data6), "backend-data");
    let Verdict::Rejected(why) = p.check(&k(key), Some(&no_data6), None) else {
        unreachable!()
    };
    assert!(why.to_string().starts_with("BackendV6Data:"), "{why}");

    // A v4-only peer of a dual-stack cluster (not moved to dual stack yet) is a v4 peer.
    let Verdict::Usable(e) = p.check(
        &k("10.244.2.0-24"),
        Some(&attrs("198.18.0.2", 1, MAC)),
        None,
    ) else {
        panic!("usable");
    };
    assert!(e.v4.is_some() && e.v6.is_none());

    // With IPv6 off, the v6 half is not read at all: a bad one costs nothing.
    let Verdict::Usable(e) = policy().check(&k(key), Some(&no_data6), None) else {
        panic!("usable");
    };
    assert!(e.v6.is_none());
}

fn sl(key: &str, a: Option<LeaseAttrs>) -> StoredLease {
    StoredLease {
        key: key.parse().unwrap(),
        attrs: a,
        reservation: false,
        mod_revision: 1,
    }
}

fn table() -> PeerTable {
    let mut t = PeerTable::with_policy(policy());
    t.set_own(
        "10.244.1.0-24".parse().unwrap(),
        attrs("198.18.0.1", 1, "02:00:00:00:00:01"),
    );
    t
}

#[test]
fn a_peer_turning_bad_is_removed_and_reported_once() {
    let mut t = table();
    let a = t.apply(WatchEvent::Put(sl(
        "10.244.2.0-24",
        Some(attrs("198.18.0.2", 1, MAC)),
    )));
    assert!(matches!(a.events[..], [PeerEvent::Added(_)]));
    let bad = sl("10.244.2.0-24", Some(attrs("198.18.0.2", 7, MAC)));
    let a = t.apply(WatchEvent::Put(bad.clone()));
    assert!(matches!(a.events[..], [PeerEvent::Removed(_)]), "{a:?}");
    assert_eq!(a.rejected.len(), 1);
    assert_eq!(t.len(), 0);
    // A re-list carrying the same bad value is not a new report.
    let a = t.apply(WatchEvent::Snapshot(vec![
        bad,
        sl(
            "10.244.1.0-24",
            Some(attrs("198.18.0.1", 1, "02:00:00:00:00:01")),
        ),
    ]));
    assert!(a.events.is_empty() && a.rejected.is_empty(), "{a:?}");
    assert_eq!(t.rejected().count(), 1);
    // Fixed: a peer again.
    let a = t.apply(WatchEvent::Put(sl(
        "10.244.2.0-24",
        Some(attrs("198.18.0.2", 1, MAC)),
    )));
    assert!(matches!(a.events[..], [PeerEvent::Added(_)]));
    assert_eq!(t.rejected().count(), 0);
}

#[test]
fn two_leases_on_one_subnet_are_both_refused_until_one_goes() {
    let mut t = table();
    t.apply(WatchEvent::Put(sl(
        "10.244.2.0-24",
        Some(attrs("198.18.0.2", 1, MAC)),
    )));
    // The same v4 subnet under a dual-stack key.
    let a = t.apply(WatchEvent::Put(sl(
        "10.244.2.0-24&fd00:10:0:2::-64",
        Some(attrs("198.18.0.3", 1, MAC)),
    )));
    assert!(matches!(a.events[..], [PeerEvent::Removed(_)]), "{a:?}");
    assert_eq!(a.rejected.len(), 2);
    assert!(a.rejected.iter().all(|(_, r)| r.reason() == "overlap"));
    assert!(t.is_empty());
    assert_eq!(t.rejected().count(), 2);
    assert_eq!(t.rejected().collect::<Vec<_>>(), t.rejected_by_walk());
    let a = t.apply(WatchEvent::Delete(
        "10.244.2.0-24&fd00:10:0:2::-64".parse().unwrap(),
    ));
    assert!(
        matches!(&a.events[..], [PeerEvent::Added(l)] if l.key.to_string() == "10.244.2.0-24"),
        "{a:?}"
    );
    assert_eq!(t.len(), 1);
    assert_eq!(t.rejected().count(), 0, "the survivor is no longer refused");
}

#[test]
fn a_new_policy_rejudges_every_lease() {
    let mut t = table();
    t.apply(WatchEvent::Put(sl(
        "10.244.2.0-24",
        Some(attrs("198.18.0.2", 1, MAC)),
    )));
    let mut p = policy();
    p.protected.push("10.244.2.128/25".parse().unwrap());
    let a = t.set_policy(p);
    assert!(matches!(a.events[..], [PeerEvent::Removed(_)]));
    assert_eq!(a.rejected[0].1.reason(), "underlay-overlap");
    let a = t.set_policy(policy());
    assert!(matches!(a.events[..], [PeerEvent::Added(_)]));
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..=255, 0u8..=255, 0u8..=255, 0u8..=32)
            .prop_map(|(a, b, c, l)| format!("{a}.{b}.{c}.0-{l}")),
        (0u8..=255, 16u8..=26).prop_map(|(c, l)| format!("10.244.{c}.0-{l}")),
        (0u8..=255).prop_map(|c| format!("10.244.{c}.0-24&fd00:10:0:{c:x}::-64")),
        "[ -~]{0,30}",
    ]
}

fn arb_value() -> impl Strategy<Value = String> {
    let ip = prop_oneof![
        Just("198.18.0.1".to_string()),
        (0u8..=255, 0u8..=255).prop_map(|(a, b)| format!("{a}.18.0.{b}")),
        Just("0.0.0.0".to_string()),
        Just("not-an-ip".to_string()),
    ];
    let mac = prop_oneof![
        any::<[u8; 6]>().prop_map(|m| format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )),
        "[ -~]{0,20}",
    ];
    let backend = prop_oneof![Just("vxlan"), Just("wireguard"), Just("")];
    prop_oneof![
        (ip, backend, 0u32..3, mac).prop_map(|(ip, b, vni, mac)| format!(
            r#"{{"PublicIP":"{ip}","BackendType":"{b}","BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}}}}"#
        )),
        "[ -~]{0,60}",
    ]
}

proptest! {
    /// Whatever a store writer puts under the prefix, nothing that reaches the data plane
    /// routes outside Network, touches the underlay or our subnet, or carries a bad VTEP.
    #[test]
    fn nothing_hostile_becomes_a_peer(
        puts in proptest::collection::vec((arb_key(), arb_value()), 1..40),
        deletes in proptest::collection::vec(0usize..40, 0..10),
    ) {
        let mut t = table();
        let p = policy();
        let mut keys = Vec::new();
        for (k, v) in &puts {
            let Ok(key) = k.parse::<LeaseKey>() else { continue };
            keys.push(key);
            let attrs = serde_json::from_str::<LeaseAttrs>(v).ok();
            t.apply(WatchEvent::Put(StoredLease { key, attrs, reservation: false, mod_revision: 1 }));
        }
        for i in deletes {
            if let Some(k) = keys.get(i) {
                t.apply(WatchEvent::Delete(*k));
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut n = 0;
        for (k, a) in t.iter() {
            n += 1;
            let v4 = k.v4.expect("peer has a v4 subnet");
            prop_assert_eq!(v4.prefix(), 24);
            prop_assert!(IpNetwork::V4(p.ipv4.unwrap().0).contains(v4.network()));
            prop_assert!(p.protected.iter().all(|x| !overlaps(*x, v4)));
            prop_assert!(!overlaps(v4, "10.244.1.0/24".parse().unwrap()));
            prop_assert!(seen.insert(v4), "two peers on {}", v4);
            prop_assert!(unicast_v4(a.public_ip) && !p.local_addrs.contains(&IpAddr::V4(a.public_ip)));
            let d = a.vxlan_data().expect("vxlan data");
            prop_assert_eq!(d.vni, 1);
            prop_assert!(d.vtep_mac.parse::<Mac>().unwrap().is_unicast());
        }
        prop_assert_eq!(n, t.len());
        // The refused index lists what a walk of every lease finds, before and after
        // everything is judged again.
        prop_assert_eq!(t.rejected().collect::<Vec<_>>(), t.rejected_by_walk());
        let mut stricter = policy();
        stricter.protected.push("10.244.128.0/17".parse().unwrap());
        t.set_policy(stricter);
        prop_assert_eq!(t.rejected().collect::<Vec<_>>(), t.rejected_by_walk());
        t.set_policy(policy());
        prop_assert_eq!(t.rejected().collect::<Vec<_>>(), t.rejected_by_walk());
        // The typed entries are the same peers, parsed once.
        let entries: Vec<_> = t.entries().collect();
        prop_assert_eq!(entries.len(), n);
        for ((k, a), e) in t.iter().zip(entries) {
            prop_assert_eq!(Some(e.subnet), k.v4);
            prop_assert_eq!(e.public_ip, IpAddr::V4(a.public_ip));
        }
    }
}

fn host_gw_policy() -> LeasePolicy {
    LeasePolicy {
        backend_type: "host-gw".into(),
        onlink: Some(vec![
            "198.18.0.0/24".parse().unwrap(),
            "2001:2::/64".parse().unwrap(),
        ]),
        ..dual_policy()
    }
}

#[test]
fn host_gw_lease_is_a_route_via_its_public_ip() {
    let p = host_gw_policy();
    let key: LeaseKey = "10.244.2.0-24&fd00:10:0:2::-64".parse().unwrap();
    // As flanneld writes it: no BackendData at all.
    let a: LeaseAttrs = serde_json::from_str(
        r#"{"PublicIP":"198.18.0.2","PublicIPv6":"2001:2::2","BackendType":"host-gw"}"#,
    )
    .unwrap();
    let Verdict::Usable(e) = p.check(&key, Some(&a), None) else {
        panic!("usable");
    };
    let (v4, v6) = (e.v4.unwrap(), e.v6.unwrap());
    assert_eq!((v4.mac, v6.mac), (None, None), "no VTEP");
    assert_eq!(v4.public_ip.to_string(), "198.18.0.2");
    assert_eq!(v6.public_ip.to_string(), "2001:2::2");
    // A vxlan lease is not a host-gw node's peer, as flanneld ignores it.
    let vx = dual("2001:2::2", 1, MAC6);
    assert!(matches!(
        p.check(&key, Some(&vx), None),
        Verdict::Rejected(Rejection::BackendType { .. })
    ));
}

#[test]
fn host_gw_peer_off_our_link_is_refused_by_name() {
    let p = host_gw_policy();
    let key: LeaseKey = "10.244.2.0-24&fd00:10:0:2::-64".parse().unwrap();
    let lease = |ip: &str, ip6: &str| LeaseAttrs {
        public_ipv6: Some(ip6.parse().unwrap()),
        ..LeaseAttrs::host_gw(ip.parse().unwrap())
    };
    for (ip, ip6, off) in [
        ("198.19.1.2", "2001:2::2", "198.19.1.2"),
        ("198.18.0.2", "2001:2:0:9::2", "2001:2:0:9::2"),
    ] {
        match p.check(&key, Some(&lease(ip, ip6)), None) {
            Verdict::Rejected(r) => {
                assert_eq!(r.reason(), "not-on-link");
                assert!(r.to_string().contains(off), "{r}");
            }
            v => panic!("{ip} {ip6}: {v:?}"),
        }
    }
    // Without IPv6 on, only the v4 half is judged.
    let v4_only = LeasePolicy {
        ipv6: None,
        ..host_gw_policy()
    };
    assert!(matches!(
        v4_only.check(&key, Some(&lease("198.18.0.2", "2001:2:0:9::2")), None),
        Verdict::Usable(_)
    ));
}
