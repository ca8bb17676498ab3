use super::*;
use crate::lease::LeaseAttrs;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn conf(json: &str) -> NetConf {
    NetConf::parse(json).unwrap().0
}

/// `ttl`: written with a TTL; without one it is a reservation.
fn lease(key: &str, ip: &str, ttl: bool) -> StoredLease {
    StoredLease {
        key: key.parse().unwrap(),
        attrs: Some(LeaseAttrs::vxlan(
            ip.parse().unwrap(),
            1,
            "aa:bb:cc:dd:ee:ff",
        )),
        reservation: !ttl,
        mod_revision: 7,
    }
}

fn none() -> LeaseKey {
    LeaseKey { v4: None, v6: None }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

fn overlap(a: IpNetwork, b: IpNetwork) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

const ME: &str = "198.18.0.3";

#[test]
fn reuses_own_lease_by_public_ip() {
    let c = conf(r#"{"Network":"10.244.0.0/16"}"#);
    let leases = [
        lease("10.244.9.0-24", "198.18.0.9", true),
        lease("10.244.3.0-24", ME, true),
    ];
    let (p, stale) = plan(
        &c,
        &leases,
        ME.parse().unwrap(),
        none(),
        &HashSet::new(),
        &mut rng(),
    )
    .unwrap();
    assert_eq!(
        p,
        Plan::Reuse {
            key: "10.244.3.0-24".parse().unwrap(),
            mod_revision: 7,
            source: PlanSource::OwnLease
        }
    );
    assert!(stale.is_empty());
}

#[test]
fn own_lease_that_no_longer_fits_is_stale_and_replaced() {
    let c = conf(r#"{"Network":"10.244.0.0/16","SubnetLen":25}"#);
    let leases = [lease("10.244.3.0-24", ME, true)];
    let (p, stale) = plan(
        &c,
        &leases,
        ME.parse().unwrap(),
        none(),
        &HashSet::new(),
        &mut rng(),
    )
    .unwrap();
    assert!(matches!(
        p,
        Plan::Create {
            source: PlanSource::Random,
            ..
        }
    ));
    let got = p.key().v4.unwrap();
    assert_eq!(got.prefix(), 25);
    assert!(
        !overlap(got, "10.244.3.0/24".parse().unwrap()),
        "the stale subnet is still taken until deleted"
    );
    assert_eq!(stale, leases.to_vec());
}

#[test]
fn reservation_for_us_is_used_and_others_are_never_taken() {
    let c =
        conf(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0"}"#);
    let leases = [lease("10.244.1.0-24", "198.18.0.50", false)];
    // The only free subnet is .2; the reservation of someone else is honoured.
    for seed in 0..20 {
        let (p, _) = plan(
            &c,
            &leases,
            ME.parse().unwrap(),
            none(),
            &HashSet::new(),
            &mut StdRng::seed_from_u64(seed),
        )
        .unwrap();
        assert_eq!(p.key().to_string(), "10.244.2.0-24");
    }
    // The reserved node itself gets its reservation, without needing a TTL.
    let (p, _) = plan(
        &c,
        &leases,
        "198.18.0.50".parse().unwrap(),
        none(),
        &HashSet::new(),
        &mut rng(),
    )
    .unwrap();
    assert!(matches!(
        p,
        Plan::Reuse {
            source: PlanSource::Reservation,
            ..
        }
    ));
}

#[test]
fn reservation_beats_own_ttl_lease() {
    let c = conf(r#"{"Network":"10.244.0.0/16"}"#);
    let leases = [
        lease("10.244.3.0-24", ME, true),
        lease("10.244.4.0-24", ME, false),
    ];
    let (p, _) = plan(
        &c,
        &leases,
        ME.parse().unwrap(),
        none(),
        &HashSet::new(),
        &mut rng(),
    )
    .unwrap();
    assert_eq!(p.key().to_string(), "10.244.4.0-24");
}

#[test]
fn turning_ipv6_on_keeps_the_ipv4_subnet_of_our_v4_only_lease() {
    let c = conf(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56"}"#);
    let old = lease("10.244.3.0-24", ME, true);
    let (p, stale) = plan(
        &c,
        std::slice::from_ref(&old),
        ME.parse().unwrap(),
        old.key,
        &HashSet::new(),
        &mut rng(),
    )
    .unwrap();
    assert_eq!(stale, [old], "the v4-only key goes");
    let key = p.key();
    assert_eq!(key.v4, Some("10.244.3.0/24".parse().unwrap()));
    assert!(key.v6.is_some_and(|n| n.prefix() == 64));

    // Someone else's lease on it is another matter.
    let theirs = lease("10.244.3.0-24", "198.18.0.9", true);
    let (p, _) = plan(
        &c,
        &[theirs],
        ME.parse().unwrap(),
        old_key(),
        &HashSet::new(),
        &mut rng(),
    )
    .unwrap();
    assert_ne!(p.key().v4, Some("10.244.3.0/24".parse().unwrap()));
}

fn old_key() -> LeaseKey {
    "10.244.3.0-24".parse().unwrap()
}

#[test]
fn previous_subnet_is_preferred_when_free() {
    let c = conf(r#"{"Network":"10.244.0.0/16"}"#);
    let prev = LeaseKey::v4("10.244.77.0/24".parse().unwrap());
    let (p, _) = plan(
        &c,
        &[],
        ME.parse().unwrap(),
        prev,
        &HashSet::new(),
        &mut rng(),
    )
    .unwrap();
    assert_eq!(
        p,
        Plan::Create {
            key: prev,
            source: PlanSource::PreviousSubnet
        }
    );
    // ...but never when someone else holds it (flannel #1289).
    let leases = [lease("10.244.77.0-24", "198.18.0.77", true)];
    let (p, _) = plan(
        &c,
        &leases,
        ME.parse().unwrap(),
        prev,
        &HashSet::new(),
        &mut rng(),
    )
    .unwrap();
    assert_ne!(p.key(), &prev);
    assert_eq!(p.key().v4.unwrap().prefix(), 24);
}

#[test]
fn previous_subnet_outside_config_is_ignored() {
    let c = conf(r#"{"Network":"10.244.0.0/16"}"#);
    let prev = LeaseKey::v4("10.99.1.0/24".parse().unwrap());
    let (p, _) = plan(
        &c,
        &[],
        ME.parse().unwrap(),
        prev,
        &HashSet::new(),
        &mut rng(),
    )
    .unwrap();
    assert!(matches!(
        p,
        Plan::Create {
            source: PlanSource::Random,
            ..
        }
    ));
}

#[test]
fn excluded_keys_are_avoided() {
    let c = conf(r#"{"Network":"10.0.0.0/22"}"#); // three leasable /24s: .1 .2 .3
    let mut ex = HashSet::new();
    ex.insert("10.0.1.0-24".parse().unwrap());
    ex.insert("10.0.3.0-24".parse().unwrap());
    let (p, _) = plan(&c, &[], ME.parse().unwrap(), none(), &ex, &mut rng()).unwrap();
    assert_eq!(p.key().to_string(), "10.0.2.0-24");
}

#[test]
fn exhaustion_names_network_range_and_count() {
    let c = conf(r#"{"Network":"10.0.0.0/22"}"#);
    let leases = [
        lease("10.0.1.0-24", "198.18.0.1", true),
        lease("10.0.2.0-24", "198.18.0.2", true),
        lease("10.0.3.0-24", "198.18.0.4", false),
    ];
    let e = plan(
        &c,
        &leases,
        ME.parse().unwrap(),
        none(),
        &HashSet::new(),
        &mut rng(),
    )
    .unwrap_err();
    let msg = e.to_string();
    for want in [
        "10.0.0.0/22",
        "SubnetMin 10.0.1.0",
        "SubnetMax 10.0.3.0",
        "3 leases",
    ] {
        assert!(msg.contains(want), "{msg}");
    }
}

#[test]
fn overlapping_lease_of_another_length_blocks_subnets() {
    let c = conf(r#"{"Network":"10.0.0.0/22"}"#);
    let leases = [lease("10.0.2.0-23", "198.18.0.1", true)]; // covers .2 and .3
    let (p, _) = plan(
        &c,
        &leases,
        ME.parse().unwrap(),
        none(),
        &HashSet::new(),
        &mut rng(),
    )
    .unwrap();
    assert_eq!(p.key().to_string(), "10.0.1.0-24");
}

#[test]
fn choice_is_spread_over_the_range() {
    let c = conf(r#"{"Network":"10.244.0.0/16"}"#);
    let mut seen = HashSet::new();
    let mut r = rng();
    for _ in 0..200 {
        let (p, _) = plan(
            &c,
            &[],
            ME.parse().unwrap(),
            none(),
            &HashSet::new(),
            &mut r,
        )
        .unwrap();
        seen.insert(p.key().v4.unwrap());
    }
    // flannel only ever picks among the first 100 free subnets; we draw from all 255.
    assert!(seen.iter().any(|n| match n.ip() {
        IpAddr::V4(a) => a.octets()[2] > 200,
        IpAddr::V6(_) => false,
    }));
    assert!(seen.len() > 100, "{}", seen.len());
}

#[test]
fn dual_stack_allocates_both_families() {
    let c = conf(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/32"}"#);
    let (p, _) = plan(
        &c,
        &[],
        ME.parse().unwrap(),
        none(),
        &HashSet::new(),
        &mut rng(),
    )
    .unwrap();
    let k = p.key();
    assert_eq!(k.v4.unwrap().prefix(), 24);
    assert_eq!(k.v6.unwrap().prefix(), 64);
    assert!(c.fits(k.v4.as_ref(), k.v6.as_ref()));
}

proptest! {
    /// Any set of existing leases: the plan is a fitting subnet that overlaps none of them,
    /// or exhaustion exactly when no such subnet exists.
    #[test]
    fn plan_never_overlaps(prefix in 20u8..=26, extra in 0u8..=4, taken in proptest::collection::vec(any::<u16>(), 0..80), seed in any::<u64>()) {
        let len = prefix + 2 + extra.min(30 - prefix - 2);
        let c = conf(&format!(r#"{{"Network":"10.0.0.0/{prefix}","SubnetLen":{len}}}"#));
        let r = c.ipv4.clone().unwrap();
        let leases: Vec<StoredLease> = taken.iter().map(|t| {
            let n = r.nth(*t as u128 % r.count());
            lease(&LeaseKey::v4(n).to_string(), "198.18.1.1", true)
        }).collect();
        let distinct: HashSet<_> = leases.iter().map(|l| l.key).collect();
        match plan(&c, &leases, ME.parse().unwrap(), none(), &HashSet::new(), &mut StdRng::seed_from_u64(seed)) {
            Ok((p, _)) => {
                let k = p.key().v4.unwrap();
                prop_assert!(r.fits(&k));
                prop_assert!(leases.iter().all(|l| !overlap(l.key.v4.unwrap(), k)));
            }
            Err(AllocError::Exhausted { .. }) => prop_assert_eq!(distinct.len() as u128, r.count()),
        }
    }
}
