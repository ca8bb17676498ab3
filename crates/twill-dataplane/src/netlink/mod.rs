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

mod apply;
mod link;
mod monitor;
mod neigh;
mod route;

use self::{link::*, neigh::*, route::*};
pub use link::{DeviceState, Link, VxlanSpec};
pub use monitor::{watch_device, DeviceMonitor};
pub use route::{NodePrefixes, UnderlayRoutes};

/// Requests in flight at once within a batch; bounded so a 10 000-peer batch doesn't
/// overrun the socket's receive buffer with replies.
const PIPELINE_DEPTH: usize = 256;

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

pub struct Netlink {
    handle: Handle,
    nexthops: NexthopConn,
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
}

/// Outcome of one applied batch.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub applied: usize,
    pub failed: Vec<EntryError>,
}

/// One kernel entry that could not be written, with the kernel's (or the codec's) error.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("nexthop id {id} via {gateway}: {source}")]
    Nexthop {
        id: u32,
        gateway: Ipv4Addr,
        #[source]
        source: nexthop::EnsureError,
    },
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
            Err(source) => report
                .failed
                .push(EntryError::Netlink(NetlinkError { op: what, source })),
        }
    }
}
