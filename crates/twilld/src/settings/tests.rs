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
            tx_checksum: Default::default(),
            healthz: None,
            metrics: None,
        },
        resync: Duration::from_secs(5),
        renew_margin: Duration::from_secs(3600),
        lease_ttl: Duration::from_secs(86400),
        public_ipv6: None,
        route_form: RouteForm::Plain,
        probes: crate::options::ProbeOptions {
            interval: None,
            timeout: Duration::from_secs(1),
            per_second: 100,
            ready_fraction: None,
        },
        network_policy: false,
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
            addr: Some("198.18.0.1".parse().unwrap()),
            addr6: Some("2001:2::1".parse().unwrap()),
        },
        public_ip: "198.18.0.1".parse().unwrap(),
        public_ipv6: Some("2001:2::1".parse().unwrap()),
        mac: None,
        mac6: None,
        kernel: (6, 1),
        driver: None,
    }
}

fn v4(s: &Settings) -> &OverlayConfig {
    s.dataplane.v4.as_ref().unwrap()
}

fn conf(text: &str) -> NetConf {
    NetConf::parse(text).unwrap().0
}

#[test]
fn a_config_becomes_this_nodes_settings() {
    let c = conf(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":4,"Port":4789}}"#);
    let s = derive(&c, &opts(), &bgp_opts(), &facts(1500)).unwrap();
    assert_eq!(s.mtu, 1450);
    assert_eq!(v4(&s).vxlan().unwrap().name, "flannel.4");
    assert_eq!(
        (
            v4(&s).vxlan().unwrap().port,
            v4(&s).vxlan().unwrap().dev_index
        ),
        (4789, 2)
    );
    assert!(s.dataplane.v6.is_none());
    assert_eq!(s.network().unwrap().to_string(), "10.244.0.0/16");
    assert_eq!(s.public_ipv6, None, "no IPv6 network: no PublicIPv6");
    assert!(s.bgp.is_none() && s.warnings.is_empty());
    let mac: Mac = "0a:00:00:00:00:01".parse().unwrap();
    assert_eq!(
        s.attrs(Some(mac), Some(mac)),
        LeaseAttrs::vxlan(s.public_ip, 4, "0a:00:00:00:00:01"),
        "no BackendV6Data without IPv6"
    );

    // Backend.MTU stands for the underlay's.
    let c = conf(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":9000}}"#);
    assert_eq!(
        derive(&c, &opts(), &bgp_opts(), &facts(1500)).unwrap().mtu,
        8950
    );
}

#[test]
fn dual_stack_gets_an_ipv6_device_over_the_ipv6_underlay_and_the_smaller_mtu() {
    let c = conf(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56","Backend":{"Type":"vxlan","VNI":3}}"#,
    );
    let mut f = facts(1500);
    f.mac6 = Some("0a:00:00:00:06:01".parse().unwrap());
    let s = derive(&c, &opts(), &bgp_opts(), &f).unwrap();
    let v6 = s.dataplane.v6.as_ref().expect("an IPv6 overlay");
    assert_eq!(v6.vxlan().unwrap().name, "flannel-v6.3");
    assert_eq!(v6.vxlan().unwrap().local.to_string(), "2001:2::1");
    assert_eq!(v6.network.to_string(), "fd00:10::/56");
    assert_eq!(
        v6.vxlan().unwrap().mac,
        f.mac6,
        "the advertised v6 MAC is kept"
    );
    // VXLAN over IPv6 costs 70 bytes; a pod's one MTU must fit the IPv6 tunnel.
    assert_eq!(
        (v4(&s).vxlan().unwrap().mtu, v6.vxlan().unwrap().mtu, s.mtu),
        (1450, 1430, 1430)
    );
    assert_eq!(s.public_ipv6, Some("2001:2::1".parse().unwrap()));
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);

    let (m4, m6): (Mac, Mac) = (
        "0a:00:00:00:04:01".parse().unwrap(),
        "0a:00:00:00:06:01".parse().unwrap(),
    );
    let a = s.attrs(Some(m4), Some(m6));
    let json: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "PublicIP": "198.18.0.1",
            "PublicIPv6": "2001:2::1",
            "BackendType": "vxlan",
            "BackendData": {"VNI": 3, "VtepMAC": "0a:00:00:00:04:01"},
            "BackendV6Data": {"VNI": 3, "VtepMAC": "0a:00:00:00:06:01"},
        }),
        "flanneld's dual-stack lease, field for field"
    );

    // --public-ipv6 is what peers send to; the tunnel still leaves from the underlay.
    let mut o = opts();
    o.public_ipv6 = Some("2001:2::99".parse().unwrap());
    let s = derive(&c, &o, &bgp_opts(), &f).unwrap();
    assert_eq!(s.public_ipv6, Some("2001:2::99".parse().unwrap()));
    assert_eq!(
        s.dataplane.v6.unwrap().vxlan().unwrap().local.to_string(),
        "2001:2::1"
    );

    // No IPv6 on the underlay: refused by name, nothing created.
    let mut f = facts(1500);
    f.underlay.addr6 = None;
    let e = derive(&c, &opts(), &bgp_opts(), &f)
        .unwrap_err()
        .to_string();
    assert!(e.contains("EnableIPv6") && e.contains("eth0"), "{e}");
    // An underlay too small for IPv6's 1280 inside the tunnel.
    let e = derive(&c, &opts(), &bgp_opts(), &facts(1340))
        .unwrap_err()
        .to_string();
    assert!(e.contains("IPv6") && e.contains("1340"), "{e}");
}

