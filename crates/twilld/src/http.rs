//! /healthz and /readyz on --healthz-ip:--healthz-port (0.0.0.0 by default, as flanneld,
//! whose DaemonSet probes the node IP), /metrics on --metrics-ip:--metrics-port (127.0.0.1
//! by default: the node's metrics aren't published to the network unasked).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::telemetry::Telemetry;

async fn healthz(State(t): State<Arc<Telemetry>>) -> impl IntoResponse {
    match t.alive() {
        Ok(()) => (StatusCode::OK, "twilld is running\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn readyz(State(t): State<Arc<Telemetry>>) -> impl IntoResponse {
    let missing = t.not_ready();
    match missing {
        None => (StatusCode::OK, "twilld is ready\n".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(t): State<Arc<Telemetry>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        t.encode(),
    )
}

/// `twilld status`'s document: the main loop's part and the probes', with readiness,
/// rules and BGP as the daemon last saw them.
async fn status(State(t): State<Arc<Telemetry>>) -> impl IntoResponse {
    let st = crate::status::Status {
        node: t.status.lock().expect("not poisoned").clone(),
        not_ready: t.not_ready(),
        rules_in_place: t.ready.lock().expect("not poisoned").rules,
        bgp: t
            .bgp_sessions
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(peer, up)| crate::status::BgpSession {
                peer: peer.clone(),
                established: *up,
            })
            .collect(),
        probes: t.probes.lock().expect("not poisoned").snapshot(),
    };
    axum::Json(st)
}

/// The control socket (`twilld status`, `doctor`): root's only, as the node's own state
/// is. A socket left by an earlier run is replaced.
pub async fn serve_control(
    path: &std::path::Path,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let app = Router::new()
        .route("/status", get(status))
        .with_state(telemetry);
    let owned = path.to_path_buf();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        let _ = std::fs::remove_file(owned);
    });
    Ok(())
}

/// What one listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paths {
    pub health: bool,
    pub metrics: bool,
}

/// The listeners for the health and metrics addresses (`None`: that one is off); one
/// listener when both are the same address.
pub fn listeners(
    health: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
) -> Vec<(SocketAddr, Paths)> {
    match (health, metrics) {
        (Some(h), Some(m)) if h == m => vec![(
            h,
            Paths {
                health: true,
                metrics: true,
            },
        )],
        (h, m) => h
            .map(|a| {
                (
                    a,
                    Paths {
                        health: true,
                        metrics: false,
                    },
                )
            })
            .into_iter()
            .chain(m.map(|a| {
                (
                    a,
                    Paths {
                        health: false,
                        metrics: true,
                    },
                )
            }))
            .collect(),
    }
}

/// Binds now (so a busy port fails start-up loudly) and serves until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    paths: Paths,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut app = Router::new();
    if paths.health {
        app = app
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz));
    }
    if paths.metrics {
        app = app.route("/metrics", get(metrics));
    }
    let app = app.with_state(telemetry);
    let flags = match (paths.health, paths.metrics) {
        (true, false) => "--healthz-ip/--healthz-port",
        (false, true) => "--metrics-ip/--metrics-port",
        _ => "--healthz-ip/--healthz-port (= --metrics-ip/--metrics-port)",
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{flags} {addr}: {e}"))?;
    tracing::info!(%addr, health = paths.health, metrics = paths.metrics, "serving HTTP");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_listener_only_for_one_address() {
        let h: SocketAddr = "0.0.0.0:8081".parse().unwrap();
        let m: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let both = Paths {
            health: true,
            metrics: true,
        };
        assert_eq!(listeners(Some(h), Some(h)), vec![(h, both)]);
        let l = listeners(Some(h), Some(m));
        assert_eq!(l.len(), 2);
        assert!(l[0].1.health && !l[0].1.metrics && l[1].1.metrics && !l[1].1.health);
        assert_eq!(
            listeners(None, Some(m)),
            vec![(
                m,
                Paths {
                    health: false,
                    metrics: true
                }
            )]
        );
        assert!(listeners(None, None).is_empty());
    }
}
