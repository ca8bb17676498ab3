//! Checks of the store: etcd or the Kubernetes API, the network config, and the leases
//! twilld refuses.

use twill_config::NetConf;
use twill_etcd::{EtcdOptions, EtcdStore};
use twill_kube::KubeOptions;
use twill_store::{PeerTable, StoredLease};

use crate::options::{kube_with_ipv6, NodeOptions};

use super::{Checks, Status};

pub(super) async fn etcd_checks(
    node: &NodeOptions,
    opts: &EtcdOptions,
    c: &mut Checks,
) -> StoreView {
    let store = EtcdStore::connect(opts).await;
    let conf = config(node.config_file.as_deref(), store.as_ref().ok(), &[], c).await;
    if let Err(e) = &store {
        c.add(
            "etcd",
            Status::Fail,
            format!("{e}"),
            format!(
                "check --etcd-endpoints {} and the TLS flags",
                opts.endpoints.join(",")
            ),
        );
    }
    let leases = match &store {
        Ok(s) => match s.list().await {
            Ok((l, _)) => {
                c.pass(
                    "etcd",
                    format!("{} reachable, {} leases", opts.endpoints.join(","), l.len()),
                );
                Some(l)
            }
            Err(e) => {
                c.add(
                    "etcd",
                    Status::Fail,
                    e.to_string(),
                    "is etcd up and reachable from this node?",
                );
                None
            }
        },
        Err(_) => None,
    };
    StoreView {
        conf,
        leases,
        published_ip: None,
        bgp: Some(node.bgp.clone()),
    }
}

/// What the store checks learned, for the checks after them.
#[derive(Default)]
pub(super) struct StoreView {
    pub conf: Option<NetConf>,
    pub leases: Option<Vec<StoredLease>>,
    /// Kubernetes: the public IP our node object publishes.
    pub published_ip: Option<std::net::IpAddr>,
    /// Kubernetes: our node object's BGP overrides under the flags, as twilld takes them.
    pub bgp: Option<twill_bgp::BgpOptions>,
}

/// Kubernetes mode: the API is reachable, our node exists and its podCIDR lies inside
/// Network (the mismatch that leaves every node NotReady).
pub(super) async fn kube_checks(
    node: &NodeOptions,
    opts: &KubeOptions,
    c: &mut Checks,
) -> StoreView {
    let doc = node
        .config_file
        .as_deref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let ipv6 = doc.as_ref().is_some_and(twill_config::enables_ipv6);
    let hint =
        "check --kubeconfig-file / --kube-api-url (or the pod's service account) and NODE_NAME";
    let store = match twill_kube::KubeStore::connect(&kube_with_ipv6(opts, ipv6)).await {
        Ok(s) => s,
        Err(e) => {
            let conf = config(node.config_file.as_deref(), None, &[], c).await;
            c.add("kubernetes", Status::Fail, e.to_string(), hint);
            return StoreView {
                conf,
                bgp: Some(node.bgp.clone()),
                ..Default::default()
            };
        }
    };
    // A file without Network takes it from the cluster, as twilld does.
    let detected = match doc.as_ref().is_some_and(twill_config::needs_detection) {
        true => store
            .detect_pod_networks()
            .await
            .map(|(n, _)| n)
            .unwrap_or_default(),
        false => Vec::new(),
    };
    let conf = config(node.config_file.as_deref(), None, &detected, c).await;
    let ours = match store.node().await {
        Ok(n) => n,
        Err(e) => {
            c.add("kubernetes", Status::Fail, e.to_string(), hint);
            return StoreView {
                conf,
                bgp: Some(node.bgp.clone()),
                ..Default::default()
            };
        }
    };
    // The daemon's own rule for its node's BGP annotations; a bad one shows in the bgp
    // check, as the daemon would refuse it.
    let annotations = ours.metadata.annotations.clone().unwrap_or_default();
    let bgp = crate::startup::node_bgp_options(&node.bgp, &annotations);
    let leases = match store.list_leases().await {
        Ok(l) => {
            c.pass(
                "kubernetes",
                format!(
                    "API reachable, node {}, {} nodes publish a lease",
                    store.node_name(),
                    l.len()
                ),
            );
            Some(l)
        }
        Err(e) => {
            c.add(
                "kubernetes",
                Status::Fail,
                e.to_string(),
                "can this node's service account list nodes? (ClusterRole)",
            );
            None
        }
    };
    let mut published = None;
    if let Some(conf) = &conf {
        let mine = twill_kube::own_subnet(&ours, conf).ok();
        published = leases
            .iter()
            .flatten()
            .find(|l| Some(l.key) == mine)
            .and_then(|l| Some(l.attrs.as_ref()?.node_ip()));
        match twill_kube::own_subnet(&ours, conf) {
            Ok(k) => c.pass("podCIDR", format!("node {} podCIDR {k} is inside Network", store.node_name())),
            Err(e) => c.add("podCIDR", Status::Fail, e.to_string(),
                "make kube-controller-manager --cluster-cidr (kubeadm --pod-network-cidr) and net-conf.json Network agree"),
        }
    }
    let bgp = match bgp {
        Ok(b) => Some(b),
        Err(e) => {
            c.add(
                "bgp",
                Status::Fail,
                format!("{e:#}"),
                "twilld refuses to start with it: fix or remove the annotation",
            );
            None
        }
    };
    StoreView {
        conf,
        leases,
        published_ip: published,
        bgp,
    }
}

