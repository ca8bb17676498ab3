//! Routes of the main table: peer routes (plain or by nexthop id), direct routes,
//! the blackhole, and what the underlay and this node already route.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use futures::{FutureExt, TryStreamExt};
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};
use twill_store::Family;

use crate::blackhole::{Blackhole, BLACKHOLE_METRIC};
use crate::desired::Via;
use crate::errno::{errno, EEXIST, EHOSTUNREACH, ENETUNREACH, ENOENT, ESRCH};

use super::{ctx, failed, run, ApplyReport, Netlink, NetlinkError, Pending};

pub(super) const RT_TABLE_MAIN: u8 = 254;

/// What DirectRouting needs from the underlay device's routes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnderlayRoutes {
    /// Connected prefixes (scope link, no gateway): peers inside them are on our link.
    pub onlink: Vec<IpNetwork>,
    pub direct: BTreeMap<IpNetwork, IpAddr>,
}

impl UnderlayRoutes {
    /// Keeps `r` if it is one of device `dev`'s connected prefixes or a direct route into
    /// `network`.
    pub(super) fn take(&mut self, r: &MainRoute, dev: u32, network: IpNetwork) {
        // Ours are plain routes; one by nexthop id is someone else's.
        if r.oif != Some(dev) || r.net.prefix() == 0 || r.nhid.is_some() {
            return;
        }
        match r.gw {
            None if r.connected() => self.onlink.push(r.net),
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
    /// The underlay device's connected prefixes of each network's family, when the
    /// underlay was given (host-gw's peers must be on them).
    pub onlink: Vec<IpNetwork>,
}

/// Whether a main-table route (not on one of our devices) is underlay that peer subnets
/// must stay off. Not: a route covering the whole pod network (the default route, an
/// aggregate towards a router): a peer's route is more specific and takes only its own
/// slice of pod addresses from it. Nor one shaped like a peer's (`<subnet of Network>`
/// of the lease size, or by nexthop id): a direct route or a peer route, ours or flanneld's.
pub fn guards_underlay(
    net: IpNetwork,
    by_nexthop: bool,
    network: IpNetwork,
    subnet_len: u8,
) -> bool {
    if net.is_ipv4() != network.is_ipv4() {
        return true;
    }
    let covers_network = net.prefix() <= network.prefix() && net.contains(network.network());
    let in_network = network.contains(net.network()) && net.prefix() >= network.prefix();
    let peerlike = in_network && (net.prefix() == subnet_len || by_nexthop);
    !(covers_network || peerlike)
}

/// A main-table unicast route, as reads need it.
pub(super) struct MainRoute {
    pub(super) oif: Option<u32>,
    pub(super) net: IpNetwork,
    pub(super) gw: Option<IpAddr>,
    pub(super) nhid: Option<u32>,
    pub(super) scope: RouteScope,
    pub(super) protocol: RouteProtocol,
}

impl MainRoute {
    /// A connected prefix: the kernel's route for an address's own network. IPv4 gives
    /// those scope link; IPv6 gives every route scope universe, so there it is the
    /// kernel's own route without a gateway (link-local fe80::/64 left out: no peer's
    /// PublicIPv6 lies in it).
    fn connected(&self) -> bool {
        match self.net {
            IpNetwork::V4(_) => self.scope == RouteScope::Link,
            IpNetwork::V6(n) => {
                self.protocol == RouteProtocol::Kernel
                    && n.prefix() > 0
                    && (n.network().segments()[0] & 0xffc0) != 0xfe80
            }
        }
    }
}

impl Netlink {
    pub(super) async fn routes_v4(&self) -> Result<Vec<RouteMessage>, NetlinkError> {
        let req = RouteMessageBuilder::<Ipv4Addr>::new().build();
        ctx(
            "dump routes",
            self.handle.route().get(req).execute().try_collect().await,
        )
    }

    async fn routes_v6(&self) -> Result<Vec<RouteMessage>, NetlinkError> {
        let req = RouteMessageBuilder::<std::net::Ipv6Addr>::new().build();
        ctx(
            "dump IPv6 routes",
            self.handle.route().get(req).execute().try_collect().await,
        )
    }

    /// Interface index of the default route (IPv4, or `::/0` when `v6`) in the main table.
    pub async fn default_route_index(&self, v6: bool) -> Result<Option<u32>, NetlinkError> {
        let routes = if v6 {
            self.routes_v6().await?
        } else {
            self.routes_v4().await?
        };
        Ok(routes.iter().find_map(|r| {
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
        dst: std::net::IpAddr,
    ) -> Result<Option<(u32, Option<Ipv4Addr>)>, NetlinkError> {
        Ok(self.route_get(dst).await?.and_then(|(oif, src)| {
            let src = match src {
                Some(IpAddr::V4(a)) => Some(a),
                _ => None,
            };
            oif.map(|i| (i, src))
        }))
    }

    /// The address the kernel would send from to reach `dst` (`ip route get`'s `src`), of
    /// either family. `None` when it is unreachable or the route names none.
    pub async fn source_toward(&self, dst: IpAddr) -> Result<Option<IpAddr>, NetlinkError> {
        Ok(self.route_get(dst).await?.and_then(|(_, src)| src))
    }

    async fn route_get(
        &self,
        dst: IpAddr,
    ) -> Result<Option<(Option<u32>, Option<IpAddr>)>, NetlinkError> {
        let req = match dst {
            IpAddr::V4(d) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d, 32)
                .build(),
            IpAddr::V6(d) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(d, 128)
                .build(),
        };
        let mut replies = self.handle.route().get(req).execute();
        let r = match replies.try_next().await {
            Ok(r) => r,
            // ENETUNREACH, EHOSTUNREACH: no route is an answer, not a failure.
            Err(e) if matches!(errno(&e), Some(ENETUNREACH | EHOSTUNREACH)) => None,
            Err(source) => {
                return Err(NetlinkError::Kernel {
                    op: format!("route get {dst}"),
                    source,
                })
            }
        };
        Ok(r.map(|r| {
            let mut oif = None;
            let mut src = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => {
                        src = Some(IpAddr::V4(*ip))
                    }
                    RouteAttribute::PrefSource(RouteAddress::Inet6(ip)) => {
                        src = Some(IpAddr::V6(*ip))
                    }
                    _ => {}
                }
            }
            (oif, src)
        }))
    }

    /// The underlay device's connected prefixes of `network`'s family, and the routes with
    /// a gateway on it whose destination lies inside `network` (direct routes, ours or
    /// flanneld's).
    pub async fn read_underlay(
        &self,
        index: u32,
        network: IpNetwork,
    ) -> Result<UnderlayRoutes, NetlinkError> {
        let mut out = UnderlayRoutes::default();
        self.each_main_route(Family::of(&network), |r| out.take(&r, index, network))
            .await?;
        Ok(out)
    }

    /// What peer leases must stay clear of (see `NodePrefixes`). `ours` are the devices
    /// whose addresses and routes twill itself owns (the VXLAN devices, cni0); `networks`
    /// the pod networks with their subnet lengths, one per enabled family; `underlay` the
    /// device whose connected prefixes are read from the same route dumps.
    pub async fn node_prefixes(
        &self,
        ours: &[u32],
        networks: &[(IpNetwork, u8)],
        underlay: Option<u32>,
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
        for (network, subnet_len) in networks {
            let mut on_underlay = UnderlayRoutes::default();
            self.each_main_route(Family::of(network), |r| {
                if let Some(dev) = underlay {
                    on_underlay.take(&r, dev, *network);
                }
                let ours = r.oif.is_some_and(|i| ours.contains(&i));
                if !ours
                    && guards_underlay(r.net, r.nhid.is_some(), *network, *subnet_len)
                    && !out.protected.contains(&r.net)
                {
                    out.protected.push(r.net);
                }
            })
            .await?;
            out.onlink.extend(on_underlay.onlink);
        }
        Ok(out)
    }

    /// Calls `f` with each unicast route of one family of the main table, streamed from
    /// one dump.
    pub(super) async fn each_main_route(
        &self,
        family: Family,
        mut f: impl FnMut(MainRoute),
    ) -> Result<(), NetlinkError> {
        self.each_main_of_kind(family, RouteType::Unicast, |r, net| {
            let (mut oif, mut gw, mut nhid) = (None, None, None);
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::NhId(id) => nhid = Some(*id),
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(IpAddr::V4(*ip)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => gw = Some(IpAddr::V6(*ip)),
                    _ => {}
                }
            }
            f(MainRoute {
                oif,
                net,
                gw,
                nhid,
                scope: r.header.scope,
                protocol: r.header.protocol,
            })
        })
        .await
    }

    /// Calls `f` with each route of one family of the main table of one type and its
    /// destination.
    pub(super) async fn each_main_of_kind(
        &self,
        family: Family,
        kind: RouteType,
        mut f: impl FnMut(&RouteMessage, IpNetwork),
    ) -> Result<(), NetlinkError> {
        let mut req = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let unspecified = match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => {
                req.header.address_family = AddressFamily::Inet6;
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            }
        };
        let mut dump = self.handle.route().get(req).execute();
        while let Some(r) = ctx("dump routes", dump.try_next().await)? {
            if route_table(&r) != RT_TABLE_MAIN as u32 || r.header.kind != kind {
                continue;
            }
            let dst = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
                    _ => None,
                })
                .unwrap_or(unspecified);
            if let Ok(net) = IpNetwork::new(dst, r.header.destination_prefix_length) {
                f(&r, net);
            }
        }
        Ok(())
    }

    /// The main table's blackhole routes of `family`.
    pub async fn blackholes(&self, family: Family) -> Result<Vec<Blackhole>, NetlinkError> {
        let mut out = Vec::new();
        self.each_main_of_kind(family, RouteType::BlackHole, |r, net| {
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
    pub async fn add_blackhole(&self, net: IpNetwork) -> Result<bool, NetlinkError> {
        let msg = blackhole_msg(Blackhole {
            net,
            metric: BLACKHOLE_METRIC,
        });
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(false),
            Err(e) => Err(NetlinkError::Kernel {
                op: format!("add blackhole {net}"),
                source: e,
            }),
        }
    }

    /// Deletes one blackhole route; one already gone counts as deleted.
    pub async fn del_blackhole(&self, b: Blackhole) -> Result<(), NetlinkError> {
        let msg = match_any_origin(blackhole_msg(b));
        match self.handle.route().del(msg).execute().await {
            Err(e) if !matches!(errno(&e), Some(ENOENT | ESRCH)) => Err(NetlinkError::Kernel {
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
        routes: &[(IpNetwork, IpAddr)],
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
        routes: &[(IpNetwork, IpAddr)],
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
}

/// A delete request with wildcards, as `ip route del` sends: the builder's protocol
/// (static) and scope would only match routes we made, not a leftover made by flanneld or
/// by hand.
pub(super) fn match_any_origin(mut msg: RouteMessage) -> RouteMessage {
    msg.header.protocol = RouteProtocol::Unspec;
    msg.header.scope = RouteScope::NoWhere;
    msg
}

pub(super) fn blackhole_msg(b: Blackhole) -> RouteMessage {
    to(b.net)
        .kind(RouteType::BlackHole)
        .priority(b.metric)
        .build()
}

/// A route message for `net`, of `net`'s family.
fn to(net: IpNetwork) -> RouteMessageBuilder<IpAddr> {
    RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(net.network(), net.prefix())
        // An IpNetwork's prefix always fits its family.
        .expect("a valid prefix")
}

/// `to(net)` via `gw`; a gateway of the other family is a request we never make.
fn via(net: IpNetwork, gw: IpAddr) -> Result<RouteMessageBuilder<IpAddr>, NetlinkError> {
    let other_family = || NetlinkError::Unexpected {
        op: format!("route {net} via {gw}"),
        why: "the gateway is of the other address family",
    };
    // The builder would take an IPv6 gateway for an IPv4 route (RTA_VIA); we never mean one.
    if net.is_ipv4() != gw.is_ipv4() {
        return Err(other_family());
    }
    to(net).gateway(gw).map_err(|_| other_family())
}

/// `ip route replace <net> via <gw> dev <index> [onlink]`.
pub(super) fn replace_route(
    h: &Handle,
    net: IpNetwork,
    gw: IpAddr,
    index: u32,
    onlink: bool,
) -> Pending<'_> {
    async move {
        let mut b = via(net, gw)?.output_interface(index);
        if onlink {
            b = b.onlink();
        }
        h.route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(failed(|| format!("route {net} via {gw}")))
    }
    .boxed()
}

/// A peer's VXLAN route: `ip route replace <net> nhid <id>`, or without a nexthop id
/// `ip route replace <net> via <gw> dev <index> onlink`.
pub(super) fn replace_peer_route(h: &Handle, net: IpNetwork, via: Via, index: u32) -> Pending<'_> {
    match (via.nhid, via.gw) {
        (Some(id), _) => {
            let msg = to(net).nhid(id).build();
            async move {
                h.route()
                    .add(msg)
                    .replace()
                    .execute()
                    .await
                    .map_err(failed(|| format!("route {net} nhid {id}")))
            }
            .boxed()
        }
        (None, Some(gw)) => replace_route(h, net, gw, index, true),
        (None, None) => async move {
            Err(NetlinkError::Unexpected {
                op: format!("route {net}"),
                why: "a peer route with neither a gateway nor a nexthop",
            })
        }
        .boxed(),
    }
}

/// `ip route del <net> nhid <id>`, or `ip route del <net> [via <gw>] dev <index>`: a route
/// by nexthop id only matches a delete that names the id.
pub(super) fn del_route(h: &Handle, net: IpNetwork, v: Via, index: u32) -> Pending<'_> {
    async move {
        let b = match (v.nhid, v.gw) {
            (Some(id), _) => to(net).nhid(id),
            (None, Some(gw)) => via(net, gw)?.output_interface(index),
            (None, None) => to(net).output_interface(index),
        };
        h.route()
            .del(match_any_origin(b.build()))
            .execute()
            .await
            .map_err(failed(|| format!("del route {net}")))
    }
    .boxed()
}

pub(super) fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(r.header.table as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connected_prefixes_of_both_families_are_on_our_link() {
        let route = |net: &str, scope, protocol| MainRoute {
            oif: Some(2),
            net: net.parse().unwrap(),
            gw: None,
            nhid: None,
            scope,
            protocol,
        };
        let mut u = UnderlayRoutes::default();
        let net4: IpNetwork = "10.244.0.0/16".parse().unwrap();
        let net6: IpNetwork = "fd00:10:244::/56".parse().unwrap();
        use {RouteProtocol as P, RouteScope as S};
        for (net, scope, protocol, dev, network) in [
            ("198.18.0.0/24", S::Link, P::Kernel, 2, net4),
            // IPv6: scope universe even for the kernel's connected route.
            ("2001:2::/64", S::Universe, P::Kernel, 2, net6),
            ("fe80::/64", S::Universe, P::Kernel, 2, net6),
            ("2001:2:9::/64", S::Universe, P::Static, 2, net6),
            ("198.18.0.0/24", S::Link, P::Kernel, 3, net4),
        ] {
            u.take(&route(net, scope, protocol), dev, network);
        }
        assert_eq!(
            u.onlink,
            [
                "198.18.0.0/24".parse().unwrap(),
                "2001:2::/64".parse().unwrap()
            ] as [IpNetwork; 2]
        );
    }

    #[test]
    fn which_routes_guard_the_underlay() {
        let n = |s: &str| s.parse::<IpNetwork>().unwrap();
        let network = n("10.0.0.0/8");
        let g = |s: &str, nh: bool| guards_underlay(n(s), nh, network, 24);
        assert!(!g("0.0.0.0/0", false), "the default route");
        assert!(
            !g("10.0.0.0/8", false),
            "an aggregate of the pod network towards a router"
        );
        assert!(!g("10.0.0.0/7", false));
        assert!(!g("10.5.3.0/24", false), "a peer's direct route");
        assert!(!g("10.5.3.0/24", true));
        assert!(!g("10.5.0.0/16", true), "by nexthop id: ours");
        assert!(
            g("10.5.0.0/16", false),
            "a remote site inside a too-wide Network"
        );
        assert!(g("10.5.3.0/25", false));
        assert!(g("198.18.0.0/24", false));
        assert!(g("192.168.0.0/16", false));
        let v6 = n("fd00:10::/56");
        let g6 = |s: &str| guards_underlay(n(s), false, v6, 64);
        assert!(!g6("::/0"), "the IPv6 default route");
        assert!(!g6("fd00:10:0:3::/64"), "a peer's route");
        assert!(g6("2001:2::/64"));
        assert!(g6("fd00:10:0:4::/72"));
    }
}
