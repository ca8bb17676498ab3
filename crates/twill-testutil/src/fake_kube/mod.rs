//! A FAKE Kubernetes API server, for tests only: no kube-apiserver can be installed on
//! the machines these tests run on. It serves just what twilld uses, with the request and
//! response shapes of the real one, so the real kube client talks to it over HTTP:
//!
//! - `GET /api/v1/nodes` (list, with the list's resourceVersion),
//! - `GET /api/v1/nodes?watch=true&resourceVersion=N[&allowWatchBookmarks=true]`: events
//!   after N as JSON lines, BOOKMARKs, an `ERROR` event with a 410 Status when N was
//!   compacted away,
//! - `GET /api/v1/nodes/{name}`, `GET /api/v1/namespaces/{ns}/pods/{name}`,
//!   `GET /api/v1/namespaces/{ns}/configmaps/{name}`,
//! - `PATCH /api/v1/nodes/{name}[/status]` with strategic-merge (conditions merge by type)
//!   or JSON merge patches; the main resource ignores status and the status subresource
//!   ignores spec, as the real server does; a patch that changes nothing bumps nothing.
//!
//! With [`FakeKube::enforce_rbac`] it answers 403 Forbidden, in the real server's words,
//! to every request the given role does not allow ([`FLANNEL_CLUSTER_ROLE`]: flannel's).
//!
//! Tests drive it directly (add, change, delete nodes; compact history; break or refuse
//! watches) and read back the request log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::Request;

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

/// The rules of flannel's ClusterRole "flannel" (Documentation/kube-flannel.yml), as
/// (resource, verb).
pub const FLANNEL_CLUSTER_ROLE: &[(&str, &str)] = &[
    ("pods", "get"),
    ("nodes", "get"),
    ("nodes", "list"),
    ("nodes", "watch"),
    ("nodes/status", "patch"),
];

/// The service account flannel's manifest runs as, for the 403 message.
const FLANNEL_USER: &str = "system:serviceaccount:kube-flannel:flannel";

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    /// The Authorization header as sent (a pod's service account token: `Bearer ...`).
    pub authorization: String,
}

#[derive(Clone)]
struct Ev {
    rv: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    nodes: BTreeMap<String, Value>,
    pods: BTreeMap<(String, String), Value>,
    configmaps: BTreeMap<(String, String), Value>,
    history: Vec<Ev>,
    /// Watches from before this resourceVersion get 410 Gone.
    compacted: u64,
    refuse_watches: bool,
    seen: Vec<Seen>,
    /// (resource, verb) pairs allowed; `None` allows everything.
    rbac: Option<Vec<(String, String)>>,
    forbidden: Vec<(String, String)>,
}

struct Inner {
    state: Mutex<State>,
    events: broadcast::Sender<Ev>,
    kill: watch::Sender<u64>,
}