pub(super) async fn config(
    file: Option<&std::path::Path>,
    store: Option<&EtcdStore>,
    detected: &[ipnetwork::IpNetwork],
    c: &mut Checks,
) -> Option<NetConf> {
    let (text, source) = match file {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| e.to_string()),
            p.display().to_string(),
        ),
        None => {
            let Some(s) = store else {
                c.add(
                    "config",
                    Status::Fail,
                    "etcd unreachable",
                    "see the etcd check",
                );
                return None;
            };
            let key = s.config_key();
            match s.get_config().await {
                Ok(Some(t)) => (Ok(t), format!("etcd key {key}")),
                Ok(None) => {
                    c.add("config", Status::Fail, format!("etcd key {key} is missing"),
                        format!("etcdctl put {key} '{{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'"));
                    return None;
                }
                Err(e) => (Err(e.to_string()), format!("etcd key {key}")),
            }
        }
    };
    let text = text.map(|t| {
        if detected.is_empty() {
            return t;
        }
        let mut doc: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
        twill_config::fill_networks(&mut doc, detected);
        doc.to_string()
    });
    match text.map(|t| NetConf::parse(&t)) {
        Ok(Ok((conf, warnings))) => {
            let net = conf
                .ipv4
                .as_ref()
                .map(|r| r.network.to_string())
                .unwrap_or_default();
            if warnings.is_empty() {
                c.pass(
                    "config",
                    format!("{source}: Network {net}, VNI {}", conf.backend.vni),
                );
            } else {
                let w: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
                c.add(
                    "config",
                    Status::Warn,
                    format!("{source}: {}", w.join("; ")),
                    "fix or remove the keys named",
                );
            }
            Some(conf)
        }
        Ok(Err(e)) => {
            c.add(
                "config",
                Status::Fail,
                e.to_string(),
                "fix the field named; twilld refuses this config",
            );
            None
        }
        Err(e) => {
            c.add("config", Status::Fail, format!("{source}: {e}"), "");
            None
        }
    }
}

/// Names every lease twilld refuses to program (and why): a peer unreachable from here,
/// or someone writing what they should not into the store.
pub(super) fn leases_refused(c: &mut Checks, table: &PeerTable, store_name: &str) {
    if table.policy().is_none() {
        return;
    }
    let refused: Vec<String> = table
        .rejected()
        .map(|(k, r)| format!("{k} ({}: {r})", r.reason()))
        .collect();
    if refused.is_empty() {
        c.pass(
            "leases",
            format!("every peer lease in {store_name} is usable"),
        );
    } else {
        c.add(
            "leases",
            Status::Warn,
            format!("{} refused, never programmed: {}", refused.len(), refused.join("; ")),
            format!("fix or delete these in {store_name}; twilld counts them in twill_leases_rejected_total"),
        );
    }
}
