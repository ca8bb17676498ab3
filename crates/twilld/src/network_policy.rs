//! `--network-policy`: NetworkPolicy for this node's pods, enforced in the kernel. The
//! watchers keep the model (`twill_kube::PolicyFeed`); on every change of it this renders
//! the node's table (`twill_policy::render`, pure) and makes the kernel hold it
//! (`PolicyTable`: set elements when only pods changed, the whole table in one transaction
//! otherwise). A table that cannot be programmed is replaced by its closed form: the
//! selected pods isolated with nothing allowed. The table stays when twilld stops, so pods
//! stay enforced across a restart; `twilld cleanup` removes it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use twill_dataplane::firewall::policy::{drop_counts, Applied, PolicyTable};
use twill_dataplane::FirewallError;
use twill_kube::PolicyFeed;
use twill_policy::{render, PolicyId, Ruleset};

use crate::telemetry::{label, Telemetry};

/// Changes closer together than this are programmed together (a namespace of pods
/// created at once is one write, not hundreds).
const COALESCE: Duration = Duration::from_millis(20);
/// How often the drop counters are read (and, without an nftables monitor, the rules
/// checked).
const TICK: Duration = Duration::from_secs(5);
/// Set elements are compared with the kernel's (a whole `nft -j` listing: about 0.1 s of
/// nft's CPU at 1 000 policies and 5 000 pods) at most this long after an nftables change
/// the cheap rules check cannot judge (an element deleted by hand)...
const VERIFY_AFTER_CHANGE: Duration = Duration::from_secs(10);
/// ...and this often regardless.
const VERIFY_EVERY: Duration = Duration::from_secs(60);

pub fn spawn(
    clients: twill_kube::Clients,
    node: String,
    tel: Arc<Telemetry>,
    cancel: CancellationToken,
) {
    let feed = PolicyFeed::start(&clients, cancel.clone());
    info!(node = %node, "network policy: enforcing NetworkPolicy for this node's pods");
    tokio::spawn(run(feed, node, tel, cancel));
}

struct Controller {
    feed: PolicyFeed,
    node: String,
    tel: Arc<Telemetry>,
    table: Arc<PolicyTable>,
    /// Problems already reported, per policy, so each is logged once.
    reported: HashMap<PolicyId, Vec<String>>,
    failing: bool,
}

async fn run(feed: PolicyFeed, node: String, tel: Arc<Telemetry>, cancel: CancellationToken) {
    let mut changed = feed.subscribe();
    let drift = match PolicyTable::watch_changes() {
        Ok(f) => Some(f),
        Err(e) => {
            warn!("network policy: no nftables monitor ({e}); the table is checked every {TICK:?}");
            None
        }
    };
    let mut c = Controller {
        feed,
        node,
        tel,
        table: Arc::new(PolicyTable::new()),
        reported: HashMap::new(),
        failing: false,
    };
    let mut tick = tokio::time::interval(TICK);
    let mut dirty = true;
    let mut last_verify = tokio::time::Instant::now();
    let mut verify_at: Option<tokio::time::Instant> = None;
    loop {
        let marked = async {
            match &drift {
                Some(f) => f.marked().await,
                None => std::future::pending().await,
            }
        };
        let verify_due = async {
            match verify_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = changed.changed() => {
                if r.is_err() {
                    return;
                }
                tokio::time::sleep(COALESCE).await;
                changed.borrow_and_update();
                dirty = true;
            }
            _ = marked => {
                if drift.as_ref().is_some_and(|f| f.take()) {
                    c.repair().await;
                    verify_at.get_or_insert(last_verify + VERIFY_AFTER_CHANGE);
                }
            }
            _ = verify_due => {
                c.verify().await;
                last_verify = tokio::time::Instant::now();
                verify_at = None;
            }
            _ = tick.tick() => {
                if drift.is_none() {
                    c.repair().await;
                }
                if last_verify.elapsed() >= VERIFY_EVERY {
                    c.verify().await;
                    last_verify = tokio::time::Instant::now();
                }
                c.read_counters().await;
            }
        }
        if dirty && c.feed.listed() {
            dirty = false;
            c.sync().await;
        }
    }
}

