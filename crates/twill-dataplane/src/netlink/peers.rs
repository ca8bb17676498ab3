//! A peer's kernel entries together: reading what the kernel holds for our peers (one
//! dump per kind), and applying a batch of changes in the order `Ops` gives. The entries
//! themselves are written by their own modules (`neigh`, `fdb`, `route`, `nexthop`).

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::{stream, FutureExt, StreamExt};
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::AddressFamily;
use twill_store::Family;

use crate::desired::{Actual, Ops, Via};
use crate::errno::{errno, EOPNOTSUPP};

use super::fdb::{add_fdb, del_fdb};
use super::neigh::{add_neigh, del_neigh, neigh_fields};
use super::route::{del_route, replace_peer_route, UnderlayRoutes};
use super::{failed, run, ApplyReport, EntryError, Netlink, NetlinkError, PIPELINE_DEPTH};

impl Netlink {
    /// Neighbours, FDB entries and main-table routes of `family` on device `index`.
    pub async fn read_actual(&self, index: u32, family: Family) -> Result<Actual, NetlinkError> {
        Ok(self.read_peers(index, family, None).await?.0)
    }

    /// `read_actual`, and with `underlay` (its ifindex and the overlay network) what
    /// `read_underlay` gives, from the same route dump.
    pub async fn read_peers(
        &self,
        index: u32,
        family: Family,
        underlay: Option<(u32, IpNetwork)>,
    ) -> Result<(Actual, Option<UnderlayRoutes>), NetlinkError> {
        let mut actual = Actual::default();
        let af = match family {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        };
        let ours = |ip: &IpAddr| ip.is_ipv6() == family.is_v6();
        self.each_neighbour(af, index, |n| {
            // IPv6 devices carry link-local neighbours (routers, DAD) of nobody's making.
            if let (Some(ip), lladdr) = neigh_fields(n) {
                if ours(&ip) && !is_link_local(ip) {
                    actual.neighs.insert(ip, lladdr);
                }
            }
        })
        .await?;
        self.each_neighbour(AddressFamily::Bridge, index, |n| {
            if let (Some(dst), Some(mac)) = neigh_fields(n) {
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
            Err(e) => return Err(failed(|| "dump nexthops".into())(e)),
        }
        let mut under = underlay.map(|_| UnderlayRoutes::default());
        self.each_main_route(family, |r| {
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

    /// Applies `ops` on device `index` in the order of [`Ops`], pipelined: a phase waits
    /// for the one before only where it needs its results. Failures are collected, not
    /// fatal: the next reconcile retries them.
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
            .map(|(ip, mac)| add_neigh(h, index, *ip, *mac))
            .chain(
                ops.add_fdb
                    .iter()
                    .map(|(mac, dst)| add_fdb(h, index, *mac, *dst)),
            );
        // Without nexthops to write in between, the routes go out in the same pipeline
        // right behind the neighbours: the kernel handles a netlink socket's requests one
        // by one in the order they were sent, so the neighbour is still there first, and a
        // new peer's route waits for one round trip instead of two.
        if ops.add_nexthops.is_empty() {
            let routes = ops
                .add_routes
                .iter()
                .map(|(net, via)| replace_peer_route(h, *net, *via, index));
            run(adds.chain(routes), &mut report, false).await;
        } else {
            run(adds, &mut report, false).await;
            self.nexthops_then_routes(index, ops, &mut report).await;
        }
        self.dels(index, ops, &mut report).await;
        report
    }

    /// Each nexthop written, then the routes by their ids (but none by the id of a nexthop
    /// that could not be written: it would use whatever holds that id).
    async fn nexthops_then_routes(&self, index: u32, ops: &Ops, report: &mut ApplyReport) {
        let (h, nh) = (&self.handle, &self.nexthops);
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
                    report.failed.push(EntryError::Nexthop {
                        id,
                        gateway: gw,
                        source: e,
                    });
                    no_nexthop.insert(id);
                }
            }
        }

        let add_routes = ops
            .add_routes
            .iter()
            .filter(|(_, via)| via.nhid.is_none_or(|id| !no_nexthop.contains(&id)))
            .map(|(net, via)| replace_peer_route(h, *net, *via, index));
        run(add_routes, report, false).await;
    }

    /// Neighbours, forwarding entries and nexthops that are no longer wanted, last.
    async fn dels(&self, index: u32, ops: &Ops, report: &mut ApplyReport) {
        let (h, nh) = (&self.handle, &self.nexthops);
        let dels = ops
            .del_neighs
            .iter()
            .map(|ip| del_neigh(h, index, *ip))
            .chain(
                ops.del_fdb
                    .iter()
                    .map(|(mac, dst)| del_fdb(h, index, *mac, *dst)),
            )
            .chain(ops.del_nexthops.iter().map(|id| {
                async move {
                    nh.delete(*id)
                        .await
                        .map_err(failed(|| format!("del nexthop id {id}")))
                }
                .boxed()
            }));
        run(dels, report, true).await;
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => false,
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80 || a.is_multicast(),
    }
}
