//! The node daemon's entry: signals, the health and metrics listeners, the store opened on
//! the one start-up path, then the node (`node::start`) until SIGTERM. Nothing is torn
//! down on exit, so pods keep working across restarts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::node::start;
use crate::options::{DaemonOptions, StoreOptions};
use crate::startup::{open_etcd, open_kube, Patience, Role};
use crate::telemetry::Telemetry;

pub async fn run(opts: DaemonOptions) -> Result<()> {
    if opts.network_policy && !opts.kube_subnet_mgr() {
        anyhow::bail!(
            "--network-policy needs --kube-subnet-mgr: NetworkPolicy selects pods, which only the Kubernetes API knows"
        );
    }
    let cancel = CancellationToken::new();
    let reloads = spawn_signal_handler(cancel.clone());
    tokio::spawn(crate::heap::run(cancel.clone()));
    // Liveness allows for a few missed resyncs before declaring the loop stuck.
    let window = (opts.resync * 3).max(Duration::from_secs(30));
    let tel = Arc::new(Telemetry::new(window));
    for (a, paths) in crate::http::listeners(opts.node.healthz, opts.node.metrics) {
        crate::http::serve(a, paths, tel.clone(), cancel.clone()).await?;
    }
    let control = crate::status::control_socket(&opts.node.subnet_file);
    if let Err(e) = crate::http::serve_control(&control, tel.clone(), cancel.clone()).await {
        warn!("no control socket, twilld status and doctor's overlay check cannot ask: {e:#}");
    }
    let beat = || tel.beat();
    let patience = Patience {
        cancel: &cancel,
        beat: &beat,
    };
    let node = &opts.node;
    match &node.store {
        StoreOptions::Kube(kube) => {
            let path = node
                .config_file
                .as_deref()
                .expect("Kubernetes mode always reads a file");
            let opened =
                open_kube(kube, path, Role::Node, node.public_ip, &node.bgp, &patience).await?;
            if opts.network_policy {
                crate::network_policy::spawn(
                    opened.store.clients(),
                    opened.store.node_name().to_string(),
                    tel.clone(),
                    cancel.clone(),
                );
            }
            start(opened, opts.clone(), cancel.clone(), tel.clone(), reloads).await
        }
        StoreOptions::Etcd(etcd) => {
            let opened = open_etcd(etcd, node.config_file.as_deref(), &node.bgp, &patience).await?;
            start(opened, opts.clone(), cancel.clone(), tel.clone(), reloads).await
        }
    }
}

/// SIGTERM/SIGINT cancel; each SIGHUP is forwarded as a reload request.
fn spawn_signal_handler(cancel: CancellationToken) -> mpsc::UnboundedReceiver<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            warn!("could not install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM"); break; }
                _ = int.recv() => { info!("SIGINT"); break; }
                _ = hup.recv() => {
                    info!("SIGHUP: reloading the network config");
                    let _ = tx.send(());
                }
            }
        }
        cancel.cancel();
    });
    rx
}
