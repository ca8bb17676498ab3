//! What the config means for this node, worked out in one place (pure): from net-conf.json,
//! the daemon's options and what start-up learned about the node (its underlay, the MAC
//! its lease already advertises), the data plane's configuration, `FLANNEL_MTU`, the BGP
//! settings and what the lease advertises. Start derives it once; a reload derives it
//! again from the new config and applies the difference (`Reload`), so the two never
//! disagree about what a setting means.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, bail, Result};
use ipnetwork::{IpNetwork, Ipv4Network};
use twill_bgp::BgpOptions;
use twill_config::{BackendType, BgpConf, NetConf, VXLAN_OVERHEAD_V4, VXLAN_OVERHEAD_V6};
use twill_dataplane::{
    DataplaneConfig, ExtIface, Family, Mac, OverlayConfig, Transport, VxlanSpec,
};
use twill_store::{LeaseAttrs, LeaseKey, RawJson, VxlanBackendData};

use crate::options::DaemonOptions;

/// What start-up learned about this node, which the config does not say.
#[derive(Debug, Clone)]
pub struct Facts {
    pub underlay: ExtIface,
    /// --public-ip, else our node's `node-public-ip`, else the underlay's address; 0.0.0.0
    /// on an IPv6-only network, as flanneld's PublicIP is there.
    pub public_ip: Ipv4Addr,
    /// --public-ipv6, else our node's `node-public-ipv6`, else the underlay's IPv6 address
    /// (a reload takes --public-ipv6 from the options again).
    pub public_ipv6: Option<Ipv6Addr>,
    /// The MAC the device is created with when it has to be (the one our lease already
    /// advertises after a reboot, so peers need no FDB update).
    pub mac: Option<Mac>,
    /// The same for the IPv6 device (`BackendV6Data`).
    pub mac6: Option<Mac>,
    /// The running kernel's version and the underlay's driver: where VXLAN checksum
    /// offload is known to break.
    pub kernel: (u32, u32),
    pub driver: Option<String>,
}

/// This node's settings under one config.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub dataplane: DataplaneConfig,
    /// `FLANNEL_MTU`: the underlay's MTU (or Backend.MTU) less VXLAN's overhead: 50 bytes
    /// over IPv4, 70 over IPv6. A pod has one MTU for both families, so with an IPv6
    /// overlay it is the IPv6 device's. host-gw: the underlay's MTU.
    pub mtu: u32,
    pub bgp: Option<BgpConf>,
    pub public_ip: Ipv4Addr,
    /// The lease's PublicIPv6: --public-ipv6, else the underlay's IPv6 address; only with
    /// an IPv6 network.
    pub public_ipv6: Option<Ipv6Addr>,
    pub ipv6_network: Option<IpNetwork>,
    /// Said once when these settings are taken (start or reload).
    pub warnings: Vec<String>,
}

/// What pins our lease's addresses: `--public-ip` or `node-public-ip`, and the same for
/// IPv6; what is not pinned is the underlay's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pinned {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl Facts {
    /// The facts of `underlay` with `pinned` addresses. IPv6-only (`ipv6_only`), the
    /// PublicIP is 0.0.0.0, as flanneld writes it there.
    pub fn new(underlay: ExtIface, pinned: Pinned, ipv6_only: bool) -> Facts {
        let public_ip = match pinned.v4.or(underlay.addr) {
            Some(ip) if !ipv6_only => ip,
            _ => Ipv4Addr::UNSPECIFIED,
        };
        Facts {
            public_ip,
            public_ipv6: pinned.v6.or(underlay.addr6),
            underlay,
            mac: None,
            mac6: None,
            kernel: (0, 0),
            driver: None,
        }
    }

    /// What our lease is known by (`LeaseAttrs::node_ip`): the PublicIP, or on an
    /// IPv6-only network the PublicIPv6.
    pub fn node_ip(&self) -> IpAddr {
        twill_store::node_ip(self.public_ip, self.public_ipv6)
    }
}

impl Settings {
    /// `Network`, unless the network is IPv6-only.
    pub fn network(&self) -> Option<Ipv4Network> {
        match self.dataplane.v4.as_ref().map(|o| o.network) {
            Some(IpNetwork::V4(n)) => Some(n),
            _ => None,
        }
    }

    pub fn vni(&self) -> u32 {
        self.dataplane
            .overlays()
            .find_map(|(_, o)| o.vxlan().map(|v| v.vni))
            .unwrap_or(1)
    }

