//! What the config means for this node, worked out in one place (pure): from net-conf.json,
//! the daemon's options and what start-up learned about the node (its underlay, the MAC
//! its lease already advertises), the data plane's configuration, `FLANNEL_MTU`, the BGP
//! settings and what the lease advertises. Start derives it once; a reload derives it
//! again from the new config and applies the difference (`Reload`), so the two never
//! disagree about what a setting means.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, bail, Result};
use ipnetwork::{IpNetwork, Ipv4Network};
use twill_bgp::BgpOptions;
use twill_config::{BgpConf, NetConf, VXLAN_OVERHEAD_V4};
use twill_dataplane::{DataplaneConfig, ExtIface, Mac, VxlanSpec};
use twill_store::{LeaseAttrs, LeaseKey};

use crate::options::DaemonOptions;

/// What start-up learned about this node, which the config does not say.
#[derive(Debug, Clone)]
pub struct Facts {
    pub underlay: ExtIface,
    /// --public-ip, else our node's `node-public-ip`, else the underlay's address.
    pub public_ip: Ipv4Addr,
    /// The MAC the device is created with when it has to be (the one our lease already
    /// advertises after a reboot, so peers need no FDB update).
    pub mac: Option<Mac>,
}

/// This node's settings under one config.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub dataplane: DataplaneConfig,
    /// `FLANNEL_MTU`: the underlay's MTU (or Backend.MTU) less VXLAN's overhead.
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

impl Settings {
    pub fn network(&self) -> Ipv4Network {
        self.dataplane.network
    }

    pub fn vni(&self) -> u32 {
        self.dataplane.vxlan.vni
    }

