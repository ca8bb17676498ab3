//! Pure translation between Node objects and leases: flannel's annotations, the podCIDR
//! checks, and the node-set bookkeeping the watcher needs. No API calls here.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Map, Value};
use twill_config::NetConf;
use twill_store::{LeaseAttrs, LeaseKey, RawJson, StoredLease, WatchEvent};

/// flanneld's default `--kube-annotation-prefix`.
pub const DEFAULT_PREFIX: &str = "flannel.alpha.coreos.com";
/// The node condition reason we set; flannel's is "FlannelIsUp".
pub const CONDITION_REASON: &str = "TwillIsUp";

/// Annotation names under one prefix, as flannel spells them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationKeys {
    /// Ends in `/` or `-`: names are appended as they are.
    prefix: String,
}

/// A `--kube-annotation-prefix` flanneld would refuse, in flanneld's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("{0:?}: prefix can contain at most single slash")]
    Slashes(String),
    #[error("{0:?}: prefix must be in a format: fqdn/[0-9a-z-_]*")]
    Format(String),
}

impl AnnotationKeys {
    /// flanneld's rules: without a `/` one is appended (`example.com` → `example.com/`);
    /// a path part gets a `-` unless it ends in one (`example.com/net` → keys
    /// `example.com/net-public-ip`); the result must match flanneld's pattern, which is
    /// searched, not anchored, so it is checked the same way.
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        let slashes = prefix.matches('/').count();
        if slashes > 1 {
            return Err(PrefixError::Slashes(prefix.into()));
        }
        let mut p = prefix.to_string();
        if slashes == 0 {
            p.push('/');
        }
        if !p.ends_with('/') && !p.ends_with('-') {
            p.push('-');
        }
        static PATTERN: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
        let pattern = PATTERN.get_or_init(|| {
            regex::Regex::new(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$")
                .expect("a valid pattern")
        });
        if !pattern.is_match(&p) {
            return Err(PrefixError::Format(prefix.into()));
        }
        Ok(AnnotationKeys { prefix: p })
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The annotations this node's lease is published as. Keys we own but have nothing
    /// for (the v6 ones on a v4-only node, the v4 ones on an IPv6-only node, whose
    /// PublicIP is 0.0.0.0) map to `None`, meaning "remove". A family without backend data
    /// (host-gw) publishes `null`, as flanneld writes it.
    pub fn publish(&self, attrs: &LeaseAttrs) -> BTreeMap<String, Option<String>> {
        let v4 = !attrs.public_ip.is_unspecified();
        let json = |v: &Option<RawJson>, on: bool| match v {
            Some(v) => Some(v.get().to_string()),
            None => on.then(|| "null".to_string()),
        };
        BTreeMap::from([
            (
                self.key("backend-type"),
                Some(attrs.backend_type.to_string()),
            ),
            (self.key("backend-data"), json(&attrs.backend_data, v4)),
            (
                self.key("backend-v6-data"),
                json(&attrs.backend_v6_data, attrs.public_ipv6.is_some()),
            ),
            (
                self.key("public-ip"),
                v4.then(|| attrs.public_ip.to_string()),
            ),
            (
                self.key("public-ipv6"),
                attrs.public_ipv6.map(|ip| ip.to_string()),
            ),
            (self.key("kube-subnet-manager"), Some("true".to_string())),
        ])
    }

    /// A merge patch (`{"metadata":{"annotations":…}}`) that brings `node` to `desired`,
    /// or `None` when it already carries exactly that: an unchanged node is never written.
    pub fn patch(&self, node: &Node, desired: &BTreeMap<String, Option<String>>) -> Option<Value> {
        let current = node.metadata.annotations.as_ref();
        let mut changes = Map::new();
        for (k, want) in desired {
            let have = current.and_then(|a| a.get(k));
            if have != want.as_ref() {
                changes.insert(k.clone(), want.clone().map_or(Value::Null, Value::String));
            }
        }
        (!changes.is_empty()).then(|| json!({ "metadata": { "annotations": changes } }))
    }

    fn get<'a>(&self, node: &'a Node, name: &str) -> Option<&'a str> {
        node.metadata
            .annotations
            .as_ref()?
            .get(&self.key(name))
            .map(String::as_str)
    }

    /// `node-public-ip`: an operator's choice of this node's public address, used like
    /// `--public-ip` when that flag is not given.
    pub fn node_public_ip(&self, node: &Node) -> Option<Ipv4Addr> {
        self.get(node, "node-public-ip")?.trim().parse().ok()
    }

    /// `public-ip-overwrite`: published as public-ip even when no interface has it
    /// (nodes behind NAT).
    pub fn public_ip_overwrite(&self, node: &Node) -> Option<Ipv4Addr> {
        self.get(node, "public-ip-overwrite")?.trim().parse().ok()
    }

    /// `public-ipv6-overwrite`: the same for PublicIPv6.
    pub fn public_ipv6_overwrite(&self, node: &Node) -> Option<Ipv6Addr> {
        self.get(node, "public-ipv6-overwrite")?.trim().parse().ok()
    }

    /// `node-public-ipv6`: used like `--public-ipv6` when that flag is not given (flanneld
    /// reads it and then ignores it, flannel #2045).
    pub fn node_public_ipv6(&self, node: &Node) -> Option<Ipv6Addr> {
        self.get(node, "node-public-ipv6")?.trim().parse().ok()
    }

    /// The VTEP MAC this node advertised last time, to be reused on restart.
    /// The VTEP MAC in annotation `which` (`backend-data`, `backend-v6-data`).
    pub fn vtep_mac(&self, node: &Node, which: &str) -> Option<String> {
        let data: twill_store::VxlanBackendData =
            serde_json::from_str(self.get(node, which)?).ok()?;
        Some(data.vtep_mac)
    }

    /// The lease a node stands for, if it is a twill/flannel peer: the subnet manager
    /// annotation says "true", public-ip parses (or, IPv6-only, the node has no IPv4
    /// podCIDR and PublicIP is 0.0.0.0, as flanneld's lease is there), and it has a
    /// podCIDR. `want_v6` says whether the network has IPv6 (the v6 podCIDR is part of
    /// the key only then).
    pub fn lease(&self, node: &Node, want_v6: bool) -> Option<StoredLease> {
        if self.get(node, "kube-subnet-manager") != Some("true") {
            return None;
        }
        let key = lease_key(node, want_v6);
        if key.v4.is_none() && key.v6.is_none() {
            return None;
        }
        let public_ip = match self.get(node, "public-ip-overwrite") {
            Some(ip) if ip.trim().parse::<Ipv4Addr>().is_ok() => Some(ip),
            _ => self.get(node, "public-ip"),
        }
        .and_then(|ip| ip.trim().parse::<Ipv4Addr>().ok());
        let public_ip = match public_ip {
            Some(ip) => ip,
            None if key.v4.is_none() => Ipv4Addr::UNSPECIFIED,
            None => return None,
        };
        let data = |name| self.get(node, name).and_then(RawJson::parse);
        let public_ipv6 = match self.get(node, "public-ipv6-overwrite") {
            Some(ip) if ip.trim().parse::<Ipv6Addr>().is_ok() => Some(ip),
            _ => self.get(node, "public-ipv6"),
        }
        .and_then(|s| s.trim().parse().ok());
        let attrs = LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type: twill_store::backend_name(self.get(node, "backend-type").unwrap_or("")),
            backend_data: data("backend-data"),
            backend_v6_data: data("backend-v6-data"),
        };
        Some(StoredLease {
            key,
            attrs: Some(attrs),
            // Kubernetes leases have no TTL; expiry is the node object going away.
            reservation: true,
            mod_revision: node
                .metadata
                .resource_version
                .as_deref()
                .and_then(|rv| rv.parse().ok())
                .unwrap_or(0),
        })
    }
}