/// EnableIPv4=false: only `flannel-v6.<VNI>`, the IPv6 MTU, and the lease flanneld
/// writes there (PublicIP 0.0.0.0, no BackendData), known by its PublicIPv6.
#[test]
fn ipv6_only_has_the_v6_device_alone_and_flanneld_s_lease() {
    let c = conf(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/56","Backend":{"Type":"vxlan"}}"#,
    );
    let mut f = facts(1500);
    f.underlay.addr = None;
    f.public_ip = Ipv4Addr::UNSPECIFIED;
    let s = derive(&c, &opts(), &bgp_opts(), &f).unwrap();
    assert!(s.dataplane.v4.is_none(), "no IPv4 device");
    assert_eq!(s.network(), None);
    let v6 = s.dataplane.v6.as_ref().expect("an IPv6 overlay");
    assert_eq!(v6.device(), Some("flannel-v6.1"));
    assert_eq!(s.mtu, 1430, "VXLAN over IPv6: 70 bytes");
    assert_eq!(f.node_ip().to_string(), "2001:2::1");
    let m6: Mac = "0a:00:00:00:06:01".parse().unwrap();
    let a = s.attrs(None, Some(m6));
    assert_eq!(a.node_ip(), f.node_ip());
    let json: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "PublicIP": "0.0.0.0",
            "PublicIPv6": "2001:2::1",
            "BackendType": "vxlan",
            "BackendV6Data": {"VNI": 1, "VtepMAC": "0a:00:00:00:06:01"},
        })
    );
    // A pinned IPv4 PublicIP means nothing here: said, and not published.
    let mut o = opts();
    o.node.public_ip = Some("198.18.0.77".parse().unwrap());
    let mut pinned = f.clone();
    pinned.public_ip = "198.18.0.77".parse().unwrap();
    let s = derive(&c, &o, &bgp_opts(), &pinned).unwrap();
    assert_eq!(s.public_ip, Ipv4Addr::UNSPECIFIED);
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("--public-ip 198.18.0.77")),
        "{:?}",
        s.warnings
    );
    // host-gw over IPv6 alone: no device, the underlay's MTU.
    let hg = conf(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/56","Backend":{"Type":"host-gw"}}"#,
    );
    let s = derive(&hg, &opts(), &bgp_opts(), &f).unwrap();
    assert_eq!(s.dataplane.devices().count(), 0);
    assert_eq!(s.mtu, 1500);
    // A dual-stack config on an underlay without IPv4 is refused by name.
    let dual =
        conf(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56"}"#);
    let e = derive(&dual, &opts(), &bgp_opts(), &f)
        .unwrap_err()
        .to_string();
    assert!(e.contains("eth0") && e.contains("EnableIPv4=false"), "{e}");
}

