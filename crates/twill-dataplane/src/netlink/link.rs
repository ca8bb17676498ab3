//! Links: the VXLAN device (created, adopted or replaced to match its spec), its
//! address, and the interface listing underlay selection reads.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressScope,
};
use rtnetlink::packet_route::link::InfoKind;
use rtnetlink::packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{LinkUnspec, LinkVxlan};
use tracing::{info, warn};
use twill_store::Mac;

use crate::errno::{errno, EEXIST, ENODEV};
use crate::iface::{IfAddr, InterfaceInfo};

use super::{ctx, Netlink, NetlinkError};

/// What the VXLAN device must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// The underlay address it sends from: its family is the tunnel's (an IPv6 overlay
    /// may run over an IPv4 underlay, as flanneld's does when there is no IPv6 one).
    pub local: IpAddr,
    pub dev_index: u32,
    pub port: u16,
    pub gbp: bool,
    /// Backend.Learning: the kernel learns remote MACs from received packets (flannel's
    /// option; off by default, where only the FDB entries twill writes count).
    pub learning: bool,
    pub mtu: u32,
    /// MAC to use when the device has to be created (the one our lease already
    /// advertises, so peers need no update); random when `None`.
    pub mac: Option<Mac>,
    /// Transmit checksum offload, kept so (`--vxlan-tx-checksum-offload`); `None` leaves
    /// the kernel's default alone.
    pub tx_checksum: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    pub index: u32,
    pub mac: Mac,
    /// Created (or replaced) by this call rather than adopted.
    pub created: bool,
}

/// A link as we care about it.
#[derive(Debug, Clone, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<Mac>,
    pub up: bool,
    pub kind: Option<InfoKind>,
    pub vxlan: Vec<InfoVxlan>,
}

impl Link {
    /// Whether this is a vxlan backend's device as flannel names them (`flannel.<VNI>`,
    /// `flannel-v6.<VNI>`): twilld's or flanneld's, which share the names.
    pub fn is_flannel_vxlan(&self) -> bool {
        let vni = ["flannel.", "flannel-v6."]
            .iter()
            .find_map(|p| self.name.strip_prefix(p));
        self.kind == Some(InfoKind::Vxlan)
            && vni.is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
    }

    /// The UDP port of a VXLAN device (`None` for other kinds).
    pub fn vxlan_port(&self) -> Option<u16> {
        self.vxlan.iter().find_map(|a| match a {
            InfoVxlan::Port(p) => Some(*p),
            _ => None,
        })
    }
}

