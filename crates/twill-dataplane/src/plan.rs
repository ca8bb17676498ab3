//! What a pass would change, read from the kernel and nothing written: the one place the
//! reconcile and `twilld doctor` compute the difference between the peers and the kernel.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use tracing::debug;
use twill_store::{Family, PeerEntry};

use crate::desired::{diff, diff_direct, split_direct, DirectOps, Ops, RouteForm};
use crate::netlink::{Netlink, NetlinkError};

/// How a pass treats routes on the underlay device (ifindex, overlay network).
#[derive(Debug, Clone, Copy)]
pub enum Underlay {
    /// Not read.
    Skip,
    /// DirectRouting off: every peer on VXLAN, direct routes in the network deleted.
    Sweep(u32, IpNetwork),
    /// DirectRouting on: peers on the underlay's link get direct routes.
    Direct(u32, IpNetwork),
}

/// What a pass would change: read from the kernel, nothing written.
#[derive(Debug, Default)]
pub struct PeerPlan {
    pub ops: Ops,
    pub direct: DirectOps,
    /// The underlay's connected prefixes, when they were read.
    pub onlink: Option<Vec<IpNetwork>>,
    /// Peers reached by a direct route.
    pub direct_peers: usize,
    /// The route form the diff was taken for (given, or read off the kernel).
    pub form: RouteForm,
}

/// Reads a VXLAN device's entries (of `family`) (and the underlay's routes, per `mode`) and diffs them
/// against `desired`: the one place reconcile and `twilld doctor` compute the difference.
/// A `form` of `None` (doctor, which doesn't know the daemon's flags) takes the one the
/// kernel shows: nexthops on the device mean the daemon writes them.
pub async fn plan_peers(
    nl: &Netlink,
    index: u32,
    family: Family,
    mode: Underlay,
    desired: &BTreeMap<IpNetwork, PeerEntry>,
    form: Option<RouteForm>,
) -> Result<PeerPlan, NetlinkError> {
    let underlay = match mode {
        Underlay::Skip => None,
        Underlay::Sweep(d, n) | Underlay::Direct(d, n) => Some((d, n)),
    };
    let (actual, u) = nl.read_peers(index, family, underlay).await?;
    let form = form.unwrap_or(if actual.nexthops.is_empty() {
        RouteForm::Plain
    } else {
        RouteForm::Nexthop
    });
    let diff = |desired| diff(desired, &actual, form);
    let Some(u) = u else {
        return Ok(PeerPlan {
            ops: diff(desired),
            form,
            ..Default::default()
        });
    };
    let (ops, direct) = match mode {
        Underlay::Direct(..) => {
            let (vxlan, direct) = split_direct(desired, &u.onlink);
            (diff(&vxlan), direct)
        }
        // Each VXLAN route replaces a direct one; direct routes to subnets no longer
        // leased are deleted.
        _ => (diff(desired), BTreeMap::new()),
    };
    Ok(PeerPlan {
        ops,
        direct: diff_direct(&direct, &u.direct),
        onlink: Some(u.onlink),
        direct_peers: direct.len(),
        form,
    })
}

/// host-gw's plan: the routes via peers' PublicIPs on the underlay device `underlay` that
/// `desired` calls for, against those inside `network` the kernel has there (ours, a
/// DirectRouting run's or flanneld's). A peer off our link is left out: the lease policy
/// refuses it before it gets here, and the kernel would refuse its gateway anyway.
pub async fn plan_routed(
    nl: &Netlink,
    underlay: u32,
    network: IpNetwork,
    desired: &BTreeMap<IpNetwork, PeerEntry>,
) -> Result<PeerPlan, NetlinkError> {
    let u = nl.read_underlay(underlay, network).await?;
    let (off_link, want) = split_direct(desired, &u.onlink);
    if !off_link.is_empty() {
        debug!(
            peers = off_link.len(),
            "host-gw peers off our link left out"
        );
    }
    Ok(PeerPlan {
        direct: diff_direct(&want, &u.direct),
        onlink: Some(u.onlink),
        direct_peers: want.len(),
        ..Default::default()
    })
}
