//! Why a peer's lease is refused: `validate` judges, `entry` may find a lease unusable
//! while parsing it, and both say so in these terms.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::lease::LeaseKey;

/// Why a lease is refused. `reason()` is the metric label; `Display` the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The value is not flannel's lease JSON.
    Malformed,
    NoIpv4Subnet,
    /// IPv6-only: the key has no IPv6 subnet.
    NoIpv6Subnet,
    /// A v6 half (an IPv6 subnet on a node with IPv6 enabled) without PublicIPv6.
    NoPublicIpv6,
    OutsideNetwork {
        subnet: IpNetwork,
        network: IpNetwork,
    },
    SubnetLength {
        subnet: IpNetwork,
        want: u8,
    },
    /// The subnet overlaps an address or route of this node's underlay.
    Underlay {
        subnet: IpNetwork,
        prefix: IpNetwork,
    },
    /// The subnet overlaps the one this node holds.
    OwnSubnet {
        subnet: IpNetwork,
    },
    /// PublicIP (or PublicIPv6) is not an address a node can have.
    PublicIp {
        ip: IpAddr,
    },
    /// PublicIP is one of this node's addresses.
    PublicIpOurs {
        ip: IpAddr,
    },
    BackendType {
        got: String,
        want: String,
    },
    /// host-gw: the peer's PublicIP (or PublicIPv6) is not on this node's link, so a
    /// route via it would go nowhere (the kernel refuses a gateway it cannot reach).
    NotOnLink {
        ip: IpAddr,
    },
    /// `BackendData`, or with `v6` `BackendV6Data`.
    BackendData {
        v6: bool,
        why: String,
    },
    Vni {
        got: u32,
        want: u32,
    },
    VtepMac {
        mac: String,
    },
    /// Another lease claims the same subnet: neither is trusted, on every node alike.
    Overlap {
        other: LeaseKey,
    },
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::NoIpv4Subnet => "no-ipv4-subnet",
            Rejection::NoIpv6Subnet => "no-ipv6-subnet",
            Rejection::NoPublicIpv6 => "no-public-ipv6",
            Rejection::OutsideNetwork { .. } => "outside-network",
            Rejection::SubnetLength { .. } => "subnet-length",
            Rejection::Underlay { .. } => "underlay-overlap",
            Rejection::OwnSubnet { .. } => "own-subnet",
            Rejection::PublicIp { .. } => "public-ip",
            Rejection::PublicIpOurs { .. } => "public-ip-ours",
            Rejection::BackendType { .. } => "backend-type",
            Rejection::NotOnLink { .. } => "not-on-link",
            Rejection::BackendData { .. } => "backend-data",
            Rejection::Vni { .. } => "vni",
            Rejection::VtepMac { .. } => "vtep-mac",
            Rejection::Overlap { .. } => "overlap",
        }
    }

    /// Every label `reason()` can return, so a metric can show all of them at 0.
    pub const REASONS: [&'static str; 16] = [
        "malformed",
        "no-ipv4-subnet",
        "no-ipv6-subnet",
        "no-public-ipv6",
        "outside-network",
        "subnet-length",
        "underlay-overlap",
        "own-subnet",
        "public-ip",
        "public-ip-ours",
        "backend-type",
        "not-on-link",
        "backend-data",
        "vni",
        "vtep-mac",
        "overlap",
    ];
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Malformed => f.write_str("the value is not lease JSON"),
            Rejection::NoIpv4Subnet => f.write_str("the key has no IPv4 subnet"),
            Rejection::NoIpv6Subnet => f.write_str("the key has no IPv6 subnet"),
            Rejection::NoPublicIpv6 => {
                f.write_str("the lease has an IPv6 subnet but no PublicIPv6")
            }
            Rejection::OutsideNetwork { subnet, network } => {
                write!(f, "subnet {subnet} is outside Network {network}")
            }
            Rejection::SubnetLength { subnet, want } => {
                write!(f, "subnet {subnet} is not a /{want} (SubnetLen)")
            }
            Rejection::Underlay { subnet, prefix } => write!(
                f,
                "subnet {subnet} overlaps {prefix} of this node's underlay"
            ),
            Rejection::OwnSubnet { subnet } => {
                write!(f, "subnet {subnet} overlaps this node's own lease")
            }
            Rejection::PublicIp { ip } => write!(f, "PublicIP {ip} is not a unicast address"),
            Rejection::PublicIpOurs { ip } => {
                write!(f, "PublicIP {ip} is an address of this node")
            }
            Rejection::BackendType { got, want } => {
                write!(f, "BackendType {got:?} is not ours ({want:?})")
            }
            Rejection::NotOnLink { ip } => write!(
                f,
                "PublicIP {ip} is not on this node's link: host-gw routes via a peer's address, so every node must share one L2 segment"
            ),
            Rejection::BackendData { v6: false, why } => write!(f, "BackendData: {why}"),
            Rejection::BackendData { v6: true, why } => write!(f, "BackendV6Data: {why}"),
            Rejection::Vni { got, want } => write!(f, "VNI {got} is not ours ({want})"),
            Rejection::VtepMac { mac } => write!(f, "VtepMAC {mac:?} is not a unicast MAC"),
            Rejection::Overlap { other } => {
                write!(f, "lease {other} claims the same subnet; neither is used")
            }
        }
    }
}