    /// What our lease advertises, with each device's MAC (`BackendData` for the IPv4 one,
    /// `BackendV6Data` for the IPv6 one), each only with its family's overlay. A host-gw
    /// lease has neither, as flanneld's: a peer needs only our PublicIP.
    pub fn attrs(&self, mac: Option<Mac>, mac6: Option<Mac>) -> LeaseAttrs {
        if self.dataplane.is_host_gw() {
            return LeaseAttrs {
                public_ipv6: self.public_ipv6,
                ..LeaseAttrs::host_gw(self.public_ip)
            };
        }
        let data = |on: bool, mac: Option<Mac>| {
            mac.filter(|_| on).map(|m| {
                RawJson::of(&VxlanBackendData {
                    vni: self.vni(),
                    vtep_mac: m.to_string(),
                })
            })
        };
        LeaseAttrs {
            public_ip: self.public_ip,
            public_ipv6: self.public_ipv6,
            backend_type: "vxlan".into(),
            backend_data: data(self.dataplane.v4.is_some(), mac),
            backend_v6_data: data(self.dataplane.v6.is_some(), mac6),
        }
    }
}

/// The settings `conf` gives this node (pure). An error names what makes the config
/// unusable here; nothing has been touched when it is returned.
pub fn derive(
    conf: &NetConf,
    opts: &DaemonOptions,
    bgp: &BgpOptions,
    facts: &Facts,
) -> Result<Settings> {
    let bgp = twill_bgp::effective(conf, bgp)?;
    let network4 = conf.network4();
    let ext = &facts.underlay;
    let host_gw = conf.backend.kind == BackendType::HostGw;
    // As flanneld: peers route to our PublicIP, which must then be the underlay's own.
    match ext.addr {
        Some(addr) if host_gw && network4.is_some() && facts.public_ip != addr => bail!(
            "net-conf.json: Backend.Type=host-gw: the PublicIP {} is not {}'s address {addr} (behind a NAT?): host-gw routes pods via each node's own address; drop --public-ip (or node-public-ip), or use vxlan",
            facts.public_ip,
            ext.name,
        ),
        _ => {}
    }
    let underlay_mtu = conf.backend.mtu.unwrap_or(ext.mtu);
    let device_mtu = |overhead: u32| {
        underlay_mtu
            .checked_sub(overhead)
            .filter(|m| {
                *m >= if overhead == VXLAN_OVERHEAD_V6 {
                    1280
                } else {
                    68
                }
            })
            .ok_or_else(|| {
                anyhow!(
                    "underlay MTU {underlay_mtu} of {} leaves no room for VXLAN{}",
                    ext.name,
                    if overhead == VXLAN_OVERHEAD_V6 {
                        " over IPv6 (70 bytes, and IPv6 needs 1280)"
                    } else {
                        ""
                    }
                )
            })
    };
    // host-gw adds no header: pods get the underlay's MTU, as flanneld's host-gw gives.
    let mtu4 = match network4 {
        None => None,
        Some(_) if host_gw => Some(ext.mtu),
        Some(_) => Some(device_mtu(VXLAN_OVERHEAD_V4)?),
    };
    let ipv6_network = conf.ipv6.as_ref().map(|r| r.network);
    let mut warnings = Vec::new();
    if ipv6_network.is_none() {
        if let Some(ip) = opts.public_ipv6 {
            warnings.push(format!(
                "--public-ipv6 {ip} is ignored: net-conf.json does not enable IPv6"
            ));
        }
    }
    if network4.is_none() {
        if let Some(ip) = opts.node.public_ip {
            warnings.push(format!(
                "--public-ip {ip} is ignored: net-conf.json has EnableIPv4=false (IPv6-only); --public-ipv6 sets this node's address"
            ));
        }
    }
    let vni = conf.backend.vni;
    let node = &opts.node;
    let (tx_checksum, _) =
        twill_dataplane::offload::decide(node.tx_checksum, facts.kernel, facts.driver.as_deref());
    let transport = |name: String, local: IpAddr, mtu: u32, mac: Option<Mac>| {
        if host_gw {
            return Transport::HostGw {
                underlay: ext.index,
            };
        }
        Transport::Vxlan(VxlanSpec {
            name,
            vni,
            local,
            dev_index: ext.index,
            port: conf.backend.port,
            gbp: conf.backend.gbp,
            learning: conf.backend.learning,
            mtu,
            mac,
            tx_checksum: Some(tx_checksum),
        })
    };
    let v6 = match ipv6_network {
        None => None,
        Some(network) => {
            // As flanneld: the IPv6 tunnel runs between the nodes' IPv6 underlay addresses,
            // and host-gw routes IPv6 pods via them.
            let Some(local) = ext.addr6 else {
                bail!(
                    "net-conf.json: EnableIPv6: the underlay interface {} has no usable global IPv6 address to carry the IPv6 overlay (give it one, or pick another with --iface / --iface-regex)",
                    ext.name
                );
            };
            let mtu6 = if host_gw {
                ext.mtu
            } else {
                device_mtu(VXLAN_OVERHEAD_V6)?
            };
            Some((
                OverlayConfig {
                    transport: transport(
                        format!("flannel-v6.{vni}"),
                        IpAddr::V6(local),
                        mtu6,
                        facts.mac6,
                    ),
                    network,
                },
                mtu6,
            ))
        }
    };
    let v4 = match (network4, mtu4) {
        (Some(network), Some(mtu4)) => {
            let Some(local) = ext.addr else {
                bail!(
                    "net-conf.json: the underlay interface {} has no global IPv4 address to carry the IPv4 overlay (give it one, pick another with --iface, or set EnableIPv4=false for an IPv6-only network)",
                    ext.name
                );
            };
            Some(OverlayConfig {
                transport: transport(format!("flannel.{vni}"), IpAddr::V4(local), mtu4, facts.mac),
                network: IpNetwork::V4(network),
            })
        }
        _ => None,
    };
    // One MTU serves a pod's both families: the smaller device's.
    let mtu = [mtu4, v6.as_ref().map(|(_, m)| *m)]
        .into_iter()
        .flatten()
        .min()
        .ok_or_else(|| anyhow!("net-conf.json: neither IPv4 nor IPv6 is enabled"))?;
    Ok(Settings {
        dataplane: DataplaneConfig {
            v4,
            v6: v6.map(|(o, _)| o),
            rules: node.rules,
            no_masq: conf.exempt_from_masquerade(&node.no_masq_cidr),
            direct_routing: conf.backend.direct_routing && !host_gw,
            route_form: opts.route_form,
            blackhole_route: node.ip_blackhole_route,
        },
        mtu,
        bgp,
        // IPv6-only: 0.0.0.0, as flanneld writes it, whatever was pinned.
        public_ip: if network4.is_some() {
            facts.public_ip
        } else {
            Ipv4Addr::UNSPECIFIED
        },
        // As flanneld: --public-ipv6, else the underlay interface's IPv6 address.
        public_ipv6: opts
            .public_ipv6
            .or(facts.public_ipv6)
            .filter(|_| ipv6_network.is_some()),
        ipv6_network,
        warnings,
    })
}

