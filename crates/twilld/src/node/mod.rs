//! The running node: one loop that turns what happens (store events, the kernel's
//! notifications, timers, SIGHUP) into `state::Input`s, and the effects the state machine
//! answers into netlink, store, file, BIRD and metrics calls. Decisions live in `state`;
//! this file only does what it is told, and reports what it learned back as inputs.

use std::collections::VecDeque;
use std::sync::Arc;

use anyhow::{bail, Result};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use twill_config::{BgpConf, NetConf};
use twill_dataplane::{watch_devices, Dataplane};
use twill_store::{
    AcquireRequest, Expiry, HeldLease, PeerEvent, PeerTable, SubnetManager, WatchEvent,
};

use crate::options::DaemonOptions;
use crate::schedule;
use crate::settings::{Facts, Settings};
use crate::startup::{ConfigSource, Patience};
use crate::telemetry::Telemetry;

/// How stale the probes' peer list may be: they probe each peer once per interval (10 s by
/// default), so a second's delay is never seen.
const PROBE_TARGETS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

mod effects;
mod start;
pub mod state;

pub use start::start;
use state::{Effect, Input, State};

struct Node<S> {
    store: S,
    dp: Dataplane,
    table: PeerTable,
    held: HeldLease,
    req: AcquireRequest,
    /// What the running config means for this node.
    settings: Settings,
    /// What start-up learned about the node, for deriving settings again on a reload.
    facts: Facts,
    /// The BGP options with our node object's overrides.
    bgp: twill_bgp::BgpOptions,
    opts: DaemonOptions,
    /// Where SIGHUP re-reads net-conf.json from.
    config: ConfigSource,
    state: State,
    /// systemd has been told READY=1.
    notified: bool,
    tel: Arc<Telemetry>,
    store_errors_seen: u64,
    reloads: mpsc::UnboundedReceiver<()>,
    /// What BIRD is to announce, once BGP has been configured.
    announce: Option<watch::Sender<Option<(BgpConf, twill_bgp::Announce)>>>,
    /// The peer events of the batch being handled, for the pass that follows it.
    pending: Vec<PeerEvent>,
    /// A config read on SIGHUP and judged usable, until it is applied.
    next: Option<(NetConf, Settings)>,
    /// --public-ip, or our node's node-public-ip annotation: the PublicIP whatever the
    /// underlay; without one it follows the underlay's address.
    pinned: crate::settings::Pinned,
    /// The underlay chosen anew, until the node moves to it.
    moved_to: Option<twill_dataplane::ExtIface>,
    /// The address each of the store's servers was last reached from (`follow_store_route`).
    store_sources: Vec<Option<std::net::IpAddr>>,
    /// Where the peers to probe go, when probing is on.
    probe_targets: Option<watch::Sender<Vec<twill_probe::Target>>>,
    /// When the probes are next told the peers: at most once per `PROBE_TARGETS_EVERY`.
    /// Told on every batch, each of 10 000 single additions rebuilt 10 000 targets in
    /// the node, the prober and the board, which took put -> route from 1.5 to 40 ms p50.
    targets_at: Option<Instant>,
    /// The peer table, the lease or the settings changed since `status` and the probes
    /// were last told.
    dirty: bool,
}

/// Where a loop turn's effects may leave the renewal timer.
enum Renew {
    Keep,
    At(Instant),
}

