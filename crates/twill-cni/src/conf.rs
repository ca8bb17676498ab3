//! The network configuration a runtime hands us, and the delegate config we hand on.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
pub use serde_json::Value;
use serde_json::{json, Map};
use twill_config::SubnetEnv;

use crate::error::{code, CniError};
use crate::{DEFAULT_DATA_DIR, DEFAULT_SUBNET_FILE, SUPPORTED_VERSIONS};

#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    /// As the input gives it; `None` without one (the delegate then gets none either, as
    /// flannel's plugin copies the field only when it is set).
    pub cni_version: Option<String>,
    pub name: String,
    pub subnet_file: String,
    pub data_dir: String,
    /// `dataDir` came from the input rather than the default.
    pub data_dir_given: bool,
    pub delegate: Map<String, Value>,
    /// User IPAM settings merged under ours (e.g. host-local's dataDir, extra routes).
    pub ipam: Map<String, Value>,
    pub runtime_config: Option<Map<String, Value>>,
    pub prev_result: Option<Value>,
    /// GC's `cni.dev/valid-attachments`: (containerID, ifname) pairs still in use.
    pub valid_attachments: Option<Vec<(String, String)>>,
}

/// What a missing `cniVersion` means: libcni and Go's skel read it as 0.1.0.
pub const IMPLIED_VERSION: &str = "0.1.0";

fn invalid(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg, details)
}

impl PluginConf {
    /// Parses stdin. Bad JSON is code 6 with the position; a bad field is code 7 naming it;
    /// an unsupported version is code 1.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                code::DECODE,
                "failed to decode the network configuration",
                format!("line {} column {}: {e}", e.line(), e.column()),
            )
        })?;
        let Value::Object(mut m) = v else {
            return Err(CniError::new(
                code::DECODE,
                "network configuration must be a JSON object",
                "",
            ));
        };
        let string = |m: &mut Map<String, Value>, k: &str| -> Result<Option<String>, CniError> {
            match m.remove(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(invalid(
                    format!("{k} must be a string"),
                    format!("got {other}"),
                )),
            }
        };
        let object =
            |m: &mut Map<String, Value>, k: &str| -> Result<Option<Map<String, Value>>, CniError> {
                match m.remove(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::Object(o)) => Ok(Some(o)),
                    Some(other) => Err(invalid(
                        format!("{k} must be a JSON object"),
                        format!("got {other}"),
                    )),
                }
            };
        let cni_version = string(&mut m, "cniVersion")?;
        let version = cni_version.as_deref().unwrap_or(IMPLIED_VERSION);
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("unsupported cniVersion {version:?}"),
                format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        let name = string(&mut m, "name")?
            .ok_or_else(|| invalid("network configuration has no name", ""))?;
        let delegate = object(&mut m, "delegate")?.unwrap_or_default();
        if delegate.get("type").is_some_and(|t| !t.is_string()) {
            return Err(invalid(
                "'delegate' dictionary, if present, must have (string) 'type' field",
                format!("got {}", delegate["type"]),
            ));
        }
        for forbidden in ["name", "ipam"] {
            if delegate.contains_key(forbidden) {
                return Err(invalid(
                    format!("'delegate' dictionary must not have '{forbidden}' field, it'll be set by flannel"),
                    "twill sets the delegate's name from the network and its ipam from subnet.env",
                ));
            }
        }
        let data_dir = string(&mut m, "dataDir")?;
        Ok(PluginConf {
            cni_version,
            name,
            subnet_file: string(&mut m, "subnetFile")?
                .unwrap_or_else(|| DEFAULT_SUBNET_FILE.into()),
            data_dir_given: data_dir.is_some(),
            data_dir: data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            delegate,
            ipam: object(&mut m, "ipam")?.unwrap_or_default(),
            runtime_config: object(&mut m, "runtimeConfig")?,
            prev_result: m.remove("prevResult"),
            valid_attachments: valid_attachments(m.remove("cni.dev/valid-attachments"))?,
        })
    }

    /// The version this call is spoken in.
    pub fn version(&self) -> &str {
        self.cni_version.as_deref().unwrap_or(IMPLIED_VERSION)
    }
}

fn valid_attachments(v: Option<Value>) -> Result<Option<Vec<(String, String)>>, CniError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let bad = |what: &Value| {
        invalid(
            "cni.dev/valid-attachments must be a list of {\"containerID\": <string>, \"ifname\": <string>}",
            format!("got {what}"),
        )
    };
    let list = v.as_array().ok_or_else(|| bad(&v))?;
    list.iter()
        .map(
            |a| match (a["containerID"].as_str(), a["ifname"].as_str()) {
                (Some(id), Some(ifname)) => Ok((id.to_string(), ifname.to_string())),
                _ => Err(bad(a)),
            },
        )
        .collect::<Result<_, _>>()
        .map(Some)
}

