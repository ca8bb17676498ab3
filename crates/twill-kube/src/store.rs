//! The Kubernetes API side: connect, find our node, publish our lease as annotations,
//! and watch every node. Decisions live in `annotations`; this file only talks to the API.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use twill_store::{
    AcquireRequest, BoxError, Expiry, HeldLease, PlanSource, RenewOutcome, StoreError,
    SubnetManager, WatchEvent,
};

use crate::annotations::{
    network_condition_patch, network_condition_set, own_subnet, pod_cidrs, AnnotationKeys, Listing,
    NodeLeases, PodCidrError,
};
use crate::clients::{rewatching, Clients};
use crate::network::{covering, kubeadm_pod_subnets, Detected};
use crate::peer_node::PeerNode;

/// The one namespaced read, (namespace, resource, name, verb): kubeadm's record of the pod
/// network, for a net-conf.json without `Network`. Granted by a Role in kube-system limited
/// to that name; under flannel's RBAC it is refused and the nodes' podCIDRs are used.
pub const KUBEADM_CONFIG_ACCESS: (&str, &str, &str, &str) =
    ("kube-system", "configmaps", "kubeadm-config", "get");

/// Every API call twill makes, as (resource, verb): exactly what flannel's ClusterRole
/// grants, so twilld runs under flannel's RBAC. The ClusterRole in
/// manifests/kube-twill.yml must grant exactly these; a test holds the two together.
pub const API_ACCESS: &[(&str, &str)] = &[
    ("nodes", "get"),
    ("nodes", "list"),
    ("nodes", "watch"),
    ("nodes/status", "patch"),
    ("pods", "get"),
];

/// The field manager our patches are recorded under (server-side field ownership).
const FIELD_MANAGER: &str = "twilld";

#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// `--kube-api-url`: overrides the server of the kubeconfig, or is the whole config.
    pub api_url: Option<String>,
    /// `--kubeconfig-file`; neither this nor `api_url` means in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-annotation-prefix`.
    pub annotation_prefix: String,
    /// NODE_NAME.
    pub node_name: Option<String>,
    /// POD_NAMESPACE and POD_NAME, to find the node from our own pod.
    pub pod: Option<(String, String)>,
    /// `--set-node-network-unavailable`.
    pub set_network_unavailable: bool,
    /// Whether the network is dual-stack (the v6 podCIDR is part of each lease).
    pub ipv6: bool,
}

#[derive(Clone)]
pub struct KubeStore {
    clients: Clients,
    /// What the client was made from, to make another (`reconnect`).
    opts: Arc<KubeOptions>,
    /// The API server's `host:port`, as the client was told it.
    server: Option<String>,
    node_name: String,
    keys: AnnotationKeys,
    set_network_unavailable: bool,
    ipv6: bool,
    errors: Arc<AtomicU64>,
}

