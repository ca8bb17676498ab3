//! Subnet leases: flannel's key layout and JSON, the pure allocator, the peer table, and
//! the etcd v3 store. The allocator and the peer table decide; the store only talks to
//! etcd, so the decisions are unit-tested without a server.

mod alloc;
mod entry;
mod etcd;
mod lease;
mod mac;
mod manager;
mod peers;
mod validate;

pub use alloc::{plan, AllocError, Plan, PlanSource};
pub use entry::PeerEntry;
pub use etcd::{AcquireRequest, EtcdOptions, EtcdStore, HeldLease, RenewOutcome, StoreError};
pub use lease::{LeaseAttrs, LeaseKey, LeaseKeyError, RawJson, StoredLease, VxlanBackendData};
pub use mac::Mac;
pub use manager::SubnetManager;
pub use peers::{Applied, Lease, PeerEvent, PeerTable, WatchEvent};
pub use validate::{LeasePolicy, Rejection, Verdict};
