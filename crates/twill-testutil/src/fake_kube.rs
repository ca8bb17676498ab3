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
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};

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

fn status(code: u16, reason: &str, message: String) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

fn respond(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(code: StatusCode, reason: &str, message: String) -> Response {
    respond(code, &status(code.as_u16(), reason, message))
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    ca_pem: String,
}

impl Tls {
    fn for_ip(ip: std::net::IpAddr) -> Tls {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "twill fake API CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(vec![ip.to_string()])
            .expect("server params")
            .signed_by(&key, &issuer)
            .expect("server certificate");
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), ca_cert.der().clone()],
                tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server TLS config");
        Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            ca_pem: ca_cert.pem(),
        }
    }
}

async fn serve_tls(
    l: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            // A client that gives up mid-handshake is its own business.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                .await;
        });
    }
}

async fn handle(inner: Arc<Inner>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    inner.state.lock().unwrap().seen.push(Seen {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        authorization,
    });
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let Some(refused) = authorize(&inner, &method, &parts, &query) {
        return refused;
    }
    match (method, parts.as_slice()) {
        (Method::GET, ["api", "v1", "nodes"]) => {
            if query_param(&query, "watch") == Some("true") {
                watch_nodes(inner, &query)
            } else {
                list_nodes(&inner, &query)
            }
        }
        (Method::GET, ["api", "v1", "nodes", name]) => {
            match inner.state.lock().unwrap().nodes.get(*name) {
                Some(n) => respond(StatusCode::OK, n),
                None => error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("nodes \"{name}\" not found"),
                ),
            }
        }
        (Method::PATCH, ["api", "v1", "nodes", name, rest @ ..])
            if rest.is_empty() || rest == ["status"] =>
        {
            patch_node(&inner, name, !rest.is_empty(), &content_type, &body)
        }
        (Method::GET, ["api", "v1", "namespaces", ns, "configmaps", name]) => {
            let st = inner.state.lock().unwrap();
            match st.configmaps.get(&(ns.to_string(), name.to_string())) {
                Some(c) => respond(StatusCode::OK, c),
                None => error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("configmaps \"{name}\" not found"),
                ),
            }
        }
        (Method::GET, ["api", "v1", "namespaces", ns, "pods", name]) => {
            let st = inner.state.lock().unwrap();
            match st.pods.get(&(ns.to_string(), name.to_string())) {
                Some(p) => respond(StatusCode::OK, p),
                None => error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("pods \"{name}\" not found"),
                ),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the fake API server does not serve {path}"),
        ),
    }
}

/// The (resource, verb) an RBAC rule must grant for this request, as the real server
/// names them.
fn access(method: &Method, parts: &[&str], query: &str) -> Option<(String, String)> {
    let verb = |v: &str| v.to_string();
    match (method, parts) {
        (&Method::GET, ["api", "v1", "nodes"]) if query_param(query, "watch") == Some("true") => {
            Some(("nodes".into(), verb("watch")))
        }
        (&Method::GET, ["api", "v1", "nodes"]) => Some(("nodes".into(), verb("list"))),
        (&Method::GET, ["api", "v1", "nodes", _]) => Some(("nodes".into(), verb("get"))),
        (&Method::PATCH, ["api", "v1", "nodes", _]) => Some(("nodes".into(), verb("patch"))),
        (&Method::PATCH, ["api", "v1", "nodes", _, sub]) => {
            Some((format!("nodes/{sub}"), verb("patch")))
        }
        (&Method::GET, ["api", "v1", "namespaces", _, "pods", _]) => {
            Some(("pods".into(), verb("get")))
        }
        (&Method::GET, ["api", "v1", "namespaces", _, "configmaps", _]) => {
            Some(("configmaps".into(), verb("get")))
        }
        _ => None,
    }
}

/// 403 Forbidden, worded as the real server words it, when RBAC is enforced and the
/// request's (resource, verb) is not granted.
fn authorize(inner: &Inner, method: &Method, parts: &[&str], query: &str) -> Option<Response> {
    let mut st = inner.state.lock().unwrap();
    let rules = st.rbac.as_ref()?;
    let (resource, verb) = access(method, parts, query)?;
    if rules.iter().any(|(r, v)| *r == resource && *v == verb) {
        return None;
    }
    st.forbidden.push((resource.clone(), verb.clone()));
    let (kind, sub) = resource.split_once('/').unwrap_or((&resource, ""));
    let what = if sub.is_empty() {
        format!("resource \"{kind}\"")
    } else {
        format!("resource \"{kind}/{sub}\"")
    };
    let name = match parts {
        ["api", "v1", "nodes", n, ..] => format!("{kind} \"{n}\" is forbidden"),
        _ => format!("{kind} is forbidden"),
    };
    Some(error(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!("{name}: User \"{FLANNEL_USER}\" cannot {verb} {what} in API group \"\" at the cluster scope"),
    ))
}