fn api_err(what: &str, e: kube::Error) -> StoreError {
    StoreError::Backend {
        store: "kubernetes",
        op: Some(what.to_string()),
        source: Box::new(e),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

async fn client_config(opts: &KubeOptions) -> Result<Config, StoreError> {
    let url = match &opts.api_url {
        Some(u) => Some(u.parse::<http::Uri>().map_err(|e| StoreError::Invalid {
            setting: format!("--kube-api-url={u}"),
            source: Box::new(e),
        })?),
        None => None,
    };
    let mut cfg = match (&opts.kubeconfig, &url) {
        (Some(path), _) => {
            let bad = |e: BoxError| StoreError::Invalid {
                setting: format!("--kubeconfig-file={}", path.display()),
                source: e,
            };
            let kc = Kubeconfig::read_from(path).map_err(|e| bad(Box::new(e)))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(Box::new(e)))?
        }
        (None, Some(u)) => Config::new(u.clone()),
        (None, None) => Config::incluster().map_err(|e| StoreError::Invalid {
            setting: "--kube-subnet-mgr".into(),
            source: format!("not running in a pod ({e}); give --kubeconfig-file or --kube-api-url")
                .into(),
        })?,
    };
    if let Some(u) = url {
        cfg.cluster_url = u;
    }
    Ok(cfg)
}

/// A client for `opts`' API server, for reads that are about no node (`twilld policy
/// explain`).
pub async fn connect_client(opts: &KubeOptions) -> Result<Client, StoreError> {
    Ok(connect_to_server(opts).await?.0)
}

/// A client, and the API server's `host:port` it connects to (see
/// `twill_store::server_of`).
async fn connect_to_server(opts: &KubeOptions) -> Result<(Client, Option<String>), StoreError> {
    let cfg = client_config(opts).await?;
    let server = twill_store::server_of(&cfg.cluster_url.to_string(), 443);
    let client = Client::try_from(cfg).map_err(|e| StoreError::Invalid {
        setting: "kubernetes client".into(),
        source: Box::new(e),
    })?;
    Ok((client, server))
}

impl KubeStore {
    /// Connects and resolves which node we are. Fails without retrying only on bad
    /// flags or environment; an unreachable API is retried by the caller.
    pub async fn connect(opts: &KubeOptions) -> Result<Self, StoreError> {
        let (client, server) = connect_to_server(opts).await?;
        let node_name = match (&opts.node_name, &opts.pod) {
            (Some(n), _) if !n.is_empty() => n.clone(),
            (_, Some((ns, pod))) => {
                let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
                let p = pods
                    .get(pod)
                    .await
                    .map_err(|e| api_err(&format!("get pod {ns}/{pod}"), e))?;
                p.spec
                    .and_then(|s| s.node_name)
                    .ok_or_else(|| StoreError::Backend {
                        store: "kubernetes",
                        op: Some(format!("pod {ns}/{pod}")),
                        source: "no spec.nodeName yet".into(),
                    })?
            }
            _ => {
                return Err(StoreError::Invalid {
                    setting: "--kube-subnet-mgr".into(),
                    source: "NODE_NAME is not set, nor POD_NAME and POD_NAMESPACE; \
                     set NODE_NAME from the downward API (fieldRef: spec.nodeName)"
                        .into(),
                })
            }
        };
        Ok(KubeStore {
            clients: Clients::new(client),
            opts: Arc::new(opts.clone()),
            server,
            node_name,
            keys: AnnotationKeys::new(&opts.annotation_prefix).map_err(|e| {
                StoreError::Invalid {
                    setting: "--kube-annotation-prefix".into(),
                    source: Box::new(e),
                }
            })?,
            set_network_unavailable: opts.set_network_unavailable,
            ipv6: opts.ipv6,
            errors: Default::default(),
        })
    }

    /// Connects as an observer of every node's lease, being no node itself (the ExaBGP
    /// feed): no node name is resolved, and nothing is ever written.
    pub async fn connect_observer(opts: &KubeOptions) -> Result<Self, StoreError> {
        let opts = KubeOptions {
            node_name: Some("(observer)".into()),
            pod: None,
            ..opts.clone()
        };
        let mut s = KubeStore::connect(&opts).await?;
        s.node_name = String::new();
        Ok(s)
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The client as it is now, for one-off reads of the same API.
    pub fn client(&self) -> Client {
        self.clients.current()
    }

    /// The client as it is now and as `reconnect` replaces it, for the other watches of
    /// the same API (`PolicyFeed`).
    pub fn clients(&self) -> Clients {
        self.clients.clone()
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.clients.current())
    }

    /// kube-system's ConfigMaps: only kubeadm-config is read (Network detection).
    fn kube_system(&self) -> Api<ConfigMap> {
        Api::namespaced(self.clients.current(), "kube-system")
    }

    /// Our Node object.
    pub async fn node(&self) -> Result<Node, StoreError> {
        match self.nodes().get(&self.node_name).await {
            Ok(n) => Ok(n),
            Err(e) if is_not_found(&e) => Err(StoreError::Waiting(
                format!(
                    "node {} is not registered with the API server yet (is NODE_NAME the kubelet's node name?)",
                    self.node_name
                )
                .into(),
            )),
            Err(e) => Err(api_err(&format!("get node {}", self.node_name), e)),
        }
    }

    /// `node-public-ip` on our node: an operator's `--public-ip`.
    pub async fn node_public_ip(&self) -> Result<Option<Ipv4Addr>, StoreError> {
        Ok(self.public_ip_of(&self.node().await?))
    }

    /// `node-public-ip` on a node object already read.
    pub fn public_ip_of(&self, node: &Node) -> Option<Ipv4Addr> {
        self.keys.node_public_ip(node)
    }

    /// `node-public-ipv6` on a node object already read.
    pub fn public_ipv6_of(&self, node: &Node) -> Option<std::net::Ipv6Addr> {
        self.keys.node_public_ipv6(node)
    }

    /// Every write goes through the `status` subresource, annotations included, as
    /// flanneld's do: flannel's ClusterRole grants `nodes/status: patch` and not
    /// `nodes: patch`, and the status endpoint keeps metadata changes.
    async fn patch(&self, body: serde_json::Value) -> Result<Node, StoreError> {
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        self.nodes()
            .patch_status(&self.node_name, &pp, &Patch::Strategic(&body))
            .await
            .map_err(|e| api_err(&format!("patch node {} status", self.node_name), e))
    }

    /// Brings our node's annotations (and condition) to what `held` says, writing only
    /// what differs.
    async fn publish(
        &self,
        node: &Node,
        attrs: &twill_store::LeaseAttrs,
    ) -> Result<(), StoreError> {
        let desired = self.keys.publish(attrs);
        if let Some(p) = self.keys.patch(node, &desired) {
            self.patch(p).await?;
            info!(node = %self.node_name, "node annotations written");
        }
        if self.set_network_unavailable && !network_condition_set(node) {
            let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
            self.patch(network_condition_patch(&now)).await?;
            info!(node = %self.node_name, "node condition NetworkUnavailable=False");
        }
        Ok(())
    }

    /// The cluster's pod network(s), for a net-conf.json that names none: kubeadm's
    /// `podSubnet` when the ConfigMap is there and readable, else the smallest prefix
    /// covering every node's podCIDRs.
    pub async fn detect_pod_networks(&self) -> Result<(Vec<IpNetwork>, Detected), StoreError> {
        let (_, _, name, _) = KUBEADM_CONFIG_ACCESS;
        match self.kube_system().get_opt(name).await {
            Ok(Some(cm)) => {
                let nets = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get("ClusterConfiguration"))
                    .map(|cc| kubeadm_pod_subnets(cc))
                    .unwrap_or_default();
                if !nets.is_empty() {
                    return Ok((nets, Detected::KubeadmConfig));
                }
            }
            Ok(None) => {}
            // Forbidden (flannel's RBAC), or anything else: the nodes still tell.
            Err(e) => debug!("reading kube-system/{name}: {e}; using the nodes' podCIDRs"),
        }
        let nodes = self
            .nodes()
            .list(&Default::default())
            .await
            .map_err(|e| api_err("list nodes", e))?;
        let cidrs: Vec<IpNetwork> = nodes.items.iter().flat_map(pod_cidrs).collect();
        let nets: Vec<IpNetwork> = [true, false]
            .into_iter()
            .filter_map(|v4| covering(&cidrs, v4))
            .collect();
        if nets.is_empty() {
            return Err(StoreError::Waiting(
                "net-conf.json has no Network, there is no kubeadm-config ConfigMap, and no node has a podCIDR yet: set Network, or run kube-controller-manager with --allocate-node-cidrs=true --cluster-cidr=<Network>".into(),
            ));
        }
        Ok((nets, Detected::NodePodCidrs))
    }

    /// Every node's lease, listed once (diagnostics).
    pub async fn list_leases(&self) -> Result<Vec<twill_store::StoredLease>, StoreError> {
        // The same objects, decoded to the part peers need (see `PeerNode`).
        let nodes = Api::<PeerNode>::all(self.clients.current())
            .list(&Default::default())
            .await
            .map_err(|e| api_err("list nodes", e))?;
        let nodes: Vec<Node> = nodes.items.into_iter().map(Node::from).collect();
        let WatchEvent::Snapshot(leases) =
            NodeLeases::new(self.keys.clone(), self.ipv6).snapshot(&nodes)
        else {
            unreachable!("a snapshot is a snapshot")
        };
        Ok(leases)
    }

    /// Whether our node carries any annotation of ours (what `release` would remove).
    pub async fn published(&self) -> Result<bool, StoreError> {
        let node = self.node().await?;
        Ok(self.keys.patch(&node, &self.removal()).is_some())
    }

    fn removal(&self) -> std::collections::BTreeMap<String, Option<String>> {
        let mut all = self.keys.publish(&twill_store::LeaseAttrs::vxlan(
            Ipv4Addr::UNSPECIFIED,
            0,
            "",
        ));
        all.values_mut().for_each(|v| *v = None);
        all
    }

    /// Uninstall: removes our annotations so other nodes drop this one as a peer.
    pub async fn release(&self) -> Result<&'static str, StoreError> {
        let node = self.node().await?;
        match self.keys.patch(&node, &self.removal()) {
            Some(p) => {
                self.patch(p).await?;
                Ok("annotations removed")
            }
            None => Ok("no annotations of ours"),
        }
    }

    /// Our lease as published, with the podCIDR checked against the config.
    fn held(&self, node: &Node, req: &AcquireRequest) -> Result<HeldLease, StoreError> {
        let key = own_subnet(node, &req.conf).map_err(|e| match e {
            PodCidrError::NotAssigned { .. } => StoreError::Waiting(Box::new(e)),
            PodCidrError::Outside { .. } => StoreError::Invalid {
                setting: "spec.podCIDR".into(),
                source: Box::new(e),
            },
        })?;
        let mut attrs = req.attrs.clone();
        // Each family's overwrite only for a family the lease has (IPv6-only: no PublicIP).
        if let Some(ip) = self
            .keys
            .public_ip_overwrite(node)
            .filter(|_| !attrs.public_ip.is_unspecified())
        {
            attrs.public_ip = ip;
        }
        if let Some(ip) = self
            .keys
            .public_ipv6_overwrite(node)
            .filter(|_| attrs.public_ipv6.is_some())
        {
            attrs.public_ipv6 = Some(ip);
        }
        Ok(HeldLease {
            key,
            attrs,
            expiry: Expiry::Never,
            source: PlanSource::Assigned,
        })
    }
}