pub(super) fn parse_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        ..Default::default()
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Address(b) => l.mac = Mac::from_slice(b),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(k.clone()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => l.vxlan = v.clone(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// Does an existing device carry the attributes peers depend on? MTU is not among them:
/// it is corrected in place (flannel never corrects it, #1775).
pub(super) fn vxlan_matches(l: &Link, spec: &VxlanSpec) -> Result<(), String> {
    if l.kind != Some(InfoKind::Vxlan) {
        return Err(format!("kind {:?}, not vxlan", l.kind));
    }
    let has = |want: &InfoVxlan| l.vxlan.contains(want);
    let checks = [
        (InfoVxlan::Id(spec.vni), "VNI"),
        (InfoVxlan::Link(spec.dev_index), "underlay device"),
        (
            match spec.local {
                IpAddr::V4(a) => InfoVxlan::Local(a),
                IpAddr::V6(a) => InfoVxlan::Local6(a),
            },
            "local address",
        ),
        (InfoVxlan::Port(spec.port), "UDP port"),
        (InfoVxlan::Learning(spec.learning), "learning"),
    ];
    for (want, what) in checks {
        if !has(&want) {
            return Err(format!("{what} differs (want {want:?})"));
        }
    }
    if l.vxlan.contains(&InfoVxlan::Gbp) != spec.gbp {
        return Err("GBP differs".into());
    }
    Ok(())
}

impl Netlink {
    /// Every vxlan backend device on the host (see `Link::is_flannel_vxlan`).
    pub async fn flannel_vxlan_devices(&self) -> Result<Vec<Link>, NetlinkError> {
        let mut links = self.links().await?;
        links.retain(Link::is_flannel_vxlan);
        Ok(links)
    }

    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let msgs: Vec<LinkMessage> = ctx(
            "dump links",
            self.handle.link().get().execute().try_collect().await,
        )?;
        Ok(msgs.iter().map(parse_link).collect())
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(parse_link)),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(NetlinkError::Kernel {
                op: format!("get link {name}"),
                source: e,
            }),
        }
    }

    /// Every interface with its addresses, for underlay selection.
    pub async fn interfaces(&self) -> Result<Vec<InterfaceInfo>, NetlinkError> {
        let links = self.links().await?;
        let addrs: Vec<_> = ctx(
            "dump addresses",
            self.handle.address().get().execute().try_collect().await,
        )?;
        let addrs_all = &addrs;
        Ok(links
            .into_iter()
            .map(|l| {
                let addrs = addrs
                    .iter()
                    .filter(|a| a.header.index == l.index)
                    .filter_map(|a| {
                        let ip = a.attributes.iter().find_map(|x| match x {
                            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                            _ => None,
                        })?;
                        Some(IfAddr {
                            ip,
                            prefix: a.header.prefix_len,
                            global: a.header.scope == AddressScope::Universe,
                            permanent: a.header.flags.contains(AddressHeaderFlags::Permanent),
                        })
                    })
                    .collect();
                let addrs6 = addrs6_of(addrs_all, l.index);
                InterfaceInfo {
                    index: l.index,
                    name: l.name,
                    mtu: l.mtu,
                    addrs,
                    addrs6,
                }
            })
            .collect())
    }
}

/// An interface's IPv6 addresses as underlay selection sees them. The kernel keeps the
/// extended flags (deprecated, temporary) in IFA_FLAGS; the header holds the low byte.
fn addrs6_of(
    msgs: &[rtnetlink::packet_route::address::AddressMessage],
    index: u32,
) -> Vec<crate::iface::IfAddr6> {
    use rtnetlink::packet_route::address::AddressFlags;
    msgs.iter()
        .filter(|a| a.header.index == index)
        .filter_map(|a| {
            let ip = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(IpAddr::V6(ip)) => Some(ip.to_owned()),
                _ => None,
            })?;
            let flags = a
                .attributes
                .iter()
                .find_map(|x| match x {
                    AddressAttribute::Flags(f) => Some(f.to_owned()),
                    _ => None,
                })
                .unwrap_or_else(|| AddressFlags::from_bits_retain(a.header.flags.bits() as u32));
            Some(crate::iface::IfAddr6 {
                ip,
                global: a.header.scope == AddressScope::Universe,
                usable: !flags.intersects(
                    AddressFlags::Deprecated | AddressFlags::Tentative | AddressFlags::Dadfailed,
                ),
                permanent: flags.contains(AddressFlags::Permanent)
                    && !flags.contains(AddressFlags::Secondary),
            })
        })
        .collect()
}