/// What a reload does, in this order (each step needs the one before):
/// 1. the data plane takes the new configuration; a VNI change names new devices and the
///    old ones (`remove_devices`) go, our MACs carried over to the new ones; IPv6 turned
///    off takes the IPv6 device away, turned on brings one; host-gw after vxlan takes
///    both away (their peer routes go with them), vxlan after host-gw sweeps its routes;
/// 2. the devices are ensured, and the lease's attributes recomputed with their MACs;
/// 3. the lease is taken again (`relearn` is decided then: see `keeps_lease`) when the
///    held subnet no longer fits the new ranges or what it advertises changed;
/// 4. the device's address is checked against the new Network even when the lease stays;
/// 5. peer leases are judged again under the new config, then one full pass;
/// 6. BGP is re-rendered and subnet.env rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// The devices of the old VNI, or of a family turned off, to delete.
    pub remove_devices: Vec<String>,
    /// Changes that take effect only at the next start, to say so.
    pub needs_restart: Vec<&'static str>,
}

/// The reload from `old` to `new` settings (and their configs) (pure).
pub fn plan_reload(
    old_conf: &NetConf,
    new_conf: &NetConf,
    old: &Settings,
    new: &Settings,
) -> Reload {
    let mut needs_restart = Vec::new();
    if old_conf.enable_nftables != new_conf.enable_nftables {
        needs_restart.push("EnableNFTables");
    }
    let name = |s: &Settings, f| {
        s.dataplane
            .overlay(f)
            .and_then(|o| o.device().map(str::to_string))
    };
    Reload {
        remove_devices: Family::BOTH
            .into_iter()
            .filter_map(|f| name(old, f).filter(|o| name(new, f).as_ref() != Some(o)))
            .collect(),
        needs_restart,
    }
}

/// Why a reload from `old` to `new` cannot be applied in place (pure): turning IPv4 on or
/// off (IPv6-only and back) chooses the underlay by another family and changes what our
/// lease is known by (PublicIP or PublicIPv6), which a restart does from the start.
pub fn needs_new_underlay(old: &NetConf, new: &NetConf) -> Option<String> {
    let (was, is) = (old.ipv4.is_some(), new.ipv4.is_some());
    (was != is).then(|| {
        format!(
            "EnableIPv4 changed ({was} -> {is}): moving between an IPv4 and an IPv6-only network chooses the underlay by another address family; restart twilld to apply it"
        )
    })
}

/// Whether the lease we hold still serves under `conf` advertising `attrs`.
pub fn keeps_lease(
    conf: &NetConf,
    held: &LeaseKey,
    held_attrs: &LeaseAttrs,
    attrs: &LeaseAttrs,
) -> bool {
    conf.fits(held.v4.as_ref(), held.v6.as_ref()) && held_attrs == attrs
}

#[cfg(test)]
mod tests;