impl SubnetManager for KubeStore {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    async fn advertised_macs(
        &self,
        _node_ip: std::net::IpAddr,
    ) -> (Option<String>, Option<String>) {
        match self.node().await {
            Ok(node) => (
                self.keys.vtep_mac(&node, "backend-data"),
                self.keys.vtep_mac(&node, "backend-v6-data"),
            ),
            Err(_) => (None, None),
        }
    }

    async fn acquire(&self, req: &AcquireRequest) -> Result<HeldLease, StoreError> {
        let node = self.node().await?;
        let held = self.held(&node, req)?;
        self.publish(&node, &held.attrs).await?;
        Ok(held)
    }

    /// Our lease is our node's podCIDR: new attributes are new annotations on the node.
    async fn republish(
        &self,
        held: &HeldLease,
        attrs: &twill_store::LeaseAttrs,
    ) -> Result<Option<HeldLease>, StoreError> {
        let node = self.node().await?;
        if crate::annotations::lease_key(&node, self.ipv6) != held.key {
            return Ok(None);
        }
        self.publish(&node, attrs).await?;
        Ok(Some(HeldLease {
            attrs: attrs.clone(),
            ..held.clone()
        }))
    }

    fn servers(&self) -> Vec<String> {
        self.server.iter().cloned().collect()
    }

