//! Neighbour and FDB entries of the VXLAN device (one dump serves both).

use super::*;

impl Netlink {
    /// Calls `f` for each neighbour (AF_INET) or FDB (AF_BRIDGE) entry on device `index`,
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
