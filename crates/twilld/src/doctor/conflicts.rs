//! Conflicts with another CNI on this node, each a fail with the fix named: what breaks
//! pods outright, as opposed to the leftovers `other_cnis` warns about. Judged by a pure
//! function over what was read, so every case is unit-tested.

use ipnetwork::{IpNetwork, Ipv4Network};
use serde_json::Value;
use twill_config::NetConf;
use twill_dataplane::Netlink;

use super::{Checks, Doctor, Status};

/// What the conflicts check reads from the node.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// Every VXLAN device: (name, UDP port).
    pub vxlan: Vec<(String, u16)>,
    pub our_device: String,
    pub our_port: u16,
    /// flanneld processes in this network namespace.
    pub flanneld: Vec<String>,
    /// The CNI config dir's files, sorted as the runtime sorts them, parsed when they are
    /// JSON.
    pub conflists: Vec<(String, Option<Value>)>,
    pub our_conflist: String,
    pub network: Option<Ipv4Network>,
}

/// (what, how to fix it)
pub(super) fn judge(s: &Seen) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, port) in &s.vxlan {
        if *port == s.our_port && *name != s.our_device {
            out.push((
                format!("VXLAN device {name} is bound to UDP {port}, our port"),
                format!("two overlays can't share a port: remove the other CNI (ip link del {name}), or give twill another Backend.Port"),
            ));
        }
    }
    if !s.flanneld.is_empty() {
        out.push((
            format!("flanneld (pid {}) runs on this node", s.flanneld.join(", ")),
            "it fights twilld over the same device, routes and rules: stop it (systemctl stop flanneld, or delete flannel's DaemonSet pod on this node)".into(),
        ));
    }
    for (file, conf) in &s.conflists {
        if *file == s.our_conflist {
            break;
        }
        let types = conf.as_ref().map(plugin_types).unwrap_or_default();
        // flannel's own conflist is no conflict: its plugin reads the same subnet.env.
        if types.iter().any(|t| t == "twill" || t == "flannel") {
            continue;
        }
        out.push((
            format!(
                "{file} ({}) sorts before {} and is the one the runtime uses",
                if types.is_empty() { "unreadable".to_string() } else { types.join(", ") },
                s.our_conflist
            ),
            format!("new pods get that CNI's network, not twill's: move {file} out of the CNI config dir (or uninstall that CNI)"),
        ));
    }
    if let Some(net) = s.network {
        for (file, conf) in &s.conflists {
            if *file == s.our_conflist {
                continue;
            }
            let Some(conf) = conf else { continue };
            if plugin_types(conf)
                .iter()
                .any(|t| t == "twill" || t == "flannel")
            {
                continue;
            }
            for other in subnets(conf) {
                if let IpNetwork::V4(o) = other {
                    if o.overlaps(net) {
                        out.push((
                            format!("{file} hands out {o}, which overlaps Network {net}"),
                            "one address in two networks: give the other CNI a range outside Network (or change Network)".into(),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The plugin types of a conflist (`plugins[].type`) or of a single conf (`type`).
fn plugin_types(conf: &Value) -> Vec<String> {
    match conf["plugins"].as_array() {
        Some(ps) => ps
            .iter()
            .filter_map(|p| p["type"].as_str().map(String::from))
            .collect(),
        None => conf["type"]
            .as_str()
            .map(String::from)
            .into_iter()
            .collect(),
    }
}

/// Every subnet a conf's IPAM hands out: `ipam.subnet` and `ipam.ranges[][].subnet`, in
/// each plugin.
fn subnets(conf: &Value) -> Vec<IpNetwork> {
    let plugins: Vec<&Value> = match conf["plugins"].as_array() {
        Some(ps) => ps.iter().collect(),
        None => vec![conf],
    };
    let mut out = Vec::new();
    for p in plugins {
        let ipam = &p["ipam"];
        out.extend(
            ipam["subnet"]
                .as_str()
                .and_then(|s| s.parse::<IpNetwork>().ok()),
        );
        for set in ipam["ranges"].as_array().into_iter().flatten() {
            for r in set.as_array().into_iter().flatten() {
                out.extend(
                    r["subnet"]
                        .as_str()
                        .and_then(|s| s.parse::<IpNetwork>().ok()),
                );
            }
        }
    }
    out
}

/// Reads the node and adds the "CNI conflicts" check.
pub(super) async fn conflicts(c: &mut Checks, nl: &Netlink, conf: Option<&NetConf>, args: &Doctor) {
    let vxlan = nl
        .links()
        .await
        .map(|links| {
            links
                .into_iter()
                .filter_map(|l| Some((l.name.clone(), l.vxlan_port()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut conflists: Vec<(String, Option<Value>)> = std::fs::read_dir(&args.cni_conf_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.ends_with(".conf") || n.ends_with(".conflist") || n.ends_with(".json")
                })
                .map(|n| {
                    let v = std::fs::read_to_string(args.cni_conf_dir.join(&n))
                        .ok()
                        .and_then(|t| serde_json::from_str(&t).ok());
                    (n, v)
                })
                .collect()
        })
        .unwrap_or_default();
    conflists.sort_by(|a, b| a.0.cmp(&b.0));
    let seen = Seen {
        vxlan,
        our_device: format!("flannel.{}", conf.map(|c| c.backend.vni).unwrap_or(1)),
        our_port: conf
            .map(|c| c.backend.port)
            .unwrap_or(twill_config::DEFAULT_VXLAN_PORT),
        flanneld: crate::procs::in_this_netns("flanneld"),
        conflists,
        our_conflist: args.conflist_name.clone(),
        network: conf.and_then(NetConf::network4),
    };
    let found = judge(&seen);
    if found.is_empty() {
        c.pass(
            "CNI conflicts",
            "no other overlay on our port, no other CNI ahead of ours or on our addresses",
        );
        return;
    }
    let (what, fix): (Vec<String>, Vec<String>) = found.into_iter().unzip();
    c.add(
        "CNI conflicts",
        Status::Fail,
        what.join("; "),
        fix.join("; "),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen() -> Seen {
        Seen {
            our_device: "flannel.1".into(),
            our_port: 8472,
            our_conflist: "10-twill.conflist".into(),
            network: Some("10.244.0.0/16".parse().unwrap()),
            ..Default::default()
        }
    }

    fn conflist(json: &str) -> Option<Value> {
        Some(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn a_clean_node_has_no_conflict() {
        let mut s = seen();
        s.vxlan = vec![("flannel.1".into(), 8472), ("vx-other".into(), 4789)];
        s.conflists = vec![
            (
                "05-flannel.conflist".into(),
                conflist(r#"{"plugins":[{"type":"flannel"},{"type":"portmap"}]}"#),
            ),
            (
                "10-twill.conflist".into(),
                conflist(r#"{"plugins":[{"type":"twill"}]}"#),
            ),
        ];
        assert!(judge(&s).is_empty(), "{:?}", judge(&s));
    }

    #[test]
    fn another_overlay_on_our_port_and_a_flanneld_fail() {
        let mut s = seen();
        s.vxlan = vec![("flannel.1".into(), 8472), ("cilium_vxlan".into(), 8472)];
        s.flanneld = vec!["4242".into()];
        let f = judge(&s);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].0.contains("cilium_vxlan") && f[0].1.contains("ip link del cilium_vxlan"));
        assert!(f[1].0.contains("4242"));
    }

    #[test]
    fn another_cnis_conflist_ahead_of_ours_and_its_overlapping_range_fail() {
        let mut s = seen();
        s.conflists = vec![
            (
                "05-cilium.conflist".into(),
                conflist(r#"{"plugins":[{"type":"cilium-cni"}]}"#),
            ),
            (
                "10-twill.conflist".into(),
                conflist(r#"{"plugins":[{"type":"twill"}]}"#),
            ),
            (
                "20-bridge.conf".into(),
                conflist(
                    r#"{"type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.9.0/24"}]]}}"#,
                ),
            ),
            (
                "30-other.conf".into(),
                conflist(
                    r#"{"type":"bridge","ipam":{"type":"host-local","subnet":"172.20.0.0/16"}}"#,
                ),
            ),
        ];
        let f = judge(&s);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[0].0
                .contains("05-cilium.conflist (cilium-cni) sorts before 10-twill.conflist"),
            "{f:?}"
        );
        assert!(
            f[1].0.contains("20-bridge.conf hands out 10.244.9.0/24"),
            "{f:?}"
        );
    }
}
