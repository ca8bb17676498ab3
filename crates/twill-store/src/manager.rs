//! The one interface the daemon leases and watches through, whichever store backs it
//! (flannel's "subnet manager"): etcd allocates subnets itself, Kubernetes hands out
//! `spec.podCIDR`. The data plane only ever sees the peer events either produces.

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use twill_config::NetConf;

use crate::alloc::{AllocError, PlanSource};
use crate::lease::{LeaseAttrs, LeaseKey};
use crate::peers::WatchEvent;

/// What to lease: the config decides the range, `attrs` is the value to publish,
/// `previous` is the subnet from the last subnet.env (preferred when free).
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    pub conf: NetConf,
    pub attrs: LeaseAttrs,
    pub previous: LeaseKey,
    /// How long a lease lives without renewal, where the store has such leases.
    pub ttl: Duration,
}

/// When a held lease ends unless renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A reservation, or a subnet the store assigned (Kubernetes podCIDR): nothing runs out.
    Never,
    /// Gone at `deadline` unless renewed; `ttl` is what each renewal grants.
    At { deadline: Instant, ttl: Duration },
}

impl Expiry {
    /// A lease of `ttl` granted now.
    pub fn after(ttl: Duration) -> Self {
        Expiry::At {
            deadline: Instant::now() + ttl,
            ttl,
        }
    }
}

/// A lease we hold. Backend handles (etcd's lease id) stay inside the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    pub key: LeaseKey,
    pub attrs: LeaseAttrs,
    pub expiry: Expiry,
    pub source: PlanSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewOutcome {
    /// Still ours, now until this.
    Renewed(Expiry),
    /// Expired, deleted or overwritten: acquire again.
    Lost,
}

/// An error of whatever kind, kept as it came.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What any store can fail with. The cause is kept as the source, not as text, under the
/// store's name ("etcd", "kubernetes") and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's API failed in a way worth retrying.
    #[error("{store}: {}{source}", op_text(.op))]
    Backend {
        store: &'static str,
        /// What was asked ("get node n1"), when the backend says.
        op: Option<String>,
        #[source]
        source: BoxError,
    },
    #[error("{store}: no answer within {after:?}")]
    Timeout {
        store: &'static str,
        after: Duration,
    },
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error("{flag} {path}: {err}")]
    File {
        flag: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    /// A setting (flag, environment, file content) that can't work: it names the setting,
    /// and retrying won't help.
    #[error("{setting}: {source}")]
    Invalid {
        setting: String,
        #[source]
        source: BoxError,
    },
    #[error("could not take a subnet after {0} attempts: other nodes kept winning the race")]
    Contention(usize),
    /// Something outside twill has to happen first (a podCIDR to be assigned): keep
    /// checking, and keep saying what is missing.
    #[error("{0}")]
    Waiting(BoxError),
}

fn op_text(op: &Option<String>) -> String {
    op.as_ref().map(|o| format!("{o}: ")).unwrap_or_default()
}

impl StoreError {
    /// Errors that retrying won't fix: wrong files or flags, an exhausted range. The rest
    /// (store down, timeouts, lost races) are worth retrying.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            StoreError::File { .. } | StoreError::Invalid { .. } | StoreError::Alloc(_)
        )
    }
}

pub trait SubnetManager: Clone + Send + Sync + 'static {
    /// The store's name in logs and errors ("etcd", "kubernetes").
    fn kind(&self) -> &'static str;

    /// The VTEP MACs this node advertised before (`BackendData`'s, `BackendV6Data`'s), so
    /// a restarted or rebooted node keeps them and peers need no FDB update.
    fn advertised_macs(
        &self,
        node_ip: IpAddr,
    ) -> impl Future<Output = (Option<String>, Option<String>)> + Send;

    /// Takes (or finds) this node's subnet and publishes `req.attrs` for it. Returns
    /// `StoreError::Waiting` while something outside twill must happen first.
    fn acquire(
        &self,
        req: &AcquireRequest,
    ) -> impl Future<Output = Result<HeldLease, StoreError>> + Send;

    /// Publishes new attributes for the lease we hold (the node's underlay moved: another
    /// PublicIP), keeping its subnet and, in etcd, its TTL lease; the store's compare
    /// guards it as every write. `None` when the lease is no longer ours to change.
    fn republish(
        &self,
        held: &HeldLease,
        attrs: &LeaseAttrs,
    ) -> impl Future<Output = Result<Option<HeldLease>, StoreError>> + Send;

    /// Drops this copy's connection for a new one: the node's address changed, and
    /// requests on a connection from the old one would hang until it times out.
    fn reconnect(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }

    /// Where this store's connections go, `host:port` each (see `server_of`), so the
    /// node can tell when it reaches them from another address. Empty: nothing to follow.
    fn servers(&self) -> Vec<String> {
        Vec::new()
    }

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
