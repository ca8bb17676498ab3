use super::*;
use proptest::prelude::*;

fn ok(json: &str) -> NetConf {
    NetConf::parse(json).unwrap().0
}

fn err(json: &str) -> ConfigError {
    NetConf::parse(json).unwrap_err()
}

#[test]
fn flannel_default_manifest_config() {
    let c = ok(r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#);
    let v4 = c.ipv4.unwrap();
    assert_eq!(v4.subnet_len, 24);
    assert_eq!(v4.min.to_string(), "10.244.1.0");
    assert_eq!(v4.max.to_string(), "10.244.255.0");
    assert_eq!(c.backend, BackendConf::default());
    assert_eq!(c.backend.port, 8472);
    assert!(c.ipv6.is_none());
}

#[test]
fn host_gw_as_flannel_spells_it() {
    for t in ["host-gw", "HOST-GW", "Host-Gw"] {
        let c = ok(&format!(
            r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"{t}"}}}}"#
        ));
        assert_eq!(c.backend.kind, BackendType::HostGw, "{t}");
        assert_eq!(c.backend.kind.as_str(), "host-gw");
    }
}

#[test]
fn host_gw_ignores_vxlan_options_and_says_so() {
    // flanneld's host-gw reads none of them, so none is refused (a VNI of 0 included).
    let (c, warnings) = NetConf::parse(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw","VNI":0,"MTU":9000}}"#,
    )
    .unwrap();
    assert_eq!(c.backend.kind, BackendType::HostGw);
    assert_eq!(c.backend.mtu, None);
    let text: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    for key in ["Backend.VNI", "Backend.MTU"] {
        assert!(
            text.iter()
                .any(|w| w.starts_with(key) && w.contains("host-gw")),
            "{key}: {text:?}"
        );
    }
}

