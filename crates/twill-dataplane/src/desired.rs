//! Desired kernel state from the peer table, and the difference to what the kernel has.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use twill_store::{Family, PeerEntry, PeerEvent};

use twill_store::Mac;

/// How peer routes are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RouteForm {
    /// `<subnet> via <vtep ip> dev flannel.1 onlink`: flanneld's form, byte for byte.
    #[default]
    Plain,
    /// The same gateway in a nexthop object of its own (`ip nexthop`), the route pointing
    /// at it by id: `<subnet> nhid <id>`. Linear instead of quadratic kernel insertion at
    /// thousands of peers (see `nexthop`), at the price of `ip route` output that differs
    /// from flanneld's.
    Nexthop,
}

impl RouteForm {
    fn nhid(self, subnet: IpNetwork) -> Option<u32> {
        match self {
            RouteForm::Plain => None,
            RouteForm::Nexthop => Some(nexthop_id(subnet)),
        }
    }

    fn route(self, p: &PeerEntry) -> Via {
        Via {
            gw: Some(p.vtep_ip),
            nhid: self.nhid(p.subnet),
        }
    }
}

/// A peer's nexthop id, the same on every node and in every run (a restart or a second
/// reader, doctor, finds the same ids), without allocation or state; never 0, which the
/// kernel reserves. IPv4: the subnet's network address; subnets of one network never share
/// it. IPv6: the 28 bits just above the subnet's prefix, under 0xf000_0000: subnets of one
/// network differ there whenever it holds at most 2^28 of them (a /56 of /64s holds 256),
/// and no IPv4 pod network lies in 240.0.0.0/4, so the two families never meet.
pub fn nexthop_id(subnet: IpNetwork) -> u32 {
    match subnet {
        IpNetwork::V4(n) => u32::from(n.network()).max(1),
        IpNetwork::V6(n) => {
            let bits = u128::from(n.network())
                .checked_shr(128 - u32::from(n.prefix()))
                .unwrap_or(0);
            0xf000_0000 | (bits as u32 & 0x0fff_ffff)
        }
    }
}

/// A route as the kernel holds it: its gateway and, when it goes through a nexthop object,
/// that object's id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Via {
    pub gw: Option<IpAddr>,
    pub nhid: Option<u32>,
}

/// The peers keyed by subnet: the form every diff works on. The entries come judged and
/// parsed from the peer table; nothing here reads lease JSON.
pub fn desired_peers(peers: impl IntoIterator<Item = PeerEntry>) -> BTreeMap<IpNetwork, PeerEntry> {
    peers.into_iter().map(|p| (p.subnet, p)).collect()
}

/// The kernel changes for a batch of peer events, without reading the kernel: what keeps
/// a new peer's latency at a few round trips. Anything this misses (someone else's edits,
/// a failed write) is caught by the periodic full reconcile.
pub fn incremental(events: &[PeerEvent], form: RouteForm, family: Family) -> Ops {
    let mut ops = Ops::default();
    for ev in events {
        match ev {
            PeerEvent::Added(l) => {
                if let Some(p) = l.entries.get(family) {
                    add(&mut ops, p, form);
                }
            }
            PeerEvent::Changed { new, old } => {
                match (old.entries.get(family), new.entries.get(family)) {
                    (Some(b), Some(a)) => {
                        if let Some(mac) = b
                            .mac
                            .filter(|_| (b.mac, b.public_ip) != (a.mac, a.public_ip))
                        {
                            ops.del_fdb.push((mac, b.public_ip));
                        }
                        add(&mut ops, a, form);
                    }
                    (None, Some(a)) => add(&mut ops, a, form),
                    (Some(b), None) => remove(&mut ops, b, form),
                    (None, None) => {}
                }
            }
            PeerEvent::Removed(l) => {
                if let Some(p) = l.entries.get(family) {
                    remove(&mut ops, p, form);
                }
            }
        }
    }
    ops
}

