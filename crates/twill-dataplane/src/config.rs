//! What a node's data plane is made of, apart from the peers: per family how peers are
//! reached (a VXLAN device, or host-gw's routes on the underlay) and the pod network, and
//! the rules and route options for both. Settled by the daemon's settings, read by the
//! reconcile.

use ipnetwork::IpNetwork;
use twill_store::Family;

use crate::desired::RouteForm;
use crate::firewall::RuleFlags;
use crate::netlink::VxlanSpec;

/// How one family's peers are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Through this family's VXLAN device (flannel's vxlan backend).
    Vxlan(VxlanSpec),
    /// flannel's host-gw: a route per peer subnet via the peer's PublicIP on the underlay
    /// device (its ifindex); no device, no encapsulation.
    HostGw { underlay: u32 },
}

/// One family's overlay: how its peers are reached and the pod network of that family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayConfig {
    pub transport: Transport,
    pub network: IpNetwork,
}

impl OverlayConfig {
    /// The VXLAN device's spec; `None` under host-gw.
    pub fn vxlan(&self) -> Option<&VxlanSpec> {
        match &self.transport {
            Transport::Vxlan(v) => Some(v),
            Transport::HostGw { .. } => None,
        }
    }

    /// The underlay device's ifindex: where host-gw's and DirectRouting's routes go.
    pub fn underlay(&self) -> u32 {
        match &self.transport {
            Transport::Vxlan(v) => v.dev_index,
            Transport::HostGw { underlay } => *underlay,
        }
    }

    /// The VXLAN device's name, if the family has one.
    pub fn device(&self) -> Option<&str> {
        self.vxlan().map(|v| v.name.as_str())
    }
}

/// What the node's data plane is made of, apart from the peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// `flannel.<VNI>` over the pod network (`Network`), unless EnableIPv4 is false.
    pub v4: Option<OverlayConfig>,
    /// `flannel-v6.<VNI>` over `IPv6Network` (EnableIPv6).
    pub v6: Option<OverlayConfig>,
    /// MASQUERADE, FORWARD and (for the IPv4 VTEP's address and port) notrack rules.
    pub rules: RuleFlags,
    /// Networks exempt from masquerading (NonMasqueradeCIDRs, --no-masq-cidr), both
    /// families.
    pub no_masq: Vec<IpNetwork>,
    /// flannel's `Backend.DirectRouting`: peers on the underlay's own link get a plain
    /// route via their address instead of VXLAN entries.
    pub direct_routing: bool,
    /// How VXLAN peer routes are written (`--route-nexthops`).
    pub route_form: RouteForm,
    /// A blackhole route for our own subnet of each family (`--ip-blackhole-route`).
    pub blackhole_route: bool,
}

impl DataplaneConfig {
    pub fn overlay(&self, f: Family) -> Option<&OverlayConfig> {
        match f {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    pub(crate) fn overlay_mut(&mut self, f: Family) -> Option<&mut OverlayConfig> {
        match f {
            Family::V4 => self.v4.as_mut(),
            Family::V6 => self.v6.as_mut(),
        }
    }

    /// The overlays configured, IPv4's first.
    pub fn overlays(&self) -> impl Iterator<Item = (Family, &OverlayConfig)> {
        Family::BOTH
            .into_iter()
            .filter_map(|f| self.overlay(f).map(|o| (f, o)))
    }

    /// The VXLAN devices' names, IPv4's first (none under host-gw).
    pub fn devices(&self) -> impl Iterator<Item = &str> {
        self.overlays().filter_map(|(_, o)| o.device())
    }

    pub fn is_host_gw(&self) -> bool {
        self.overlays()
            .any(|(_, o)| matches!(o.transport, Transport::HostGw { .. }))
    }
}
