//! All netlink traffic goes through here: one rtnetlink connection, reads that turn kernel
//! messages into our types, and batched writes. Requests of a batch are issued
//! concurrently on the one socket (netlink matches replies by sequence number), so
//! programming N peers costs about one round trip per phase, not 3·N.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use futures::{stream, FutureExt, StreamExt, TryStreamExt};
use ipnetwork::{IpNetwork, Ipv4Network};
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressScope};
pub use rtnetlink::packet_route::link::InfoKind;
use rtnetlink::packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use tracing::{info, warn};

use crate::blackhole::{Blackhole, BLACKHOLE_METRIC};
use crate::change::ChangeFlag;
use crate::desired::{Actual, Ops, Via};
use crate::errno::{errno, EEXIST, EHOSTUNREACH, ENETUNREACH, ENODEV, ENOENT, EOPNOTSUPP, ESRCH};
use crate::iface::{IfAddr, InterfaceInfo};
use crate::nexthop::{self, NexthopConn};
use twill_store::Mac;

/// Requests in flight at once within a batch; bounded so a 10 000-peer batch doesn't
/// overrun the socket's receive buffer with replies.
const PIPELINE_DEPTH: usize = 256;
const RT_TABLE_MAIN: u8 = 254;

#[derive(Debug, thiserror::Error)]
#[error("netlink {op}: {source}")]
pub struct NetlinkError {
    pub op: String,
    #[source]
    pub source: rtnetlink::Error,
}

fn ctx<T>(op: impl Into<String>, r: Result<T, rtnetlink::Error>) -> Result<T, NetlinkError> {
    r.map_err(|source| NetlinkError {
        op: op.into(),
        source,
    })
}

/// What the VXLAN device must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub dev_index: u32,
    pub port: u16,
    pub gbp: bool,
    pub mtu: u32,
    /// MAC to use when the device has to be created (the one our lease already
    /// advertises, so peers need no update); random when `None`.
    pub mac: Option<Mac>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    pub index: u32,
    pub mac: Mac,
    /// Created (or replaced) by this call rather than adopted.
    pub created: bool,
}

/// A link as we care about it.
#[derive(Debug, Clone, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<Mac>,
    pub up: bool,
    pub kind: Option<InfoKind>,
    pub vxlan: Vec<InfoVxlan>,
}

fn parse_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        ..Default::default()
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Address(b) => l.mac = Mac::from_slice(b),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(k.clone()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => l.vxlan = v.clone(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// Does an existing device carry the attributes peers depend on? MTU is not among them:
/// it is corrected in place (flannel never corrects it, #1775).
fn vxlan_matches(l: &Link, spec: &VxlanSpec) -> Result<(), String> {
    if l.kind != Some(InfoKind::Vxlan) {
        return Err(format!("kind {:?}, not vxlan", l.kind));
    }
    let has = |want: &InfoVxlan| l.vxlan.contains(want);
    let checks = [
        (InfoVxlan::Id(spec.vni), "VNI"),
        (InfoVxlan::Link(spec.dev_index), "underlay device"),
        (InfoVxlan::Local(spec.local), "local address"),
        (InfoVxlan::Port(spec.port), "UDP port"),
        (InfoVxlan::Learning(false), "learning"),
    ];
    for (want, what) in checks {
        if !has(&want) {
            return Err(format!("{what} differs (want {want:?})"));
        }
    }
    if l.vxlan.contains(&InfoVxlan::Gbp) != spec.gbp {
        return Err("GBP differs".into());
    }
    Ok(())
}

pub struct Netlink {
    handle: Handle,
    nexthops: NexthopConn,
}

/// What DirectRouting needs from the underlay device's routes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnderlayRoutes {
    /// Connected prefixes (scope link, no gateway): peers inside them are on our link.
    pub onlink: Vec<Ipv4Network>,
    pub direct: BTreeMap<Ipv4Network, Ipv4Addr>,
}

impl UnderlayRoutes {
    /// Keeps `r` if it is one of device `dev`'s connected prefixes or a direct route into
    /// `network`.
    fn take(&mut self, r: &MainRoute, dev: u32, network: Ipv4Network) {
        // Ours are plain routes; one by nexthop id is someone else's.
        if r.oif != Some(dev) || r.net.prefix() == 0 || r.nhid.is_some() {
            return;
        }
        match r.gw {
            None if r.scope == RouteScope::Link => self.onlink.push(r.net),
            Some(gw) if network.contains(r.net.network()) && r.net.prefix() >= network.prefix() => {
                self.direct.insert(r.net, gw);
            }
            _ => {}
        }
    }
}

/// This node's addresses, and the prefixes it reaches outside the overlay: the connected
/// prefix of every address and every main-table route, except what twill's own devices
/// hold, the default route (every subnet lies in it) and routes shaped like a peer's
/// (`<subnet of Network> via …`, plain, by nexthop or direct: ours or flanneld's).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodePrefixes {
    pub local_addrs: Vec<IpAddr>,
    pub protected: Vec<IpNetwork>,
}

