//! FDB entries of the VXLAN device: `bridge fdb <mac> dst <peer> self permanent` per
//! peer, which tells the device where to send a peer's VTEP MAC. Read by `neigh`'s dump
//! (they are AF_BRIDGE neighbours).

use std::net::IpAddr;

use futures::FutureExt;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::Handle;
use twill_store::Mac;

use super::{failed, Pending};

/// `bridge fdb replace <mac> dev <index> dst <dst> self permanent`.
pub(super) fn add_fdb(h: &Handle, index: u32, mac: Mac, dst: IpAddr) -> Pending<'_> {
    async move {
        h.neighbours()
            .add_bridge(index, &mac.0)
            .destination(dst)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(failed(|| format!("fdb {mac} dst {dst}")))
    }
    .boxed()
}

/// `bridge fdb del <mac> dev <index> dst <dst> self`.
pub(super) fn del_fdb(h: &Handle, index: u32, mac: Mac, dst: IpAddr) -> Pending<'_> {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.flags = NeighbourFlags::Own;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(dst)));
    async move {
        h.neighbours()
            .del(m)
            .execute()
            .await
            .map_err(failed(|| format!("del fdb {mac} dst {dst}")))
    }
    .boxed()
}
