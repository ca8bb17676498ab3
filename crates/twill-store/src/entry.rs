//! A peer as the data plane needs it, made once from a lease when it is judged: the store
//! keeps lease JSON as text, and parsing it (and the MAC) again for every event and every
//! peer of every full pass cost 10 000 parses a pass at 10 000 peers.

use std::net::Ipv4Addr;

use ipnetwork::{IpNetwork, Ipv4Network};

use crate::lease::{LeaseAttrs, LeaseKey};
use crate::mac::Mac;
use crate::rejection::Rejection;

/// What one vxlan peer needs on our side: `ip neigh <vtep_ip> lladdr <mac>`, `bridge fdb
/// <mac> dst <public_ip>`, `ip route <subnet> via <vtep_ip> onlink`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerEntry {
    pub subnet: Ipv4Network,
    pub vtep_ip: Ipv4Addr,
    pub mac: Mac,
    pub public_ip: Ipv4Addr,
}

impl PeerEntry {
    /// The entry a vxlan lease describes: `Ok(None)` for a reservation (no backend yet),
    /// an error when the lease can't be one (no v4 subnet, not vxlan data, a bad MAC).
    /// Whether it is safe to program is `LeasePolicy`'s question, not this one's.
    pub fn of(key: &LeaseKey, attrs: &LeaseAttrs) -> Result<Option<PeerEntry>, Rejection> {
        Ok(Self::with_vni(key, attrs)?.map(|(e, _)| e))
    }

    /// [`PeerEntry::of`] and the lease's VNI, from one parse of its data.
    pub(crate) fn with_vni(
        key: &LeaseKey,
        attrs: &LeaseAttrs,
    ) -> Result<Option<(PeerEntry, u32)>, Rejection> {
        let Some(IpNetwork::V4(subnet)) = key.v4 else {
            return Err(Rejection::NoIpv4Subnet);
        };
        if attrs.is_placeholder() {
            return Ok(None);
        }
        let data = attrs.vxlan_data().ok_or_else(|| Rejection::BackendData {
            why: "missing, or not {\"VNI\": <number>, \"VtepMAC\": <string>}".into(),
        })?;
        let mac = data
            .vtep_mac
            .parse::<Mac>()
            .map_err(|_| Rejection::VtepMac {
                mac: data.vtep_mac.clone(),
            })?;
        let entry = PeerEntry {
            subnet,
            vtep_ip: subnet.network(),
            mac,
            public_ip: attrs.public_ip,
        };
        Ok(Some((entry, data.vni)))
    }
}
