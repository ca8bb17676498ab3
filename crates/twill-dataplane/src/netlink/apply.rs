//! Reading what the kernel holds for our peers, and applying a batch of changes to it.

use super::*;

impl Netlink {
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
                    report.failed.push(EntryError::Nexthop {
                        id,
                        gateway: gw,
                        source: e,
                    });
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
}