impl<S: SubnetManager> Node<S> {
    async fn run_loop(&mut self, cancel: CancellationToken) -> Result<()> {
        let (tx, mut rx) = mpsc::channel(64);
        let watch_cancel = cancel.child_token();
        let store = self.store.clone();
        let wc = watch_cancel.clone();
        tokio::spawn(async move { store.watch(tx, wc).await });

        let mut resync = tokio::time::interval(self.opts.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew_at = self.next_renewal();
        let devices = self.dp.devices();
        let mut monitor = match watch_devices(&devices) {
            Ok(m) => Some(m),
            Err(e) => {
                warn!("no netlink monitor ({e}); a deleted device is repaired at the next resync, and every resync reads the kernel");
                None
            }
        };
        let mut watched: Vec<String> = devices.into_iter().map(|(n, _)| n).collect();
        let rules = self.dp.rules_flag();
        let removed = monitor.as_ref().map(|m| m.removed_flag());
        let host = monitor.as_ref().map(|m| m.underlay_flag());
        // When the batch of peer changes the coming step carries was taken off the watch.
        let mut peers_changed: Option<Instant> = None;
        loop {
            self.tel.beat();
            let due_at = self.state.repair_at().map(Instant::from_std);
            let underlay_at = self.state.underlay_check_at().map(Instant::from_std);
            // A recreated device's index the monitor learns from RTM_NEWLINK itself; only a
            // reload names other devices (a new VNI, IPv6 turned on or off). Routes on the
            // underlay count as ours (direct routes, DirectRouting or leftovers); it may
            // have moved.
            if let Some(m) = &monitor {
                let names = self.dp.config().devices();
                if !names.eq(watched.iter().map(String::as_str)) {
                    let devices = self.dp.devices();
                    m.set_devices(&devices);
                    watched = devices.into_iter().map(|(n, _)| n).collect();
                }
                m.set_underlay_index(self.facts.underlay.index);
            }
            let input = tokio::select! {
                Some(()) = self.reloads.recv() => Input::Reload(self.read_config().await),
                // Something of ours removed: repair once the burst is over (a fight with
                // another agent makes that wait grow).
                () = async { match removed.as_deref() { Some(f) => { f.marked().await; f.take(); } None => std::future::pending().await } },
                    if self.state.listens_for_removals() => Input::Removed,
                () = async { match rules.as_deref() { Some(f) => f.marked().await, None => std::future::pending().await } },
                    if self.state.listens_for_rules() => Input::RulesChanged,
                _ = tokio::time::sleep_until(due_at.unwrap_or_else(Instant::now)), if due_at.is_some() => Input::RepairDue,
                // The host's links or addresses changed: the underlay may have moved.
                () = async { match host.as_deref() { Some(f) => { f.marked().await; f.take(); } None => std::future::pending().await } },
                    if underlay_at.is_none() => Input::HostChanged,
                _ = tokio::time::sleep_until(underlay_at.unwrap_or_else(Instant::now)), if underlay_at.is_some() => Input::UnderlayDue,
                Some(device) = async { match monitor.as_mut() { Some(m) => m.deleted.recv().await, None => None } } => {
                    warn!(%device, "device deleted under us; recreating it and replaying every peer");
                    Input::DeviceDeleted
                }
                _ = cancel.cancelled() => {
                    watch_cancel.cancel();
                    stopping();
                    return Ok(());
                }
                batch = rx.recv() => {
                    let Some(batch) = batch else {
                        // The watch ends on the same cancellation as we do: that is a stop,
                        // not a failure, whichever of the two select! saw first.
                        if cancel.is_cancelled() {
                            stopping();
                            return Ok(());
                        }
                        bail!("the lease watch stopped")
                    };
                    // Drain what's already queued so a burst costs one pass.
                    let mut events = batch;
                    while let Ok(more) = rx.try_recv() {
                        events.extend(more);
                    }
                    let taken = Instant::now();
                    let input = self.take_events(events);
                    // A renewal of our own lease changes no peer: nothing to time.
                    peers_changed = (!self.pending.is_empty()).then_some(taken);
                    input
                }
                _ = resync.tick() => {
                    self.observe_store();
                    Input::Resync { touched: monitor.as_ref().map(|m| m.take_touched()) }
                }
                _ = tokio::time::sleep_until(renew_at) => Input::RenewDue,
                _ = tokio::time::sleep_until(self.targets_at.unwrap_or_else(Instant::now)), if self.targets_at.is_some() => {
                    self.targets_at = None;
                    self.send_targets();
                    continue;
                }
            };
            if let Renew::At(at) = self.step(input, &cancel).await? {
                renew_at = at;
            }
            if let Some(taken) = peers_changed.take() {
                self.tel
                    .peer_change_seconds
                    .observe(taken.elapsed().as_secs_f64());
            }
        }
    }

    /// Feeds one input to the state machine and carries out what it says, feeding what
    /// each effect learns back in (its effects run next, before the rest).
    async fn step(&mut self, input: Input, cancel: &CancellationToken) -> Result<Renew> {
        let mut renew = Renew::Keep;
        let mut todo: VecDeque<Effect> = self.state.on(input, std::time::Instant::now()).into();
        while let Some(effect) = todo.pop_front() {
            self.dirty |= matches!(
                effect,
                Effect::RefreshPolicy
                    | Effect::ApplyConfig
                    | Effect::Reacquire
                    | Effect::ProgramLease
                    | Effect::ApplyUnderlay
                    | Effect::Republish
            );
            if let Some(next) = self.execute(effect, cancel, &mut renew).await? {
                let more = self.state.on(next, std::time::Instant::now());
                for e in more.into_iter().rev() {
                    todo.push_front(e);
                }
            }
        }
        if std::mem::take(&mut self.dirty) {
            self.publish();
        }
        Ok(renew)
    }

    /// What changed, to `twilld status` and the probes.
    fn publish(&mut self) {
        let refused = self
            .table
            .rejected()
            .map(|(k, r)| crate::status::Refused {
                lease: k.to_string(),
                reason: r.reason().to_string(),
                detail: r.to_string(),
            })
            .collect();
        {
            let mut st = self.tel.status.lock().expect("not poisoned");
            let key = self.held.key;
            let nets: Vec<String> = key
                .v4
                .iter()
                .chain(&key.v6)
                .map(|n| n.to_string())
                .collect();
            st.lease = Some(nets.join(", "));
            st.backend = self.req.conf.backend.kind.as_str().to_string();
            // IPv6-only: the PublicIPv6 (PublicIP is 0.0.0.0 there).
            st.public_ip = Some(self.held.attrs.node_ip().to_string());
            st.mtu = self.settings.mtu;
            st.peers = self.table.len();
            st.refused = refused;
        }
        if self.probe_targets.is_some() && self.targets_at.is_none() {
            self.targets_at = Some(Instant::now() + PROBE_TARGETS_EVERY);
        }
    }

    fn send_targets(&self) {
        if let Some(tx) = &self.probe_targets {
            let want = crate::probes::targets(self.table.entries(), self.settings.mtu);
            tx.send_if_modified(|have| {
                let changed = *have != want;
                if changed {
                    *have = want;
                }
                changed
            });
        }
    }

    async fn execute(
        &mut self,
        effect: Effect,
        cancel: &CancellationToken,
        renew: &mut Renew,
    ) -> Result<Option<Input>> {
        match effect {
            Effect::Reacquire => return self.reacquire(cancel).await.map(Some),
            Effect::ProgramLease => self.dp.set_lease(&self.held.key).await?,
            Effect::Pass { full, trigger } => return Ok(self.pass(full, trigger).await),
            Effect::Check { trigger } => return Ok(self.check(trigger).await),
            Effect::RefreshPolicy => self.refresh_policy().await,
            Effect::WriteSubnetEnv => self.write_subnet_env()?,
            Effect::Announce => self.announce(),
            Effect::Ready => {
                self.tel.update_ready(|r| r.subnet_env = true);
                info!(subnet = %self.held.key, peers = self.table.len(), "ready");
            }
            Effect::NotifyReady => self.notify_ready(),
            Effect::Renew => return Ok(Some(Input::Renewal(self.renew().await))),
            Effect::ScheduleRenewal => *renew = Renew::At(self.next_renewal()),
            Effect::RetryRenewal => {
                *renew = Renew::At(Instant::now() + schedule::retry_renewal_after(self.held.expiry))
            }
            Effect::ApplyConfig => return self.apply_config().await.map(Some),
            Effect::Conflicts(kinds) => self.note_conflicts(&kinds),
            Effect::SelectUnderlay => return Ok(Some(self.select_underlay().await)),
            Effect::UnderlayLost(why) => self.underlay_lost(why),
            Effect::UnderlayBack => self.underlay_back(),
            Effect::ApplyUnderlay => return Ok(Some(self.apply_underlay().await)),
            Effect::Republish => return self.republish(cancel).await.map(Some),
        }
        Ok(None)
    }

    /// A batch of lease events into the peer table; the kernel follows as the state
    /// machine says (the events alone, or a full pass).
    fn take_events(&mut self, events: Vec<WatchEvent>) -> Input {
        let snapshot = events.iter().any(|e| matches!(e, WatchEvent::Snapshot(_)));
        let mut own_lost = false;
        self.pending.clear();
        for ev in events {
            if matches!(ev, WatchEvent::Snapshot(_)) {
                self.tel.store_event("snapshot", 1);
            }
            let a = self.table.apply(ev);
            self.note_rejections(&a);
            own_lost |= a.own_lost;
            for e in &a.events {
                self.tel.store_event(
                    match e {
                        PeerEvent::Added(_) => "added",
                        PeerEvent::Changed { .. } => "changed",
                        PeerEvent::Removed(_) => "removed",
                    },
                    1,
                );
            }
            self.pending.extend(a.events);
        }
        if !self.pending.is_empty() {
            info!(
                changed = self.pending.len(),
                peers = self.table.len(),
                "peer table updated"
            );
        }
        self.tel.peers.set(self.table.len() as i64);
        self.dirty = true;
        Input::Store { snapshot, own_lost }
    }
}

async fn acquire<S: SubnetManager>(
    store: &S,
    req: &AcquireRequest,
    patience: &Patience<'_>,
) -> Result<HeldLease> {
    let h = patience
        .retry("acquiring a subnet", || store.acquire(req))
        .await?;
    info!(subnet = %h.key, source = ?h.source, expires_in_s = seconds_left(h.expiry), "lease held");
    Ok(h)
}

fn seconds_left(e: Expiry) -> i64 {
    schedule::seconds_left(e, std::time::Instant::now())
}

fn stopping() {
    info!("stopping; the data plane and the lease stay in place");
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
}

/// A no-op unless systemd gave us NOTIFY_SOCKET.
fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        warn!("telling systemd ({state:?}): {e}");
    }
}
