//! flannel's own test cases for its CNI plugin (flannel-io/cni-plugin,
//! `flannel_linux_test.go`: loadFlannelNetConf, loadFlannelSubnetEnv, getDelegateIPAM and
//! the delegate config saved by ADD), each restated as a test of twill's plugin with the
//! same inputs and the same expected JSON. The ADD/DEL lifecycle cases run the real
//! plugins in `tests/cni.rs`.

use serde_json::Value;
use twill_cni::{render_delegate, PluginConf, DEFAULT_DATA_DIR, DEFAULT_SUBNET_FILE};
use twill_config::SubnetEnv;

const IPV4: &str = "\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
const IPV6: &str = "\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
const DUAL: &str = "\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
const IPV4_TWO_NETWORKS: &str = "\nFLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";

/// The input IPAM of flannel's getDelegateIPAM cases: a type (or none), an unknown
/// parameter that must be kept, and two routes, one with a gateway.
const USER_ROUTES: &str =
    r#"{ "dst": "10.96.0.0/12" }, { "dst": "192.168.244.0/24", "gw": "10.1.17.20" }"#;

fn input(ipam: Option<&str>) -> String {
    let ipam = ipam
        .map(|i| format!(",\n  \"ipam\": {i}"))
        .unwrap_or_default();
    format!(
        r#"{{"name": "cni-flannel", "type": "flannel", "subnetFile": "/run/test/subnet.env", "dataDir": "/var/lib/test"{ipam}}}"#
    )
}

fn input_ipam(ipam_type: Option<&str>, routes: &str) -> String {
    let t = ipam_type
        .map(|t| format!(r#""type": "{t}", "#))
        .unwrap_or_default();
    format!(r#"{{{t}"unknown-param": "unknown-value", "routes": [{routes}]}}"#)
}

fn render(input: &str, env: &str) -> Value {
    let conf = PluginConf::parse(input.as_bytes()).unwrap();
    render_delegate(&conf, &SubnetEnv::parse(env, "subnet.env").unwrap()).unwrap()
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

// "CNI lifecycle": the delegate config ADD saves in dataDir.

#[test]
fn saved_config_ipv4() {
    assert_eq!(
        render(&input(None), IPV4),
        json(
            r#"{"ipMasq": false, "ipam": {"routes": [{"dst": "10.1.0.0/16"}], "ranges": [[{"subnet": "10.1.17.0/24"}]], "type": "host-local"},
                "isGateway": true, "mtu": 1472, "name": "cni-flannel", "type": "bridge"}"#
        )
    );
}

#[test]
fn saved_config_ipv4_two_networks() {
    assert_eq!(
        render(&input(None), IPV4_TWO_NETWORKS),
        json(
            r#"{"ipMasq": false, "ipam": {"routes": [{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}], "ranges": [[{"subnet": "10.1.17.0/24"}]], "type": "host-local"},
                "isGateway": true, "mtu": 1472, "name": "cni-flannel", "type": "bridge"}"#
        )
    );
}

#[test]
fn saved_config_ipv6() {
    assert_eq!(
        render(&input(None), IPV6),
        json(
            r#"{"ipMasq": false, "ipam": {"routes": [{"dst": "fc00::/48"}], "ranges": [[{"subnet": "fc00::/64"}]], "type": "host-local"},
                "isGateway": true, "mtu": 1472, "name": "cni-flannel", "type": "bridge"}"#
        )
    );
}

#[test]
fn saved_config_dual_stack() {
    assert_eq!(
        render(&input(None), DUAL),
        json(
            r#"{"ipMasq": false, "ipam": {"routes": [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}],
                "ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]], "type": "host-local"},
                "isGateway": true, "mtu": 1472, "name": "cni-flannel", "type": "bridge"}"#
        )
    );
}

// loadFlannelNetConf