pub struct FakeKube {
    inner: Arc<Inner>,
    addr: SocketAddr,
    ca_pem: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeKube {
    /// Serves on 127.0.0.1 with a free port.
    pub fn start_local() -> FakeKube {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        FakeKube::start(l)
    }

    /// Serves on `listener`, which may have been bound inside a network namespace: the
    /// socket stays there, whichever thread serves it.
    pub fn start(listener: std::net::TcpListener) -> FakeKube {
        FakeKube::serve(listener, None)
    }

    /// Serves HTTPS on `listener`, as the real API server does to pods: with a certificate
    /// for the listener's IP address, issued by a CA made for this fake alone
    /// ([`FakeKube::ca_pem`], a pod's `serviceaccount/ca.crt`).
    pub fn start_tls(listener: std::net::TcpListener) -> FakeKube {
        let ip = listener.local_addr().expect("local addr").ip();
        FakeKube::serve(listener, Some(Tls::for_ip(ip)))
    }

    fn serve(listener: std::net::TcpListener, tls: Option<Tls>) -> FakeKube {
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            events,
            kill: watch::channel(0).0,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = inner.clone();
        let ca_pem = tls.as_ref().map(|t| t.ca_pem.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let app = axum::Router::new().fallback(move |req: Request| {
                    let inner = served.clone();
                    async move { handle(inner, req).await }
                });
                match tls {
                    None => tokio::select! {
                        r = axum::serve(l, app) => r.expect("fake API server"),
                        _ = stopped => {}
                    },
                    Some(tls) => tokio::select! {
                        _ = serve_tls(l, tls.acceptor, app) => {}
                        _ = stopped => {}
                    },
                }
            });
        });
        FakeKube {
            inner,
            addr,
            ca_pem,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The CA certificate (PEM) a TLS fake's certificate chains to.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap()
    }

    /// Creates or replaces a node (ADDED or MODIFIED).
    pub fn put_node(&self, name: &str, mut node: Value) {
        node["apiVersion"] = json!("v1");
        node["kind"] = json!("Node");
        node["metadata"]["name"] = json!(name);
        node["metadata"]["uid"] = json!(format!("uid-{name}"));
        let mut st = self.state();
        let kind = if st.nodes.contains_key(name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        commit(&self.inner, &mut st, name, node, kind);
    }

    /// A fresh node as the kubelet registers it, with a podCIDR or not.
    pub fn add_node(&self, name: &str, pod_cidr: Option<&str>) {
        let spec = match pod_cidr {
            Some(c) => json!({"podCIDR": c, "podCIDRs": [c]}),
            None => json!({}),
        };
        self.put_node(name, json!({"metadata": {"labels": {"kubernetes.io/os": "linux"}}, "spec": spec, "status": {}}));
    }

    /// A node as flanneld (or twilld) publishes it under the default annotation prefix:
    /// a vxlan peer at `public_ip` with VTEP `mac`.
    pub fn put_flannel_node(&self, name: &str, pod_cidr: &str, public_ip: &str, mac: &str) {
        const P: &str = "flannel.alpha.coreos.com";
        self.put_node(
            name,
            json!({
                "metadata": {"annotations": {
                    format!("{P}/backend-type"): "vxlan",
                    format!("{P}/backend-data"): format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}"),
                    format!("{P}/public-ip"): public_ip,
                    format!("{P}/kube-subnet-manager"): "true",
                }},
                "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
            }),
        );
    }

    /// Changes a node in place (MODIFIED); false when there is no such node.
    pub fn update_node(&self, name: &str, f: impl FnOnce(&mut Value)) -> bool {
        let mut st = self.state();
        let Some(mut node) = st.nodes.get(name).cloned() else {
            return false;
        };
        f(&mut node);
        commit(&self.inner, &mut st, name, node, "MODIFIED");
        true
    }

    /// What the controller manager does with --allocate-node-cidrs.
    pub fn set_pod_cidr(&self, name: &str, cidr: &str) -> bool {
        self.update_node(name, |n| {
            n["spec"]["podCIDR"] = json!(cidr);
            n["spec"]["podCIDRs"] = json!([cidr]);
        })
    }

    pub fn delete_node(&self, name: &str) -> bool {
        let mut st = self.state();
        let Some(mut node) = st.nodes.remove(name) else {
            return false;
        };
        st.rv += 1;
        let rv = st.rv;
        node["metadata"]["resourceVersion"] = json!(rv.to_string());
        let ev = Ev {
            rv,
            kind: "DELETED",
            object: node,
        };
        st.history.push(ev.clone());
        let _ = self.inner.events.send(ev);
        true
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.state().nodes.get(name).cloned()
    }

    pub fn add_pod(&self, namespace: &str, name: &str, node_name: &str) {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
            "spec": {"nodeName": node_name, "containers": [{"name": "twilld", "image": "twill"}]}
        });
        self.state()
            .pods
            .insert((namespace.into(), name.into()), pod);
    }

    /// A ConfigMap with `data` (e.g. kube-system/kubeadm-config).
    pub fn put_configmap(&self, namespace: &str, name: &str, data: Value) {
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
            "data": data
        });
        self.state()
            .configmaps
            .insert((namespace.into(), name.into()), cm);
    }

    /// Forgets history, like etcd compaction: a watch resuming from before now gets 410.
    pub fn compact(&self) {
        let mut st = self.state();
        st.compacted = st.rv;
        st.history.clear();
    }

    /// Ends every open watch (clients see the stream close and re-watch).
    pub fn break_watches(&self) {
        self.inner.kill.send_modify(|g| *g += 1);
    }

    /// While set, new watch requests get 503.
    pub fn refuse_watches(&self, refuse: bool) {
        self.state().refuse_watches = refuse;
    }

    /// From now on, answer 403 to what `rules` (resource, verb) does not allow.
    pub fn enforce_rbac(&self, rules: &[(&str, &str)]) {
        self.state().rbac = Some(
            rules
                .iter()
                .map(|(r, v)| (r.to_string(), v.to_string()))
                .collect(),
        );
    }

    /// The (resource, verb) of every request refused with 403.
    pub fn forbidden(&self) -> Vec<(String, String)> {
        self.state().forbidden.clone()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state().seen.clone()
    }

    /// PATCH requests to `path` (e.g. "/api/v1/nodes/n1/status").
    pub fn patches_to(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|s| s.method == "PATCH" && s.path == path)
            .count()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.break_watches();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn commit(inner: &Inner, st: &mut State, name: &str, mut node: Value, kind: &'static str) {
    st.rv += 1;
    let rv = st.rv;
    node["metadata"]["resourceVersion"] = json!(rv.to_string());
    if node["metadata"].get("creationTimestamp").is_none() {
        node["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    st.nodes.insert(name.to_string(), node.clone());
    let ev = Ev {
        rv,
        kind,
        object: node,
    };
    st.history.push(ev.clone());
    let _ = inner.events.send(ev);
}

mod http;
#[cfg(test)]
mod tests;

use http::{handle, serve_tls, Tls};
