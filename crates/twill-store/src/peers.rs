//! The peer table: what every other node has leased, kept in step with the store by
//! snapshots and incremental events, and turned into added/changed/removed events for the
//! data plane. Pure; both stores (etcd, Kubernetes) feed it the same way.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ipnetwork::IpNetwork;

use crate::entry::{PeerEntries, PeerEntry, VtepMacs};
use crate::lease::{LeaseAttrs, LeaseKey, StoredLease};
use crate::rejection::Rejection;
use crate::validate::{claims, LeasePolicy, Verdict};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: LeaseKey,
    pub attrs: LeaseAttrs,
    /// The lease as the data plane programs it (a peer per family), parsed once when it
    /// was judged.
    pub entries: PeerEntries,
}

impl Lease {
    /// The lease as a peer of both families, parsed but not judged (no policy): `Ok(None)`
    /// for a reservation. What the table does after `LeasePolicy` found it usable.
    pub fn parse(key: LeaseKey, attrs: LeaseAttrs) -> Result<Option<Lease>, Rejection> {
        Ok(PeerEntries::of(&key, &attrs)?.map(|entries| Lease {
            key,
            attrs,
            entries,
        }))
    }
}

// Events live for one batch; boxing `Changed` would cost an allocation per change to save
// a few hundred bytes of a short Vec.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    Added(Lease),
    /// The new lease, and the one it replaced (its FDB entry must go).
    Changed {
        new: Lease,
        old: Lease,
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
    /// Leases refused by this change (newly, or for another reason than before): each is
    /// reported once, not on every re-list.
    pub rejected: Vec<(LeaseKey, Rejection)>,
}

/// One lease as the table keeps it: kept small, there is one per node of the cluster.
#[derive(Debug)]
struct Entry {
    /// `None`: the value is not lease JSON.
    attrs: Option<LeaseAttrs>,
    /// Judged on its own: usable, with these VTEP MACs. The rest of its entries (subnet,
    /// VTEP address, PublicIP) is the key's and the attrs', so it is not kept twice.
    usable: Option<VtepMacs>,
    /// Why it is not a peer: judged on its own, or (usable, but) sharing its subnet with
    /// another lease. Neither this nor `usable`: a reservation.
    refused: Option<Box<Rejection>>,
}

impl Entry {
    fn new(attrs: Option<LeaseAttrs>, verdict: Verdict) -> Self {
        let (usable, refused) = match verdict {
            Verdict::Usable(e) => (Some(e.macs()), None),
            Verdict::Pending => (None, None),
            Verdict::Rejected(r) => (None, Some(Box::new(r))),
        };
        Entry {
            attrs,
            usable,
            refused,
        }
    }

    /// The entries the lease was judged usable as (whether or not it is a peer now).
    fn usable_entries(&self, key: &LeaseKey) -> Option<PeerEntries> {
        let (Some(macs), Some(a)) = (self.usable, &self.attrs) else {
            return None;
        };
        Some(macs.entries(key, a))
    }

    /// How the lease was judged on its own.
    fn verdict(&self, key: &LeaseKey) -> Verdict {
        match (self.usable_entries(key), &self.refused) {
            (Some(e), _) => Verdict::Usable(e),
            (None, Some(r)) => Verdict::Rejected((**r).clone()),
            (None, None) => Verdict::Pending,
        }
    }

    fn is_peer(&self) -> bool {
        self.usable.is_some() && self.refused.is_none() && self.attrs.is_some()
    }

    fn peer_entries(&self, key: &LeaseKey) -> Option<PeerEntries> {
        self.usable_entries(key).filter(|_| self.is_peer())
    }

    fn lease(&self, key: LeaseKey) -> Option<Lease> {
        Some(Lease {
            key,
            attrs: self.attrs.clone()?,
            entries: self.peer_entries(&key)?,
        })
    }
}

/// Every lease of the store but ours, each either a peer or refused with a reason. Only
/// peers produce events, so nothing refused reaches the data plane; a peer whose lease
/// turns bad is removed like a deleted one.
#[derive(Debug, Default)]
pub struct PeerTable {
    own: Option<(LeaseKey, LeaseAttrs)>,
    /// `None` accepts every well-formed lease (tests of the store alone).
    policy: Option<LeasePolicy>,
    entries: BTreeMap<LeaseKey, Entry>,
    peers: usize,
    /// Which usable leases claim each IPv6 subnet, as (subnet, key) pairs. IPv4 needs no
    /// index: keys order by their v4 subnet first, so the leases of one v4 subnet sit
    /// side by side in `entries` (10 000 peers would otherwise pay ~2 MB for it). Two
    /// leases on one subnet are both refused: which one is real can't be told from here,
    /// and every node must decide the same way.
    claims_v6: BTreeSet<(IpNetwork, LeaseKey)>,
    /// The refused leases' keys: the daemon lists them after every change, which walking
    /// `entries` made cost O(peers) per lease event (a fifth of its CPU per put at 10 000).
    refused: BTreeSet<LeaseKey>,
}

