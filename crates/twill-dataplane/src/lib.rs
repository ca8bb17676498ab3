//! The node's kernel state: the VXLAN device, one neighbour + FDB entry + route per peer,
//! and the MASQUERADE/FORWARD rules.
//!
//! `desired` computes what should exist from the lease table (pure, unit-tested); `netlink`
//! reads what does exist and applies the difference; `firewall` does the same for the
//! iptables or nftables rules.
//! Reconciling the whole difference, rather than replaying events, is what makes a deleted
//! route, a flushed chain or a recreated device heal on the next pass.

pub mod blackhole;
pub mod change;
pub mod config;
pub mod desired;
pub mod errno;
pub mod firewall;
pub mod garp;
pub mod iface;
pub mod netlink;
pub mod nexthop;
pub mod offload;
pub mod plan;
pub mod reconcile;
pub mod underlay;

pub use blackhole::{Blackhole, BlackholePlan, BLACKHOLE_METRIC};
pub use change::ChangeFlag;
pub use config::{DataplaneConfig, OverlayConfig, Transport};
pub use desired::RESTORED_KINDS;
pub use desired::{
    desired_peers, diff, diff_direct, incremental, nexthop_id, split_direct, Actual, DirectOps,
    Ops, RouteForm, Via,
};
pub use firewall::{
    Firewall, FirewallError, Iptables, Nftables, RuleFlags, RuleIntent, RuleOptions, RuleSet,
    RulesReport, VxlanFlows, NFT_TABLE, NFT_TABLE6,
};
pub use iface::{choose_interface, ExtIface, IfaceError, IfaceSelection, InterfaceInfo, Routes};
pub use netlink::{
    watch_devices, ApplyReport, DeviceMonitor, DeviceState, EntryError, Netlink, NetlinkError,
    NodePrefixes, UnderlayRoutes, VxlanSpec,
};
pub use plan::{plan_peers, plan_routed, PeerPlan, Underlay};
pub use reconcile::{Dataplane, DataplaneError, ReconcileReport};
pub use twill_store::{Family, Mac, PeerEntry};
pub use underlay::{select_underlay, SelectError};