#[test]
fn load_net_conf_with_subnet_file_and_data_dir() {
    let c = PluginConf::parse(input(None).as_bytes()).unwrap();
    assert_eq!(c.name, "cni-flannel");
    assert_eq!(c.subnet_file, "/run/test/subnet.env");
    assert_eq!(c.data_dir, "/var/lib/test");
}

#[test]
fn load_net_conf_defaults() {
    let c = PluginConf::parse(br#"{"name": "cni-flannel", "type": "flannel"}"#).unwrap();
    assert_eq!(c.name, "cni-flannel");
    assert_eq!(c.subnet_file, DEFAULT_SUBNET_FILE);
    assert_eq!(c.data_dir, DEFAULT_DATA_DIR);
    assert_eq!(DEFAULT_SUBNET_FILE, "/run/flannel/subnet.env");
    assert_eq!(DEFAULT_DATA_DIR, "/var/lib/cni/flannel");
}

// loadFlannelSubnetEnv

#[test]
fn load_subnet_env_ipv4_ipv6_dual() {
    let v4 = SubnetEnv::parse(IPV4, "f").unwrap();
    assert_eq!(v4.networks[0].to_string(), "10.1.0.0/16");
    assert_eq!(v4.lease_subnet().unwrap().to_string(), "10.1.17.0/24");
    assert_eq!((v4.mtu, v4.ipmasq), (Some(1472), Some(true)));
    let v6 = SubnetEnv::parse(IPV6, "f").unwrap();
    assert_eq!(v6.ipv6_networks[0].to_string(), "fc00::/48");
    assert_eq!(v6.lease_subnet6().unwrap().to_string(), "fc00::/64");
    assert_eq!((v6.mtu, v6.ipmasq), (Some(1472), Some(true)));
    let d = SubnetEnv::parse(DUAL, "f").unwrap();
    assert_eq!(d.networks[0].to_string(), "10.1.0.0/16");
    assert_eq!(d.lease_subnet().unwrap().to_string(), "10.1.17.0/24");
    assert_eq!(d.ipv6_networks[0].to_string(), "fc00::/48");
    assert_eq!(d.lease_subnet6().unwrap().to_string(), "fc00::/64");
}

#[test]
fn invalid_subnet_env_names_every_missing_key() {
    let conf = PluginConf::parse(input(None).as_bytes()).unwrap();
    let e = render_delegate(&conf, &SubnetEnv::parse("foo=bar", "f").unwrap()).unwrap_err();
    assert!(
        e.msg.contains("missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"),
        "{e}"
    );
    assert!(e.msg.contains("/run/test/subnet.env"), "{e}");
}

// getDelegateIPAM

fn delegate_ipam(ipam: &str, env: &str) -> Value {
    render(&input(Some(ipam)), env)["ipam"].clone()
}

fn expected_ipam(ipam_type: &str, pod_routes: &str, ranges: &str) -> Value {
    json(&format!(
        r#"{{"type": "{ipam_type}", "unknown-param": "unknown-value", "routes": [{USER_ROUTES}, {pod_routes}], "ranges": {ranges}}}"#
    ))
}

#[test]
fn delegate_ipam_from_input_ipam() {
    let v4 = (
        IPV4,
        r#"{"dst": "10.1.0.0/16"}"#,
        r#"[[{"subnet": "10.1.17.0/24"}]]"#,
    );
    let v6 = (
        IPV6,
        r#"{"dst": "fc00::/48"}"#,
        r#"[[{"subnet": "fc00::/64"}]]"#,
    );
    let dual = (
        DUAL,
        r#"{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}"#,
        r#"[[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]]"#,
    );
    for (env, pod_routes, ranges) in [v4, v6, dual] {
        assert_eq!(
            delegate_ipam(&input_ipam(Some("my-ipam"), USER_ROUTES), env),
            expected_ipam("my-ipam", pod_routes, ranges),
            "{env}"
        );
        // Without a type, host-local.
        assert_eq!(
            delegate_ipam(&input_ipam(None, USER_ROUTES), env),
            expected_ipam("host-local", pod_routes, ranges),
            "{env}"
        );
    }
}

#[test]
fn delegate_ipam_two_networks() {
    assert_eq!(
        render(&input(None), IPV4_TWO_NETWORKS)["ipam"],
        json(
            r#"{"ranges": [[{"subnet": "10.1.17.0/24"}]], "routes": [{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}], "type": "host-local"}"#
        )
    );
}

// Beyond flannel's tests, what its code does with inputs its tests don't cover.

#[test]
fn cni_version_is_copied_only_when_given() {
    assert!(render(&input(None), IPV4).get("cniVersion").is_none());
    let with = input(None).replacen('{', r#"{"cniVersion": "0.3.1", "#, 1);
    assert_eq!(render(&with, IPV4)["cniVersion"], "0.3.1");
}

#[test]
fn capabilities_are_not_handed_to_the_delegate() {
    let conf = r#"{"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel", "capabilities": {"portMappings": true},
                   "delegate": {"hairpinMode": true, "isDefaultGateway": true}}"#;
    let d = render(conf, IPV4);
    assert!(d.get("capabilities").is_none(), "{d}");
    assert_eq!(d["hairpinMode"], true);
}

#[test]
fn user_routes_are_normalised_as_libcni_writes_them() {
    let ipam = r#"{"routes": [{"dst": "fc00:0:0::/48", "gw": "fc00:0::1", "note": "dropped", "mtu": 0, "priority": 10, "table": 0},
                              {"dst": "10.96.0.1/12"}]}"#;
    let routes = delegate_ipam(ipam, IPV4)["routes"].clone();
    assert_eq!(
        routes,
        json(
            r#"[{"dst": "fc00::/48", "gw": "fc00::1", "priority": 10, "table": 0}, {"dst": "10.96.0.1/12"}, {"dst": "10.1.0.0/16"}]"#
        )
    );
}

