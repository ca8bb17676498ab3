//! The peer table: what every other node has leased, kept in step with the store by
//! snapshots and incremental events, and turned into added/changed/removed events for the
//! data plane. Pure; both stores (etcd, Kubernetes) feed it the same way.

use std::collections::BTreeMap;

use crate::lease::{LeaseAttrs, LeaseKey, StoredLease};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: LeaseKey,
    pub attrs: LeaseAttrs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    Added(Lease),
    /// The new lease, and the attributes it replaced (their FDB entry must go).
    Changed {
        new: Lease,
        old: LeaseAttrs,
    },
    /// Carries the last attributes seen, which removal needs (the VTEP MAC of the FDB entry).
    Removed(Lease),
}

/// What a store's watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The complete current set (initial list, or a re-list after compaction or a lost
    /// watch): anything not in it is gone.
    Snapshot(Vec<StoredLease>),
    Put(StoredLease),
    Delete(LeaseKey),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub events: Vec<PeerEvent>,
    /// Our own lease vanished or was taken over: the daemon must re-acquire.
    pub own_lost: bool,
}

#[derive(Debug, Default)]
pub struct PeerTable {
    own: Option<(LeaseKey, LeaseAttrs)>,
    peers: BTreeMap<LeaseKey, LeaseAttrs>,
}

