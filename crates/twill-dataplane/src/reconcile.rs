//! One reconcile pass over everything the node owns in the kernel.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::{IpNetwork, Ipv4Network};
use tracing::{debug, info, warn};
use twill_store::{PeerEntry, PeerEvent, PeerTable};

use crate::change::ChangeFlag;
use crate::desired::{
    desired_peers, diff, diff_direct, incremental, split_direct, DirectOps, Ops, RouteForm,
};
use crate::firewall::{Firewall, FirewallError, RuleFlags, RuleSet, VxlanFlows};
use crate::netlink::{DeviceState, EntryError, Netlink, NetlinkError, VxlanSpec};
use twill_store::Mac;

/// What the node's data plane is made of, apart from the peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    pub vxlan: VxlanSpec,
    pub network: Ipv4Network,
    /// MASQUERADE, FORWARD and (for `vxlan`'s address and port) notrack rules.
    pub rules: RuleFlags,
    /// Networks exempt from masquerading (NonMasqueradeCIDRs, --no-masq-cidr), both
    /// families.
    pub no_masq: Vec<IpNetwork>,
    /// The IPv6 pod network (EnableIPv6): its MASQUERADE/FORWARD rules, with ip6tables or
    /// the `ip6 flannel-ipv6` table, once we hold an IPv6 subnet too.
    pub network6: Option<IpNetwork>,
    /// flannel's `Backend.DirectRouting`: peers on the underlay's own link get a plain
    /// route via their address instead of VXLAN entries.
    pub direct_routing: bool,
    /// How VXLAN peer routes are written (`--route-nexthops`).
    pub route_form: RouteForm,
    /// A blackhole route for our own subnet (`--ip-blackhole-route`).
    pub blackhole_route: bool,
}

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

pub struct Dataplane {
    nl: Netlink,
    cfg: DataplaneConfig,
    fw: Arc<dyn Firewall>,
    device: Option<DeviceState>,
    lease: Option<Ipv4Network>,
    lease6: Option<IpNetwork>,
    /// Raised by the firewall driver's monitor when the ruleset changed, if it has one.
    rules_changed: Option<Arc<ChangeFlag>>,
    /// The underlay's connected prefixes as of the last full pass (DirectRouting).
    onlink: Vec<Ipv4Network>,
    /// Without DirectRouting, direct routes are looked for once after start or a config
    /// change (left by DirectRouting before, or by flanneld), not on every pass.
    sweep_direct: bool,
    /// Blackhole routes are read after start, a config change or a new lease (to remove
    /// stale ones); in between a pass only re-adds ours if it went missing.
    sweep_blackholes: bool,
    /// IPv6 rules were wanted since start: when that stops, they are removed.
    had_v6_rules: bool,
}

impl Dataplane {
    pub fn new(nl: Netlink, cfg: DataplaneConfig, fw: Arc<dyn Firewall>) -> Self {
        let rules_changed = fw.watch_changes();
        Dataplane {
            nl,
            cfg,
            fw,
            device: None,
            lease: None,
            lease6: None,
            rules_changed,
            onlink: Vec::new(),
            sweep_direct: true,
            sweep_blackholes: true,
            had_v6_rules: false,
        }
    }

    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    pub fn config(&self) -> &DataplaneConfig {
        &self.cfg
    }

    /// New settings (after a config reload); the next pass applies them.
    pub fn set_config(&mut self, mut cfg: DataplaneConfig) {
        if cfg.vxlan.name != self.cfg.vxlan.name {
            // A new device (VNI changed), but peers keep our MAC.
            cfg.vxlan.mac = self.mac().or(cfg.vxlan.mac);
            self.device = None;
        }
        self.cfg = cfg;
        self.sweep_direct = true;
        self.sweep_blackholes = true;
    }

    pub fn device_name(&self) -> &str {
        &self.cfg.vxlan.name
    }

    pub fn mac(&self) -> Option<Mac> {
        self.device.as_ref().map(|d| d.mac)
    }

    /// Creates or adopts the device. Once we have a MAC it is kept for every recreation,
    /// because peers hold it in their FDB (flannel's recreate changes it, #869).
    pub async fn ensure_device(&mut self) -> Result<DeviceState, NetlinkError> {
        let mut spec = self.cfg.vxlan.clone();
        if let Some(d) = &self.device {
            spec.mac = Some(d.mac);
        }
        let st = self.nl.ensure_vxlan(&spec).await?;
        if st.created && self.device.is_some() {
            warn!(device = %spec.name, "VXLAN device was missing; recreated it");
        }
        self.device = Some(st.clone());
        Ok(st)
    }

    /// Records our lease and gives the device its address (the lease's network address).
    pub async fn set_lease(&mut self, subnet: Ipv4Network) -> Result<(), NetlinkError> {
        if self.lease != Some(subnet) {
            self.sweep_blackholes = true;
        }
        self.lease = Some(subnet);
        let st = match &self.device {
            Some(d) => d.clone(),
            None => self.ensure_device().await?,
        };
        self.nl
            .ensure_address(st.index, subnet.network(), self.cfg.network)
            .await
    }

