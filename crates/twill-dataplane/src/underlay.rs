//! The underlay as the daemon, doctor and cleanup all choose it: the kernel's interfaces
//! and routes read now, then `iface`'s pure choice over them.

use crate::iface::{choose_interface, ExtIface, IfaceError, IfaceSelection, Routes};
use crate::netlink::{Netlink, NetlinkError};

/// Why no underlay could be chosen: the flags matched nothing, or the kernel could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    Iface(#[from] IfaceError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// The underlay as the daemon, doctor and cleanup all choose it, read from the kernel now.
/// `ipv6_only`: the network has no IPv4 (EnableIPv4=false); the choice goes by IPv6.
pub async fn select_underlay(
    nl: &Netlink,
    sel: &IfaceSelection,
    ipv6_only: bool,
) -> Result<ExtIface, SelectError> {
    let ifaces = nl.interfaces().await?;
    let routes = Routes {
        default: nl.default_route_index(false).await?,
        default6: nl.default_route_index(true).await?,
        can_reach: match sel.can_reach {
            Some(target) => nl.route_to(target).await?,
            None => None,
        },
    };
    Ok(choose_interface(&ifaces, sel, routes, ipv6_only)?)
}