/// A host-gw peer (no VTEP MAC) has nothing on a VXLAN device; the lease policy keeps
/// such peers off a vxlan node's table, and these functions off its device.
fn add(ops: &mut Ops, p: &PeerEntry, form: RouteForm) {
    let Some(mac) = p.mac else { return };
    ops.add_neighs.push((p.vtep_ip, mac));
    ops.add_fdb.push((mac, p.public_ip));
    let via = form.route(p);
    if let Some(id) = via.nhid {
        ops.add_nexthops.push((id, p.vtep_ip));
    }
    ops.add_routes.push((p.subnet, via));
}

fn remove(ops: &mut Ops, p: &PeerEntry, form: RouteForm) {
    let Some(mac) = p.mac else { return };
    let via = form.route(p);
    ops.del_routes.push((p.subnet, via));
    ops.del_neighs.push(p.vtep_ip);
    ops.del_fdb.push((mac, p.public_ip));
    ops.del_nexthops.extend(via.nhid);
}

/// DirectRouting (flannel's `Backend.DirectRouting`): a peer whose underlay address is on
/// one of our underlay's connected prefixes is reached by a plain route via that address,
/// without encapsulation; the others stay on VXLAN. Returns (VXLAN peers, direct routes
/// subnet → peer address).
pub fn split_direct(
    desired: &BTreeMap<IpNetwork, PeerEntry>,
    onlink: &[IpNetwork],
) -> (BTreeMap<IpNetwork, PeerEntry>, BTreeMap<IpNetwork, IpAddr>) {
    let mut vxlan = BTreeMap::new();
    let mut direct = BTreeMap::new();
    for (net, p) in desired {
        if onlink.iter().any(|o| o.contains(p.public_ip)) {
            direct.insert(*net, p.public_ip);
        } else {
            vxlan.insert(*net, *p);
        }
    }
    (vxlan, direct)
}

/// host-gw's kernel changes for a batch of peer events, without reading the kernel: a
/// route via the peer's PublicIP per subnet. The peers come judged: the lease policy
/// refused any whose PublicIP is off our link.
pub fn incremental_direct(events: &[PeerEvent], family: Family) -> DirectOps {
    let mut ops = DirectOps::default();
    let route = |l: &twill_store::Lease| l.entries.get(family).map(|p| (p.subnet, p.public_ip));
    for ev in events {
        match ev {
            PeerEvent::Added(l) => ops.add.extend(route(l)),
            PeerEvent::Changed { new, old } => match (route(old), route(new)) {
                // A replace: the subnet is never without a route.
                (_, Some(r)) => ops.add.push(r),
                (Some(r), None) => ops.del.push(r),
                (None, None) => {}
            },
            PeerEvent::Removed(l) => ops.del.extend(route(l)),
        }
    }
    ops
}

/// Direct routes to add (replacing whatever route the subnet has, a VXLAN one included)
/// and to delete, given the routes inside the overlay network on the underlay device.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DirectOps {
    pub del: Vec<(IpNetwork, IpAddr)>,
    pub add: Vec<(IpNetwork, IpAddr)>,
}

impl DirectOps {
    pub fn len(&self) -> usize {
        self.del.len() + self.add.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn diff_direct(
    want: &BTreeMap<IpNetwork, IpAddr>,
    actual: &BTreeMap<IpNetwork, IpAddr>,
) -> DirectOps {
    DirectOps {
        del: actual
            .iter()
            .filter(|(net, _)| !want.contains_key(net))
            .map(|(n, gw)| (*n, *gw))
            .collect(),
        add: want
            .iter()
            .filter(|(net, gw)| actual.get(net) != Some(*gw))
            .map(|(n, gw)| (*n, *gw))
            .collect(),
    }
}

/// What the kernel has on our VXLAN device.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Actual {
    pub neighs: BTreeMap<IpAddr, Option<Mac>>,
    pub fdb: BTreeSet<(Mac, IpAddr)>,
    /// Destination → how it is routed; a route by nexthop id counts as on our device
    /// when its nexthop is.
    pub routes: BTreeMap<IpNetwork, Via>,
    /// Nexthop objects on our device: id → gateway.
    pub nexthops: BTreeMap<u32, Option<IpAddr>>,
}

/// The changes that turn `Actual` into the desired state. Applied in the order of the
/// fields: stale routes go first and new routes last, so the kernel never routes to a
/// gateway whose neighbour entry isn't there yet (it would ARP on a nolearning device).
/// Nexthops come just before the routes that use them and go only after the routes that
/// replaced them (deleting a nexthop deletes its routes).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ops {
    pub del_routes: Vec<(IpNetwork, Via)>,
    pub add_neighs: Vec<(IpAddr, Mac)>,
    pub add_fdb: Vec<(Mac, IpAddr)>,
    /// id → gateway, on our device, onlink.
    pub add_nexthops: Vec<(u32, IpAddr)>,
    /// Each with a gateway (and a nexthop id in the `Nexthop` form).
    pub add_routes: Vec<(IpNetwork, Via)>,
    pub del_neighs: Vec<IpAddr>,
    pub del_fdb: Vec<(Mac, IpAddr)>,
    pub del_nexthops: Vec<u32>,
}

