//! /healthz, /readyz and /metrics on --healthz-ip:--healthz-port (127.0.0.1 by default:
//! unlike flannel's 0.0.0.0, the node's metrics aren't published to the network unasked).

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

/// Binds now (so a busy port fails start-up loudly) and serves until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(telemetry);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--healthz-ip/--healthz-port {addr}: {e}"))?;
    tracing::info!(%addr, "serving /healthz /readyz /metrics");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
    });
    Ok(())
}