#[test]
fn backend_defaults_to_vxlan_not_udp() {
    assert_eq!(
        ok(r#"{"Network":"10.0.0.0/8"}"#).backend.kind,
        BackendType::Vxlan
    );
}

#[test]
fn keys_are_case_insensitive_like_go() {
    let c = ok(
        r#"{"network":"10.5.0.0/16","subnetlen":26,"BACKEND":{"type":"VXLAN","vni":42,"port":4789}}"#,
    );
    assert_eq!(c.ipv4.as_ref().unwrap().subnet_len, 26);
    assert_eq!(c.backend.vni, 42);
    assert_eq!(c.backend.port, 4789);
}

#[test]
fn subnet_len_default_depends_on_network_prefix() {
    assert_eq!(
        ok(r#"{"Network":"10.0.0.0/22"}"#).ipv4.unwrap().subnet_len,
        24
    );
    assert_eq!(
        ok(r#"{"Network":"10.0.0.0/23"}"#).ipv4.unwrap().subnet_len,
        25
    );
    assert_eq!(
        ok(r#"{"Network":"10.0.0.0/28"}"#).ipv4.unwrap().subnet_len,
        30
    );
    assert_eq!(
        ok(r#"{"Network":"10.0.0.0/16","SubnetLen":0}"#)
            .ipv4
            .unwrap()
            .subnet_len,
        24
    );
}

#[test]
fn explicit_min_max_are_kept() {
    let r = ok(r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.10.0","SubnetMax":"10.1.20.0"}"#)
        .ipv4
        .unwrap();
    assert_eq!(r.count(), 11);
}

#[test]
fn ipv6_parsed_and_defaulted() {
    let c = ok(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#);
    let r = c.ipv6.unwrap();
    assert_eq!(r.subnet_len, 64);
    assert_eq!(r.min.to_string(), "fd00:10:244:1::");
    assert_eq!(r.max.to_string(), "fd00:10:244:ff::");
}

#[test]
fn ipv6_only() {
    let c = ok(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/120"}"#);
    assert!(c.ipv4.is_none());
    assert_eq!(c.ipv6.unwrap().subnet_len, 122);
}

#[test]
fn errors_name_field_and_value() {
    let cases: &[(&str, &str, &str)] = &[
        (r#"{"Network":"10.244.0.0/33"}"#, "Network", "10.244.0.0/33"),
        (r#"{"Network":"banana"}"#, "Network", "banana"),
        (r#"{"Network":"fd00::/48"}"#, "Network", "fd00::/48"),
        (r#"{"Network":7}"#, "Network", "7"),
        (r#"{"Network":"10.0.0.0/30"}"#, "Network", "10.0.0.0/30"),
        (
            r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#,
            "SubnetLen",
            "31",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetLen":17}"#,
            "SubnetLen",
            "17",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetLen":"24"}"#,
            "SubnetLen",
            "\"24\"",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.245.1.0"}"#,
            "SubnetMin",
            "10.245.1.0",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.7"}"#,
            "SubnetMin",
            "10.244.1.7",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetMax":"nope"}"#,
            "SubnetMax",
            "nope",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.3.0"}"#,
            "SubnetMin",
            "10.244.9.0",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#,
            "Backend.Type",
            "wireguard",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"gre"}}"#,
            "Backend.Type",
            "gre",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"VNI":0}}"#,
            "Backend.VNI",
            "0",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"VNI":16777216}}"#,
            "Backend.VNI",
            "16777216",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Port":70000}}"#,
            "Backend.Port",
            "70000",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"MTU":100}}"#,
            "Backend.MTU",
            "100",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"GBP":"yes"}}"#,
            "Backend.GBP",
            "\"yes\"",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":"vxlan"}"#,
            "Backend",
            "\"vxlan\"",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true}"#,
            "IPv6Network",
            "(missing)",
        ),
        (r#"{"EnableIPv4":true}"#, "Network", "(missing)"),
        (r#"{"EnableIPv4":false}"#, "EnableIPv4", "false"),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":127}"#,
            "IPv6SubnetLen",
            "127",
        ),
        (r#"[1,2]"#, "(document)", "[1,2]"),
    ];
    for (json, field, value) in cases {
        let e = err(json);
        assert_eq!(&e.field, field, "{json}: {e}");
        assert_eq!(&e.value, value, "{json}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains(field) && msg.contains(value.trim_matches('"')),
            "{msg}"
        );
    }
}

#[test]
fn bad_json_reports_position() {
    let e = err("{\"Network\": \"10.0.0.0/8\",\n  oops}");
    assert_eq!(e.field, "(document)");
    assert_eq!(e.value, "line 2 column 3");
}

#[test]
fn unknown_keys_warn_but_parse() {
    let (_, w) = NetConf::parse(
        r#"{"Network":"10.244.0.0/16","Netwrok":"x","Backend":{"Type":"vxlan","Colour":"red","MacPrefix":"0E-2A"}}"#,
    )
    .unwrap();
    let w: Vec<String> = w.into_iter().map(|w| w.0).collect();
    assert!(w.iter().any(|w| w.starts_with("Netwrok")), "{w:?}");
    assert!(w.iter().any(|w| w.starts_with("Backend.Colour")), "{w:?}");
    assert!(
        w.iter()
            .any(|w| w.contains("MacPrefix") && w.contains("Windows")),
        "{w:?}"
    );
}

#[test]
fn host_bits_are_normalised_with_a_warning() {
    let (c, w) = NetConf::parse(r#"{"Network":"10.244.7.9/16"}"#).unwrap();
    assert_eq!(c.ipv4.unwrap().network.to_string(), "10.244.0.0/16");
    assert_eq!(w.len(), 1);
}

#[test]
fn port_zero_means_kernel_default() {
    assert_eq!(
        ok(r#"{"Network":"10.0.0.0/8","Backend":{"Port":0}}"#)
            .backend
            .port,
        8472
    );
}

#[test]
fn fits_checks_both_families() {
    let c = ok(r#"{"Network":"10.244.0.0/16"}"#);
    assert!(c.fits(Some(&"10.244.3.0/24".parse().unwrap()), None));
    assert!(!c.fits(Some(&"10.245.3.0/24".parse().unwrap()), None));
    assert!(!c.fits(None, None));
    assert!(!c.fits(
        Some(&"10.244.3.0/24".parse().unwrap()),
        Some(&"fd00::/64".parse().unwrap())
    ));
}

proptest! {
    /// Whatever the input, parsing either yields a range whose every invariant holds, or an
    /// error naming one of the range fields.
    #[test]
    fn random_v4_configs(
        base in any::<u32>(),
        prefix in 0u8..=32,
        subnet_len in proptest::option::of(0u64..=33),
        min_off in proptest::option::of(any::<u32>()),
        max_off in proptest::option::of(any::<u32>()),
    ) {
        let net = ipnetwork::Ipv4Network::new(base.into(), prefix).unwrap();
        let mut doc = serde_json::json!({"Network": net.to_string()});
        if let Some(l) = subnet_len { doc["SubnetLen"] = l.into(); }
        let addr = |off: u32| std::net::Ipv4Addr::from(u32::from(net.network()).wrapping_add(off)).to_string();
        if let Some(o) = min_off { doc["SubnetMin"] = addr(o % 65536).into(); }
        if let Some(o) = max_off { doc["SubnetMax"] = addr(o % 65536).into(); }
        match NetConf::from_value(doc) {
            Ok((c, _)) => {
                let r = c.ipv4.unwrap();
                prop_assert!(r.subnet_len >= prefix + 2 && r.subnet_len <= 30);
                prop_assert!(addr_to_u128(r.min) <= addr_to_u128(r.max));
                let first = r.nth(0);
                let last = r.nth(r.count() - 1);
                prop_assert!(r.fits(&first) && r.fits(&last));
                prop_assert_eq!(last.ip(), r.max);
                prop_assert!(r.network.contains(first.ip()) && r.network.contains(last.broadcast()));
            }
            Err(e) => {
                prop_assert!(["Network", "SubnetLen", "SubnetMin", "SubnetMax"].contains(&e.field.as_str()), "{}", e);
                prop_assert!(!e.value.is_empty());
            }
        }
    }
}

#[test]
fn non_masquerade_cidrs_of_both_families() {
    let (c, warnings) = NetConf::parse(
        r#"{"Network":"10.244.0.0/16","NonMasqueradeCIDRs":["172.20.0.0/16","fd00:20::1/56","172.20.0.0/16"]}"#,
    )
    .unwrap();
    let got: Vec<String> = c.non_masquerade.iter().map(|n| n.to_string()).collect();
    assert_eq!(got, ["172.20.0.0/16", "fd00:20::/56"]);
    assert!(
        warnings
            .iter()
            .any(|w| w.0.contains("NonMasqueradeCIDRs[1]")),
        "{warnings:?}"
    );
    assert!(ok(r#"{"Network":"10.244.0.0/16"}"#)
        .non_masquerade
        .is_empty());
    let e = err(r#"{"Network":"10.244.0.0/16","NonMasqueradeCIDRs":["172.20.0.0/16","oops"]}"#);
    assert!(
        e.to_string().contains("NonMasqueradeCIDRs[1]") && e.to_string().contains("oops"),
        "{e}"
    );
    let e = err(r#"{"Network":"10.244.0.0/16","NonMasqueradeCIDRs":"172.20.0.0/16"}"#);
    assert!(e.to_string().contains("NonMasqueradeCIDRs"), "{e}");
}