/// spec.podCIDRs (dual-stack), falling back to the older single spec.podCIDR.
pub fn pod_cidrs(node: &Node) -> Vec<IpNetwork> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    let listed = spec.pod_cidrs.iter().flatten();
    let raw: Vec<&String> = if spec.pod_cidrs.as_ref().is_some_and(|v| !v.is_empty()) {
        listed.collect()
    } else {
        spec.pod_cidr.iter().collect()
    };
    raw.into_iter().filter_map(|s| s.parse().ok()).collect()
}

/// The lease key a node's podCIDRs stand for (the v6 one only on a dual-stack network).
pub fn lease_key(node: &Node, want_v6: bool) -> LeaseKey {
    let cidrs = pod_cidrs(node);
    LeaseKey {
        v4: cidrs.iter().find(|c| c.is_ipv4()).copied(),
        v6: cidrs
            .iter()
            .find(|c| c.is_ipv6())
            .copied()
            .filter(|_| want_v6),
    }
}

/// Why this node's podCIDR can't be used (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodCidrError {
    #[error(
        "node {node} has no {family} spec.podCIDR yet. twill never allocates subnets in Kubernetes mode: \
         kube-controller-manager must run with --allocate-node-cidrs=true and --cluster-cidr={network} \
         (kubeadm: --pod-network-cidr={network}); until a podCIDR is assigned this node stays NotReady"
    )]
    NotAssigned {
        node: String,
        family: &'static str,
        network: IpNetwork,
    },
    #[error(
        "node {node} spec.podCIDR {pod_cidr} is outside net-conf.json Network={network}: the cluster CIDR \
         (kube-controller-manager --cluster-cidr, kubeadm --pod-network-cidr) must match Network"
    )]
    Outside {
        node: String,
        pod_cidr: IpNetwork,
        network: IpNetwork,
    },
}