impl Ops {
    /// What the ops put (back) into the kernel, as (kind, object): after a pass that was
    /// not asked for by a lease event, each is a repair of something removed or changed.
    pub fn added(&self) -> Vec<(&'static str, String)> {
        let routes = self
            .add_routes
            .iter()
            .map(|(n, _)| ("route", n.to_string()));
        let neighs = self
            .add_neighs
            .iter()
            .map(|(ip, _)| ("neigh", ip.to_string()));
        let fdb = self
            .add_fdb
            .iter()
            .map(|(mac, ip)| ("fdb", format!("{mac} dst {ip}")));
        let nexthops = self
            .add_nexthops
            .iter()
            .map(|(id, _)| ("nexthop", id.to_string()));
        routes.chain(neighs).chain(fdb).chain(nexthops).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.del_routes.len()
            + self.add_neighs.len()
            + self.add_fdb.len()
            + self.add_nexthops.len()
            + self.add_routes.len()
            + self.del_neighs.len()
            + self.del_fdb.len()
            + self.del_nexthops.len()
    }
}

/// Switching `form` is a diff like any other: each route is replaced in place (never
/// missing), and the nexthops of the old form go last.
pub fn diff(desired: &BTreeMap<IpNetwork, PeerEntry>, actual: &Actual, form: RouteForm) -> Ops {
    let mut ops = Ops::default();
    let vteps = || desired.values().filter_map(|p| p.mac.map(|mac| (p, mac)));
    let want_neigh: BTreeMap<IpAddr, Mac> = vteps().map(|(p, mac)| (p.vtep_ip, mac)).collect();
    let want_fdb: BTreeSet<(Mac, IpAddr)> = vteps().map(|(p, mac)| (mac, p.public_ip)).collect();

    for (dst, via) in &actual.routes {
        // One still desired is replaced in place below if it differs.
        if desired.get(dst).is_none_or(|p| p.mac.is_none()) {
            ops.del_routes.push((*dst, *via));
        }
    }
    for (ip, mac) in &want_neigh {
        if actual.neighs.get(ip) != Some(&Some(*mac)) {
            ops.add_neighs.push((*ip, *mac));
        }
    }
    for e in &want_fdb {
        if !actual.fdb.contains(e) {
            ops.add_fdb.push(*e);
        }
    }
    let mut want_nexthops = BTreeSet::new();
    for (p, _) in vteps() {
        let via = form.route(p);
        if let Some(id) = via.nhid {
            want_nexthops.insert(id);
            if actual.nexthops.get(&id) != Some(&Some(p.vtep_ip)) {
                ops.add_nexthops.push((id, p.vtep_ip));
            }
        }
        if actual.routes.get(&p.subnet) != Some(&via) {
            ops.add_routes.push((p.subnet, via));
        }
    }
    for ip in actual.neighs.keys() {
        if !want_neigh.contains_key(ip) {
            ops.del_neighs.push(*ip);
        }
    }
    for e in &actual.fdb {
        if !want_fdb.contains(e) {
            ops.del_fdb.push(*e);
        }
    }
    ops.del_nexthops = actual
        .nexthops
        .keys()
        .filter(|id| !want_nexthops.contains(id))
        .copied()
        .collect();
    ops
}

#[cfg(test)]
mod tests {
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
}

#[cfg(test)]
mod family_tests {
    use super::*;
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