/// One of `ipam.routes` as libcni's `types.Route` reads and writes it: `dst` and `gw`
/// re-spelled in canonical form (host bits of `dst` kept, as libcni keeps them), the
/// numeric fields only when set, anything else dropped.
fn normalize_route(r: &Value) -> Result<Value, String> {
    let Value::Object(m) = r else {
        return Err(format!("a route must be a JSON object, got {r}"));
    };
    let dst = m
        .get("dst")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("route {r} has no \"dst\" string"))?;
    let net: IpNetwork = dst
        .parse()
        .map_err(|_| format!("route dst {dst:?} is not an address/prefix"))?;
    let mut out = Map::new();
    out.insert("dst".into(), net.to_string().into());
    match m.get("gw") {
        None | Some(Value::Null) => {}
        Some(Value::String(gw)) if gw.is_empty() => {}
        Some(Value::String(gw)) => {
            let ip: IpAddr = gw
                .parse()
                .map_err(|_| format!("route gw {gw:?} is not an IP address"))?;
            out.insert("gw".into(), ip.to_string().into());
        }
        Some(other) => return Err(format!("route gw must be a string, got {other}")),
    }
    for (key, omit_zero) in [
        ("mtu", true),
        ("advmss", true),
        ("priority", true),
        ("table", false),
        ("scope", false),
    ] {
        match m.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => {
                let n = v
                    .as_i64()
                    .ok_or_else(|| format!("route {key} must be an integer, got {v}"))?;
                if !(omit_zero && n == 0) {
                    out.insert(key.into(), n.into());
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// The delegate config flannel's plugin would render from `conf` and `env`.
pub fn render_delegate(conf: &PluginConf, env: &SubnetEnv) -> Result<Value, CniError> {
    let missing = env.missing();
    if !missing.is_empty() {
        return Err(invalid(
            format!("{} is missing {}", conf.subnet_file, missing.join(", ")),
            "twilld writes it once it holds a lease; is this file from an older tool?",
        ));
    }
    let (Some(mtu), Some(ipmasq)) = (env.mtu, env.ipmasq) else {
        unreachable!("missing() names both");
    };

    let mut d = conf.delegate.clone();
    d.insert("name".into(), conf.name.clone().into());
    d.entry("type").or_insert_with(|| "bridge".into());
    d.entry("ipMasq").or_insert_with(|| (!ipmasq).into());
    d.entry("mtu").or_insert_with(|| mtu.into());
    if d.get("type") == Some(&Value::from("bridge")) {
        d.entry("isGateway").or_insert_with(|| true.into());
    }
    if let Some(v) = &conf.cni_version {
        d.insert("cniVersion".into(), v.clone().into());
    }

    let mut ipam = conf.ipam.clone();
    ipam.entry("type").or_insert_with(|| "host-local".into());
    let ranges: Vec<Value> = [env.lease_subnet(), env.lease_subnet6()]
        .into_iter()
        .flatten()
        .map(|s| json!([{"subnet": s.to_string()}]))
        .collect();
    ipam.insert("ranges".into(), ranges.into());
    let mut routes = match ipam.remove("routes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(r)) => r
            .iter()
            .map(normalize_route)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("failed to parse ipam.routes", e))?,
        Some(other) => {
            return Err(invalid(
                "failed to parse ipam.routes",
                format!("expected a list, got {other}"),
            ))
        }
    };
    for n in env.networks.iter().chain(&env.ipv6_networks) {
        routes.push(json!({"dst": n.to_string()}));
    }
    ipam.insert("routes".into(), routes.into());
    d.insert("ipam".into(), ipam.into());
    if let Some(rc) = &conf.runtime_config {
        d.insert("runtimeConfig".into(), Value::Object(rc.clone()));
    }
    Ok(Value::Object(d))
}

/// A copy of an ADD result whose gateway-less routes carry the gateway they were installed
/// with (the IP of the same family's `gateway`). The bridge plugin (Debian's 1.1.1) writes
/// routes without `gw` but its CHECK then compares them literally against the kernel's,
/// which have the gateway, and fails on a healthy pod.
pub fn with_implied_gateways(result: &Value) -> Value {
    let mut out = result.clone();
    let gateway = |v6: bool| {
        result["ips"].as_array()?.iter().find_map(|ip| {
            let gw = ip["gateway"].as_str()?;
            (gw.contains(':') == v6).then(|| gw.to_string())
        })
    };
    if let Some(routes) = out["routes"].as_array_mut() {
        for r in routes {
            if r.get("gw").is_some() {
                continue;
            }
            let v6 = r["dst"].as_str().is_some_and(|d| d.contains(':'));
            if let Some(gw) = gateway(v6) {
                r["gw"] = gw.into();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(text: &str) -> SubnetEnv {
        SubnetEnv::parse(text, "subnet.env").unwrap()
    }

    const V4: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";

    fn render(conf: &str, env_text: &str) -> Value {
        render_delegate(&PluginConf::parse(conf.as_bytes()).unwrap(), &env(env_text)).unwrap()
    }

    #[test]
    fn golden_matches_flannels_own_test() {
        let got = render(
            r#"{"cniVersion":"0.3.1","name":"cni-flannel","type":"twill"}"#,
            V4,
        );
        let want: Value = serde_json::from_str(
            r#"{"cniVersion":"0.3.1","ipMasq":false,"ipam":{"routes":[{"dst":"10.1.0.0/16"}],"ranges":[[{"subnet":"10.1.17.0/24"}]],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#,
        )
        .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn golden_default_conflist_delegate() {
        let got = render(
            r#"{"cniVersion":"1.0.0","name":"cbr0","type":"twill","delegate":{"hairpinMode":true,"isDefaultGateway":true},"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}}"#,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        );
        let want: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","hairpinMode":true,"isDefaultGateway":true,"ipMasq":true,"ipam":{"routes":[{"dst":"10.244.0.0/16"}],"ranges":[[{"subnet":"10.244.3.0/24"}]],"type":"host-local"},"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}}"#,
        )
        .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn golden_dual_stack_with_user_ipam_routes() {
        let got = render(
            r#"{"cniVersion":"1.0.0","name":"cbr0","ipam":{"routes":[{"dst":"192.0.2.0/24"}],"dataDir":"/tmp/ipam"},"delegate":{"mtu":1400,"ipMasq":false,"isGateway":false}}"#,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        );
        let want: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","ipMasq":false,"isGateway":false,"mtu":1400,"name":"cbr0","type":"bridge","ipam":{"dataDir":"/tmp/ipam","type":"host-local","ranges":[[{"subnet":"10.244.3.0/24"}],[{"subnet":"fd00:10:244:3::/64"}]],"routes":[{"dst":"192.0.2.0/24"},{"dst":"10.244.0.0/16"},{"dst":"fd00:10:244::/56"}]}}"#,
        )
        .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn implied_gateways_are_filled_per_family() {
        let res: Value = serde_json::from_str(
            r#"{"ips":[{"address":"10.9.0.2/24","gateway":"10.9.0.1"},{"address":"fd00::2/64","gateway":"fd00::1"}],"routes":[{"dst":"10.8.0.0/16"},{"dst":"fd01::/48"},{"dst":"0.0.0.0/0","gw":"10.9.0.254"}]}"#,
        )
        .unwrap();
        let out = with_implied_gateways(&res);
        assert_eq!(out["routes"][0]["gw"], "10.9.0.1");
        assert_eq!(out["routes"][1]["gw"], "fd00::1");
        assert_eq!(out["routes"][2]["gw"], "10.9.0.254");
    }

    #[test]
    fn other_delegate_types_get_no_is_gateway() {
        let got = render(
            r#"{"cniVersion":"1.0.0","name":"n","delegate":{"type":"ipvlan"}}"#,
            V4,
        );
        assert!(got.get("isGateway").is_none());
        assert_eq!(got["type"], "ipvlan");
    }

    #[test]
    fn input_errors_carry_spec_codes() {
        let e = PluginConf::parse(b"{\"cniVersion\": \"1.0.0\",\n  garbage").unwrap_err();
        assert_eq!(e.code, code::DECODE);
        assert!(e.details.starts_with("line 2 column 3"), "{}", e.details);
        assert_eq!(
            PluginConf::parse(br#"{"cniVersion":"9.9.9","name":"n"}"#)
                .unwrap_err()
                .code,
            code::INCOMPATIBLE_VERSION
        );
        for bad in [
            r#"{"cniVersion":"1.0.0"}"#,
            r#"{"cniVersion":"1.0.0","name":"n","delegate":{"name":"x"}}"#,
            r#"{"cniVersion":"1.0.0","name":"n","delegate":{"ipam":{}}}"#,
            r#"{"cniVersion":"1.0.0","name":"n","delegate":"bridge"}"#,
            r#"{"cniVersion":"1.0.0","name":"n","subnetFile":7}"#,
        ] {
            assert_eq!(
                PluginConf::parse(bad.as_bytes()).unwrap_err().code,
                code::INVALID_CONFIG,
                "{bad}"
            );
        }
    }

    #[test]
    fn incomplete_subnet_env_is_rejected() {
        let conf = PluginConf::parse(br#"{"cniVersion":"1.0.0","name":"n"}"#).unwrap();
        let e = render_delegate(
            &conf,
            &env("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.1.1/24\n"),
        )
        .unwrap_err();
        assert!(e.msg.contains("FLANNEL_MTU"), "{e}");
        let e =
            render_delegate(&conf, &env("FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")).unwrap_err();
        assert!(e.msg.contains("FLANNEL_NETWORK"), "{e}");
    }
}
