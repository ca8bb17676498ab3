//! Whether a peer's lease may reach the kernel. Everything under the store's prefix is
//! written by whoever holds write access to it — another node, an operator's tool, a typo,
//! an attacker — and every node turns it into routes. A lease that would route anything
//! but a slice of the pod network into the tunnel (the underlay, a default route, our own
//! pods) is refused here, before the data plane sees it. Pure: the daemon and `twilld
//! doctor` judge the same lease the same way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::entry::PeerEntries;
use crate::lease::{LeaseAttrs, LeaseKey};
use crate::rejection::Rejection;

/// What this node accepts from its peers: the configured pod network and subnet size,
/// its backend, and what it must never route into the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasePolicy {
    /// `Network` and `SubnetLen`, unless EnableIPv4 is false (IPv6-only): the v4 part of
    /// a key is then neither judged nor claimed, and PublicIP (flanneld writes 0.0.0.0)
    /// means nothing.
    pub ipv4: Option<(Ipv4Network, u8)>,
    /// `IPv6Network` and `IPv6SubnetLen` when IPv6 is enabled; the v6 half of a
    /// dual-stack key is only judged (and only claims its subnet) then.
    pub ipv6: Option<(Ipv6Network, u8)>,
    pub backend_type: String,
    pub vni: u32,
    /// This node's own addresses: a peer claiming one as its PublicIP would have our own
    /// VXLAN packets sent to ourselves.
    pub local_addrs: Vec<IpAddr>,
    /// What this node reaches outside the overlay: its addresses' connected prefixes and
    /// the routes of its underlay. A peer subnet overlapping one would pull that traffic
    /// (the store's own address among it) into the tunnel.
    pub protected: Vec<IpNetwork>,
    /// host-gw: the underlay's connected prefixes (both families). A host-gw peer is a
    /// route via its PublicIP, which only works for an address on our link; one elsewhere
    /// is refused rather than programmed as a route that black-holes. `None`: not judged
    /// (vxlan, or a judge that is not a node, such as the ExaBGP feed).
    pub onlink: Option<Vec<IpNetwork>>,
}

/// The outcome of the checks that need only the lease itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Safe to program, as these entries (one per family).
    Usable(PeerEntries),
    /// A reservation (no backend yet): holds its subnet, is nobody's peer yet.
    Pending,
    Rejected(Rejection),
}

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

fn unicast_v4(ip: Ipv4Addr) -> bool {
    let first = ip.octets()[0];
    // 0/8 is "this network", 240/4 reserved (and the broadcast address), 224/4 multicast.
    !(first == 0 || first == 127 || first >= 224)
}

fn unicast_v6(ip: Ipv6Addr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast())
}

/// The subnets a key claims under `policy` (each family only when it is enabled).
pub(crate) fn claims(key: &LeaseKey, policy: Option<&LeasePolicy>) -> Vec<IpNetwork> {
    let [v4, v6] = policy.map_or([true, true], LeasePolicy::families);
    key.v4
        .filter(|_| v4)
        .into_iter()
        .chain(key.v6.filter(|_| v6))
        .collect()
}

impl LeasePolicy {
    /// Whether the v4 and the v6 half of a lease are read.
    pub fn families(&self) -> [bool; 2] {
        [self.ipv4.is_some(), self.ipv6.is_some()]
    }

    /// Judges one lease on its own; `own` is the key this node holds. Overlaps between
    /// peers need the whole table (`PeerTable`).
    pub fn check(
        &self,
        key: &LeaseKey,
        attrs: Option<&LeaseAttrs>,
        own: Option<&LeaseKey>,
    ) -> Verdict {
        match self.check_inner(key, attrs, own) {
            Ok(Some(e)) => Verdict::Usable(e),
            Ok(None) => Verdict::Pending,
            Err(r) => Verdict::Rejected(r),
        }
    }

    fn check_inner(
        &self,
        key: &LeaseKey,
        attrs: Option<&LeaseAttrs>,
        own: Option<&LeaseKey>,
    ) -> Result<Option<PeerEntries>, Rejection> {
        // The key first: it is what becomes a route, whatever the value says.
        match (self.ipv4, key.v4) {
            (Some((net, len)), Some(v4)) => self.check_subnet(v4, IpNetwork::V4(net), len)?,
            (Some(_), None) => return Err(Rejection::NoIpv4Subnet),
            (None, _) => {}
        }
        match (self.ipv6, key.v6) {
            (Some((net, len)), Some(v6)) => self.check_subnet(v6, IpNetwork::V6(net), len)?,
            (Some(_), None) if self.ipv4.is_none() => return Err(Rejection::NoIpv6Subnet),
            _ => {}
        }
        if let Some(own) = own {
            for mine in claims(own, Some(self)) {
                if let Some(s) = claims(key, Some(self))
                    .into_iter()
                    .find(|s| overlaps(*s, mine))
                {
                    return Err(Rejection::OwnSubnet { subnet: s });
                }
            }
        }
        let attrs = attrs.ok_or(Rejection::Malformed)?;
        if attrs.is_placeholder() {
            return Ok(None);
        }
        if self.ipv4.is_some() {
            self.check_public_ip(IpAddr::V4(attrs.public_ip), unicast_v4(attrs.public_ip))?;
        }
        let v6_half = self.ipv6.is_some() && key.v6.is_some();
        if let (true, Some(ip6)) = (v6_half, attrs.public_ipv6) {
            self.check_public_ip(IpAddr::V6(ip6), unicast_v6(ip6))?;
        }
        if attrs.backend_type != self.backend_type.as_str() {
            return Err(Rejection::BackendType {
                got: attrs.backend_type.to_string(),
                want: self.backend_type.clone(),
            });
        }
        let Some(parsed) = PeerEntries::parse(key, attrs, self.families())? else {
            return Ok(None);
        };
        // flanneld gives both devices the one VNI of net-conf.json.
        if let Some((_, got)) = parsed.vnis.iter().find(|(_, v)| *v != self.vni) {
            return Err(Rejection::Vni {
                got: *got,
                want: self.vni,
            });
        }
        if let Some(mac) = parsed
            .entries
            .iter()
            .find_map(|e| e.mac.filter(|m| !m.is_unicast()))
        {
            return Err(Rejection::VtepMac {
                mac: mac.to_string(),
            });
        }
        if let Some(onlink) = &self.onlink {
            if let Some(e) = parsed
                .entries
                .iter()
                .find(|e| !onlink.iter().any(|n| n.contains(e.public_ip)))
            {
                return Err(Rejection::NotOnLink { ip: e.public_ip });
            }
        }
        Ok(Some(parsed.entries))
    }

    fn check_subnet(
        &self,
        subnet: IpNetwork,
        network: IpNetwork,
        len: u8,
    ) -> Result<(), Rejection> {
        if subnet.prefix() != len {
            return Err(Rejection::SubnetLength { subnet, want: len });
        }
        if !(network.contains(subnet.network()) && network.prefix() <= subnet.prefix()) {
            return Err(Rejection::OutsideNetwork { subnet, network });
        }
        if let Some(prefix) = self.protected.iter().find(|p| overlaps(**p, subnet)) {
            return Err(Rejection::Underlay {
                subnet,
                prefix: *prefix,
            });
        }
        Ok(())
    }

    fn check_public_ip(&self, ip: IpAddr, unicast: bool) -> Result<(), Rejection> {
        if !unicast {
            return Err(Rejection::PublicIp { ip });
        }
        if self.local_addrs.contains(&ip) {
            return Err(Rejection::PublicIpOurs { ip });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
