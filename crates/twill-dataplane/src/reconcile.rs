//! One reconcile pass over everything the node owns in the kernel: per address family an
//! overlay (its VXLAN device, the device's address, one neighbour + FDB entry + route per
//! peer of that family), and the node's rules for both.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use tracing::{debug, info, warn};
use twill_store::{Family, LeaseKey, PeerEntry, PeerEvent, PeerTable};

use crate::change::ChangeFlag;
use crate::config::{DataplaneConfig, OverlayConfig, Transport};
use crate::desired::{desired_peers, incremental, incremental_direct, DirectOps};
use crate::firewall::{Firewall, FirewallError, RuleSet, VxlanFlows};
use crate::netlink::{ApplyReport, DeviceState, EntryError, Netlink, NetlinkError};
use crate::plan::{plan_peers, plan_routed, Underlay};
use twill_store::Mac;

#[derive(Debug, Default)]
pub struct ReconcileReport {
    pub device_created: bool,
    /// Kernel entries added or removed to match the peers.
    pub entries_changed: usize,
    pub entries_failed: Vec<EntryError>,
    /// Peers reached by a direct route (DirectRouting) rather than VXLAN entries.
    pub direct_peers: usize,
    pub rule_repairs: usize,
    pub rule_changes: Vec<String>,
    pub rules_error: Option<String>,
    pub duration: Duration,
    /// Every kernel object this pass put back or rewrote, as (kind, object): repairs,
    /// unless a lease event asked for the pass.
    pub restored: Vec<(&'static str, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
}

/// What a pass keeps between passes for one family.
#[derive(Debug)]
struct Overlay {
    device: Option<DeviceState>,
    lease: Option<IpNetwork>,
    /// The underlay's connected prefixes as of the last full pass (DirectRouting).
    onlink: Vec<IpNetwork>,
    /// Without DirectRouting, direct routes are looked for once after start or a config
    /// change (left by DirectRouting before, or by flanneld), not on every pass.
    sweep_direct: bool,
    /// Blackhole routes are read after start, a config change or a new lease (to remove
    /// stale ones); in between a pass only re-adds ours if it went missing.
    sweep_blackholes: bool,
}

impl Overlay {
    fn new() -> Self {
        Overlay {
            device: None,
            lease: None,
            onlink: Vec::new(),
            sweep_direct: true,
            sweep_blackholes: true,
        }
    }
}

pub struct Dataplane {
    nl: Netlink,
    cfg: DataplaneConfig,
    fw: Arc<dyn Firewall>,
    /// Per family, IPv4's first; kept whether or not the family is configured.
    state: [Overlay; 2],
    /// Raised by the firewall driver's monitor when the ruleset changed, if it has one.
    rules_changed: Option<Arc<ChangeFlag>>,
    /// IPv6 rules were wanted since start: when that stops, they are removed.
    had_v6_rules: bool,
}

fn slot(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

impl Dataplane {
    pub fn new(nl: Netlink, cfg: DataplaneConfig, fw: Arc<dyn Firewall>) -> Self {
        let rules_changed = fw.watch_changes();
        Dataplane {
            nl,
            cfg,
            fw,
            state: [Overlay::new(), Overlay::new()],
            rules_changed,
            had_v6_rules: false,
        }
    }

    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    pub fn config(&self) -> &DataplaneConfig {
        &self.cfg
    }

    fn st(&self, f: Family) -> &Overlay {
        &self.state[slot(f)]
    }

    fn st_mut(&mut self, f: Family) -> &mut Overlay {
        &mut self.state[slot(f)]
    }

    /// New settings (after a config reload); the next pass applies them.
    pub fn set_config(&mut self, mut cfg: DataplaneConfig) {
        for f in Family::BOTH {
            let old = self
                .cfg
                .overlay(f)
                .and_then(|o| o.device().map(str::to_string));
            let mac = self.mac(f);
            match cfg.overlay_mut(f) {
                Some(o) if old.as_deref() != o.device() => {
                    // A new device (VNI changed, or vxlan after host-gw), but peers keep
                    // our MAC; or none at all (host-gw after vxlan).
                    if let Transport::Vxlan(v) = &mut o.transport {
                        v.mac = mac.or(v.mac);
                    }
                    self.st_mut(f).device = None;
                }
                Some(_) => {}
                None => *self.st_mut(f) = Overlay::new(),
            }
        }
        self.cfg = cfg;
        for st in &mut self.state {
            st.sweep_direct = true;
            st.sweep_blackholes = true;
        }
    }

    /// The device of family `f`'s overlay, when it has one.
    pub fn device_name(&self, f: Family) -> Option<&str> {
        self.cfg.overlay(f).and_then(OverlayConfig::device)
    }

    /// Every overlay device, with its ifindex once known: what a monitor watches.
    pub fn devices(&self) -> Vec<(String, Option<u32>)> {
        self.cfg
            .overlays()
            .filter_map(|(f, o)| Some((o.device()?.to_string(), self.device_index(f))))
            .collect()
    }

    pub fn mac(&self, f: Family) -> Option<Mac> {
        self.st(f).device.as_ref().map(|d| d.mac)
    }

    pub fn device_index(&self, f: Family) -> Option<u32> {
        self.st(f).device.as_ref().map(|d| d.index)
    }

    /// The indexes of every overlay device known.
    pub fn device_indices(&self) -> Vec<u32> {
        Family::BOTH
            .into_iter()
            .filter_map(|f| self.device_index(f))
            .collect()
    }

    /// Creates or adopts family `f`'s device. Once we have a MAC it is kept for every
    /// recreation, because peers hold it in their FDB (flannel's recreate changes it,
    /// #869).
    pub async fn ensure_device(&mut self, f: Family) -> Result<DeviceState, NetlinkError> {
        let Some(spec) = self.cfg.overlay(f).and_then(OverlayConfig::vxlan) else {
            return Err(NetlinkError::Unexpected {
                op: format!("ensure the {f:?} VXLAN device"),
                why: "that family has no VXLAN overlay",
            });
        };
        let mut spec = spec.clone();
        if let Some(d) = &self.st(f).device {
            spec.mac = Some(d.mac);
        }
        let had = self.st(f).device.is_some();
        let st = self.nl.ensure_vxlan(&spec).await?;
        if st.created && had {
            warn!(device = %spec.name, "VXLAN device was missing; recreated it");
        }
        self.st_mut(f).device = Some(st.clone());
        Ok(st)
    }

    /// The device's transmit checksum offload as configured: `true` when it had to be
    /// changed (someone, or a recreation, turned it back). A failure is logged; the next
    /// pass tries again.
    fn ensure_offload(&self, f: Family) -> bool {
        let Some(spec) = self.cfg.overlay(f).and_then(OverlayConfig::vxlan) else {
            return false;
        };
        let Some(want) = spec.tx_checksum else {
            return false;
        };
        let fix = || -> std::io::Result<bool> {
            if crate::offload::tx_checksum(&spec.name)? == want {
                return Ok(false);
            }
            crate::offload::set_tx_checksum(&spec.name, want)?;
            Ok(true)
        };
        match fix() {
            Ok(changed) => {
                if changed {
                    info!(device = %spec.name, on = want, "transmit checksum offload set");
                }
                changed
            }
            Err(e) => {
                warn!(device = %spec.name, "transmit checksum offload not set: {e}");
                false
            }
        }
    }

    /// Every configured overlay's device: what start-up creates before taking a lease
    /// (the lease advertises their MACs).
    /// Nothing half-done: when one fails, those this call created go again.
    pub async fn ensure_devices(&mut self) -> Result<Vec<(Family, DeviceState)>, NetlinkError> {
        let mut out: Vec<(Family, DeviceState)> = Vec::new();
        for f in self.vxlan_families() {
            match self.ensure_device(f).await {
                Ok(d) => {
                    self.ensure_offload(f);
                    out.push((f, d))
                }
                Err(e) => {
                    self.remove_created(&out).await;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Deletes those of `devices` (as `ensure_devices` gave them) that were created rather
    /// than adopted: a start that cannot go on leaves no device of its own behind. A
    /// failed delete is logged; the others are still tried.
    pub async fn remove_created(&mut self, devices: &[(Family, DeviceState)]) {
        for (f, d) in devices.iter().filter(|(_, d)| d.created) {
            if let Some(name) = self.device_name(*f).map(str::to_string) {
                if let Err(e) = self.nl.delete_link(&name).await {
                    warn!(index = d.index, "removing {name}: {e}");
                }
            }
            self.st_mut(*f).device = None;
        }
    }

    fn families(&self) -> Vec<Family> {
        self.cfg.overlays().map(|(f, _)| f).collect()
    }

    fn vxlan_families(&self) -> Vec<Family> {
        self.cfg
            .overlays()
            .filter(|(_, o)| o.vxlan().is_some())
            .map(|(f, _)| f)
            .collect()
    }

    /// Records our lease and gives each device its address (its family's subnet's network
    /// address). A family whose overlay is off, has no device (host-gw) or which the lease
    /// lacks gets none.
    pub async fn set_lease(&mut self, key: &LeaseKey) -> Result<(), NetlinkError> {
        for f in Family::BOTH {
            let subnet = match f {
                Family::V4 => key.v4,
                Family::V6 => key.v6,
            }
            .filter(|n| Family::of(n) == f);
            let Some(o) = self.cfg.overlay(f) else {
                self.st_mut(f).lease = None;
                continue;
            };
            let (network, vxlan) = (o.network, o.vxlan().is_some());
            let st = self.st_mut(f);
            if st.lease != subnet {
                st.sweep_blackholes = true;
            }
            st.lease = subnet;
            let Some(subnet) = subnet.filter(|_| vxlan) else {
                continue;
            };
            let dev = match &self.st(f).device {
                Some(d) => d.clone(),
                None => self.ensure_device(f).await?,
            };
            self.nl
                .ensure_address(dev.index, subnet.network(), network)
                .await?;
        }
        Ok(())
    }

    /// The rule sets to keep: each family's once it has an overlay and a subnet; without
    /// them the IPv6 chains and table are kept away.
    pub fn rules(&self) -> Vec<RuleSet> {
        let c = &self.cfg;
        let mut sets = Vec::new();
        let mut v6 = false;
        for (f, o) in c.overlays() {
            let Some(lease) = self.st(f).lease else {
                continue;
            };
            let flows = o.vxlan().map(|v| VxlanFlows {
                local: v.local,
                port: v.port,
            });
            let opts = c.rules.options(flows, &c.no_masq);
            sets.push(RuleSet::new(o.network, lease, &opts));
            v6 |= f.is_v6();
        }
        // Only where IPv6 was on before (or flanneld left them): nothing to read on a
        // v4-only node that never had them.
        if !v6 && self.had_v6_rules {
            sets.push(RuleSet::none_of(true));
        }
        sets
    }

    /// Rules only (blocking tools run off the async threads). Every family is attempted
    /// even if one fails; every failure is reported.
    pub async fn ensure_rules(&mut self) -> Result<crate::firewall::RulesReport, FirewallError> {
        let sets = self.rules();
        self.had_v6_rules = sets
            .iter()
            .any(|r| r.intent.v6() && r.chains.iter().any(|c| c.rules.is_some()));
        let fw = self.fw.clone();
        tokio::task::spawn_blocking(move || {
            let mut report = crate::firewall::RulesReport::default();
            let mut errors = Vec::new();
            for rules in &sets {
                match fw.ensure(rules) {
                    Ok(r) => {
                        report.repairs += r.repairs;
                        report.changes.extend(r.changes);
                    }
                    Err(e) => errors.push(e),
                }
            }
            match FirewallError::all(errors) {
                Some(e) => Err(e),
                None => Ok(report),
            }
        })
        .await?
    }

    /// Applies peer events straight to the devices we know, without reading the kernel or
    /// touching rules. `false` when that can't be done (a device not there yet, or with
    /// DirectRouting a peer on our link, whose route kind may change): run a full
    /// reconcile instead.
    async fn apply_incremental(&mut self, events: &[PeerEvent]) -> bool {
        let mut plans = Vec::new();
        let mut routed = Vec::new();
        for (f, o) in self.cfg.overlays() {
            if let Transport::HostGw { underlay } = o.transport {
                routed.push((underlay, incremental_direct(events, f)));
                continue;
            }
            let Some(index) = self.device_index(f) else {
                return false;
            };
            if self.cfg.direct_routing && events.iter().any(|e| self.touches_onlink(f, e)) {
                return false;
            }
            plans.push((index, incremental(events, self.cfg.route_form, f)));
        }
        for (index, ops) in plans {
            if ops.is_empty() {
                continue;
            }
            let r = self.nl.apply(index, &ops).await;
            for f in &r.failed {
                warn!("kernel update failed, the next resync retries: {f}");
            }
        }
        for (underlay, ops) in routed {
            for r in self.apply_direct(underlay, &ops).await {
                for f in &r.failed {
                    warn!("kernel update failed, the next resync retries: {f}");
                }
            }
        }
        true
    }

    /// Direct routes in (each replaces what the subnet had), then stale ones out.
    async fn apply_direct(&self, underlay: u32, ops: &DirectOps) -> Vec<ApplyReport> {
        let mut out = Vec::new();
        if !ops.add.is_empty() {
            out.push(self.nl.add_direct_routes(underlay, &ops.add).await);
        }
        if !ops.del.is_empty() {
            out.push(self.nl.del_direct_routes(underlay, &ops.del).await);
        }
        out
    }

    fn touches_onlink(&self, f: Family, ev: &PeerEvent) -> bool {
        let onlink = &self.st(f).onlink;
        let on = |l: &twill_store::Lease| {
            l.entries
                .get(f)
                .is_some_and(|e| onlink.iter().any(|n| n.contains(e.public_ip)))
        };
        match ev {
            PeerEvent::Added(l) | PeerEvent::Removed(l) => on(l),
            PeerEvent::Changed { new, old } => on(new) || on(old),
        }
    }

    /// The one way peer events reach the kernel: straight to the devices when that is
    /// enough, else (`full`: at start, after a re-list or a lease change; or when the
    /// events can't be applied alone) a full pass over every peer of `table`. `Some` is
    /// the full pass's report.
    pub async fn on_peer_events(
        &mut self,
        events: &[PeerEvent],
        table: &PeerTable,
        full: bool,
    ) -> Result<Option<ReconcileReport>, DataplaneError> {
        if !full && self.apply_incremental(events).await {
            return Ok(None);
        }
        // Each family's peers, split once: a full pass at 10 000 peers should not copy
        // the table per device.
        let (v4, v6): (Vec<PeerEntry>, Vec<PeerEntry>) =
            table.entries().partition(|e| e.family() == Family::V4);
        self.pass(Some(&[desired_peers(v4), desired_peers(v6)]))
            .await
            .map(Some)
    }

    /// Devices, addresses and rules, without reading the peer entries: for a periodic
    /// pass when the netlink monitor saw nothing touch them. The rules too are only read
    /// when the firewall driver's monitor saw the ruleset change (or it has none). A
    /// report with `device_created` means a device is new and empty: follow with a full
    /// pass.
    pub async fn check(&mut self) -> Result<ReconcileReport, DataplaneError> {
        self.pass(None).await
    }

    /// Family `f`'s peers' entries. With DirectRouting, direct routes go in first (each
    /// replaces the subnet's VXLAN route, so a peer switching kinds is never without one)
    /// and stale ones go last (a VXLAN route that replaced one no longer matches its
    /// delete).
    async fn peers(
        &mut self,
        f: Family,
        index: u32,
        desired: &BTreeMap<IpNetwork, PeerEntry>,
        report: &mut ReconcileReport,
    ) -> Result<(), NetlinkError> {
        debug!(family = ?f, "reading kernel state");
        let Some(o) = self.cfg.overlay(f) else {
            return Ok(());
        };
        let (underlay, network) = (o.underlay(), o.network);
        let mode = if self.cfg.direct_routing {
            Underlay::Direct(underlay, network)
        } else if self.st(f).sweep_direct {
            Underlay::Sweep(underlay, network)
        } else {
            Underlay::Skip
        };
        let form = Some(self.cfg.route_form);
        let plan = plan_peers(&self.nl, index, f, mode, desired, form).await?;
        if let Some(onlink) = plan.onlink {
            self.st_mut(f).onlink = onlink;
        }
        report.direct_peers += plan.direct_peers;
        debug!(ops = plan.ops.len(), direct = plan.direct.len(), "applying");
        report.restored.extend(plan.ops.added());
        report.restored.extend(
            plan.direct
                .add
                .iter()
                .map(|(n, _)| ("direct-route", n.to_string())),
        );
        let mut results = Vec::new();
        if !plan.direct.add.is_empty() {
            results.push(self.nl.add_direct_routes(underlay, &plan.direct.add).await);
        }
        if !plan.ops.is_empty() {
            results.push(self.nl.apply(index, &plan.ops).await);
        }
        // A sweep is done once its deletes went through; a failed one is retried next pass.
        let mut swept = true;
        if !plan.direct.del.is_empty() {
            let r = self.nl.del_direct_routes(underlay, &plan.direct.del).await;
            swept = r.failed.is_empty();
            results.push(r);
        }
        if matches!(mode, Underlay::Sweep(..)) && swept {
            self.st_mut(f).sweep_direct = false;
        }
        for r in results {
            report.entries_changed += r.applied;
            report.entries_failed.extend(r.failed);
        }
        Ok(())
    }

    /// host-gw: family `f`'s peers as routes via their PublicIP on the underlay.
    async fn routed_peers(
        &mut self,
        f: Family,
        desired: &BTreeMap<IpNetwork, PeerEntry>,
        report: &mut ReconcileReport,
    ) -> Result<(), NetlinkError> {
        let Some(o) = self.cfg.overlay(f) else {
            return Ok(());
        };
        let underlay = o.underlay();
        let plan = plan_routed(&self.nl, underlay, o.network, desired).await?;
        if let Some(onlink) = plan.onlink {
            self.st_mut(f).onlink = onlink;
        }
        report.direct_peers += plan.direct_peers;
        report.restored.extend(
            plan.direct
                .add
                .iter()
                .map(|(n, _)| ("route", n.to_string())),
        );
        for r in self.apply_direct(underlay, &plan.direct).await {
            report.entries_changed += r.applied;
            report.entries_failed.extend(r.failed);
        }
        Ok(())
    }

    /// Our subnet's blackhole route in family `f`, as `--ip-blackhole-route` wants it;
    /// the changes made.
    async fn blackhole(&mut self, f: Family, own: IpNetwork) -> Result<usize, NetlinkError> {
        let Some(network) = self.cfg.overlay(f).map(|o| o.network) else {
            return Ok(0);
        };
        let want = self.cfg.blackhole_route;
        if !self.st(f).sweep_blackholes {
            // One request, and no notification when the route is there already.
            return Ok(if want {
                usize::from(self.nl.add_blackhole(own).await?)
            } else {
                0
            });
        }
        let found = self.nl.blackholes(f).await?;
        let plan = crate::blackhole::plan(&found, network, own, want);
        let mut changed = 0;
        // Ours in first, so the subnet is never without one while flanneld's goes.
        if let Some(net) = plan.add {
            changed += usize::from(self.nl.add_blackhole(net).await?);
        }
        for b in plan.del {
            self.nl.del_blackhole(b).await?;
            info!(route = %b, "removed a stale blackhole route");
            changed += 1;
        }
        self.st_mut(f).sweep_blackholes = false;
        Ok(changed)
    }

    /// The firewall driver's change flag, when it has a monitor (nftables, iptables-nft):
    /// raised when someone touched the ruleset, so the daemon can repair at once.
    pub fn rules_flag(&self) -> Option<Arc<ChangeFlag>> {
        self.rules_changed.clone()
    }

    /// One family's device, address, blackhole and (with `desired`) peers.
    async fn pass_family(
        &mut self,
        f: Family,
        desired: Option<&BTreeMap<IpNetwork, PeerEntry>>,
        report: &mut ReconcileReport,
    ) -> Result<(), DataplaneError> {
        let Some(o) = self.cfg.overlay(f) else {
            return Ok(());
        };
        let (name, network) = (o.device().map(str::to_string), o.network);
        let mut index = None;
        if let Some(name) = name {
            let st = self.ensure_device(f).await?;
            if st.created {
                report.device_created = true;
                report.restored.push(("device", name.clone()));
            }
            if self.ensure_offload(f) && !st.created {
                report.restored.push(("tx-checksum", name));
            }
            index = Some(st.index);
        }
        if let Some(lease) = self.st(f).lease {
            if let Some(index) = index {
                self.nl
                    .ensure_address(index, lease.network(), network)
                    .await?;
            }
            match self.blackhole(f, lease).await {
                Ok(n) => {
                    report.entries_changed += n;
                    if n > 0 && self.cfg.blackhole_route {
                        report.restored.push(("blackhole", lease.to_string()));
                    }
                }
                Err(e) => report.entries_failed.push(e.into()),
            }
        }
        match (desired, index) {
            (Some(desired), Some(index)) => self.peers(f, index, desired, report).await?,
            (Some(desired), None) => self.routed_peers(f, desired, report).await?,
            (None, _) => {}
        }
        Ok(())
    }

    /// `desired`: the peers of each family, IPv4's first (as `slot` orders them).
    async fn pass(
        &mut self,
        desired: Option<&[BTreeMap<IpNetwork, PeerEntry>; 2]>,
    ) -> Result<ReconcileReport, DataplaneError> {
        let start = Instant::now();
        let mut report = ReconcileReport::default();
        for f in self.families() {
            self.pass_family(f, desired.map(|d| &d[slot(f)]), &mut report)
                .await?;
        }
        // Taken before reading, so a change racing the check is seen next time.
        let rules_touched = self.rules_changed.as_ref().is_none_or(|f| f.take());
        if desired.is_some() || rules_touched {
            debug!("checking rules");
            match self.ensure_rules().await {
                Ok(r) => {
                    report.rule_repairs = r.repairs;
                    report
                        .restored
                        .extend(r.changes.iter().map(|c| ("rules", c.clone())));
                    report.rule_changes = r.changes;
                }
                Err(e) => {
                    report.rules_error = Some(e.to_string());
                    // A failed write may change nothing the monitor sees: retry next pass.
                    if let Some(f) = &self.rules_changed {
                        f.mark();
                    }
                }
            }
        }
        report.duration = start.elapsed();
        if report.entries_changed > 0 || report.rule_repairs > 0 || report.device_created {
            info!(
                peers = desired.map(|d| d[0].len() + d[1].len()),
                entries_changed = report.entries_changed,
                rule_repairs = report.rule_repairs,
                rule_changes = ?report.rule_changes,
                device_created = report.device_created,
                took_ms = report.duration.as_millis() as u64,
                "reconciled"
            );
        }
        for f in &report.entries_failed {
            warn!("kernel update failed, will retry: {f}");
        }
        if let Some(e) = &report.rules_error {
            warn!("rules not in place, will retry: {e}");
        }
        Ok(report)
    }
}
