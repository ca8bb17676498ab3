//! What each effect does to the world, and what it reports back to the state machine.
//! Telemetry lives here, beside the calls it measures, not in the decisions.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use twill_config::{write_atomic, SubnetEnv};
use twill_dataplane::{DataplaneError, Family, NetlinkError, ReconcileReport};
use twill_store::{Applied, LeaseAttrs, RenewOutcome, SubnetManager};

use super::state::{Input, ReloadRead, Renewal, Selected, Trigger};
use super::{acquire, seconds_left, Node};
use crate::policy::lease_policy;
use crate::repairs;
use crate::schedule;
use crate::settings::{self, keeps_lease, Facts, Settings};
use crate::startup::Patience;
use crate::telemetry::label;

impl<S: SubnetManager> Node<S> {
    /// Brings the kernel to the peer table: the pending events alone, or every peer.
    pub(super) async fn pass(&mut self, full: bool, trigger: Trigger) -> Option<Input> {
        let events = std::mem::take(&mut self.pending);
        self.count_pass(trigger, "full");
        let pass = self.dp.on_peer_events(&events, &self.table, full).await;
        self.record_pass(pass, trigger)
    }

    /// Device, address and rules; a device found missing is refilled.
    pub(super) async fn check(&mut self, trigger: Trigger) -> Option<Input> {
        self.count_pass(trigger, "light");
        match self.dp.check().await {
            // The device was gone (and is new and empty now): fill it.
            Ok(r) if r.device_created => {
                self.tel.repaired("device", 1);
                Some(Input::DeviceDeleted)
            }
            Ok(r) => {
                self.tel.repaired("rules", r.rule_repairs);
                self.tel.update_ready(|s| s.rules = r.rules_error.is_none());
                self.note_repairs(&r.restored);
                Some(Input::Restored(r.restored))
            }
            Err(e) => {
                warn!("periodic check failed, will retry: {e}");
                None
            }
        }
    }