/// A main-table unicast route, as reads need it.
struct MainRoute {
    oif: Option<u32>,
    net: Ipv4Network,
    gw: Option<Ipv4Addr>,
    nhid: Option<u32>,
    scope: RouteScope,
}

/// Outcome of one applied batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub applied: usize,
    pub failed: Vec<String>,
}

impl Netlink {
    /// Opens the socket in the calling thread's network namespace; needs a tokio runtime.
    pub fn connect() -> std::io::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            nexthops: NexthopConn::connect()?,
        })
    }

    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let msgs: Vec<LinkMessage> = ctx(
            "dump links",
            self.handle.link().get().execute().try_collect().await,
        )?;
        Ok(msgs.iter().map(parse_link).collect())
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(parse_link)),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(NetlinkError {
                op: format!("get link {name}"),
                source: e,
            }),
        }
    }

    /// Every interface with its IPv4 addresses, for underlay selection.
    pub async fn interfaces(&self) -> Result<Vec<InterfaceInfo>, NetlinkError> {
        let links = self.links().await?;
        let addrs: Vec<_> = ctx(
            "dump addresses",
            self.handle.address().get().execute().try_collect().await,
        )?;
        Ok(links
            .into_iter()
            .map(|l| {
                let addrs = addrs
                    .iter()
                    .filter(|a| a.header.index == l.index)
                    .filter_map(|a| {
                        let ip = a.attributes.iter().find_map(|x| match x {
                            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                            _ => None,
                        })?;
                        Some(IfAddr {
                            ip,
                            prefix: a.header.prefix_len,
                            global: a.header.scope == AddressScope::Universe,
                            permanent: a.header.flags.contains(AddressHeaderFlags::Permanent),
                        })
                    })
                    .collect();
                InterfaceInfo {
                    index: l.index,
                    name: l.name,
                    mtu: l.mtu,
                    addrs,
                }
            })
            .collect())
    }

    async fn routes_v4(&self) -> Result<Vec<RouteMessage>, NetlinkError> {
        let req = RouteMessageBuilder::<Ipv4Addr>::new().build();
        ctx(
            "dump routes",
            self.handle.route().get(req).execute().try_collect().await,
        )
    }

    /// Interface index of the IPv4 default route in the main table.
    pub async fn default_route_index(&self) -> Result<Option<u32>, NetlinkError> {
        Ok(self.routes_v4().await?.iter().find_map(|r| {
            if r.header.destination_prefix_length != 0 || route_table(r) != RT_TABLE_MAIN as u32 {
                return None;
            }
            r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            })
        }))
    }

    /// The route the kernel would use to reach `dst` (`ip route get`): its interface index
    /// and preferred source address. `None` when it is unreachable.
    pub async fn route_to(
        &self,
        dst: Ipv4Addr,
    ) -> Result<Option<(u32, Option<Ipv4Addr>)>, NetlinkError> {
        let req = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let mut replies = self.handle.route().get(req).execute();
        let r = match replies.try_next().await {
            Ok(r) => r,
            // ENETUNREACH, EHOSTUNREACH: no route is an answer, not a failure.
            Err(e) if matches!(errno(&e), Some(ENETUNREACH | EHOSTUNREACH)) => None,
            Err(source) => {
                return Err(NetlinkError {
                    op: format!("route get {dst}"),
                    source,
                })
            }
        };
        Ok(r.and_then(|r| {
            let mut oif = None;
            let mut src = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => src = Some(*ip),
                    _ => {}
                }
            }
            oif.map(|i| (i, src))
        }))
    }

    /// Creates the device, or adopts an existing one with the right attributes (fixing
    /// its MTU and bringing it up), or replaces one with the wrong attributes.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<DeviceState, NetlinkError> {
        let mut keep_mac = spec.mac;
        if let Some(l) = self.link_by_name(&spec.name).await? {
            match vxlan_matches(&l, spec) {
                Ok(()) => {
                    if l.mtu != spec.mtu {
                        info!(device = %spec.name, from = l.mtu, to = spec.mtu, "correcting MTU");
                        let m = LinkUnspec::new_with_index(l.index).mtu(spec.mtu).build();
                        ctx("set mtu", self.handle.link().set(m).execute().await)?;
                    }
                    if !l.up {
                        let m = LinkUnspec::new_with_index(l.index).up().build();
                        ctx("set link up", self.handle.link().set(m).execute().await)?;
                    }
                    if let Some(mac) = l.mac {
                        return Ok(DeviceState {
                            index: l.index,
                            mac,
                            created: false,
                        });
                    }
                }
                Err(why) => warn!(device = %spec.name, "replacing existing device: {why}"),
            }
            keep_mac = keep_mac.or(l.mac);
            ctx(
                "delete link",
                self.handle.link().del(l.index).execute().await,
            )?;
        }
        let mac = keep_mac.unwrap_or_else(Mac::random);
        let mut b = LinkVxlan::new(&spec.name, spec.vni)
            .dev(spec.dev_index)
            .local(spec.local)
            .port(spec.port)
            .learning(false)
            .mtu(spec.mtu)
            .address(mac.0.to_vec())
            .up();
        if spec.gbp {
            b = b.gbp();
        }
        match self.handle.link().add(b.build()).execute().await {
            Ok(()) => {}
            // Someone (a racing flanneld) created it between our lookup and add: adopt
            // it on the next pass rather than fail.
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => {
                return Err(NetlinkError {
                    op: format!("create vxlan device {}", spec.name),
                    source: e,
                })
            }
        }
        let l = self
            .link_by_name(&spec.name)
            .await?
            .ok_or_else(|| NetlinkError {
                op: format!("find {} after creating it", spec.name),
                source: rtnetlink::Error::RequestFailed,
            })?;
        info!(device = %spec.name, index = l.index, mac = %mac, "created VXLAN device");
        Ok(DeviceState {
            index: l.index,
            mac: l.mac.unwrap_or(mac),
            created: true,
        })
    }

    /// Gives the device exactly `addr`/32 among the addresses inside `network`.
    pub async fn ensure_address(
        &self,
        index: u32,
        addr: Ipv4Addr,
        network: Ipv4Network,
    ) -> Result<(), NetlinkError> {
        let msgs: Vec<_> = ctx(
            "dump addresses",
            self.handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect()
                .await,
        )?;
        let mut have = false;
        for m in msgs {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let Some(ip) = ip else { continue };
            if ip == addr && m.header.prefix_len == 32 {
                have = true;
            } else if network.contains(ip) {
                ctx(
                    "delete stale address",
                    self.handle.address().del(m).execute().await,
                )?;
            }
        }
        if !have {
            ctx(
                "add address",
                self.handle
                    .address()
                    .add(index, IpAddr::V4(addr), 32)
                    .execute()
                    .await,
            )?;
        }
        Ok(())
    }

    /// Calls `f` for each neighbour (AF_INET) or FDB (AF_BRIDGE) entry on device `index`,
    /// as the dump streams in: at 10 000 peers, holding every message at once would
    /// dominate the daemon's peak memory.
    async fn each_neighbour(
        &self,
        family: AddressFamily,
        index: u32,
        mut f: impl FnMut(&NeighbourMessage),
    ) -> Result<(), NetlinkError> {
        let mut dump = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute();
        while let Some(n) = ctx(format!("dump {family:?} neighbours"), dump.try_next().await)? {
            if n.header.ifindex == index {
                f(&n);
            }
        }
        Ok(())
    }

    /// Neighbours, FDB entries and main-table IPv4 routes on device `index`.
    pub async fn read_actual(&self, index: u32) -> Result<Actual, NetlinkError> {
        Ok(self.read_peers(index, None).await?.0)
    }

    /// `read_actual`, and with `underlay` (its ifindex and the overlay network) what
    /// `read_underlay` gives, from the same route dump.
    pub async fn read_peers(
        &self,
        index: u32,
        underlay: Option<(u32, Ipv4Network)>,
    ) -> Result<(Actual, Option<UnderlayRoutes>), NetlinkError> {
        let mut actual = Actual::default();
        self.each_neighbour(AddressFamily::Inet, index, |n| {
            if let (Some(IpAddr::V4(ip)), lladdr) = neigh_fields(n) {
                actual.neighs.insert(ip, lladdr);
            }
        })
        .await?;
        self.each_neighbour(AddressFamily::Bridge, index, |n| {
            if let (Some(IpAddr::V4(dst)), Some(mac)) = neigh_fields(n) {
                actual.fdb.insert((mac, dst));
            }
        })
        .await?;
        let nexthops = &mut actual.nexthops;
        match self
            .nexthops
            .each_on(index, |n| {
                nexthops.insert(n.id, n.gateway);
            })
            .await
        {
            Ok(()) => {}
            // A kernel without nexthop objects (before 5.3) has none of ours either.
            Err(e) if errno(&e) == Some(EOPNOTSUPP) => {}
            Err(source) => {
                return Err(NetlinkError {
                    op: "dump nexthops".into(),
                    source,
                })
            }
        }
        let mut under = underlay.map(|_| UnderlayRoutes::default());
        self.each_main_route(|r| {
            // A route by nexthop id is on our device when its nexthop is (the kernel
            // only adds the nexthop's device and gateway to the dump in compat mode).
            let route = match r.nhid {
                Some(id) => actual.nexthops.get(&id).map(|gw| Via {
                    gw: *gw,
                    nhid: Some(id),
                }),
                None => (r.oif == Some(index)).then_some(Via {
                    gw: r.gw,
                    nhid: None,
                }),
            };
            if let Some(via) = route {
                actual.routes.insert(r.net, via);
            }
            if let (Some((dev, network)), Some(u)) = (underlay, under.as_mut()) {
                u.take(&r, dev, network);
            }
        })
        .await?;
        Ok((actual, under))
    }

    /// Applies `ops` on device `index` phase by phase (see [`Ops`] for the order), each
    /// phase pipelined. Failures are collected, not fatal: the next reconcile retries them.
    pub async fn apply(&self, index: u32, ops: &Ops) -> ApplyReport {
        let mut report = ApplyReport::default();
        let h = &self.handle;
        let del_routes = ops
            .del_routes
            .iter()
            .map(|(net, via)| del_route(h, *net, *via, index));
        run(del_routes, &mut report, true).await;

        let adds = ops
            .add_neighs
            .iter()
            .map(|(ip, mac)| {
                async move {
                    let r = h
                        .neighbours()
                        .add(index, IpAddr::V4(*ip))
                        .link_layer_address(&mac.0)
                        .state(NeighbourState::Permanent)
                        .replace()
                        .execute()
                        .await;
                    (format!("neigh {ip} lladdr {mac}"), r)
                }
                .boxed()
            })
            .chain(ops.add_fdb.iter().map(|(mac, dst)| {
                async move {
                    let r = h
                        .neighbours()
                        .add_bridge(index, &mac.0)
                        .destination(IpAddr::V4(*dst))
                        .flags(NeighbourFlags::Own)
                        .state(NeighbourState::Permanent)
                        .replace()
                        .execute()
                        .await;
                    (format!("fdb {mac} dst {dst}"), r)
                }
                .boxed()
            }));
        run(adds, &mut report, false).await;

        let nh = &self.nexthops;
        let nexthops: Vec<_> = stream::iter(&ops.add_nexthops)
            .map(|(id, gw)| async move { (*id, *gw, nh.ensure(*id, *gw, index).await) })
            .buffer_unordered(PIPELINE_DEPTH)
            .collect()
            .await;
        let mut no_nexthop = BTreeSet::new();
        for (id, gw, r) in nexthops {
            match r {
                Ok(()) => report.applied += 1,
                Err(e) => {
                    report.failed.push(format!("nexthop id {id} via {gw}: {e}"));
                    no_nexthop.insert(id);
                }
            }
        }

        // A route by the id of a nexthop we could not write would use whatever holds it.
        let add_routes = ops
            .add_routes
            .iter()
            .filter(|(_, via)| via.nhid.is_none_or(|id| !no_nexthop.contains(&id)))
            .map(|(net, via)| replace_peer_route(h, *net, *via, index));
        run(add_routes, &mut report, false).await;

        let dels = ops
            .del_neighs
            .iter()
            .map(|ip| {
                let mut m = NeighbourMessage::default();
                m.header.family = AddressFamily::Inet;
                m.header.ifindex = index;
                m.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(*ip)));
                async move {
                    (
                        format!("del neigh {ip}"),
                        h.neighbours().del(m).execute().await,
                    )
                }
                .boxed()
            })
            .chain(ops.del_fdb.iter().map(|(mac, dst)| {
                let mut m = NeighbourMessage::default();
                m.header.family = AddressFamily::Bridge;
                m.header.ifindex = index;
                m.header.flags = NeighbourFlags::Own;
                m.header.state = NeighbourState::Permanent;
                m.attributes
                    .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
                m.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                        *dst,
                    )));
                async move {
                    (
                        format!("del fdb {mac} dst {dst}"),
                        h.neighbours().del(m).execute().await,
                    )
                }
                .boxed()
            }))
            .chain(ops.del_nexthops.iter().map(|id| {
                async move { (format!("del nexthop id {id}"), nh.delete(*id).await) }.boxed()
            }));
        run(dels, &mut report, true).await;
        report
    }

    /// The underlay device's connected IPv4 prefixes, and the routes with a gateway on it
    /// whose destination lies inside `network` (direct routes, ours or flanneld's).
    pub async fn read_underlay(
        &self,
        index: u32,
        network: Ipv4Network,
    ) -> Result<UnderlayRoutes, NetlinkError> {
        let mut out = UnderlayRoutes::default();
        self.each_main_route(|r| out.take(&r, index, network))
            .await?;
        Ok(out)
    }

    /// What peer leases must stay clear of (see `NodePrefixes`). `ours` are the devices
    /// whose addresses and routes twill itself owns (the VXLAN device, cni0).
    pub async fn node_prefixes(
        &self,
        ours: &[u32],
        network: Ipv4Network,
        subnet_len: u8,
    ) -> Result<NodePrefixes, NetlinkError> {
        let mut out = NodePrefixes::default();
        let mut addrs = self.handle.address().get().execute();
        while let Some(a) = ctx("dump addresses", addrs.try_next().await)? {
            let Some(ip) = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            }) else {
                continue;
            };
            if !out.local_addrs.contains(&ip) {
                out.local_addrs.push(ip);
            }
            if ours.contains(&a.header.index) {
                continue;
            }
            if let Ok(net) = IpNetwork::new(ip, a.header.prefix_len) {
                let net = IpNetwork::new(net.network(), net.prefix()).unwrap_or(net);
                if !out.protected.contains(&net) {
                    out.protected.push(net);
                }
            }
        }
        let in_network =
            |n: Ipv4Network| network.contains(n.network()) && n.prefix() >= network.prefix();
        self.each_main_route(|r| {
            let peerlike = in_network(r.net) && (r.net.prefix() == subnet_len || r.nhid.is_some());
            if r.net.prefix() == 0 || peerlike || r.oif.is_some_and(|i| ours.contains(&i)) {
                return;
            }
            let net = IpNetwork::V4(r.net);
            if !out.protected.contains(&net) {
                out.protected.push(net);
            }
        })
        .await?;
        Ok(out)
    }

    /// Calls `f` with each unicast IPv4 route of the main table, streamed from one dump.
    async fn each_main_route(&self, mut f: impl FnMut(MainRoute)) -> Result<(), NetlinkError> {
        self.each_main_of_kind(RouteType::Unicast, |r, net| {
            let (mut oif, mut gw, mut nhid) = (None, None, None);
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::NhId(id) => nhid = Some(*id),
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(*ip),
                    _ => {}
                }
            }
            f(MainRoute {
                oif,
                net,
                gw,
                nhid,
                scope: r.header.scope,
            })
        })
        .await
    }

    /// Calls `f` with each IPv4 route of the main table of one type and its destination.
    async fn each_main_of_kind(
        &self,
        kind: RouteType,
        mut f: impl FnMut(&RouteMessage, Ipv4Network),
    ) -> Result<(), NetlinkError> {
        let req = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut dump = self.handle.route().get(req).execute();
        while let Some(r) = ctx("dump routes", dump.try_next().await)? {
            if route_table(&r) != RT_TABLE_MAIN as u32 || r.header.kind != kind {
                continue;
            }
            let dst = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                })
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            if let Ok(net) = Ipv4Network::new(dst, r.header.destination_prefix_length) {
                f(&r, net);
            }
        }
        Ok(())
    }

    /// The main table's IPv4 blackhole routes.
    pub async fn blackholes(&self) -> Result<Vec<Blackhole>, NetlinkError> {
        let mut out = Vec::new();
        self.each_main_of_kind(RouteType::BlackHole, |r, net| {
            let metric = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Priority(p) => Some(*p),
                    _ => None,
                })
                .unwrap_or(0);
            out.push(Blackhole { net, metric });
        })
        .await?;
        Ok(out)
    }

    /// `ip route add blackhole <net> metric <BLACKHOLE_METRIC>`: `true` when it was added,
    /// `false` when a route already holds that prefix and metric (ours, normally).
    pub async fn add_blackhole(&self, net: Ipv4Network) -> Result<bool, NetlinkError> {
        let msg = blackhole_msg(Blackhole {
            net,
            metric: BLACKHOLE_METRIC,
        });
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(false),
            Err(e) => Err(NetlinkError {
                op: format!("add blackhole {net}"),
                source: e,
            }),
        }
    }

    /// Deletes one blackhole route; one already gone counts as deleted.
    pub async fn del_blackhole(&self, b: Blackhole) -> Result<(), NetlinkError> {
        let msg = match_any_origin(blackhole_msg(b));
        match self.handle.route().del(msg).execute().await {
            Err(e) if !matches!(errno(&e), Some(ENOENT | ESRCH)) => Err(NetlinkError {
                op: format!("delete {b}"),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Direct routes `<subnet> via <peer address> dev <underlay>`, each replacing whatever
    /// route the subnet had (a VXLAN one when a peer became reachable directly).
    pub async fn add_direct_routes(
        &self,
        index: u32,
        routes: &[(Ipv4Network, Ipv4Addr)],
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        let adds = routes
            .iter()
            .map(|(net, gw)| replace_route(&self.handle, *net, *gw, index, false));
        run(adds, &mut report, false).await;
        report
    }

    /// Deletes direct routes; one a VXLAN route has already replaced is not matched (the
    /// gateway and device are part of the match) and counts as gone.
    pub async fn del_direct_routes(
        &self,
        index: u32,
        routes: &[(Ipv4Network, Ipv4Addr)],
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        let dels = routes.iter().map(|(net, gw)| {
            let via = Via {
                gw: Some(*gw),
                nhid: None,
            };
            del_route(&self.handle, *net, via, index)
        });
        run(dels, &mut report, true).await;
        report
    }

    /// Deletes a link by name if present (cleanup, tests).
    pub async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        match self.link_by_name(name).await? {
            Some(l) => {
                ctx(
                    "delete link",
                    self.handle.link().del(l.index).execute().await,
                )?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// What a netlink monitor saw happen to our device: its deletion (repaired at once, where
/// flannel #869 never replays peers) and whether anything touched its neighbour, FDB or
/// route entries since the last look (a periodic pass with nothing touched can skip
/// reading the kernel, which at 10 000 peers is a 30 000-entry dump).
pub struct DeviceMonitor {
    pub deleted: tokio::sync::mpsc::UnboundedReceiver<()>,
    /// The device's ifindex: set once at start, then followed through RTM_NEWLINK; while
    /// 0 every entry change counts.
    index: Arc<AtomicU32>,
    /// The underlay's ifindex (0: none), whose route changes count too.
    underlay: Arc<AtomicU32>,
    entries: Arc<ChangeFlag>,
}

impl DeviceMonitor {
    pub fn set_index(&self, index: u32) {
        self.index.store(index, Ordering::SeqCst);
    }

    pub fn set_underlay_index(&self, index: u32) {
        self.underlay.store(index, Ordering::SeqCst);
    }

    /// Whether our device's entries may have changed since the last call.
    pub fn take_touched(&self) -> bool {
        self.entries.take()
    }
}

/// Starts a monitor on the link, neighbour, IPv4 route and nexthop groups for the device
/// `name`.
pub fn watch_device(name: String) -> std::io::Result<DeviceMonitor> {
    use rtnetlink::packet_core::NetlinkPayload;
    use rtnetlink::packet_route::RouteNetlinkMessage as M;
    use rtnetlink::MulticastGroup as G;
    let (conn, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[G::Link, G::Neigh, G::Ipv4Route])?;
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let index = Arc::new(AtomicU32::new(0));
    let underlay = Arc::new(AtomicU32::new(0));
    let entries = Arc::new(ChangeFlag::default());
    // Deleting a nexthop drops its routes without a route notification.
    let mut nexthop_events = nexthop::watch()?;
    let (idx, seen) = (index.clone(), entries.clone());
    tokio::spawn(async move {
        while let Some(oif) = nexthop_events.next().await {
            let known = idx.load(Ordering::SeqCst);
            if oif.is_some_and(|i| known == 0 || i == known) {
                seen.mark();
            }
        }
        seen.mark_broken();
    });
    let (idx, ul, seen) = (index.clone(), underlay.clone(), entries.clone());
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let NetlinkPayload::InnerMessage(m) = msg.payload else {
                continue;
            };
            let ours = |i: u32| {
                let known = idx.load(Ordering::SeqCst);
                known == 0 || i == known
            };
            let touched = match &m {
                M::NewNeighbour(n) | M::DelNeighbour(n) => ours(n.header.ifindex),
                // A route by nexthop id carries no device outside compat mode: count it.
                M::NewRoute(r) | M::DelRoute(r) => r.attributes.iter().any(|a| match a {
                    RouteAttribute::Oif(i) => ours(*i) || *i == ul.load(Ordering::SeqCst),
                    RouteAttribute::NhId(_) => true,
                    _ => false,
                }),
                M::NewLink(l) => {
                    // Also how a recreated device's new index becomes known.
                    let ours = parse_link(l).name == name;
                    if ours {
                        idx.store(l.header.index, Ordering::SeqCst);
                    }
                    ours
                }
                M::DelLink(l) => {
                    let gone = parse_link(l).name == name;
                    if gone && tx.send(()).is_err() {
                        break;
                    }
                    gone
                }
                _ => false,
            };
            if touched {
                seen.mark();
            }
        }
        seen.mark_broken();
    });
    Ok(DeviceMonitor {
        deleted: rx,
        index,
        underlay,
        entries,
    })
}

type Pending<'a> = futures::future::BoxFuture<'a, (String, Result<(), rtnetlink::Error>)>;

async fn run<'a>(
    futs: impl Iterator<Item = Pending<'a>>,
    report: &mut ApplyReport,
    deleting: bool,
) {
    let results: Vec<_> = stream::iter(futs)
        .buffer_unordered(PIPELINE_DEPTH)
        .collect()
        .await;
    for (what, r) in results {
        match r {
            Ok(()) => report.applied += 1,
            // Already gone is what a delete wanted.
            Err(e) if deleting && matches!(errno(&e), Some(ENOENT | ESRCH)) => report.applied += 1,
            Err(e) => report.failed.push(format!("{what}: {e}")),
        }
    }
}

/// A delete request with wildcards, as `ip route del` sends: the builder's protocol
/// (static) and scope would only match routes we made, not a leftover made by flanneld or
/// by hand.
fn match_any_origin(mut msg: RouteMessage) -> RouteMessage {
    msg.header.protocol = RouteProtocol::Unspec;
    msg.header.scope = RouteScope::NoWhere;
    msg
}

fn blackhole_msg(b: Blackhole) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(b.net.network(), b.net.prefix())
        .kind(RouteType::BlackHole)
        .priority(b.metric)
        .build()
}

/// `ip route replace <net> via <gw> dev <index> [onlink]`.
fn replace_route(
    h: &Handle,
    net: Ipv4Network,
    gw: Ipv4Addr,
    index: u32,
    onlink: bool,
) -> Pending<'_> {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(net.network(), net.prefix())
        .gateway(gw)
        .output_interface(index);
    if onlink {
        b = b.onlink();
    }
    let msg = b.build();
    async move {
        let r = h.route().add(msg).replace().execute().await;
        (format!("route {net} via {gw}"), r)
    }
    .boxed()
}