/// A list, in pages when the client sends `limit` (kube-rs's watcher asks for 500), with
/// the real server's `continue` tokens. Unlike the real server, later pages are read from
/// the current state rather than from the first page's snapshot; every page carries the
/// first page's resourceVersion, which is what the client resumes watching from.
fn list_nodes(inner: &Inner, query: &str) -> Response {
    let st = inner.state.lock().unwrap();
    let limit = query_param(query, "limit")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let (rv, after) = match query_param(query, "continue").filter(|c| !c.is_empty()) {
        Some(token) => match token.split_once('.') {
            Some((rv, after)) => (rv.to_string(), Some(after.to_string())),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("invalid continue token {token:?}"),
                )
            }
        },
        None => (st.rv.to_string(), None),
    };
    let rest = st
        .nodes
        .iter()
        .filter(|(name, _)| after.as_ref().is_none_or(|a| name.as_str() > a.as_str()));
    let items: Vec<(&String, &Value)> = match limit {
        Some(l) => rest.take(l).collect(),
        None => rest.collect(),
    };
    let more = items.last().is_some_and(|(last, _)| {
        limit.is_some()
            && st
                .nodes
                .range::<String, _>((
                    std::ops::Bound::Excluded((*last).clone()),
                    std::ops::Bound::Unbounded,
                ))
                .next()
                .is_some()
    });
    let mut meta = json!({"resourceVersion": rv});
    if more {
        // "<rv>.<last name>": split at the first dot, as names may have more.
        meta["continue"] = json!(format!("{rv}.{}", items.last().expect("more").0));
    }
    let items: Vec<&Value> = items.into_iter().map(|(_, v)| v).collect();
    respond(
        StatusCode::OK,
        &json!({"kind": "NodeList", "apiVersion": "v1", "metadata": meta, "items": items}),
    )
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn watch_nodes(inner: Arc<Inner>, query: &str) -> Response {
    let from: Option<u64> = query_param(query, "resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .and_then(|v| v.parse().ok());
    let bookmarks = query_param(query, "allowWatchBookmarks") == Some("true");
    let timeout = query_param(query, "timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(290));
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let mut backlog = Vec::new();
    let mut gone = false;
    let (mut live, mut kill, last) = {
        let st = inner.state.lock().unwrap();
        if st.refuse_watches {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "watches refused by the test".into(),
            );
        }
        match from {
            Some(rv) if rv < st.compacted => {
                let expired = status(
                    410,
                    "Expired",
                    format!("too old resource version: {rv} ({})", st.compacted),
                );
                backlog.push(line("ERROR", &expired));
                gone = true;
            }
            Some(rv) => backlog.extend(
                st.history
                    .iter()
                    .filter(|e| e.rv > rv)
                    .map(|e| line(e.kind, &e.object)),
            ),
            // No version: the current state as ADDED, then changes.
            None => backlog.extend(st.nodes.values().map(|n| line("ADDED", n))),
        }
        (
            inner.events.subscribe(),
            inner.kill.subscribe(),
            from.unwrap_or(st.rv).max(st.rv),
        )
    };
    let state = inner.clone();
    tokio::spawn(async move {
        for b in backlog {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        if gone {
            return;
        }
        let mut seen = last;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        loop {
            let out = tokio::select! {
                _ = &mut deadline => return,
                _ = kill.changed() => return,
                ev = live.recv() => match ev {
                    Ok(ev) if ev.rv > seen => { seen = ev.rv; line(ev.kind, &ev.object) }
                    Ok(_) => continue,
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let rv = state.state.lock().unwrap().rv.max(seen);
                    line("BOOKMARK", &json!({"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}))
                }
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn patch_node(
    inner: &Inner,
    name: &str,
    status_sub: bool,
    content_type: &str,
    body: &[u8],
) -> Response {
    let strategic = match content_type.split(';').next().unwrap_or("").trim() {
        "application/strategic-merge-patch+json" => true,
        "application/merge-patch+json" => false,
        other => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("the fake API server does not take {other:?} patches"),
            )
        }
    };
    let patch: Value = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("patch body: {e}"),
            )
        }
    };
    let mut st = inner.state.lock().unwrap();
    let Some(old) = st.nodes.get(name).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("nodes \"{name}\" not found"),
        );
    };
    let mut new = old.clone();
    merge(&mut new, &patch, strategic);
    // Subresource discipline: each endpoint may change only its part.
    let keep = if status_sub { "spec" } else { "status" };
    match old.get(keep) {
        Some(v) => new[keep] = v.clone(),
        None => {
            new.as_object_mut().map(|o| o.remove(keep));
        }
    }
    if new != old {
        commit(inner, &mut st, name, new, "MODIFIED");
    }
    let now = st.nodes[name].clone();
    respond(StatusCode::OK, &now)
}

/// JSON merge patch (RFC 7386); with `strategic`, lists of conditions merge by "type"
/// as strategic merge patch does for them.
fn merge(target: &mut Value, patch: &Value, strategic: bool) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else if strategic && k == "conditions" && v.is_array() {
            let list = t.entry(k.clone()).or_insert_with(|| json!([]));
            if !list.is_array() {
                *list = json!([]);
            }
            let list = list.as_array_mut().unwrap();
            for item in v.as_array().unwrap() {
                match list.iter_mut().find(|c| c.get("type") == item.get("type")) {
                    Some(existing) => merge(existing, item, true),
                    None => list.push(item.clone()),
                }
            }
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v, strategic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_keys_conditions_by_type() {
        let mut n = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"}
        ]}});
        merge(
            &mut n,
            &json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"}]}}),
            true,
        );
        let c = n["status"]["conditions"].as_array().unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1]["status"], "False");
        assert_eq!(c[1]["reason"], "NoRouteCreated");
        // A plain merge patch replaces the list.
        merge(
            &mut n,
            &json!({"status": {"conditions": [{"type": "X"}]}}),
            false,
        );
        assert_eq!(n["status"]["conditions"].as_array().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn flannels_role_forbids_patching_the_node_but_not_its_status() {
        let fake = FakeKube::start_local();
        fake.put_node("n1", json!({"metadata": {}}));
        fake.enforce_rbac(FLANNEL_CLUSTER_ROLE);
        let req = |method: Method, path: &str, query: &str| {
            let parts: Vec<String> = path
                .trim_matches('/')
                .split('/')
                .map(String::from)
                .collect();
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            authorize(&fake.inner, &method, &parts, query).map(|r| r.status())
        };
        assert_eq!(
            req(Method::PATCH, "/api/v1/nodes/n1", ""),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(req(Method::PATCH, "/api/v1/nodes/n1/status", ""), None);
        assert_eq!(req(Method::GET, "/api/v1/nodes", "watch=true"), None);
        assert_eq!(req(Method::GET, "/api/v1/nodes", ""), None);
        assert_eq!(
            req(Method::GET, "/api/v1/namespaces/kube-flannel/pods/p", ""),
            None
        );
        assert_eq!(
            fake.forbidden(),
            [("nodes".to_string(), "patch".to_string())]
        );
        fake.enforce_rbac(&[("nodes", "get")]);
        assert_eq!(
            req(Method::GET, "/api/v1/nodes", "watch=true"),
            Some(StatusCode::FORBIDDEN)
        );
    }

    #[tokio::test]
    async fn lists_in_pages_with_continue_tokens() {
        let fake = FakeKube::start_local();
        for name in ["a", "b.example", "c", "d", "e"] {
            fake.put_node(name, json!({"metadata": {}}));
        }
        let page = |q: String| {
            let inner = fake.inner.clone();
            async move {
                let body = axum::body::to_bytes(list_nodes(&inner, &q).into_body(), usize::MAX)
                    .await
                    .unwrap();
                serde_json::from_slice::<Value>(&body).unwrap()
            }
        };
        let mut names = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let p = page(format!("limit=2&continue={token}")).await;
            pages += 1;
            assert_eq!(
                p["metadata"]["resourceVersion"], "5",
                "every page: the first's RV"
            );
            names.extend(
                p["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n["metadata"]["name"].as_str().unwrap().to_string()),
            );
            match p["metadata"]["continue"].as_str() {
                Some(t) => token = t.to_string(),
                None => break,
            }
        }
        assert_eq!(names, ["a", "b.example", "c", "d", "e"]);
        assert_eq!(pages, 3);
        // A change between pages leaves the token's RV alone.
        fake.put_node("f", json!({"metadata": {}}));
        let p = page(format!("limit=10&continue={token}")).await;
        assert_eq!(p["metadata"]["resourceVersion"], "5");
        // No limit: one page, the current RV, no token.
        let all = page(String::new()).await;
        assert_eq!(all["items"].as_array().unwrap().len(), 6);
        assert_eq!(all["metadata"]["resourceVersion"], "6");
        assert!(all["metadata"].get("continue").is_none());
    }

    #[test]
    fn merge_patch_null_removes() {
        let mut n = json!({"metadata": {"annotations": {"a": "1", "b": "2"}}});
        merge(
            &mut n,
            &json!({"metadata": {"annotations": {"a": null, "c": "3"}}}),
            false,
        );
        assert_eq!(
            n,
            json!({"metadata": {"annotations": {"b": "2", "c": "3"}}})
        );
    }
}