    /// Our IPv6 subnet (dual stack), for the IPv6 rules; `None` takes them away.
    pub fn set_lease6(&mut self, subnet: Option<IpNetwork>) {
        self.lease6 = subnet.filter(|s| s.is_ipv6());
    }

    /// The rule sets to keep: IPv4's once we hold a lease, and IPv6's with an IPv6 network
    /// and subnet; without them the IPv6 chains and table are kept away.
    pub fn rules(&self) -> Vec<RuleSet> {
        let Some(lease) = self.lease else {
            return Vec::new();
        };
        let c = &self.cfg;
        let opts = c.rules.options(
            Some(VxlanFlows {
                local: c.vxlan.local,
                port: c.vxlan.port,
            }),
            &c.no_masq,
        );
        let mut sets = vec![RuleSet::new(
            IpNetwork::V4(c.network),
            IpNetwork::V4(lease),
            &opts,
        )];
        match (c.network6, self.lease6) {
            (Some(n6), Some(l6)) => sets.push(RuleSet::new(n6, l6, &opts)),
            // Only where IPv6 was on before (or flanneld left them): nothing to read on a
            // v4-only node that never had them.
            _ if self.had_v6_rules => sets.push(RuleSet::none_of(true)),
            _ => {}
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

    /// Applies peer events straight to the device we know, without reading the kernel or
    /// touching rules. `None` when that can't be done (no device yet, or with DirectRouting
    /// a peer on our link, whose route kind may change): run a full reconcile instead.
    async fn apply_incremental(
        &mut self,
        events: &[PeerEvent],
    ) -> Option<crate::netlink::ApplyReport> {
        let index = self.device.as_ref()?.index;
        if self.cfg.direct_routing && events.iter().any(|e| self.touches_onlink(e)) {
            return None;
        }
        let r = self
            .nl
            .apply(index, &incremental(events, self.cfg.route_form))
            .await;
        for f in &r.failed {
            warn!("kernel update failed, the next resync retries: {f}");
        }
        Some(r)
    }

    fn touches_onlink(&self, ev: &PeerEvent) -> bool {
        let onlink = |ip: Ipv4Addr| self.onlink.iter().any(|n| n.contains(ip));
        match ev {
            PeerEvent::Added(l) | PeerEvent::Removed(l) => onlink(l.entry.public_ip),
            PeerEvent::Changed { new, old } => {
                onlink(new.entry.public_ip) || onlink(old.entry.public_ip)
            }
        }
    }

    /// The one way peer events reach the kernel: straight to the device when that is
    /// enough, else (`full`: at start, after a re-list or a lease change; or when the
    /// events can't be applied alone) a full pass over every peer of `table`. `Some` is
    /// the full pass's report.
    pub async fn on_peer_events(
        &mut self,
        events: &[PeerEvent],
        table: &PeerTable,
        full: bool,
    ) -> Result<Option<ReconcileReport>, DataplaneError> {
        if !full && self.apply_incremental(events).await.is_some() {
            return Ok(None);
        }
        self.reconcile(&desired_peers(table.entries()))
            .await
            .map(Some)
    }

    /// Device, address, peers, rules: everything made to match, whatever happened to it.
    async fn reconcile(
        &mut self,
        desired: &BTreeMap<Ipv4Network, PeerEntry>,
    ) -> Result<ReconcileReport, DataplaneError> {
        self.pass(Some(desired)).await
    }

    /// Device, address and rules, without reading the peer entries: for a periodic pass
    /// when the netlink monitor saw nothing touch them. The rules too are only read when
    /// the firewall driver's monitor saw the ruleset change (or it has none). A report
    /// with `device_created` means the device is new and empty: follow with `reconcile`.
    pub async fn check(&mut self) -> Result<ReconcileReport, DataplaneError> {
        self.pass(None).await
    }

    /// The peers' entries. With DirectRouting, direct routes go in first (each replaces
    /// the subnet's VXLAN route, so a peer switching kinds is never without one) and stale
    /// ones go last (a VXLAN route that replaced one no longer matches its delete).
    async fn peers(
        &mut self,
        index: u32,
        desired: &BTreeMap<Ipv4Network, PeerEntry>,
        report: &mut ReconcileReport,
    ) -> Result<(), NetlinkError> {
        debug!("reading kernel state");
        let underlay = self.cfg.vxlan.dev_index;
        let mode = if self.cfg.direct_routing {
            Underlay::Direct(underlay, self.cfg.network)
        } else if self.sweep_direct {
            Underlay::Sweep(underlay, self.cfg.network)
        } else {
            Underlay::Skip
        };
        let form = Some(self.cfg.route_form);
        let plan = plan_peers(&self.nl, index, mode, desired, form).await?;
        if let Some(onlink) = plan.onlink {
            self.onlink = onlink;
        }
        report.direct_peers = plan.direct_peers;
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
            self.sweep_direct = false;
        }
        for r in results {
            report.entries_changed += r.applied;
            report.entries_failed.extend(r.failed);
        }
        Ok(())
    }

    /// Our subnet's blackhole route, as `--ip-blackhole-route` wants it; the changes made.
    async fn blackhole(&mut self, own: Ipv4Network) -> Result<usize, NetlinkError> {
        let want = self.cfg.blackhole_route;
        if !self.sweep_blackholes {
            // One request, and no notification when the route is there already.
            return Ok(if want {
                usize::from(self.nl.add_blackhole(own).await?)
            } else {
                0
            });
        }
        let found = self.nl.blackholes().await?;
        let plan = crate::blackhole::plan(&found, self.cfg.network, own, want);
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
        self.sweep_blackholes = false;
        Ok(changed)
    }

    /// The firewall driver's change flag, when it has a monitor (nftables, iptables-nft):
    /// raised when someone touched the ruleset, so the daemon can repair at once.
    pub fn rules_flag(&self) -> Option<Arc<ChangeFlag>> {
        self.rules_changed.clone()
    }

    pub fn device_index(&self) -> Option<u32> {
        self.device.as_ref().map(|d| d.index)
    }

    async fn pass(
        &mut self,
        desired: Option<&BTreeMap<Ipv4Network, PeerEntry>>,
    ) -> Result<ReconcileReport, DataplaneError> {
        let start = Instant::now();
        let mut report = ReconcileReport::default();
        let st = self.ensure_device().await?;
        report.device_created = st.created;
        if st.created {
            report
                .restored
                .push(("device", self.cfg.vxlan.name.clone()));
        }
        if let Some(lease) = self.lease {
            self.nl
                .ensure_address(st.index, lease.network(), self.cfg.network)
                .await?;
            match self.blackhole(lease).await {
                Ok(n) => {
                    report.entries_changed += n;
                    if n > 0 && self.cfg.blackhole_route {
                        report.restored.push(("blackhole", lease.to_string()));
                    }
                }
                Err(e) => report.entries_failed.push(e.into()),
            }
        }
        if let Some(desired) = desired {
            self.peers(st.index, desired, &mut report).await?;
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
                peers = desired.map(|d| d.len()),
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

/// How a pass treats routes on the underlay device (ifindex, overlay network).
#[derive(Debug, Clone, Copy)]
pub enum Underlay {
    /// Not read.
    Skip,
    /// DirectRouting off: every peer on VXLAN, direct routes in the network deleted.
    Sweep(u32, Ipv4Network),
    /// DirectRouting on: peers on the underlay's link get direct routes.
    Direct(u32, Ipv4Network),
}

/// What a pass would change: read from the kernel, nothing written.
#[derive(Debug, Default)]
pub struct PeerPlan {
    pub ops: Ops,
    pub direct: DirectOps,
    /// The underlay's connected prefixes, when they were read.
    pub onlink: Option<Vec<Ipv4Network>>,
    /// Peers reached by a direct route.
    pub direct_peers: usize,
    /// The route form the diff was taken for (given, or read off the kernel).
    pub form: RouteForm,
}

/// Reads the VXLAN device's entries (and the underlay's routes, per `mode`) and diffs them
/// against `desired`: the one place reconcile and `twilld doctor` compute the difference.
/// A `form` of `None` (doctor, which doesn't know the daemon's flags) takes the one the
/// kernel shows: nexthops on the device mean the daemon writes them.
pub async fn plan_peers(
    nl: &Netlink,
    index: u32,
    mode: Underlay,
    desired: &BTreeMap<Ipv4Network, PeerEntry>,
    form: Option<RouteForm>,
) -> Result<PeerPlan, NetlinkError> {
    let underlay = match mode {
        Underlay::Skip => None,
        Underlay::Sweep(d, n) | Underlay::Direct(d, n) => Some((d, n)),
    };
    let (actual, u) = nl.read_peers(index, underlay).await?;
    let form = form.unwrap_or(if actual.nexthops.is_empty() {
        RouteForm::Plain
    } else {
        RouteForm::Nexthop
    });
    let diff = |desired| diff(desired, &actual, form);
    let Some(u) = u else {
        return Ok(PeerPlan {
            ops: diff(desired),
            form,
            ..Default::default()
        });
    };
    let (ops, direct) = match mode {
        Underlay::Direct(..) => {
            let (vxlan, direct) = split_direct(desired, &u.onlink);
            (diff(&vxlan), direct)
        }
        // Each VXLAN route replaces a direct one; direct routes to subnets no longer
        // leased are deleted.
        _ => (diff(desired), BTreeMap::new()),
    };
    Ok(PeerPlan {
        ops,
        direct: diff_direct(&direct, &u.direct),
        onlink: Some(u.onlink),
        direct_peers: direct.len(),
        form,
    })
}