impl PeerTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the lease we hold. If it was known as a peer it stops being one.
    pub fn set_own(&mut self, key: LeaseKey, attrs: LeaseAttrs) -> Vec<PeerEvent> {
        let removed = self
            .peers
            .remove(&key)
            .map(|old| PeerEvent::Removed(Lease { key, attrs: old }));
        self.own = Some((key, attrs));
        removed.into_iter().collect()
    }

    pub fn own(&self) -> Option<&LeaseKey> {
        self.own.as_ref().map(|(k, _)| k)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&LeaseKey, &LeaseAttrs)> {
        self.peers.iter()
    }

    pub fn get(&self, key: &LeaseKey) -> Option<&LeaseAttrs> {
        self.peers.get(key)
    }

    pub fn apply(&mut self, ev: WatchEvent) -> Applied {
        let mut out = Applied::default();
        match ev {
            WatchEvent::Put(l) => self.put(l, &mut out),
            WatchEvent::Delete(key) => self.delete(key, &mut out),
            WatchEvent::Snapshot(all) => {
                let present: std::collections::HashSet<LeaseKey> =
                    all.iter().map(|l| l.key).collect();
                let gone: Vec<LeaseKey> = self
                    .peers
                    .keys()
                    .filter(|k| !present.contains(k))
                    .copied()
                    .collect();
                for k in gone {
                    self.delete(k, &mut out);
                }
                if let Some((own, _)) = &self.own {
                    if !present.contains(own) {
                        out.own_lost = true;
                    }
                }
                for l in all {
                    self.put(l, &mut out);
                }
            }
        }
        out
    }

    fn put(&mut self, l: StoredLease, out: &mut Applied) {
        if let Some((own, mine)) = &self.own {
            if *own == l.key {
                match &l.attrs {
                    Some(a) if a.public_ip == mine.public_ip => return,
                    // Someone else wrote our key (a flanneld doing a blind Put): it is
                    // theirs now, and we must move.
                    _ => {
                        out.own_lost = true;
                        self.own = None;
                    }
                }
            }
        }
        let Some(attrs) = l.attrs else {
            // Unreadable value: not a usable peer. Drop what we had for it.
            self.delete(l.key, out);
            return;
        };
        let lease = Lease {
            key: l.key,
            attrs: attrs.clone(),
        };
        match self.peers.insert(l.key, attrs) {
            None => out.events.push(PeerEvent::Added(lease)),
            Some(old) if old != lease.attrs => {
                out.events.push(PeerEvent::Changed { new: lease, old })
            }
            Some(_) => {}
        }
    }

    fn delete(&mut self, key: LeaseKey, out: &mut Applied) {
        if self.own.as_ref().is_some_and(|(k, _)| *k == key) {
            out.own_lost = true;
            return;
        }
        if let Some(attrs) = self.peers.remove(&key) {
            out.events.push(PeerEvent::Removed(Lease { key, attrs }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sl(key: &str, ip: &str, mac: &str) -> StoredLease {
        StoredLease {
            key: key.parse().unwrap(),
            attrs: Some(LeaseAttrs::vxlan(ip.parse().unwrap(), 1, mac)),
            etcd_lease: 1,
            mod_revision: 1,
        }
    }

    fn kinds(a: &Applied) -> Vec<String> {
        a.events
            .iter()
            .map(|e| match e {
                PeerEvent::Added(l) => format!("+{}", l.key),
                PeerEvent::Changed { new, .. } => format!("~{}", new.key),
                PeerEvent::Removed(l) => format!("-{}", l.key),
            })
            .collect()
    }

    #[test]
    fn put_change_delete() {
        let mut t = PeerTable::new();
        let a = t.apply(WatchEvent::Put(sl(
            "10.0.1.0-24",
            "198.18.0.1",
            "aa:00:00:00:00:01",
        )));
        assert_eq!(kinds(&a), ["+10.0.1.0-24"]);
        let a = t.apply(WatchEvent::Put(sl(
            "10.0.1.0-24",
            "198.18.0.1",
            "aa:00:00:00:00:01",
        )));
        assert!(a.events.is_empty(), "identical re-put is not an event");
        let a = t.apply(WatchEvent::Put(sl(
            "10.0.1.0-24",
            "198.18.0.1",
            "aa:00:00:00:00:02",
        )));
        assert_eq!(kinds(&a), ["~10.0.1.0-24"]);
        let a = t.apply(WatchEvent::Delete("10.0.1.0-24".parse().unwrap()));
        assert_eq!(kinds(&a), ["-10.0.1.0-24"]);
        match &a.events[0] {
            PeerEvent::Removed(l) => {
                assert_eq!(l.attrs.vxlan_data().unwrap().vtep_mac, "aa:00:00:00:00:02")
            }
            _ => unreachable!(),
        }
        assert!(t.is_empty());
    }

    #[test]
    fn snapshot_diffs_against_table() {
        let mut t = PeerTable::new();
        t.apply(WatchEvent::Put(sl(
            "10.0.1.0-24",
            "198.18.0.1",
            "aa:00:00:00:00:01",
        )));
        t.apply(WatchEvent::Put(sl(
            "10.0.2.0-24",
            "198.18.0.2",
            "aa:00:00:00:00:02",
        )));
        let a = t.apply(WatchEvent::Snapshot(vec![
            sl("10.0.2.0-24", "198.18.0.2", "aa:00:00:00:00:02"),
            sl("10.0.3.0-24", "198.18.0.3", "aa:00:00:00:00:03"),
        ]));
        assert_eq!(kinds(&a), ["-10.0.1.0-24", "+10.0.3.0-24"]);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn own_lease_is_not_a_peer_and_its_loss_is_reported() {
        let mut t = PeerTable::new();
        let me = sl("10.0.5.0-24", "198.18.0.5", "aa:00:00:00:00:05");
        t.set_own(me.key, me.attrs.clone().unwrap());
        let a = t.apply(WatchEvent::Put(me.clone()));
        assert!(a.events.is_empty() && !a.own_lost);
        let a = t.apply(WatchEvent::Delete(me.key));
        assert!(a.events.is_empty() && a.own_lost);
        let a = t.apply(WatchEvent::Snapshot(vec![]));
        assert!(a.own_lost, "a snapshot without our key means it is gone");
    }

    #[test]
    fn own_key_overwritten_by_another_node_becomes_a_peer() {
        let mut t = PeerTable::new();
        let me = sl("10.0.5.0-24", "198.18.0.5", "aa:00:00:00:00:05");
        t.set_own(me.key, me.attrs.clone().unwrap());
        let a = t.apply(WatchEvent::Put(sl(
            "10.0.5.0-24",
            "198.18.0.9",
            "aa:00:00:00:00:09",
        )));
        assert!(a.own_lost);
        assert_eq!(kinds(&a), ["+10.0.5.0-24"]);
        assert!(t.own().is_none());
    }

    #[test]
    fn unreadable_value_removes_a_known_peer() {
        let mut t = PeerTable::new();
        t.apply(WatchEvent::Put(sl(
            "10.0.1.0-24",
            "198.18.0.1",
            "aa:00:00:00:00:01",
        )));
        let mut bad = sl("10.0.1.0-24", "198.18.0.1", "x");
        bad.attrs = None;
        let a = t.apply(WatchEvent::Put(bad));
        assert_eq!(kinds(&a), ["-10.0.1.0-24"]);
    }
}