#[test]
fn ipv4_turned_on_or_off_waits_for_a_restart() {
    let dual =
        conf(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56"}"#);
    let only6 = conf(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/56"}"#);
    let why = needs_new_underlay(&dual, &only6).expect("refused");
    assert!(
        why.contains("EnableIPv4") && why.contains("restart"),
        "{why}"
    );
    assert!(needs_new_underlay(&only6, &dual).is_some());
    let v4 = conf(r#"{"Network":"10.244.0.0/16"}"#);
    assert_eq!(
        needs_new_underlay(&v4, &dual),
        None,
        "IPv6 on/off applies in place"
    );
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
fn host_gw_has_no_device_and_the_underlay_mtu() {
    let c = conf(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56","Backend":{"Type":"host-gw"}}"#,
    );
    let s = derive(&c, &opts(), &bgp_opts(), &facts(1500)).unwrap();
    assert_eq!(s.mtu, 1500, "no encapsulation");
    assert!(s.dataplane.is_host_gw());
    assert_eq!(s.dataplane.devices().count(), 0);
    for o in [s.dataplane.v4.as_ref(), s.dataplane.v6.as_ref()] {
        assert_eq!(
            o.unwrap().transport,
            Transport::HostGw { underlay: 2 },
            "routes on the underlay"
        );
    }
    let mac: Mac = "0a:00:00:00:00:01".parse().unwrap();
    // flanneld's host-gw lease, byte for byte: MACs are no part of it.
    assert_eq!(
        s.attrs(Some(mac), Some(mac)).to_json(),
        r#"{"PublicIP":"198.18.0.1","PublicIPv6":"2001:2::1","BackendType":"host-gw"}"#
    );

    // vxlan -> host-gw takes both devices away; back again takes none.
    let vx_c =
        conf(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56"}"#);
    let vx = derive(&vx_c, &opts(), &bgp_opts(), &facts(1500)).unwrap();
    assert_eq!(
        plan_reload(&vx_c, &c, &vx, &s).remove_devices,
        ["flannel.1", "flannel-v6.1"]
    );
    assert!(plan_reload(&c, &vx_c, &s, &vx).remove_devices.is_empty());
    // Behind a NAT host-gw cannot work, as flanneld says too.
    let mut natted = facts(1500);
    natted.public_ip = "198.19.100.7".parse().unwrap();
    let e = derive(&c, &opts(), &bgp_opts(), &natted)
        .unwrap_err()
        .to_string();
    assert!(e.contains("host-gw") && e.contains("198.19.100.7"), "{e}");
    assert!(
        derive(&vx_c, &opts(), &bgp_opts(), &natted).is_ok(),
        "vxlan is fine"
    );
    assert!(!keeps_lease(
        &c,
        &LeaseKey::v4("10.244.3.0/24".parse().unwrap()),
        &vx.attrs(Some(mac), Some(mac)),
        &s.attrs(Some(mac), Some(mac)),
    ));
}

#[test]
fn a_reload_names_what_changes() {
    let old_c = conf(r#"{"Network":"10.244.0.0/16"}"#);
    let old = derive(&old_c, &opts(), &bgp_opts(), &facts(1500)).unwrap();
    let same = plan_reload(&old_c, &old_c, &old, &old);
    assert_eq!(
        same,
        Reload {
            remove_devices: vec![],
            needs_restart: vec![]
        }
    );

    let new_c = conf(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":7},"EnableNFTables":true}"#,
    );
    let new = derive(&new_c, &opts(), &bgp_opts(), &facts(1500)).unwrap();
    let r = plan_reload(&old_c, &new_c, &old, &new);
    assert_eq!(r.remove_devices, ["flannel.1"]);
    assert_eq!(r.needs_restart, ["EnableNFTables"]);

    // IPv6 on, then off again: the IPv6 device comes, then goes.
    let dual_c =
        conf(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56"}"#);
    let dual = derive(&dual_c, &opts(), &bgp_opts(), &facts(1500)).unwrap();
    assert!(plan_reload(&old_c, &dual_c, &old, &dual)
        .remove_devices
        .is_empty());
    assert_eq!(
        plan_reload(&dual_c, &old_c, &dual, &old).remove_devices,
        ["flannel-v6.1"]
    );

    let held = LeaseKey::v4("10.244.3.0/24".parse().unwrap());
    let mac: Mac = "0a:00:00:00:00:01".parse().unwrap();
    assert!(keeps_lease(
        &old_c,
        &held,
        &old.attrs(Some(mac), None),
        &old.attrs(Some(mac), None)
    ));
    assert!(
        !keeps_lease(
            &old_c,
            &held,
            &old.attrs(Some(mac), None),
            &new.attrs(Some(mac), None)
        ),
        "VNI advertised changed"
    );
    let moved = conf(r#"{"Network":"10.250.0.0/16"}"#);
    assert!(
        !keeps_lease(
            &moved,
            &held,
            &old.attrs(Some(mac), None),
            &old.attrs(Some(mac), None)
        ),
        "out of the new Network"
    );
}
