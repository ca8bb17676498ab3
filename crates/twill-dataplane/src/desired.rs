//! Desired kernel state from the peer table, and the difference to what the kernel has.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use twill_store::{Family, PeerEntry, PeerEvent};

use twill_store::Mac;

/// Every kind of object a report's `restored` names: the metrics count repairs and
/// conflicts per kind, and a series that exists from the start (at 0) is one whose first
/// increase Prometheus' `increase()` sees.
pub const RESTORED_KINDS: [&str; 9] = [
    "route",
    "neigh",
    "fdb",
    "nexthop",
    "direct-route",
    "blackhole",
    "device",
    "tx-checksum",
    "rules",
];

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
mod tests;