#[test]
fn networks_are_masked_and_deduplicated_in_routes() {
    let env = "FLANNEL_NETWORK=10.1.0.1/16,10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n";
    let d = render(&input(None), env);
    assert_eq!(d["ipam"]["routes"], json(r#"[{"dst": "10.1.0.0/16"}]"#));
    assert_eq!(
        d["ipMasq"], true,
        "FLANNEL_IPMASQ=false: the bridge masquerades"
    );
}

#[test]
fn refused_inputs_name_what_is_wrong() {
    for (conf, word) in [
        (
            r#"{"name": "n", "delegate": {"type": 7}}"#,
            "(string) 'type'",
        ),
        (
            r#"{"name": "n", "delegate": {"type": null}}"#,
            "(string) 'type'",
        ),
        (r#"{"name": "n", "delegate": {"name": "x"}}"#, "'name'"),
        (r#"{"name": "n", "delegate": {"ipam": {}}}"#, "'ipam'"),
        (r#"{"name": "n", "runtimeConfig": []}"#, "runtimeConfig"),
        (r#"{"name": "n", "ipam": 3}"#, "ipam"),
    ] {
        let e = PluginConf::parse(conf.as_bytes()).unwrap_err();
        assert!(e.msg.contains(word), "{conf}: {e}");
    }
    let conf =
        PluginConf::parse(br#"{"name": "n", "ipam": {"routes": [{"dst": "nonsense"}]}}"#).unwrap();
    let e = render_delegate(&conf, &SubnetEnv::parse(IPV4, "f").unwrap()).unwrap_err();
    assert!(
        e.msg.contains("ipam.routes") && e.details.contains("nonsense"),
        "{e}"
    );
}

#[test]
fn every_flannel_version_is_accepted() {
    for v in [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ] {
        let c = PluginConf::parse(format!(r#"{{"cniVersion": "{v}", "name": "n"}}"#).as_bytes())
            .unwrap();
        assert_eq!(c.version(), v);
    }
    assert_eq!(
        PluginConf::parse(br#"{"name": "n"}"#).unwrap().version(),
        "0.1.0"
    );
}
