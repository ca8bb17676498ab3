//! Subnet leases, whatever stores them: flannel's key layout and JSON, the pure allocator,
//! lease validation, the peer table, and the `SubnetManager` trait with its types. The
//! backends (twill-etcd, twill-kube) depend on this crate, not on each other, and the data
//! plane uses these types without compiling any store client.

mod alloc;
mod entry;
mod lease;
mod mac;
mod manager;
mod peers;
mod rejection;
mod server;
mod shared;
mod validate;

pub use alloc::{plan, AllocError, Plan, PlanSource};
pub use entry::{Family, PeerEntries, PeerEntry};
pub use lease::{
    backend_name, node_ip, LeaseAttrs, LeaseKey, LeaseKeyError, RawJson, StoredLease,
    VxlanBackendData,
};
pub use mac::Mac;
pub use manager::{
    AcquireRequest, BoxError, Expiry, HeldLease, RenewOutcome, StoreError, SubnetManager,
};
pub use peers::{Applied, Lease, PeerEvent, PeerTable, WatchEvent};
pub use rejection::Rejection;
pub use server::{route_moved, route_remembered, server_of};
pub use shared::Shared;
pub use validate::{LeasePolicy, Verdict};
