//! The central shape: an ExaBGP `process` is told, on stdout, where every node's pod
//! network is. These are the API lines ExaBGP turns into updates; the feed that watches the
//! store and prints them is `twilld exabgp-feed`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use twill_store::PeerEvent;

/// What the speaker was told so far: each announced subnet and its next hop.
pub type Announced = BTreeMap<Ipv4Network, Ipv4Addr>;

/// The API lines that bring the speaker from `announced` to after `events` (pure).
pub fn feed_lines(announced: &mut Announced, events: &[PeerEvent]) -> Vec<String> {
    let mut out = Vec::new();
    let mut announce = |a: &mut Announced, net: Ipv4Network, hop: Ipv4Addr| {
        if a.insert(net, hop) != Some(hop) {
            out.push(format!("announce route {net} next-hop {hop}"));
        }
    };
    let mut withdrawn = Vec::new();
    for ev in events {
        match ev {
            PeerEvent::Added(l) => announce(announced, l.entry.subnet, l.entry.public_ip),
            PeerEvent::Changed { new, old } => {
                if old.entry.subnet != new.entry.subnet {
                    if let Some(hop) = announced.remove(&old.entry.subnet) {
                        withdrawn.push(format!(
                            "withdraw route {} next-hop {hop}",
                            old.entry.subnet
                        ));
                    }
                }
                announce(announced, new.entry.subnet, new.entry.public_ip);
            }
            PeerEvent::Removed(l) => {
                if let Some(hop) = announced.remove(&l.entry.subnet) {
                    withdrawn.push(format!("withdraw route {} next-hop {hop}", l.entry.subnet));
                }
            }
        }
    }
    withdrawn.extend(out);
    withdrawn
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_store::{Lease, LeaseAttrs, LeaseKey, PeerEntry};

    fn lease(subnet: &str, hop: &str) -> Lease {
        let key = LeaseKey::v4(subnet.parse().unwrap());
        let attrs = LeaseAttrs::vxlan(hop.parse().unwrap(), 1, "0a:00:00:00:00:01");
        let entry = PeerEntry::of(&key, &attrs).unwrap().unwrap();
        Lease { key, attrs, entry }
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