    /// What our lease advertises, with the device's MAC.
    pub fn attrs(&self, mac: &Mac) -> LeaseAttrs {
        LeaseAttrs {
            public_ipv6: self.public_ipv6,
            ..LeaseAttrs::vxlan(self.public_ip, self.vni(), &mac.to_string())
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
    let Some(network) = conf.network4() else {
        bail!("net-conf.json: EnableIPv4=false: IPv6-only overlays are not supported yet");
    };
    let ext = &facts.underlay;
    let underlay_mtu = conf.backend.mtu.unwrap_or(ext.mtu);
    let mtu = underlay_mtu
        .checked_sub(VXLAN_OVERHEAD_V4)
        .filter(|m| *m >= 68)
        .ok_or_else(|| {
            anyhow!(
                "underlay MTU {underlay_mtu} of {} leaves no room for VXLAN",
                ext.name
            )
        })?;
    let ipv6_network = conf.ipv6.as_ref().map(|r| r.network);
    let mut warnings = Vec::new();
    if ipv6_network.is_some() {
        warnings.push("net-conf.json: EnableIPv6: an IPv6 subnet is leased and written to subnet.env, but the IPv6 overlay device is not built yet".to_string());
    } else if let Some(ip) = opts.public_ipv6 {
        warnings.push(format!(
            "--public-ipv6 {ip} is ignored: net-conf.json does not enable IPv6"
        ));
    }
    let vni = conf.backend.vni;
    let node = &opts.node;
    Ok(Settings {
        dataplane: DataplaneConfig {
            vxlan: VxlanSpec {
                name: format!("flannel.{vni}"),
                vni,
                local: ext.addr,
                dev_index: ext.index,
                port: conf.backend.port,
                gbp: conf.backend.gbp,
                learning: conf.backend.learning,
                mtu,
                mac: facts.mac,
            },
            network,
            rules: node.rules,
            no_masq: conf.exempt_from_masquerade(&node.no_masq_cidr),
            network6: ipv6_network,
            direct_routing: conf.backend.direct_routing,
            route_form: opts.route_form,
            blackhole_route: node.ip_blackhole_route,
        },
        mtu,
        bgp,
        public_ip: facts.public_ip,
        // As flanneld: --public-ipv6, else the underlay interface's IPv6 address.
        public_ipv6: opts
            .public_ipv6
            .or(ext.addr6)
            .filter(|_| ipv6_network.is_some()),
        ipv6_network,
        warnings,
    })
}

/// What a reload does, in this order (each step needs the one before):
/// 1. the data plane takes the new configuration; a VNI change names a new device and
///    the old one (`remove_device`) goes, our MAC carried over to the new one;
/// 2. the device is ensured, and the lease's attributes recomputed with its MAC;
/// 3. the lease is taken again (`relearn` is decided then: see `keeps_lease`) when the
///    held subnet no longer fits the new ranges or what it advertises changed;
/// 4. the device's address is checked against the new Network even when the lease stays;
/// 5. peer leases are judged again under the new config, then one full pass;
/// 6. BGP is re-rendered and subnet.env rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// The device of the old VNI, to delete.
    pub remove_device: Option<String>,
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
    let (o, n) = (&old.dataplane.vxlan.name, &new.dataplane.vxlan.name);
    let mut needs_restart = Vec::new();
    if old_conf.enable_nftables != new_conf.enable_nftables {
        needs_restart.push("EnableNFTables");
    }
    Reload {
        remove_device: (o != n).then(|| o.clone()),
        needs_restart,
    }
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
mod tests {
    use super::*;
    use crate::options::{NodeOptions, StoreOptions};
    use std::time::Duration;
    use twill_dataplane::{IfaceSelection, RouteForm, RuleFlags};

    fn opts() -> DaemonOptions {
        DaemonOptions {
            node: NodeOptions {
                subnet_file: "/run/flannel/subnet.env".into(),
                config_file: None,
                store: StoreOptions::Etcd(twill_etcd::EtcdOptions {
                    endpoints: vec!["http://198.18.0.100:2379".into()],
                    prefix: "/coreos.com/network".into(),
                    ca_file: None,
                    cert_file: None,
                    key_file: None,
                    username: None,
                    password: None,
                }),
                iface: IfaceSelection::default(),
                public_ip: None,
                rules: RuleFlags {
                    ip_masq: true,
                    fully_random: true,
                    forward: true,
                    notrack: false,
                },
                no_masq_cidr: vec![],
                ip_blackhole_route: false,
                bgp: bgp_opts(),
            },
            resync: Duration::from_secs(5),
            renew_margin: Duration::from_secs(3600),
            lease_ttl: Duration::from_secs(86400),
            public_ipv6: None,
            route_form: RouteForm::Plain,
            healthz: None,
            metrics: None,
        }
    }

    fn bgp_opts() -> BgpOptions {
        BgpOptions {
            config_file: "/x".into(),
            control_socket: "/y".into(),
            include_dir: "/z".into(),
            asn: None,
            peers: None,
        }
    }

    fn facts(mtu: u32) -> Facts {
        Facts {
            underlay: ExtIface {
                index: 2,
                name: "eth0".into(),
                mtu,
                addr: "198.18.0.1".parse().unwrap(),
                addr6: Some("2001:2::1".parse().unwrap()),
            },
            public_ip: "198.18.0.1".parse().unwrap(),
            mac: None,
        }
    }

    fn conf(text: &str) -> NetConf {
        NetConf::parse(text).unwrap().0
    }

    #[test]
    fn a_config_becomes_this_nodes_settings() {
        let c =
            conf(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":4,"Port":4789}}"#);
        let s = derive(&c, &opts(), &bgp_opts(), &facts(1500)).unwrap();
        assert_eq!(s.mtu, 1450);
        assert_eq!(s.dataplane.vxlan.name, "flannel.4");
        assert_eq!(
            (s.dataplane.vxlan.port, s.dataplane.vxlan.dev_index),
            (4789, 2)
        );
        assert_eq!(s.network().to_string(), "10.244.0.0/16");
        assert_eq!(s.public_ipv6, None, "no IPv6 network: no PublicIPv6");
        assert!(s.bgp.is_none() && s.warnings.is_empty());
        let mac: Mac = "0a:00:00:00:00:01".parse().unwrap();
        assert_eq!(
            s.attrs(&mac),
            LeaseAttrs::vxlan(s.public_ip, 4, "0a:00:00:00:00:01")
        );

        // Backend.MTU stands for the underlay's.
        let c = conf(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":9000}}"#);
        assert_eq!(
            derive(&c, &opts(), &bgp_opts(), &facts(1500)).unwrap().mtu,
            8950
        );

        let c =
            conf(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56"}"#);
        let s = derive(&c, &opts(), &bgp_opts(), &facts(1500)).unwrap();
        assert_eq!(s.public_ipv6, Some("2001:2::1".parse().unwrap()));
        assert_eq!(s.warnings.len(), 1, "the missing IPv6 device is said");
    }

    #[test]
    fn what_no_node_can_use_is_refused_by_name() {
        let c = conf(r#"{"Network":"10.244.0.0/16"}"#);
        let e = derive(&c, &opts(), &bgp_opts(), &facts(100))
            .unwrap_err()
            .to_string();
        assert!(e.contains("MTU 100") && e.contains("eth0"), "{e}");
        let peers_only = BgpOptions {
            peers: Some(twill_config::BgpPeer::parse_list("f", "198.18.1.5:65001").unwrap()),
            ..bgp_opts()
        };
        let e = derive(&c, &opts(), &peers_only, &facts(1500))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--bgp-peers"), "{e}");
    }

    #[test]
    fn a_reload_names_what_changes() {
        let old_c = conf(r#"{"Network":"10.244.0.0/16"}"#);
        let old = derive(&old_c, &opts(), &bgp_opts(), &facts(1500)).unwrap();
        let same = plan_reload(&old_c, &old_c, &old, &old);
        assert_eq!(
            same,
            Reload {
                remove_device: None,
                needs_restart: vec![]
            }
        );

        let new_c = conf(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":7},"EnableNFTables":true}"#,
        );
        let new = derive(&new_c, &opts(), &bgp_opts(), &facts(1500)).unwrap();
        let r = plan_reload(&old_c, &new_c, &old, &new);
        assert_eq!(r.remove_device.as_deref(), Some("flannel.1"));
        assert_eq!(r.needs_restart, ["EnableNFTables"]);

        let held = LeaseKey::v4("10.244.3.0/24".parse().unwrap());
        let mac: Mac = "0a:00:00:00:00:01".parse().unwrap();
        assert!(keeps_lease(
            &old_c,
            &held,
            &old.attrs(&mac),
            &old.attrs(&mac)
        ));
        assert!(
            !keeps_lease(&old_c, &held, &old.attrs(&mac), &new.attrs(&mac)),
            "VNI advertised changed"
        );
        let moved = conf(r#"{"Network":"10.250.0.0/16"}"#);
        assert!(
            !keeps_lease(&moved, &held, &old.attrs(&mac), &old.attrs(&mac)),
            "out of the new Network"
        );
    }
}