/// A peer's VXLAN route: `ip route replace <net> nhid <id>`, or without a nexthop id
/// `ip route replace <net> via <gw> dev <index> onlink`.
fn replace_peer_route(h: &Handle, net: Ipv4Network, via: Via, index: u32) -> Pending<'_> {
    match (via.nhid, via.gw) {
        (Some(id), _) => {
            let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix())
                .nhid(id)
                .build();
            async move {
                let r = h.route().add(msg).replace().execute().await;
                (format!("route {net} nhid {id}"), r)
            }
            .boxed()
        }
        (None, Some(gw)) => replace_route(h, net, gw, index, true),
        (None, None) => {
            async move { (format!("route {net}"), Err(rtnetlink::Error::RequestFailed)) }.boxed()
        }
    }
}

/// `ip route del <net> nhid <id>`, or `ip route del <net> [via <gw>] dev <index>`: a route
/// by nexthop id only matches a delete that names the id.
fn del_route(h: &Handle, net: Ipv4Network, via: Via, index: u32) -> Pending<'_> {
    let mut b =
        RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(net.network(), net.prefix());
    match (via.nhid, via.gw) {
        (Some(id), _) => b = b.nhid(id),
        (None, gw) => {
            b = b.output_interface(index);
            if let Some(gw) = gw {
                b = b.gateway(gw);
            }
        }
    }
    let msg = match_any_origin(b.build());
    async move {
        (
            format!("del route {net}"),
            h.route().del(msg).execute().await,
        )
    }
    .boxed()
}

fn neigh_fields(n: &NeighbourMessage) -> (Option<IpAddr>, Option<Mac>) {
    let mut dst = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                dst = Some(IpAddr::V4(*ip))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                dst = Some(IpAddr::V6(*ip))
            }
            // In an AF_BRIDGE (FDB) message the parser can't tell NDA_DST's family, so a
            // VXLAN remote arrives as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                dst = match b.len() {
                    4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    _ => None,
                }
            }
            NeighbourAttribute::LinkLayerAddress(b) => mac = Mac::from_slice(b),
            _ => {}
        }
    }
    (dst, mac)
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(r.header.table as u32)
}