impl Netlink {
    /// Creates the device, or adopts an existing one with the right attributes (fixing
    /// its MTU and bringing it up), or replaces one with the wrong attributes.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<DeviceState, NetlinkError> {
        let mut keep_mac = spec.mac;
        if let Some(l) = self.link_by_name(&spec.name).await? {
            match vxlan_matches(&l, spec) {
                Ok(()) => {
                    if l.mtu != spec.mtu {
                        info!(device = %spec.name, from = l.mtu, to = spec.mtu, "correcting MTU");
                        let m = LinkUnspec::new_with_index(l.index).mtu(spec.mtu).build();
                        ctx("set mtu", self.handle.link().set(m).execute().await)?;
                    }
                    if !l.up {
                        let m = LinkUnspec::new_with_index(l.index).up().build();
                        ctx("set link up", self.handle.link().set(m).execute().await)?;
                    }
                    if let Some(mac) = l.mac {
                        return Ok(DeviceState {
                            index: l.index,
                            mac,
                            created: false,
                        });
                    }
                }
                Err(why) => warn!(device = %spec.name, "replacing existing device: {why}"),
            }
            keep_mac = keep_mac.or(l.mac);
            ctx(
                "delete link",
                self.handle.link().del(l.index).execute().await,
            )?;
        }
        let mac = keep_mac.unwrap_or_else(Mac::random);
        let mut b = LinkVxlan::new(&spec.name, spec.vni).dev(spec.dev_index);
        b = match spec.local {
            IpAddr::V4(a) => b.local(a),
            IpAddr::V6(a) => b.local6(a),
        };
        let mut b = b
            .port(spec.port)
            .learning(spec.learning)
            .mtu(spec.mtu)
            .address(mac.0.to_vec())
            .up();
        if spec.gbp {
            b = b.gbp();
        }
        match self.handle.link().add(b.build()).execute().await {
            Ok(()) => {}
            // Someone (a racing flanneld) created it between our lookup and add: adopt
            // it on the next pass rather than fail.
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => {
                return Err(NetlinkError::Kernel {
                    op: format!("create vxlan device {}", spec.name),
                    source: e,
                })
            }
        }
        let l = self
            .link_by_name(&spec.name)
            .await?
            .ok_or_else(|| NetlinkError::Unexpected {
                op: format!("find {} after creating it", spec.name),
                why: "the kernel lists no such link",
            })?;
        info!(device = %spec.name, index = l.index, mac = %mac, "created VXLAN device");
        Ok(DeviceState {
            index: l.index,
            mac: l.mac.unwrap_or(mac),
            created: true,
        })
    }

    /// Gives the device exactly `addr`/32 (IPv6: /128) among the addresses inside
    /// `network`. An IPv6 one skips duplicate address detection: it is ours by lease, and
    /// a tentative address would leave the node without a source into the overlay for
    /// the second DAD takes.
    pub async fn ensure_address(
        &self,
        index: u32,
        addr: IpAddr,
        network: IpNetwork,
    ) -> Result<(), NetlinkError> {
        let host_len = if addr.is_ipv4() { 32 } else { 128 };
        let msgs: Vec<_> = ctx(
            "dump addresses",
            self.handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect()
                .await,
        )?;
        let mut have = false;
        for m in msgs {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip @ IpAddr::V4(_)) => Some(*ip),
                AddressAttribute::Address(ip @ IpAddr::V6(_)) => Some(*ip),
                _ => None,
            });
            let Some(ip) = ip else { continue };
            if ip == addr && m.header.prefix_len == host_len {
                have = true;
            } else if network.contains(ip) {
                ctx(
                    "delete stale address",
                    self.handle.address().del(m).execute().await,
                )?;
            }
        }
        if !have {
            let mut req = self.handle.address().add(index, addr, host_len);
            if addr.is_ipv6() {
                req.message_mut()
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            ctx("add address", req.execute().await)?;
        }
        Ok(())
    }

    /// Deletes a link by name if present (cleanup, tests).
    pub async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        match self.link_by_name(name).await? {
            Some(l) => {
                ctx(
                    "delete link",
                    self.handle.link().del(l.index).execute().await,
                )?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod flannel_names {
    use super::*;

    #[test]
    fn only_vxlan_devices_named_as_flannel_names_them() {
        let link = |name: &str, kind| Link {
            name: name.into(),
            kind,
            ..Default::default()
        };
        let vx = Some(InfoKind::Vxlan);
        for name in ["flannel.1", "flannel-v6.1", "flannel.4096"] {
            assert!(link(name, vx.clone()).is_flannel_vxlan(), "{name}");
        }
        for name in [
            "flannel.",
            "flannel.1x",
            "flannel-wg",
            "vxlan0",
            "flannel-v6.",
        ] {
            assert!(!link(name, vx.clone()).is_flannel_vxlan(), "{name}");
        }
        assert!(!link("flannel.1", Some(InfoKind::Dummy)).is_flannel_vxlan());
    }
}
