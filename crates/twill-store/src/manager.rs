//! The one interface the daemon leases and watches through, whichever store backs it
//! (flannel's "subnet manager"): etcd allocates subnets itself, Kubernetes hands out
//! `spec.podCIDR`. The data plane only ever sees the peer events either produces.

use std::future::Future;
use std::net::Ipv4Addr;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::etcd::{AcquireRequest, HeldLease, RenewOutcome, StoreError};
use crate::peers::WatchEvent;

pub trait SubnetManager: Clone + Send + Sync + 'static {
    /// The store's name in logs and errors ("etcd", "kubernetes").
    fn kind(&self) -> &'static str;

    /// The VTEP MAC this node advertised before, so a restarted or rebooted node keeps it
    /// and peers need no FDB update.
    fn advertised_mac(&self, public_ip: Ipv4Addr) -> impl Future<Output = Option<String>> + Send;

    /// Takes (or finds) this node's subnet and publishes `req.attrs` for it. Returns
    /// `StoreError::Waiting` while something outside twill must happen first.
    fn acquire(
        &self,
        req: &AcquireRequest,
    ) -> impl Future<Output = Result<HeldLease, StoreError>> + Send;

    /// Keeps the lease alive and checks it is still ours.
    fn renew(
        &self,
        held: &HeldLease,
    ) -> impl Future<Output = Result<RenewOutcome, StoreError>> + Send;

    /// Streams the complete lease set as a snapshot, then changes, re-sending a snapshot
    /// after any gap; runs until `cancel` fires or `tx` closes.
    fn watch(
        &self,
        tx: mpsc::Sender<Vec<WatchEvent>>,
        cancel: CancellationToken,
    ) -> impl Future<Output = ()> + Send;

    /// Failed lists and broken watches since start (each one is retried).
    fn error_count(&self) -> u64;
}