/// This node's lease key: its podCIDR(s), each inside the configured Network.
pub fn own_subnet(node: &Node, conf: &NetConf) -> Result<LeaseKey, PodCidrError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let cidrs = pod_cidrs(node);
    let pick = |range: Option<&twill_config::SubnetRange>, v4: bool, family| {
        let Some(range) = range else {
            return Ok(None);
        };
        let Some(cidr) = cidrs.iter().find(|c| c.is_ipv4() == v4).copied() else {
            return Err(PodCidrError::NotAssigned {
                node: name.clone(),
                family,
                network: range.network,
            });
        };
        let inside =
            range.network.contains(cidr.network()) && cidr.prefix() >= range.network.prefix();
        if !inside {
            return Err(PodCidrError::Outside {
                node: name.clone(),
                pod_cidr: cidr,
                network: range.network,
            });
        }
        Ok(Some(cidr))
    };
    Ok(LeaseKey {
        v4: pick(conf.ipv4.as_ref(), true, "IPv4")?,
        v6: pick(conf.ipv6.as_ref(), false, "IPv6")?,
    })
}

/// Whether the node already has NetworkUnavailable=False set by us.
pub fn network_condition_set(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "NetworkUnavailable"
                && c.status == "False"
                && c.reason.as_deref() == Some(CONDITION_REASON)
        })
}

/// A strategic-merge patch for nodes/status: conditions merge by `type`, so this touches
/// only NetworkUnavailable.
pub fn network_condition_patch(now_rfc3339: &str) -> Value {
    json!({
        "status": {
            "conditions": [{
                "type": "NetworkUnavailable",
                "status": "False",
                "reason": CONDITION_REASON,
                "message": "twill is running on this node",
                "lastTransitionTime": now_rfc3339,
                "lastHeartbeatTime": now_rfc3339,
            }]
        }
    })
}

/// Turns the node watcher's per-node events into lease events. Kubernetes names objects,
/// leases are keyed by subnet: remembering which subnet each node stood for is what lets a
/// node that drops its annotations, or is deleted, become a lease deletion.
#[derive(Debug, Default)]
pub struct NodeLeases {
    keys: AnnotationKeys,
    want_v6: bool,
    by_node: HashMap<String, LeaseKey>,
}

/// The leases of a listing in progress (see `NodeLeases::listed`).
#[derive(Debug, Default)]
pub struct Listing {
    by_node: HashMap<String, LeaseKey>,
    leases: Vec<StoredLease>,
}

impl Default for AnnotationKeys {
    fn default() -> Self {
        AnnotationKeys::new(DEFAULT_PREFIX).expect("flannel's default prefix is valid")
    }
}

impl NodeLeases {
    pub fn new(keys: AnnotationKeys, want_v6: bool) -> Self {
        NodeLeases {
            keys,
            want_v6,
            by_node: HashMap::new(),
        }
    }

    /// A complete listing: replaces everything known.
    pub fn snapshot<'a>(&mut self, nodes: impl IntoIterator<Item = &'a Node>) -> WatchEvent {
        let mut listing = Listing::default();
        for n in nodes {
            self.listed(&mut listing, n);
        }
        self.listing_done(listing)
    }

    /// One node of a listing still arriving: only its lease is kept, so a re-list of
    /// thousands of nodes never holds them all at once.
    pub fn listed(&self, listing: &mut Listing, node: &Node) {
        if let Some(l) = self.keys.lease(node, self.want_v6) {
            listing.by_node.insert(node_name(node), l.key);
            listing.leases.push(l);
        }
    }

    /// The listing is complete: it replaces everything known.
    pub fn listing_done(&mut self, listing: Listing) -> WatchEvent {
        self.by_node = listing.by_node;
        WatchEvent::Snapshot(listing.leases)
    }

    pub fn apply(&mut self, node: &Node) -> Vec<WatchEvent> {
        let name = node_name(node);
        let lease = self.keys.lease(node, self.want_v6);
        let old = match &lease {
            Some(l) => self.by_node.insert(name, l.key),
            None => self.by_node.remove(&name),
        };
        let mut out = Vec::new();
        if let Some(old) = old {
            if lease.as_ref().is_none_or(|l| l.key != old) {
                out.push(WatchEvent::Delete(old));
            }
        }
        out.extend(lease.map(WatchEvent::Put));
        out
    }

    pub fn delete(&mut self, node: &Node) -> Vec<WatchEvent> {
        self.by_node
            .remove(&node_name(node))
            .map(WatchEvent::Delete)
            .into_iter()
            .collect()
    }
}

fn node_name(n: &Node) -> String {
    n.metadata.name.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests;
