//! The central shape: an ExaBGP `process` is told, on stdout, where every node's pod
//! network is. These are the API lines ExaBGP turns into updates; the feed that watches the
//! store and prints them is `twilld exabgp-feed`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use twill_store::{PeerEntries, PeerEvent};

/// What the speaker was told so far: each announced subnet and its next hop, both
/// families of a dual-stack lease (its IPv6 subnet via its PublicIPv6).
pub type Announced = BTreeMap<IpNetwork, IpAddr>;

/// The API lines that bring the speaker from `announced` to after `events` (pure).
pub fn feed_lines(announced: &mut Announced, events: &[PeerEvent]) -> Vec<String> {
    let mut out = Vec::new();
    let mut withdrawn = Vec::new();
    let mut announce = |a: &mut Announced, e: &PeerEntries| {
        for p in e.iter() {
            if a.insert(p.subnet, p.public_ip) != Some(p.public_ip) {
                out.push(format!(
                    "announce route {} next-hop {}",
                    p.subnet, p.public_ip
                ));
            }
        }
    };
    let mut withdraw = |a: &mut Announced, e: &PeerEntries, keep: &PeerEntries| {
        for p in e.iter() {
            if keep.iter().any(|k| k.subnet == p.subnet) {
                continue;
            }
            if let Some(hop) = a.remove(&p.subnet) {
                withdrawn.push(format!("withdraw route {} next-hop {hop}", p.subnet));
            }
        }
    };
    let none = PeerEntries::default();
    for ev in events {
        match ev {
            PeerEvent::Added(l) => announce(announced, &l.entries),
            PeerEvent::Changed { new, old } => {
                withdraw(announced, &old.entries, &new.entries);
                announce(announced, &new.entries);
            }
            PeerEvent::Removed(l) => withdraw(announced, &l.entries, &none),
        }
    }
    withdrawn.extend(out);
    withdrawn
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_store::{Lease, LeaseAttrs, LeaseKey};

    fn lease(subnet: &str, hop: &str) -> Lease {
        let key = LeaseKey::v4(subnet.parse().unwrap());
        let attrs = LeaseAttrs::vxlan(hop.parse().unwrap(), 1, "0a:00:00:00:00:01");
        Lease::parse(key, attrs).unwrap().unwrap()
    }

    #[test]
    fn leases_become_announcements_and_withdrawals() {
        let mut a = Announced::new();
        let l1 = lease("10.244.1.0/24", "198.18.0.1");
        let l2 = lease("10.244.2.0/24", "198.18.0.2");
        assert_eq!(
            feed_lines(
                &mut a,
                &[PeerEvent::Added(l1.clone()), PeerEvent::Added(l2.clone())]
            ),
            [
                "announce route 10.244.1.0/24 next-hop 198.18.0.1",
                "announce route 10.244.2.0/24 next-hop 198.18.0.2"
            ]
        );
        // The node moved: one announcement replaces the route.
        let moved = lease("10.244.1.0/24", "198.18.0.9");
        assert_eq!(
            feed_lines(
                &mut a,
                &[PeerEvent::Changed {
                    new: moved,
                    old: l1
                }]
            ),
            ["announce route 10.244.1.0/24 next-hop 198.18.0.9"]
        );
        assert_eq!(
            feed_lines(&mut a, &[PeerEvent::Removed(l2)]),
            ["withdraw route 10.244.2.0/24 next-hop 198.18.0.2"]
        );
        // Nothing new: nothing said.
        let again = lease("10.244.1.0/24", "198.18.0.9");
        assert!(feed_lines(&mut a, &[PeerEvent::Added(again)]).is_empty());
        assert_eq!(a.len(), 1);
    }
}
