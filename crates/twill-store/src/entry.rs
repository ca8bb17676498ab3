//! A peer as the data plane needs it, made once from a lease when it is judged: the store
//! keeps lease JSON as text, and parsing it (and the MAC) again for every event and every
//! peer of every full pass cost 10 000 parses a pass at 10 000 peers.
//!
//! A dual-stack lease is two peers to the kernel, one per family, each on its own VXLAN
//! device (`flannel.<VNI>`, `flannel-v6.<VNI>`): the v4 half is the key's IPv4 subnet,
//! `BackendData` and `PublicIP`; the v6 half the key's IPv6 subnet, `BackendV6Data` and
//! `PublicIPv6`, exactly as flanneld pairs them.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::lease::{LeaseAttrs, LeaseKey, RawJson, VxlanBackendData};
use crate::mac::Mac;
use crate::rejection::Rejection;

/// An address family of the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(net: &IpNetwork) -> Family {
        if net.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    pub fn is_v6(self) -> bool {
        self == Family::V6
    }
}

/// What one peer needs on our side, in one family. A vxlan peer: `ip neigh <vtep_ip>
/// lladdr <mac>`, `bridge fdb <mac> dst <public_ip>`, `ip route <subnet> via <vtep_ip>
/// onlink`. A host-gw peer (no `mac`): `ip route <subnet> via <public_ip>` on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerEntry {
    pub subnet: IpNetwork,
    pub vtep_ip: IpAddr,
    /// The peer's VTEP MAC; `None` for a host-gw peer, which has no VTEP.
    pub mac: Option<Mac>,
    pub public_ip: IpAddr,
}

impl PeerEntry {
    /// The peer a lease half describes: its VTEP address is the subnet's network address,
    /// as flanneld gives its device.
    pub fn new(subnet: IpNetwork, mac: Option<Mac>, public_ip: IpAddr) -> Self {
        PeerEntry {
            subnet,
            vtep_ip: subnet.network(),
            mac,
            public_ip,
        }
    }

    pub fn family(&self) -> Family {
        Family::of(&self.subnet)
    }
}

/// A lease's peers, one per family it carries (and the node enables).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerEntries {
    pub v4: Option<PeerEntry>,
    pub v6: Option<PeerEntry>,
}

impl PeerEntries {
    pub fn get(&self, f: Family) -> Option<&PeerEntry> {
        match f {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = PeerEntry> {
        self.v4.into_iter().chain(self.v6)
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }

    /// The VTEP MACs, which with the key and the attributes give back the entries.
    pub(crate) fn macs(&self) -> VtepMacs {
        VtepMacs {
            v4: self.v4.map(|e| e.mac),
            v6: self.v6.map(|e| e.mac),
        }
    }
}

/// What the peer table keeps of a usable lease beyond its key and attributes: per family,
/// `None` when the lease has no peer there, `Some(None)` for a host-gw half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VtepMacs {
    pub v4: Option<Option<Mac>>,
    pub v6: Option<Option<Mac>>,
}

impl VtepMacs {
    pub(crate) fn entries(&self, key: &LeaseKey, attrs: &LeaseAttrs) -> PeerEntries {
        let v4 = match (self.v4, key.v4) {
            (Some(mac), Some(subnet)) => Some(PeerEntry::new(subnet, mac, attrs.public_ip.into())),
            _ => None,
        };
        let v6 = match (self.v6, key.v6, attrs.public_ipv6) {
            (Some(mac), Some(subnet), Some(ip)) => Some(PeerEntry::new(subnet, mac, ip.into())),
            _ => None,
        };
        PeerEntries { v4, v6 }
    }
}

/// A lease as peers, parsed: the halves of the families asked for that the key carries,
/// each with its VNI when it is a vxlan lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub entries: PeerEntries,
    pub vnis: Vec<(Family, u32)>,
}

impl PeerEntries {
    /// The entries a vxlan or host-gw lease describes: `Ok(None)` for a reservation (no
    /// backend yet), an error when the lease can't be one (no subnet of a wanted family,
    /// another backend, bad vxlan data or MAC, a v6 half without PublicIPv6). Whether it
    /// is safe to program is `LeasePolicy`'s question, not this one's.
    pub fn of(key: &LeaseKey, attrs: &LeaseAttrs) -> Result<Option<PeerEntries>, Rejection> {
        Ok(Self::parse(key, attrs, [true, true])?.map(|p| p.entries))
    }

    /// `want`: whether to read the v4 and the v6 half (the node's enabled families).
    pub(crate) fn parse(
        key: &LeaseKey,
        attrs: &LeaseAttrs,
        want: [bool; 2],
    ) -> Result<Option<Parsed>, Rejection> {
        let v4 = key.v4.filter(|_| want[0]);
        let v6 = key.v6.filter(|_| want[1]);
        if v4.is_none() && v6.is_none() {
            return Err(if want[0] {
                Rejection::NoIpv4Subnet
            } else {
                Rejection::NoIpv6Subnet
            });
        }
        if attrs.is_placeholder() {
            return Ok(None);
        }
        let mut out = Parsed {
            entries: PeerEntries::default(),
            vnis: Vec::new(),
        };
        // host-gw leases carry no backend data (flanneld writes none): the peer is its
        // PublicIP.
        let host_gw = attrs.backend_type == "host-gw";
        let mut half = |subnet, data: Option<&RawJson>, f, ip: IpAddr| -> Result<_, Rejection> {
            if host_gw {
                return Ok(PeerEntry::new(subnet, None, ip));
            }
            let (mac, vni) = vtep(attrs, data, f)?;
            out.vnis.push((f, vni));
            Ok(PeerEntry::new(subnet, Some(mac), ip))
        };
        let mut entries = PeerEntries::default();
        if let Some(subnet) = v4 {
            let data = attrs.backend_data.as_ref();
            entries.v4 = Some(half(subnet, data, Family::V4, attrs.public_ip.into())?);
        }
        if let Some(subnet) = v6 {
            let ip = attrs.public_ipv6.ok_or(Rejection::NoPublicIpv6)?;
            let data = attrs.backend_v6_data.as_ref();
            entries.v6 = Some(half(subnet, data, Family::V6, ip.into())?);
        }
        out.entries = entries;
        Ok(Some(out))
    }
}

/// The VTEP MAC and VNI of one family's backend data.
fn vtep(attrs: &LeaseAttrs, data: Option<&RawJson>, f: Family) -> Result<(Mac, u32), Rejection> {
    let bad = |why: &str| Rejection::BackendData {
        v6: f.is_v6(),
        why: why.into(),
    };
    if attrs.backend_type != "vxlan" {
        return Err(bad("not a vxlan or host-gw lease"));
    }
    let data: VxlanBackendData = data
        .and_then(|d| serde_json::from_str(d.get()).ok())
        .ok_or_else(|| bad("missing, or not {\"VNI\": <number>, \"VtepMAC\": <string>}"))?;
    let mac = data
        .vtep_mac
        .parse::<Mac>()
        .map_err(|_| Rejection::VtepMac {
            mac: data.vtep_mac.clone(),
        })?;
    Ok((mac, data.vni))
}
