//! The fake's side of HTTP: routing, RBAC, list/watch/patch of nodes in the real
//! server's shapes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{commit, Inner, Seen, BOOKMARK_EVERY, FLANNEL_USER};

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

pub(super) fn error(code: StatusCode, reason: &str, message: String) -> Response {
    respond(code, &status(code.as_u16(), reason, message))
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

pub(super) struct Tls {
    pub(super) acceptor: tokio_rustls::TlsAcceptor,
    pub(super) ca_pem: String,
}

impl Tls {
    pub(super) fn for_ip(ip: std::net::IpAddr) -> Tls {
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

pub(super) async fn serve_tls(
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

pub(super) async fn handle(inner: Arc<Inner>, req: Request) -> Response {
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
pub(super) fn access(method: &Method, parts: &[&str], query: &str) -> Option<(String, String)> {
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
pub(super) fn authorize(
    inner: &Inner,
    method: &Method,
    parts: &[&str],
    query: &str,
) -> Option<Response> {
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
pub(super) fn list_nodes(inner: &Inner, query: &str) -> Response {
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

pub(super) fn watch_nodes(inner: Arc<Inner>, query: &str) -> Response {
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

pub(super) fn patch_node(
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
pub(super) fn merge(target: &mut Value, patch: &Value, strategic: bool) {
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
