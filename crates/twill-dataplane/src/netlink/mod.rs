//! All netlink traffic goes through here: one rtnetlink connection, reads that turn kernel
//! messages into our types, and batched writes. Requests of a batch are issued
//! concurrently on the one socket (netlink matches replies by sequence number), so
//! programming N peers costs about one round trip per phase, not 3·N.
//!
//! A module per kernel object, each with its reads and its writes: `link` (the VXLAN
//! device, its address, the interface listing), `neigh` (neighbour entries, and the dump
//! FDB entries share), `fdb`, `route` (peer, direct and blackhole routes, the underlay's
//! routes), nexthop objects in `crate::nexthop`; `peers` reads and applies a batch of all
//! of them for our peers; `monitor` watches them change, on sockets `rcvbuf` sizes.

use std::net::IpAddr;

use futures::{stream, StreamExt};
pub use rtnetlink::packet_route::link::InfoKind;
use rtnetlink::Handle;

use crate::errno::{errno, ENOENT, ESRCH};
use crate::nexthop::{self, NexthopConn};

mod fdb;
mod link;
mod monitor;
mod neigh;
mod peers;
pub mod rcvbuf;
mod route;

pub use link::{DeviceState, Link, VxlanSpec};
pub use monitor::{watch_devices, DeviceMonitor};
pub use route::{NodePrefixes, UnderlayRoutes};

/// Requests in flight at once within a batch; bounded so a 10 000-peer batch doesn't
/// overrun the socket's receive buffer with replies.
const PIPELINE_DEPTH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel (or the socket) refused a request.
    #[error("netlink {op}: {source}")]
    Kernel {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// A request that could not be made, or an answer without what it must hold.
    #[error("netlink {op}: {why}")]
    Unexpected { op: String, why: &'static str },
}

impl NetlinkError {
    /// The kernel's errno, when the kernel said no.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => errno(source),
            NetlinkError::Unexpected { .. } => None,
        }
    }
}

fn ctx<T>(op: impl Into<String>, r: Result<T, rtnetlink::Error>) -> Result<T, NetlinkError> {
    r.map_err(|source| NetlinkError::Kernel {
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
        gateway: IpAddr,
        #[source]
        source: nexthop::EnsureError,
    },
}

/// One request of a batch in flight; its error names the entry.
type Pending<'a> = futures::future::BoxFuture<'a, Result<(), NetlinkError>>;

/// The error of the request for `op`, formatted only when there is one.
fn failed(op: impl FnOnce() -> String) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |source| NetlinkError::Kernel { op: op(), source }
}

async fn run<'a>(
    futs: impl Iterator<Item = Pending<'a>>,
    report: &mut ApplyReport,
    deleting: bool,
) {
    let results: Vec<_> = stream::iter(futs)
        .buffer_unordered(PIPELINE_DEPTH)
        .collect()
        .await;
    for r in results {
        match r {
            Ok(()) => report.applied += 1,
            // Already gone is what a delete wanted.
            Err(e) if deleting && matches!(e.errno(), Some(ENOENT | ESRCH)) => report.applied += 1,
            Err(e) => report.failed.push(EntryError::Netlink(e)),
        }
    }
}
