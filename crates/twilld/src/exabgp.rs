//! `twilld exabgp-feed`: an ExaBGP `process` that tells one BGP speaker where every
//! node's pod network is. It watches the leases in the store (etcd, or with
//! `--kube-subnet-mgr` the nodes' podCIDRs and public-ip annotations) and prints, on stdout, the
//! API lines ExaBGP turns into updates: `announce route <subnet> next-hop <PublicIP>` for
//! a lease that appears or moves, `withdraw route …` for one that goes. A re-list after a
//! lost watch re-announces the complete set and withdraws what vanished. Leases are judged
//! as a node judges them (from the config alone: this host is no node), so a bad record is
//! refused, never announced. BGP itself is ExaBGP's: twill speaks only its text API.

use std::io::Write;

use anyhow::{anyhow, Result};
use clap::Args;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use twill_bgp::{feed_lines, Announced};
use twill_config::NetConf;
use twill_store::{PeerTable, SubnetManager};

use crate::options::{NodeOptions, StoreOptions};
use crate::startup::{open_etcd, open_kube, Patience, Role};

#[derive(Debug, Clone, Args)]
pub struct ExabgpFeed {}

pub async fn run(node: &NodeOptions, _args: &ExabgpFeed) -> Result<()> {
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop.cancel();
    });
    // ExaBGP holds our stdin: when it closes, the speaker is gone and so are we.
    let gone = cancel.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        gone.cancel();
    });
    // The daemon's start-up path: the same backoff, the same refusal of a setting no
    // retry fixes, the same wait for etcd's config, the same cluster network for a file
    // without Network. There is no heartbeat to beat here (the feed serves no /healthz).
    let beat = || {};
    let patience = Patience {
        cancel: &cancel,
        beat: &beat,
    };
    let fed = async {
        match &node.store {
            StoreOptions::Etcd(opts) => {
                let opened =
                    open_etcd(opts, node.config_file.as_deref(), &node.bgp, &patience).await?;
                feed(opened.store, &opened.conf, cancel.clone()).await
            }
            StoreOptions::Kube(opts) => {
                // Every node's podCIDR and public-ip annotations; the config file says
                // which leases are sound (Network, SubnetLen: the cluster's node CIDR mask
                // size).
                let path = node
                    .config_file
                    .as_ref()
                    .ok_or_else(|| anyhow!("--kube-subnet-mgr needs --net-config-path"))?;
                let opened =
                    open_kube(opts, path, Role::Observer, None, &node.bgp, &patience).await?;
                feed(opened.store, &opened.conf, cancel.clone()).await
            }
        }
    }
    .await;
    // ExaBGP going away while we still wait for the store is a stop, not a failure.
    match fed {
        Err(_) if cancel.is_cancelled() => Ok(()),
        other => other,
    }
}

/// Tells the speaker about every lease `store` holds, as it changes, until cancelled.
async fn feed<S: SubnetManager>(store: S, conf: &NetConf, cancel: CancellationToken) -> Result<()> {
    let mut table = PeerTable::with_policy(crate::policy::conf_policy(conf, None)?);
    let (tx, mut rx) = mpsc::channel(64);
    let wc = cancel.clone();
    tokio::spawn(async move { store.watch(tx, wc).await });
    let mut announced = Announced::new();
    let mut stdout = std::io::stdout();
    loop {
        let batch = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            b = rx.recv() => match b {
                Some(b) => b,
                None if cancel.is_cancelled() => return Ok(()),
                None => return Err(anyhow!("the lease watch stopped")),
            },
        };
        let mut events = Vec::new();
        for ev in batch {
            let a = table.apply(ev);
            for (key, r) in &a.rejected {
                warn!(lease = %key, reason = r.reason(), "lease refused, not announced: {r}");
            }
            events.extend(a.events);
        }
        let lines = feed_lines(&mut announced, &events);
        for l in &lines {
            writeln!(stdout, "{l}")?;
        }
        stdout.flush()?;
        if !lines.is_empty() {
            info!(
                changes = lines.len(),
                announced = announced.len(),
                "told the speaker"
            );
        }
    }
}