impl PeerTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_policy(policy: LeasePolicy) -> Self {
        PeerTable {
            policy: Some(policy),
            ..Self::default()
        }
    }

    pub fn policy(&self) -> Option<&LeasePolicy> {
        self.policy.as_ref()
    }

    /// Judges every lease again under `policy` (the underlay or the config changed).
    pub fn set_policy(&mut self, policy: LeasePolicy) -> Applied {
        if self.policy.as_ref() == Some(&policy) {
            return Applied::default();
        }
        self.policy = Some(policy);
        self.rejudge_all()
    }

    /// Sets the lease we hold. If it was known as a peer it stops being one, and so does
    /// any lease overlapping it.
    pub fn set_own(&mut self, key: LeaseKey, attrs: LeaseAttrs) -> Applied {
        let mut out = Applied::default();
        if let Some(e) = self.entries.get(&key) {
            let was = e.lease(key);
            self.forget(key);
            if let Some(l) = was {
                out.events.push(PeerEvent::Removed(l));
            }
        }
        self.own = Some((key, attrs));
        let rest = self.rejudge_all();
        out.events.extend(rest.events);
        out.rejected = rest.rejected;
        out
    }

    pub fn own(&self) -> Option<&LeaseKey> {
        self.own.as_ref().map(|(k, _)| k)
    }

    /// Number of peers (refused leases not counted).
    pub fn len(&self) -> usize {
        self.peers
    }

    pub fn is_empty(&self) -> bool {
        self.peers == 0
    }

    /// The peers, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&LeaseKey, &LeaseAttrs)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.is_peer())
            .filter_map(|(k, e)| e.attrs.as_ref().map(|a| (k, a)))
    }

    /// The peers as the data plane programs them, both families, in key order.
    pub fn entries(&self) -> impl Iterator<Item = PeerEntry> + '_ {
        self.entries
            .iter()
            .filter_map(|(k, e)| e.peer_entries(k))
            .flat_map(|p| p.iter())
    }

    pub fn get(&self, key: &LeaseKey) -> Option<&LeaseAttrs> {
        self.entries
            .get(key)
            .filter(|e| e.is_peer())
            .and_then(|e| e.attrs.as_ref())
    }

    /// The leases refused right now, with why.
    pub fn rejected(&self) -> impl Iterator<Item = (&LeaseKey, &Rejection)> {
        self.refused.iter().filter_map(|k| {
            let r = self.entries.get(k)?.refused.as_deref()?;
            Some((k, r))
        })
    }

    /// `rejected()` the slow way, for tests of the index it keeps.
    #[cfg(test)]
    pub(crate) fn rejected_by_walk(&self) -> Vec<(&LeaseKey, &Rejection)> {
        self.entries
            .iter()
            .filter_map(|(k, e)| e.refused.as_deref().map(|r| (k, r)))
            .collect()
    }

    pub fn apply(&mut self, ev: WatchEvent) -> Applied {
        let mut out = Applied::default();
        match ev {
            WatchEvent::Put(l) => self.put(l, &mut out),
            WatchEvent::Delete(key) => self.delete(key, &mut out),
            WatchEvent::Snapshot(all) => {
                let present: HashSet<LeaseKey> = all.iter().map(|l| l.key).collect();
                let gone: Vec<LeaseKey> = self
                    .entries
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
                    Some(a) if a.node_ip() == mine.node_ip() => return,
                    // Someone else wrote our key (a flanneld doing a blind Put): it is
                    // theirs now, and we must move.
                    _ => {
                        out.own_lost = true;
                        self.own = None;
                    }
                }
            }
        }
        if self.entries.get(&l.key).is_some_and(|e| e.attrs == l.attrs) {
            return;
        }
        let key = l.key;
        let group = self.group_of(&key);
        let before = self.standing(&group);
        self.forget(key);
        let verdict = match &self.policy {
            Some(p) => p.check(&key, l.attrs.as_ref(), self.own()),
            None => match l.attrs.as_ref().map(|a| PeerEntries::of(&key, a)) {
                None => Verdict::Rejected(Rejection::Malformed),
                Some(Ok(Some(e))) => Verdict::Usable(e),
                Some(Ok(None)) => Verdict::Pending,
                Some(Err(r)) => Verdict::Rejected(r),
            },
        };
        self.remember(key, l.attrs, verdict);
        self.settle(&group, before, out);
    }

    fn delete(&mut self, key: LeaseKey, out: &mut Applied) {
        if self.own.as_ref().is_some_and(|(k, _)| *k == key) {
            out.own_lost = true;
            return;
        }
        if !self.entries.contains_key(&key) {
            return;
        }
        let group = self.group_of(&key);
        let before = self.standing(&group);
        self.forget(key);
        self.settle(&group, before, out);
    }

    /// `key` and every lease sharing a subnet with it: all whose standing a change of
    /// `key` can alter.
    fn group_of(&self, key: &LeaseKey) -> Vec<LeaseKey> {
        let mut g = vec![*key];
        for s in claims(key, self.policy.as_ref()) {
            for k in self.claimants(s) {
                if !g.contains(k) {
                    g.push(*k);
                }
            }
        }
        g
    }

    /// The usable leases claiming subnet `s`.
    fn claimants(&self, s: IpNetwork) -> Box<dyn Iterator<Item = &LeaseKey> + '_> {
        if s.is_ipv4() {
            let first = LeaseKey {
                v4: Some(s),
                v6: None,
            };
            Box::new(
                self.entries
                    .range(first..)
                    .take_while(move |(k, _)| k.v4 == Some(s))
                    .filter(|(_, e)| e.usable.is_some())
                    .map(|(k, _)| k),
            )
        } else {
            let first = LeaseKey { v4: None, v6: None };
            Box::new(
                self.claims_v6
                    .range((s, first)..)
                    .take_while(move |(n, _)| *n == s)
                    .map(|(_, k)| k),
            )
        }
    }

    /// Where each of `keys` stands now: its peer attributes, or why it is refused.
    fn standing(&self, keys: &[LeaseKey]) -> Vec<Standing> {
        keys.iter()
            .map(|k| {
                let lease = self.entries.get(k).and_then(|e| e.lease(*k));
                (lease, self.rejection_of(k))
            })
            .collect()
    }

    fn forget(&mut self, key: LeaseKey) {
        let Some(e) = self.entries.remove(&key) else {
            return;
        };
        self.refused.remove(&key);
        if e.is_peer() {
            self.peers -= 1;
        }
        if e.usable.is_some() {
            for s in claims(&key, self.policy.as_ref())
                .into_iter()
                .filter(|s| s.is_ipv6())
            {
                self.claims_v6.remove(&(s, key));
            }
        }
    }

    fn remember(&mut self, key: LeaseKey, attrs: Option<LeaseAttrs>, verdict: Verdict) {
        let e = Entry::new(attrs, verdict);
        if e.usable.is_some() {
            for s in claims(&key, self.policy.as_ref())
                .into_iter()
                .filter(|s| s.is_ipv6())
            {
                self.claims_v6.insert((s, key));
            }
        }
        if e.is_peer() {
            self.peers += 1;
        }
        if e.refused.is_some() {
            self.refused.insert(key);
        }
        self.entries.insert(key, e);
    }

    /// Decides each of `keys` against the claims and reports what changed since `before`.
    fn settle(&mut self, keys: &[LeaseKey], before: Vec<Standing>, out: &mut Applied) {
        for (key, (was, refused_before)) in keys.iter().zip(before) {
            let overlap = claims(key, self.policy.as_ref())
                .into_iter()
                .find_map(|s| self.claimants(s).find(|k| *k != key).copied());
            let now = match self.entries.get_mut(key) {
                Some(e) => {
                    let had = e.is_peer();
                    // Only a lease usable on its own can clash; another keeps its reason.
                    if e.usable.is_some() {
                        e.refused = overlap.map(|other| Box::new(Rejection::Overlap { other }));
                        if e.refused.is_some() {
                            self.refused.insert(*key);
                        } else {
                            self.refused.remove(key);
                        }
                    }
                    let now = e.lease(*key);
                    match (had, now.is_some()) {
                        (true, false) => self.peers -= 1,
                        (false, true) => self.peers += 1,
                        _ => {}
                    }
                    now
                }
                None => None,
            };
            if let Some(r) = self
                .rejection_of(key)
                .filter(|r| refused_before.as_ref() != Some(r))
            {
                out.rejected.push((*key, r));
            }
            match (was, now) {
                (None, Some(l)) => out.events.push(PeerEvent::Added(l)),
                (Some(l), None) => out.events.push(PeerEvent::Removed(l)),
                (Some(old), Some(new)) if old != new => {
                    out.events.push(PeerEvent::Changed { new, old })
                }
                _ => {}
            }
        }
    }

    fn rejection_of(&self, key: &LeaseKey) -> Option<Rejection> {
        let e = self.entries.get(key)?;
        e.refused.as_deref().cloned()
    }

    /// Judges every lease from scratch: after the policy or our own lease changed.
    fn rejudge_all(&mut self) -> Applied {
        let mut out = Applied::default();
        let keys: Vec<LeaseKey> = self.entries.keys().copied().collect();
        let before = self.standing(&keys);
        let old = std::mem::take(&mut self.entries);
        self.claims_v6.clear();
        self.refused.clear();
        self.peers = 0;
        for (key, e) in old {
            let verdict = match &self.policy {
                Some(p) => p.check(&key, e.attrs.as_ref(), self.own()),
                None => e.verdict(&key),
            };
            self.remember(key, e.attrs, verdict);
        }
        self.settle(&keys, before, &mut out);
        out
    }
}

/// A lease's peer attributes, or why it is refused (neither: a reservation).
type Standing = (Option<Lease>, Option<Rejection>);

#[cfg(test)]
mod tests {
    use super::*;

    fn sl(key: &str, ip: &str, mac: &str) -> StoredLease {
        StoredLease {
            key: key.parse().unwrap(),
            attrs: Some(LeaseAttrs::vxlan(ip.parse().unwrap(), 1, mac)),
            reservation: false,
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