    /// A new client in place of the one every copy of the store shares; the node watch
    /// (and the policy watches) start over on it from a fresh listing.
    async fn reconnect(&mut self) -> Result<(), StoreError> {
        let client = connect_client(&self.opts).await?;
        self.clients.replace(client);
        info!(
            "connected to the API server anew from the node's new address; its watches list again"
        );
        Ok(())
    }

    /// Nothing expires in Kubernetes; a renewal re-asserts our annotations (someone may
    /// have edited them) and notices a podCIDR change.
    async fn renew(&self, held: &HeldLease) -> Result<RenewOutcome, StoreError> {
        let node = self.node().await?;
        if crate::annotations::lease_key(&node, self.ipv6) != held.key {
            return Ok(RenewOutcome::Lost);
        }
        self.publish(&node, &held.attrs).await?;
        Ok(RenewOutcome::Renewed(Expiry::Never))
    }

    /// kube-rs's watcher lists, watches with bookmarks, resumes from the last
    /// resourceVersion after a break and re-lists after 410 Gone; each (re)list becomes a
    /// snapshot the peer table diffs, so a node deleted during a gap is removed.
    async fn watch(&self, tx: mpsc::Sender<Vec<WatchEvent>>, cancel: CancellationToken) {
        let mut leases = NodeLeases::new(self.keys.clone(), self.ipv6);
        let stream = rewatching(
            &self.clients,
            Api::<PeerNode>::all,
            watcher::Config::default().page_size(100),
        );
        futures::pin_mut!(stream);
        let mut listing: Option<Listing> = None;
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = stream.next() => ev,
            };
            let out = match ev {
                None => return,
                Some(Err(e)) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    warn!("node watch: {e}; the watcher retries (re-listing if it fell behind)");
                    continue;
                }
                Some(Ok(Event::Init)) => {
                    listing = Some(Listing::default());
                    continue;
                }
                Some(Ok(Event::InitApply(n))) => {
                    leases.listed(listing.get_or_insert_with(Listing::default), &n.into());
                    continue;
                }
                Some(Ok(Event::InitDone)) => {
                    vec![leases.listing_done(listing.take().unwrap_or_default())]
                }
                Some(Ok(Event::Apply(n))) => leases.apply(&n.into()),
                Some(Ok(Event::Delete(n))) => leases.delete(&n.into()),
            };
            if !out.is_empty() && tx.send(out).await.is_err() {
                return;
            }
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}