    /// What a repair put back, for `twilld status`.
    fn note_repairs(&self, restored: &[(&'static str, String)]) {
        if !restored.is_empty() {
            self.tel
                .status
                .lock()
                .expect("not poisoned")
                .note_repairs(restored);
        }
    }

    /// Repair passes (after a removal) and periodic ones, by `kind` (full or light).
    fn count_pass(&self, trigger: Trigger, kind: &str) {
        match trigger {
            Trigger::Removed => self.tel.repair_passes.inc(),
            Trigger::Resync => self
                .tel
                .periodic_passes
                .get_or_create(&label("kind", kind))
                .inc(),
            Trigger::Event | Trigger::DeviceDeleted => return,
        };
    }

    /// Metrics and readiness from a full pass (`Ok(None)`: the events went in alone); what
    /// a repair put back goes to the state machine, which tells a fight.
    fn record_pass(
        &mut self,
        pass: Result<Option<ReconcileReport>, DataplaneError>,
        why: Trigger,
    ) -> Option<Input> {
        match pass {
            Ok(None) => None,
            Ok(Some(r)) => {
                self.tel.reconcile_seconds.observe(r.duration.as_secs_f64());
                let programmed = self.table.len().saturating_sub(r.entries_failed.len());
                self.tel
                    .set_entries(programmed.saturating_sub(r.direct_peers), r.direct_peers);
                let rules_ok = r.rules_error.is_none();
                self.tel.update_ready(|s| {
                    s.rules = rules_ok;
                    s.reconciled = true;
                });
                // After an event (start, re-list, lease change, reload) changes are the
                // point; on a periodic or device-deleted pass they mean something broke.
                if why == Trigger::Event {
                    return None;
                }
                self.tel.repaired("entries", r.entries_changed);
                self.tel.repaired("device", r.device_created as usize);
                self.tel.repaired("rules", r.rule_repairs);
                self.note_repairs(&r.restored);
                Some(Input::Restored(r.restored))
            }
            Err(e) => {
                warn!("reconcile failed, will retry: {e}");
                None
            }
        }
    }

    /// Counts the conflicts the state machine found, names the worst, and leaves the list
    /// for `twilld doctor` beside subnet.env.
    pub(super) fn note_conflicts(&mut self, kinds: &[&'static str]) {
        for kind in kinds {
            self.tel
                .repair_conflicts
                .get_or_create(&label("kind", kind))
                .inc();
        }
        let conflicts = self.state.repairs().conflicts();
        if let Some(top) = conflicts.first() {
            warn!(
                kind = %top.kind,
                object = %top.object,
                repairs = top.repairs,
                "something else on this node keeps removing what twilld keeps; repairing it less eagerly"
            );
        }
        let path = repairs::conflicts_file(&self.opts.node.subnet_file);
        let json =
            serde_json::Value::from(conflicts.iter().map(|c| c.to_json()).collect::<Vec<_>>());
        if let Err(e) = write_atomic(&path, json.to_string().as_bytes(), 0o644) {
            warn!(path = %path.display(), "writing the repair conflicts: {e}");
        }
    }

    /// Logs and counts each newly refused lease once; a refused lease is never programmed.
    pub(super) fn note_rejections(&self, a: &Applied) {
        for (key, r) in &a.rejected {
            warn!(lease = %key, reason = r.reason(), "peer lease refused, not programmed: {r}");
            self.tel
                .leases_rejected
                .get_or_create(&label("reason", r.reason()))
                .inc();
        }
        if !a.rejected.is_empty() || !a.events.is_empty() {
            self.tel
                .leases_refused
                .set(self.table.rejected().count() as i64);
        }
    }

    /// The store's error count and our lease's time left, for the metrics.
    pub(super) fn observe_store(&mut self) {
        let errors = self.store.error_count();
        self.tel
            .store_errors
            .inc_by(errors - self.store_errors_seen);
        self.store_errors_seen = errors;
        self.tel.lease_expiry.set(seconds_left(self.held.expiry));
    }

    /// Re-reads what leases are judged against. Peers it refuses now are dropped by the
    /// full pass that follows, like deleted ones.
    pub(super) async fn refresh_policy(&mut self) {
        let kube = self.opts.kube_subnet_mgr().then_some(&self.held.key);
        match lease_policy(
            self.dp.netlink(),
            &self.dp.device_indices(),
            Some(self.facts.underlay.index),
            &self.req.conf,
            kube,
        )
        .await
        {
            Ok(p) => {
                let a = self.table.set_policy(p);
                self.note_rejections(&a);
            }
            Err(e) => warn!("judging peer leases by the previous view of this node: {e:#}"),
        }
    }

    pub(super) async fn renew(&mut self) -> Renewal {
        match self.store.renew(&self.held).await {
            Ok(RenewOutcome::Renewed(expiry)) => {
                info!(subnet = %self.held.key, expires_in_s = seconds_left(expiry), "lease renewed");
                self.tel.lease_renewals.inc();
                self.held.expiry = expiry;
                Renewal::Renewed
            }
            Ok(RenewOutcome::Lost) => Renewal::Lost,
            Err(e) => {
                self.tel.store_errors.inc();
                warn!("renewing the lease failed, retrying: {e}");
                Renewal::Failed
            }
        }
    }

    pub(super) fn next_renewal(&self) -> Instant {
        Instant::now() + schedule::renew_after(self.held.expiry, self.opts.renew_margin)
    }

    pub(super) async fn reacquire(&mut self, cancel: &CancellationToken) -> Result<Input> {
        warn!(subnet = %self.held.key, "our lease is gone; acquiring again, preferring the same subnet");
        self.req.previous = self.held.key;
        let tel = self.tel.clone();
        let beat = move || tel.beat();
        let patience = Patience {
            cancel,
            beat: &beat,
        };
        let held = acquire(&self.store, &self.req, &patience).await?;
        let moved = held.key != self.held.key;
        let a = self.table.set_own(held.key, held.attrs.clone());
        for ev in &a.events {
            info!(?ev, "a peer's standing changed with our new subnet");
        }
        self.note_rejections(&a);
        self.held = held;
        if moved {
            warn!(subnet = %self.held.key, "moved to a new subnet");
        }
        Ok(Input::Reacquired { moved })
    }

    /// Re-reads the config (file or etcd) and judges it for this node. An invalid config
    /// is refused and the running one kept: a typo must not take a node's network down.
    pub(super) async fn read_config(&mut self) -> ReloadRead {
        let conf = match self.config.load().await {
            Ok(c) => c,
            Err(e) => return self.refused(format!("{e:#}")),
        };
        if conf == self.req.conf {
            info!("config unchanged");
            return ReloadRead::Unchanged;
        }
        if let Some(why) = settings::needs_new_underlay(&self.req.conf, &conf) {
            return self.refused(why);
        }
        let facts = settings::Facts {
            mac: self.dp.mac(Family::V4).or(self.facts.mac),
            mac6: self.dp.mac(Family::V6).or(self.facts.mac6),
            ..self.facts.clone()
        };
        match settings::derive(&conf, &self.opts, &self.bgp, &facts) {
            Ok(s) => {
                self.next = Some((conf, s));
                ReloadRead::Changed
            }
            Err(e) => self.refused(format!("{e:#}")),
        }
    }

    fn refused(&self, why: String) -> ReloadRead {
        warn!("config reload refused, keeping the running config: {why}");
        ReloadRead::Refused(why)
    }

    /// Takes the config `read_config` accepted into the data plane (see
    /// `settings::Reload` for the order of what follows).
    pub(super) async fn apply_config(&mut self) -> Result<Input> {
        let Some((conf, new)) = self.next.take() else {
            return Ok(Input::ConfigApplied { keeps_lease: true });
        };
        let plan = settings::plan_reload(&self.req.conf, &conf, &self.settings, &new);
        for what in &plan.needs_restart {
            warn!("{what} changed: it takes effect when twilld restarts");
        }
        for w in &new.warnings {
            warn!("{w}");
        }
        self.dp.set_config(new.dataplane.clone());
        for old in &plan.remove_devices {
            match self.dp.netlink().delete_link(old).await {
                Ok(true) => info!(device = %old, "removed: the new config has no use for it"),
                Ok(false) => {}
                Err(e) => warn!("removing {old} after the config change: {e}"),
            }
        }
        self.req.attrs = self.device_attrs(&new).await?;
        self.req.conf = conf;
        let keeps = keeps_lease(
            &self.req.conf,
            &self.held.key,
            &self.held.attrs,
            &self.req.attrs,
        );
        self.settings = new;
        info!(subnet = %self.held.key, mtu = self.settings.mtu, "config reloaded");
        Ok(Input::ConfigApplied { keeps_lease: keeps })
    }

    /// Every overlay device `new` names, ensured, and what our lease advertises with their
    /// MACs.
    async fn device_attrs(&mut self, new: &Settings) -> Result<LeaseAttrs, NetlinkError> {
        let devices = self.dp.ensure_devices().await?;
        let mac = |f: Family| devices.iter().find(|(g, _)| *g == f).map(|(_, d)| d.mac);
        Ok(new.attrs(mac(Family::V4), mac(Family::V6)))
    }

    /// systemd's Type=notify: READY=1 when /readyz would say 200 (subnet.env written, the
    /// rules in place, ...), so units ordered after twilld (the container runtime) find both.
    pub(super) fn notify_ready(&mut self) {
        if self.notified || self.tel.not_ready().is_some() {
            return;
        }
        self.notified = true;
        let status = format!("subnet {} with {} peers", self.held.key, self.table.len());
        super::notify_systemd(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ]);
    }

    pub(super) fn write_subnet_env(&mut self) -> Result<()> {
        let env = SubnetEnv::for_lease(
            self.settings.network().map(ipnetwork::IpNetwork::V4),
            self.held.key.v4,
            self.settings.ipv6_network,
            self.held.key.v6,
            self.settings.mtu,
            self.opts.node.rules.ip_masq,
        );
        let path = &self.opts.node.subnet_file;
        write_atomic(path, env.render().as_bytes(), 0o644)
            .with_context(|| format!("writing {}", path.display()))?;
        info!(path = %path.display(), "wrote subnet.env");
        Ok(())
    }

    /// Tells the BGP task the subnets we hold now (it rewrites BIRD's config if needed).
    pub(super) fn announce(&mut self) {
        let Some(conf) = self.settings.bgp.clone() else {
            if let Some(tx) = &self.announce {
                // BGP taken out of the config: the last settings, announcing nothing.
                tx.send_modify(|v| {
                    if let Some((_, a)) = v {
                        a.v4 = None;
                        a.v6 = None;
                    }
                });
            }
            return;
        };
        let tx = self.announce.get_or_insert_with(|| {
            let (tx, rx) = watch::channel(None);
            twill_bgp::spawn(self.bgp.clone(), rx, self.tel.clone());
            tx
        });
        let ext = &self.facts.underlay;
        let (v4, v6) = (self.held.key.v4, self.held.key.v6);
        tx.send_replace(Some((
            conf,
            twill_bgp::Announce {
                router_id: twill_bgp::router_id(ext.addr, ext.addr6),
                local4: ext.addr,
                local6: ext.addr6,
                v4: match v4 {
                    Some(ipnetwork::IpNetwork::V4(n)) => Some(n),
                    _ => None,
                },
                v6: match v6 {
                    Some(ipnetwork::IpNetwork::V6(n)) => Some(n),
                    _ => None,
                },
            },
        )));
    }

    /// The underlay chosen again, as at start; compared with the one the node is on.
    pub(super) async fn select_underlay(&mut self) -> Input {
        let ipv6_only = self.req.conf.ipv4.is_none();
        let nl = self.dp.netlink();
        match twill_dataplane::select_underlay(nl, &self.opts.node.iface, ipv6_only).await {
            Err(e) => Input::UnderlaySelected(Selected::Lost(format!("{e:#}"))),
            Ok(ext) if ext == self.facts.underlay => {
                // Another interface changed: the store may be reached over it.
                self.follow_store_route(false).await;
                Input::UnderlaySelected(Selected::Same)
            }
            Ok(ext) => {
                self.moved_to = Some(ext);
                Input::UnderlaySelected(Selected::Moved)
            }
        }
    }

    pub(super) fn underlay_lost(&mut self, why: String) {
        warn!(reason = %why, "no interface matches the underlay selection now; nothing is programmed until one does (watching the host's links and addresses)");
        self.tel.underlay_up.set(0);
        self.tel.update_ready(|r| r.underlay_lost = Some(why));
    }

    pub(super) fn underlay_back(&mut self) {
        info!("an interface matches the underlay selection again");
        self.tel.underlay_up.set(1);
        self.tel.update_ready(|r| r.underlay_lost = None);
    }

    /// Moves the node to the underlay `select_underlay` found: settings derived anew (the
    /// VXLAN source, parent and MTU; the PublicIP unless pinned), the device made on the
    /// new parent with our MAC. The lease follows in `Republish`.
    pub(super) async fn apply_underlay(&mut self) -> Input {
        let Some(ext) = self.moved_to.take() else {
            return Input::UnderlaySelected(Selected::Same);
        };
        let old = &self.facts.underlay;
        // The store's connection starts from one of these; its PublicIP may not have
        // moved with them (--public-ip), so the addresses decide.
        let readdressed = (old.addr, old.addr6) != (ext.addr, ext.addr6);
        info!(
            from = %old,
            to = %ext,
            "the underlay moved; moving the VXLAN device and the lease with it"
        );
        let (ipv6_only, pinned) = (self.req.conf.ipv4.is_none(), self.pinned);
        let pinned_ip = if ipv6_only {
            pinned.v6.map(IpAddr::V6)
        } else {
            pinned.v4.map(IpAddr::V4)
        };
        if let Some(pinned) = pinned_ip.filter(|ip| Some(*ip) != ext.local()) {
            if Some(pinned) == old.local() {
                // It was this node's own address, and is no longer: peers will send to an
                // address nobody here holds.
                warn!(public_ip = %pinned, now = ?ext.local(), "the PublicIP given (--public-ip, --public-ipv6 or the node-public-ip annotations) was this node's address and no longer is; it stays as given: change it if the node was renumbered");
            } else {
                info!(public_ip = %pinned, "the PublicIP stays as given (--public-ip, --public-ipv6 or the node-public-ip annotations)");
            }
        }
        let driver = twill_dataplane::offload::driver(&ext.name).ok();
        let facts = Facts {
            mac: self.dp.mac(Family::V4).or(self.facts.mac),
            mac6: self.dp.mac(Family::V6).or(self.facts.mac6),
            driver,
            kernel: self.facts.kernel,
            ..Facts::new(ext, pinned, ipv6_only)
        };
        let new = match settings::derive(&self.req.conf, &self.opts, &self.bgp, &facts) {
            Ok(s) => s,
            Err(e) => return Input::UnderlaySelected(Selected::Lost(format!("{e:#}"))),
        };
        self.dp.set_config(new.dataplane.clone());
        self.req.attrs = match self.device_attrs(&new).await {
            Ok(a) => a,
            Err(e) => return Input::UnderlaySelected(Selected::Lost(format!("{e:#}"))),
        };
        let attrs_changed = self.req.attrs != self.held.attrs;
        self.facts = facts;
        self.settings = new;
        announce_address(&self.facts.underlay);
        self.follow_store_route(readdressed).await;
        Input::UnderlayApplied { attrs_changed }
    }

    /// The address each of the store's servers is reached from now (`ip route get`, the
    /// name looked up again); `None` where it does not resolve within a second or has no
    /// route.
    pub(super) async fn store_sources(&self) -> Vec<Option<IpAddr>> {
        let nl = self.dp.netlink();
        let mut out = Vec::new();
        for server in self.store.servers() {
            let lookup = tokio::net::lookup_host(server.as_str());
            let ip = match tokio::time::timeout(Duration::from_secs(1), lookup).await {
                Ok(Ok(mut addrs)) => addrs.next().map(|a| a.ip()),
                _ => None,
            };
            let src = match ip {
                Some(ip) => nl.source_toward(ip).await.ok().flatten(),
                None => None,
            };
            out.push(src);
        }
        out
    }

    /// Makes the store's connections again when a server is now reached from another
    /// address than when they were made, or when `readdressed` (the underlay's addresses
    /// changed). Requests and watches on a connection from an address the node no longer
    /// holds go unanswered until a timeout (etcd's keep-alive, kube's 295 s); the
    /// address may be the underlay's or another interface's (a management NIC).
    pub(super) async fn follow_store_route(&mut self, readdressed: bool) {
        let now = self.store_sources().await;
        let moved = twill_store::route_moved(&self.store_sources, &now);
        if moved {
            info!(
                before = ?self.store_sources,
                now = ?now,
                "the node reaches {} from another address now; connecting anew",
                self.store.kind()
            );
        }
        self.store_sources = twill_store::route_remembered(&self.store_sources, &now);
        if !(moved || readdressed) {
            return;
        }
        if let Err(e) = self.store.reconnect().await {
            warn!(
                "reconnecting to {} from the new address: {e}",
                self.store.kind()
            );
        }
    }

    /// Publishes what the moved underlay changed in our lease (PublicIP, PublicIPv6),
    /// keeping the subnet; retried as start-up retries a store.
    pub(super) async fn republish(&mut self, cancel: &CancellationToken) -> Result<Input> {
        let tel = self.tel.clone();
        let beat = move || tel.beat();
        let patience = Patience {
            cancel,
            beat: &beat,
        };
        let (store, held, attrs) = (&self.store, &self.held, &self.req.attrs);
        let republished = patience
            .retry("republishing the lease", || store.republish(held, attrs))
            .await?;
        let Some(held) = republished else {
            return Ok(Input::Republished { ours: false });
        };
        self.held = held;
        let a = self.table.set_own(self.held.key, self.held.attrs.clone());
        self.note_rejections(&a);
        Ok(Input::Republished { ours: true })
    }
}

/// How long a move's announcement of our address is tried again while the kernel refuses
/// it as unroutable: an interface just up refuses IPv6 multicast for some tens of
/// milliseconds, and one the move found still down may come up meanwhile.
const ANNOUNCE_FOR: Duration = Duration::from_secs(2);
const ANNOUNCE_EVERY: Duration = Duration::from_millis(50);

/// Peers may hold our address at a MAC that just went (two NICs on one segment, a NIC made
/// again): tell them where it is now (gratuitous ARP, unsolicited neighbour advertisement)
/// rather than let their entries age out. In the background: nothing waits on it.
fn announce_address(ul: &twill_dataplane::ExtIface) {
    let index = ul.index;
    if let Some(ip) = ul.addr {
        spawn_announcement("gratuitous ARP", &ul.name, ip.into(), move || {
            twill_dataplane::garp::announce(index, ip)
        });
    }
    if let Some(ip) = ul.addr6 {
        spawn_announcement(
            "unsolicited neighbour advertisement",
            &ul.name,
            ip.into(),
            move || twill_dataplane::garp::advertise6(index, ip),
        );
    }
}

fn spawn_announcement(
    how: &'static str,
    dev: &str,
    ip: IpAddr,
    send: impl Fn() -> std::io::Result<()> + Send + 'static,
) {
    let dev = dev.to_string();
    tokio::spawn(async move {
        match retry_unroutable(send).await {
            Ok(()) => debug!(%ip, %dev, "announced the address by {how}"),
            Err(e) => warn!(%ip, %dev, "{how} not sent: {e}"),
        }
    });
}

/// `send` until it succeeds, fails otherwise than unroutable, or [`ANNOUNCE_FOR`] passes.
async fn retry_unroutable(send: impl Fn() -> std::io::Result<()>) -> std::io::Result<()> {
    let give_up = Instant::now() + ANNOUNCE_FOR;
    loop {
        match send() {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENETDOWN | libc::ENETUNREACH | libc::EADDRNOTAVAIL)
                ) && Instant::now() < give_up =>
            {
                tokio::time::sleep(ANNOUNCE_EVERY).await
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io::Error;

    use super::retry_unroutable;

    #[tokio::test]
    async fn an_announcement_is_tried_again_while_unroutable_and_not_after_another_error() {
        let calls = Cell::new(0);
        let sent = retry_unroutable(|| {
            calls.set(calls.get() + 1);
            match calls.get() {
                1 => Err(Error::from_raw_os_error(libc::ENETDOWN)),
                2 => Err(Error::from_raw_os_error(libc::ENETUNREACH)),
                _ => Ok(()),
            }
        })
        .await;
        assert!(sent.is_ok());
        assert_eq!(calls.get(), 3);

        calls.set(0);
        let refused = retry_unroutable(|| {
            calls.set(calls.get() + 1);
            Err(Error::from_raw_os_error(libc::EPERM))
        })
        .await;
        assert_eq!(refused.unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert_eq!(calls.get(), 1, "not retried");
    }
}
