//! Configuration shared by the daemon and the CNI plugin.
//!
//! Everything here is pure (no I/O beyond the atomic file helper), so the rules flannel
//! users rely on — defaults, ranges, error wording — are unit-tested in one place.

mod netconf;
mod range;
mod subnetenv;

pub use netconf::{
    check_asn, enables_ipv6, fill_networks, needs_detection, BackendConf, BackendType, BgpConf,
    BgpPeer, ConfigError, NetConf, Warning, DEFAULT_GRACEFUL_RESTART_TIME,
};
pub use range::{addr_from_u128, addr_to_u128, interval, SubnetRange};
pub use subnetenv::{write_atomic, SubnetEnv, SubnetEnvError};

/// Default VXLAN UDP port: the IANA port is 4789, but flannel (and the Linux default when
/// `dstport` is omitted) uses 8472, and mixed clusters must agree on it.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// Encapsulation overhead over an IPv4 underlay (outer IPv4 20 + UDP 8 + VXLAN 8 + inner
/// Ethernet 14).
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// Over an IPv6 underlay the outer header is 20 bytes longer; flannel subtracts 50 anyway
/// and fragments, we don't.
pub const VXLAN_OVERHEAD_V6: u32 = 70;