impl Controller {
    async fn sync(&mut self) {
        let started = Instant::now();
        let node = self.node.clone();
        let cl = self.feed.snapshot();
        // Off the runtime's workers: the node loop shares them.
        let rendered = tokio::task::spawn_blocking(move || {
            let problems: Vec<(PolicyId, Vec<String>)> = cl
                .policies
                .values()
                .filter(|p| !p.problems.is_empty())
                .map(|p| (p.id.clone(), p.problems.clone()))
                .collect();
            (render(&cl, &node, false), problems)
        })
        .await;
        let Ok((want, problems)) = rendered else {
            // Only a panic in render gets here; the next change tries again.
            warn!("network policy: rendering the table failed");
            return;
        };
        self.report(problems);
        let elements = want.as_ref().map_or(0, |r| r.elements());
        match self.apply(want).await {
            Ok(applied) => {
                if self.failing {
                    info!("network policy: the table is programmed again");
                }
                self.failing = false;
                self.tel.policy.elements.set(elements as i64);
                match applied {
                    Applied::Unchanged => {}
                    a => debug!(?a, elements, "network policy programmed"),
                }
            }
            Err(e) => {
                self.tel
                    .policy
                    .errors
                    .get_or_create(&label("reason", "program"))
                    .inc();
                if !self.failing {
                    warn!("network policy: the table could not be written ({e:#}); the selected pods are isolated with nothing allowed until it can be");
                }
                self.failing = true;
                let cl = self.feed.snapshot();
                let node = self.node.clone();
                let Ok(closed) =
                    tokio::task::spawn_blocking(move || render(&cl, &node, true)).await
                else {
                    // Writing no table would open every pod: leave the kernel as it is.
                    warn!("network policy: rendering the closed table failed");
                    return;
                };
                if let Err(e) = self.apply(closed).await {
                    warn!("network policy: not even the closed table could be written: {e:#}");
                }
            }
        }
        ensure_bridge_netfilter();
        self.tel
            .policy
            .sync_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    async fn apply(&self, want: Option<Ruleset>) -> anyhow::Result<Applied> {
        let table = self.table.clone();
        Ok(tokio::task::spawn_blocking(move || table.apply(want.as_ref())).await??)
    }

    fn report(&mut self, problems: Vec<(PolicyId, Vec<String>)>) {
        let current: std::collections::HashSet<&PolicyId> =
            problems.iter().map(|(id, _)| id).collect();
        self.reported.retain(|id, _| current.contains(id));
        for (id, what) in problems {
            if self.reported.get(&id) == Some(&what) {
                continue;
            }
            warn!(policy = %id, "network policy cannot be expressed in full; what cannot matches nothing (fails closed): {}", what.join("; "));
            self.tel
                .policy
                .errors
                .get_or_create(&label("reason", "unreadable"))
                .inc_by(what.len() as u64);
            self.reported.insert(id, what);
        }
    }

    async fn repair(&self) {
        let table = self.table.clone();
        self.repaired(tokio::task::spawn_blocking(move || table.repair()).await);
    }

    async fn verify(&self) {
        let table = self.table.clone();
        self.repaired(tokio::task::spawn_blocking(move || table.verify()).await);
    }

    fn repaired(&self, r: Result<Result<bool, FirewallError>, tokio::task::JoinError>) {
        match r {
            Ok(Ok(true)) => {
                info!("network policy: the table had been changed under us; rewritten");
                self.tel
                    .repairs
                    .get_or_create(&label("kind", "policy"))
                    .inc();
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!("network policy: checking the table: {e}"),
            Err(e) => warn!("network policy: checking the table: {e}"),
        }
    }

    async fn read_counters(&self) {
        if let Ok(Ok((eg, ing))) = tokio::task::spawn_blocking(drop_counts).await {
            self.tel.policy.drops_read(eg, ing);
        }
    }
}

/// Pods on one node talk over the cni0 bridge; only with bridge netfilter on do their
/// packets cross the forward hook the table is on (kube-proxy needs the same setting).
fn ensure_bridge_netfilter() {
    for name in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
        let path = format!("/proc/sys/net/bridge/{name}");
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() == "1" => {}
            Ok(_) => match std::fs::write(&path, "1") {
                Ok(()) => info!("network policy: set net.bridge.{name}=1 so traffic between pods on this node is filtered"),
                Err(e) => warn!("network policy: cannot set net.bridge.{name}=1 ({e}): traffic between pods on this node is not filtered"),
            },
            Err(e) => warn!("network policy: no {path} ({e}): traffic between pods on this node is not filtered"),
        }
    }
}
