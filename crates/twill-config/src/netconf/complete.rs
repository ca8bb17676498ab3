//! Completing a net-conf.json that leaves its networks to the cluster (Kubernetes mode:
//! flannel's manifests may omit `Network`, and twilld takes the cluster's). Works on the
//! document before it is parsed, so the completed one is judged by the one parser.

use ipnetwork::IpNetwork;

/// Fills `Network` (and, with EnableIPv6, `IPv6Network`) of a net-conf.json document that
/// lacks them from `detected`; returns the keys it filled.
pub fn fill_networks(doc: &mut serde_json::Value, detected: &[IpNetwork]) -> Vec<String> {
    let Some(obj) = doc.as_object_mut() else {
        return Vec::new();
    };
    let has = |obj: &serde_json::Map<String, serde_json::Value>, k: &str| {
        obj.iter()
            .any(|(key, v)| key.eq_ignore_ascii_case(k) && !v.is_null())
    };
    let flag = |obj: &serde_json::Map<String, serde_json::Value>, k: &str, default: bool| {
        obj.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .and_then(|(_, v)| v.as_bool())
            .unwrap_or(default)
    };
    let mut filled = Vec::new();
    for (key, enable, default, v4) in [
        ("Network", "EnableIPv4", true, true),
        ("IPv6Network", "EnableIPv6", false, false),
    ] {
        if !has(obj, key) && flag(obj, enable, default) {
            if let Some(n) = detected.iter().find(|n| n.is_ipv4() == v4) {
                obj.insert(key.to_string(), n.to_string().into());
                filled.push(format!("{key}={n}"));
            }
        }
    }
    filled
}

/// Whether a net-conf.json document turns IPv6 on (read before it is complete).
pub fn enables_ipv6(doc: &serde_json::Value) -> bool {
    doc.as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("EnableIPv6")))
        .and_then(|(_, v)| v.as_bool())
        .unwrap_or(false)
}

/// Whether a net-conf.json document leaves a network to the cluster.
pub fn needs_detection(doc: &serde_json::Value) -> bool {
    let mut probe = doc.clone();
    !fill_networks(
        &mut probe,
        &["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
    )
    .is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNetwork> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn only_missing_networks_are_filled() {
        let det = nets(&["10.244.0.0/16", "fd00:10:244::/56"]);
        let mut doc: serde_json::Value =
            serde_json::from_str(r#"{"Backend":{"Type":"vxlan"}}"#).unwrap();
        assert!(needs_detection(&doc));
        assert_eq!(fill_networks(&mut doc, &det), ["Network=10.244.0.0/16"]);
        assert_eq!(doc["Network"], "10.244.0.0/16");
        assert!(doc.get("IPv6Network").is_none(), "IPv6 not enabled");
        let mut dual: serde_json::Value =
            serde_json::from_str(r#"{"EnableIPv6":true,"network":"10.9.0.0/16"}"#).unwrap();
        assert_eq!(
            fill_networks(&mut dual, &det),
            ["IPv6Network=fd00:10:244::/56"]
        );
        assert_eq!(dual["network"], "10.9.0.0/16", "a given Network is kept");
        let given: serde_json::Value =
            serde_json::from_str(r#"{"Network":"10.9.0.0/16"}"#).unwrap();
        assert!(!needs_detection(&given));
    }
}
