//! Neighbour entries of the VXLAN device: `ip neigh <vtep> lladdr <mac> permanent` per
//! peer. The dump serves FDB entries too (AF_BRIDGE neighbours).

use std::net::IpAddr;

use futures::{FutureExt, TryStreamExt};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::Handle;
use twill_store::Mac;

use super::{ctx, failed, Netlink, NetlinkError, Pending};

impl Netlink {
    /// Calls `f` for each neighbour (AF_INET, AF_INET6) or FDB (AF_BRIDGE) entry on device
    /// `index`,
    /// as the dump streams in: at 10 000 peers, holding every message at once would
    /// dominate the daemon's peak memory.
    pub(super) async fn each_neighbour(
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
}

pub(super) fn neigh_fields(n: &NeighbourMessage) -> (Option<IpAddr>, Option<Mac>) {
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

/// `ip neigh replace <ip> lladdr <mac> dev <index> nud permanent`.
pub(super) fn add_neigh(h: &Handle, index: u32, ip: IpAddr, mac: Mac) -> Pending<'_> {
    async move {
        h.neighbours()
            .add(index, ip)
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(failed(|| format!("neigh {ip} lladdr {mac}")))
    }
    .boxed()
}

/// `ip neigh del <ip> dev <index>`.
pub(super) fn del_neigh(h: &Handle, index: u32, ip: IpAddr) -> Pending<'_> {
    let mut m = NeighbourMessage::default();
    m.header.family = family_of(ip);
    m.header.ifindex = index;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
    async move {
        h.neighbours()
            .del(m)
            .execute()
            .await
            .map_err(failed(|| format!("del neigh {ip}")))
    }
    .boxed()
}

pub(super) fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}
