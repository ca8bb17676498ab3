//! The node daemon: start-up in flannel's order (device → lease → rules → peers →
//! subnet.env), then one loop that reconciles on every store event, on a timer, and after
//! any lease change. Nothing is torn down on exit, so pods keep working across restarts.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::{IpNetwork, Ipv4Network};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use twill_config::{write_atomic, NetConf, SubnetEnv, VXLAN_OVERHEAD_V4};
use twill_dataplane::{
    select_underlay, watch_device, Dataplane, DataplaneConfig, DataplaneError, DeviceMonitor,
    Firewall, Iptables, Mac, Netlink, Nftables, ReconcileReport, RouteForm, RuleSet, VxlanSpec,
    NFT_TABLE, NFT_TABLE6,
};
use twill_etcd::EtcdStore;
use twill_kube::KubeStore;
use twill_store::{
    AcquireRequest, Applied, Expiry, HeldLease, LeaseAttrs, LeaseKey, PeerEvent, PeerTable,
    RenewOutcome, StoreError, SubnetManager, WatchEvent,
};

use crate::cli::Cli;
use crate::policy::lease_policy;
use crate::repairs::{self, Repairs};
use crate::schedule;
use crate::telemetry::Telemetry;
use twill_bgp as bgp;

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);
const WAITING_LOG_EVERY: Duration = Duration::from_secs(10);

/// Where net-conf.json comes from: a file (always in Kubernetes mode), or etcd's
/// `<prefix>/config`.
enum ConfigSource {
    /// A file, with the pod network(s) detected from the cluster for a file without
    /// `Network` (Kubernetes mode), filled in on every read.
    File(std::path::PathBuf, Vec<IpNetwork>),
    Etcd(Box<EtcdStore>),
}

impl ConfigSource {
    async fn load(&self) -> Result<NetConf> {
        match self {
            ConfigSource::File(p, detected) => load_file_config(p, detected),
            ConfigSource::Etcd(store) => match store.get_config().await? {
                Some(text) => parse_conf(&text, &format!("etcd key {}", store.config_key())),
                None => Err(anyhow!("etcd key {} is missing", store.config_key())),
            },
        }
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    let cancel = CancellationToken::new();
    let reloads = spawn_signal_handler(cancel.clone());
    // Liveness allows for a few missed resyncs before declaring the loop stuck.
    let window = Duration::from_secs((cli.iptables_resync * 3).max(30));
    let tel = Arc::new(Telemetry::new(window));
    let addr = |ip, port| (port != 0).then(|| std::net::SocketAddr::new(ip, port));
    for (a, paths) in crate::http::listeners(
        addr(cli.healthz_ip, cli.healthz_port),
        addr(cli.metrics_ip, cli.metrics_port),
    ) {
        crate::http::serve(a, paths, tel.clone(), cancel.clone()).await?;
    }

    if cli.kube_subnet_mgr {
        let path = cli
            .config_file()
            .expect("Kubernetes mode always reads a file");
        // A bad file fails before anything touches the store or the kernel; one that
        // leaves Network to the cluster is checked once it is filled in.
        let doc = read_config_doc(&path)?;
        let detect = twill_kube::needs_detection(&doc);
        if !detect {
            load_file_config(&path, &[])?;
        }
        let opts = cli.kube_options(twill_kube::enables_ipv6(&doc));
        let store = retry("connecting to the Kubernetes API", &cancel, &tel, || {
            KubeStore::connect(&opts)
        })
        .await?;
        info!(node = store.node_name(), "Kubernetes subnet manager");
        let detected = if detect {
            let (nets, from) = retry("detecting the cluster's pod network", &cancel, &tel, || {
                store.detect_pod_networks()
            })
            .await?;
            let shown: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
            info!(networks = %shown.join(","), %from, "{} has no Network: taken from the cluster", path.display());
            nets
        } else {
            Vec::new()
        };
        let conf = load_file_config(&path, &detected)?;
        // node-public-ip on our node stands in for --public-ip.
        let hint = match cli.public_ip {
            Some(_) => None,
            None => retry("reading our node", &cancel, &tel, || store.node_public_ip()).await?,
        };
        // Per-node BGP settings on our node object, under the flags'.
        let mut cli = cli;
        let node = retry("reading our node", &cancel, &tel, || store.node()).await?;
        let (asn, peers) = bgp::node_overrides(&node.metadata.annotations.unwrap_or_default())?;
        cli.bgp_asn = cli.bgp_asn.or(asn);
        if cli.bgp_peers.is_none() {
            cli.bgp_peers = peers.map(crate::cli::BgpPeers);
        }
        let source = ConfigSource::File(path, detected);
        return start(Startup {
            cli,
            store,
            config: source,
            conf,
            public_ip_hint: hint,
            cancel,
            tel,
            reloads,
        })
        .await;
    }
    // A bad file fails before anything touches the store or the kernel.
    let file_conf = match cli.config_file() {
        Some(p) => Some((load_file_config(&p, &[])?, p)),
        None => None,
    };
    let store = connect_store(&cli, &cancel, &tel).await?;
    let (conf, source) = match file_conf {
        Some((c, p)) => (c, ConfigSource::File(p, Vec::new())),
        None => (
            wait_for_etcd_config(&store, &cancel, &tel).await?,
            ConfigSource::Etcd(Box::new(store.clone())),
        ),
    };
    start(Startup {
        cli,
        store,
        config: source,
        conf,
        public_ip_hint: None,
        cancel,
        tel,
        reloads,
    })
    .await
}

/// Everything a node starts from, whichever store it runs on.
struct Startup<S> {
    cli: Cli,
    store: S,
    /// Where SIGHUP re-reads net-conf.json from.
    config: ConfigSource,
    conf: NetConf,
    /// Our node's `node-public-ip` annotation (Kubernetes), standing in for --public-ip.
    public_ip_hint: Option<std::net::Ipv4Addr>,
    cancel: CancellationToken,
    tel: Arc<Telemetry>,
    reloads: mpsc::UnboundedReceiver<()>,
}

/// Brings the node up on any store and runs it until cancelled.
async fn start<S: SubnetManager>(up: Startup<S>) -> Result<()> {
    let Startup {
        cli,
        store,
        config,
        conf,
        public_ip_hint,
        cancel,
        tel,
        reloads,
    } = up;
    tel.update_ready(|r| r.config = true);
    // Settled before anything is created: a bad BGP setting leaves nothing behind.
    let bgp = bgp::effective(&conf, &cli.bgp_options())?;
    if conf.ipv6.is_some() {
        warn!("net-conf.json: EnableIPv6: an IPv6 subnet is leased and written to subnet.env, but the IPv6 overlay device is not built yet");
    } else if let Some(ip) = cli.public_ipv6 {
        warn!(%ip, "--public-ipv6 is ignored: net-conf.json does not enable IPv6");
    }
    let Some(IpNetwork::V4(network)) = conf.ipv4.as_ref().map(|r| r.network) else {
        bail!("net-conf.json: EnableIPv4=false: IPv6-only overlays are not supported yet");
    };

    let nl = Netlink::connect().context("opening a netlink socket")?;
    let ext = select_underlay(&nl, &cli.iface_selection()).await?;
    let public_ip = cli.public_ip.or(public_ip_hint).unwrap_or(ext.addr);
    let underlay_mtu = conf.backend.mtu.unwrap_or(ext.mtu);
    let mtu = underlay_mtu
        .checked_sub(VXLAN_OVERHEAD_V4)
        .filter(|m| *m >= 68)
        .ok_or_else(|| {
            anyhow!(
                "underlay MTU {underlay_mtu} of {} leaves no room for VXLAN",
                ext.name
            )
        })?;
    info!(iface = %ext.name, local = %ext.addr, %public_ip, mtu, "underlay selected");

    let previous = read_previous(&cli.subnet_file);
    let vni = conf.backend.vni;
    let spec = VxlanSpec {
        name: format!("flannel.{vni}"),
        vni,
        local: ext.addr,
        dev_index: ext.index,
        port: conf.backend.port,
        gbp: conf.backend.gbp,
        learning: conf.backend.learning,
        mtu,
        // After a reboot the device is gone but our lease still advertises a MAC: reuse
        // it, so peers need no FDB update.
        mac: advertised_mac(&store, public_ip).await,
    };
    let fw = firewall(conf.enable_nftables)?;
    let dp_cfg = DataplaneConfig {
        vxlan: spec,
        network,
        rules: cli.rule_flags(),
        no_masq: conf.exempt_from_masquerade(&cli.no_masq_cidr),
        network6: conf.ipv6.as_ref().map(|r| r.network),
        direct_routing: conf.backend.direct_routing,
        route_form: if cli.route_nexthops {
            RouteForm::Nexthop
        } else {
            RouteForm::Plain
        },
        blackhole_route: cli.ip_blackhole_route,
    };
    let mut dp = Dataplane::new(nl, dp_cfg, fw);
    let dev = dp
        .ensure_device()
        .await
        .context("creating the VXLAN device")?;
    tel.update_ready(|r| r.device = true);

    let req = AcquireRequest {
        conf: conf.clone(),
        attrs: LeaseAttrs {
            // As flanneld: --public-ipv6, else the underlay interface's IPv6 address.
            public_ipv6: cli
                .public_ipv6
                .or(ext.addr6)
                .filter(|_| conf.ipv6.is_some()),
            ..LeaseAttrs::vxlan(public_ip, vni, &dev.mac.to_string())
        },
        previous,
        ttl: cli.subnet_lease_ttl,
    };
    let held = match acquire(&store, &req, &cancel, &tel).await {
        Ok(h) => h,
        Err(e) => {
            // Nothing half-done: a device this run created is of no use without a lease.
            if dev.created {
                if let Err(de) = dp.netlink().delete_link(&format!("flannel.{vni}")).await {
                    warn!("removing flannel.{vni} after the failed start: {de}");
                }
            }
            return Err(e);
        }
    };
    let subnet = v4_subnet(&held)?;
    tel.update_ready(|r| r.lease = true);
    tel.lease_expiry.set(seconds_left(held.expiry));
    dp.set_lease(subnet)
        .await
        .context("addressing the VXLAN device")?;
    dp.set_lease6(held.key.v6);
    match dp.ensure_rules().await {
        Ok(_) => tel.update_ready(|r| r.rules = true),
        Err(e) => warn!("rules not in place yet, will retry every resync: {e}"),
    }
    let kube = cli.kube_subnet_mgr.then_some(&held.key);
    let policy = lease_policy(dp.netlink(), dp.device_index(), &conf, kube).await?;
    let mut table = PeerTable::with_policy(policy);
    table.set_own(held.key, held.attrs.clone());
    let mut node = Node {
        store,
        dp,
        table,
        held,
        req,
        network,
        mtu,
        cli,
        config,
        ready: false,
        notified: false,
        last_full: Instant::now(),
        tel,
        store_errors_seen: 0,
        iface_mtu: ext.mtu,
        reloads,
        repairs: Repairs::default(),
        bgp,
        // Started by the first announce() when BGP is configured.
        announce: None,
        underlay: (ext.addr, ext.addr6),
    };
    node.announce();
    node.run_loop(cancel).await
}

struct Node<S> {
    store: S,
    dp: Dataplane,
    table: PeerTable,
    held: HeldLease,
    req: AcquireRequest,
    network: Ipv4Network,
    mtu: u32,
    cli: Cli,
    config: ConfigSource,
    ready: bool,
    /// systemd has been told READY=1.
    notified: bool,
    /// When the kernel's entries were last read and diffed.
    last_full: Instant,
    tel: Arc<Telemetry>,
    store_errors_seen: u64,
    /// The underlay interface's MTU, the default when Backend.MTU is unset.
    iface_mtu: u32,
    reloads: mpsc::UnboundedReceiver<()>,
    /// Objects put back by repairs, to tell a fight with another agent.
    repairs: Repairs,
    /// This node's BGP settings (net-conf.json's, under the per-node overrides).
    bgp: Option<twill_config::BgpConf>,
    /// What BIRD is to announce, once BGP has been configured.
    announce: Option<watch::Sender<Option<(twill_config::BgpConf, bgp::Announce)>>>,
    /// The underlay's addresses: BGP sessions are made from them.
    underlay: (std::net::Ipv4Addr, Option<std::net::Ipv6Addr>),
}

/// Why a reconcile runs: only the periodic ones count what they fix as repairs (after an
/// event, changes are the point).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Event,
    Resync,
    DeviceDeleted,
    /// The kernel said something of ours was removed.
    Removed,
}

/// A repair waiting out its coalescing window: what to run when it is due.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Entries were removed: read and diff everything.
    Full,
    /// Only the ruleset changed: device, address and rules.
    Rules,
}

impl<S: SubnetManager> Node<S> {
    async fn run_loop(&mut self, cancel: CancellationToken) -> Result<()> {
        let (tx, mut rx) = mpsc::channel(64);
        let watch_cancel = cancel.child_token();
        let store = self.store.clone();
        let wc = watch_cancel.clone();
        tokio::spawn(async move { store.watch(tx, wc).await });

        let mut resync = tokio::time::interval(Duration::from_secs(self.cli.iptables_resync));
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew_at = self.next_renewal();
        let mut monitor = match watch_device(self.dp.device_name().to_string()) {
            Ok(m) => Some(m),
            Err(e) => {
                warn!("no netlink monitor ({e}); a deleted device is repaired at the next resync, and every resync reads the kernel");
                None
            }
        };
        // A recreated device's index the monitor learns from RTM_NEWLINK itself.
        if let (Some(m), Some(i)) = (&monitor, self.dp.device_index()) {
            m.set_index(i);
            // Direct routes live on the underlay device (DirectRouting, or leftovers).
            m.set_underlay_index(self.dp.config().vxlan.dev_index);
        }
        let rules = self.dp.rules_flag();
        let removed = monitor.as_ref().map(|m| m.removed_flag());
        let mut repair: Option<(Instant, Due)> = None;
        let cap = Duration::from_secs(self.cli.iptables_resync);
        loop {
            self.tel.beat();
            let due_at = repair.map(|(at, _)| at);
            tokio::select! {
                Some(()) = self.reloads.recv() => {
                    self.reload(&cancel).await?;
                }
                // Something of ours removed: repair once the burst is over (a fight with
                // another agent makes that wait grow).
                () = async { match removed.as_deref() { Some(f) => { f.marked().await; f.take(); } None => std::future::pending().await } },
                    if !matches!(repair, Some((_, Due::Full))) => {
                    let wait = self.repairs.delay(std::time::Instant::now(), repairs::COALESCE, cap);
                    repair = Some((Instant::now() + wait, Due::Full));
                }
                () = async { match rules.as_deref() { Some(f) => f.marked().await, None => std::future::pending().await } },
                    if repair.is_none() => {
                    let wait = self.repairs.delay(std::time::Instant::now(), repairs::COALESCE_RULES, cap);
                    repair = Some((Instant::now() + wait, Due::Rules));
                }
                _ = tokio::time::sleep_until(due_at.unwrap_or_else(Instant::now)), if due_at.is_some() => {
                    let (_, due) = repair.take().expect("due");
                    self.on_removed(due).await;
                }
                Some(()) = async { match monitor.as_mut() { Some(m) => m.deleted.recv().await, None => None } } => {
                    warn!(device = %self.dp.device_name(), "device deleted under us; recreating it and replaying every peer");
                    self.reconcile(Trigger::DeviceDeleted).await;
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
                    // Drain what's already queued so a burst costs one reconcile.
                    let mut events = batch;
                    while let Ok(more) = rx.try_recv() {
                        events.extend(more);
                    }
                    if self.on_store_events(events, &cancel).await? {
                        renew_at = self.next_renewal();
                    }
                }
                _ = resync.tick() => self.on_resync(monitor.as_ref()).await,
                _ = tokio::time::sleep_until(renew_at) => {
                    renew_at = self.on_renewal(&cancel).await?;
                }
            }
        }
    }

    /// A batch of lease events: into the peer table, then to the kernel (just the events
    /// in steady state; at start, after a re-list or a lease change, the full pass).
    /// `true` when our lease was re-acquired (the renewal timer starts over).
    async fn on_store_events(
        &mut self,
        events: Vec<WatchEvent>,
        cancel: &CancellationToken,
    ) -> Result<bool> {
        let snapshot = events.iter().any(|e| matches!(e, WatchEvent::Snapshot(_)));
        let mut lost = false;
        let mut peer_events = Vec::new();
        for ev in events {
            if matches!(ev, WatchEvent::Snapshot(_)) {
                self.tel.store_event("snapshot", 1);
            }
            let a = self.table.apply(ev);
            self.note_rejections(&a);
            lost |= a.own_lost;
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
            peer_events.extend(a.events);
        }
        if !peer_events.is_empty() {
            info!(
                changed = peer_events.len(),
                peers = self.table.len(),
                "peer table updated"
            );
        }
        if lost {
            self.reacquire(cancel).await?;
        }
        self.tel.peers.set(self.table.len() as i64);
        let full = schedule::events_need_full_pass(self.ready, snapshot, lost);
        if full {
            self.last_full = Instant::now();
        }
        let pass = self
            .dp
            .on_peer_events(&peer_events, &self.table, full)
            .await;
        self.record_pass(pass, Trigger::Event);
        if snapshot && !self.ready {
            self.write_subnet_env()?;
            self.tel.update_ready(|r| r.subnet_env = true);
            self.ready = true;
            info!(subnet = %self.held.key, peers = self.table.len(), "ready");
        }
        self.notify_ready();
        Ok(lost)
    }

    /// The repair the kernel's notifications asked for, once their burst is over.
    async fn on_removed(&mut self, due: Due) {
        if !self.ready {
            return;
        }
        self.tel.repair_passes.inc();
        match due {
            Due::Full => self.reconcile(Trigger::Removed).await,
            Due::Rules => self.check().await,
        }
        self.notify_ready();
    }

    /// The periodic pass. Reading 3 entries per peer from the kernel is most of an idle
    /// node's CPU: it is skipped unless the monitor saw our entries touched (or it is the
    /// backstop pass, in case the monitor missed a message).
    async fn on_resync(&mut self, monitor: Option<&DeviceMonitor>) {
        if self.ready {
            let full = schedule::periodic_full_pass(
                monitor.map(|m| m.take_touched()),
                self.last_full.elapsed(),
            );
            let kind = if full { "full" } else { "light" };
            self.tel
                .periodic_passes
                .get_or_create(&crate::telemetry::label("kind", kind))
                .inc();
            if full {
                // The underlay may have gained an address or a route since; whatever
                // that makes unsafe leaves with this pass.
                self.refresh_policy().await;
                self.reconcile(Trigger::Resync).await;
            } else {
                self.check().await;
            }
            self.notify_ready();
        }
        let errors = self.store.error_count();
        self.tel
            .store_errors
            .inc_by(errors - self.store_errors_seen);
        self.store_errors_seen = errors;
        self.tel.lease_expiry.set(seconds_left(self.held.expiry));
    }

    /// Renews our lease; returns when to do it next.
    async fn on_renewal(&mut self, cancel: &CancellationToken) -> Result<Instant> {
        Ok(match self.store.renew(&self.held).await {
            Ok(RenewOutcome::Renewed(expiry)) => {
                info!(subnet = %self.held.key, expires_in_s = seconds_left(expiry), "lease renewed");
                self.tel.lease_renewals.inc();
                self.held.expiry = expiry;
                self.next_renewal()
            }
            Ok(RenewOutcome::Lost) => {
                self.reacquire(cancel).await?;
                self.reconcile(Trigger::Event).await;
                self.next_renewal()
            }
            Err(e) => {
                self.tel.store_errors.inc();
                warn!("renewing the lease failed, retrying: {e}");
                Instant::now() + schedule::retry_renewal_after(self.held.expiry)
            }
        })
    }

    /// Re-reads the config (file or etcd) and applies it. An invalid config is refused
    /// and the running one kept: a typo must not take a node's network down.
    async fn reload(&mut self, cancel: &CancellationToken) -> Result<()> {
        let conf = match self.config.load().await {
            Ok(c) => c,
            Err(e) => {
                warn!("config reload refused, keeping the running config: {e:#}");
                return Ok(());
            }
        };
        if conf == self.req.conf {
            info!("config unchanged");
            return Ok(());
        }
        let Some(IpNetwork::V4(network)) = conf.ipv4.as_ref().map(|r| r.network) else {
            warn!("config reload refused: EnableIPv4=false is not supported; keeping the running config");
            return Ok(());
        };
        let underlay = conf.backend.mtu.unwrap_or(self.iface_mtu);
        let Some(mtu) = underlay.checked_sub(VXLAN_OVERHEAD_V4).filter(|m| *m >= 68) else {
            warn!("config reload refused: underlay MTU {underlay} leaves no room for VXLAN");
            return Ok(());
        };
        let bgp = match bgp::effective(&conf, &self.cli.bgp_options()) {
            Ok(b) => b,
            Err(e) => {
                warn!("config reload refused, keeping the running config: {e:#}");
                return Ok(());
            }
        };
        if conf.enable_nftables != self.req.conf.enable_nftables {
            warn!(
                enable_nftables = conf.enable_nftables,
                "EnableNFTables changed: the rules driver changes when twilld restarts"
            );
        }
        let mut cfg = self.dp.config().clone();
        let old_device = cfg.vxlan.name.clone();
        cfg.vxlan.name = format!("flannel.{}", conf.backend.vni);
        cfg.vxlan.vni = conf.backend.vni;
        cfg.vxlan.port = conf.backend.port;
        cfg.vxlan.gbp = conf.backend.gbp;
        cfg.vxlan.learning = conf.backend.learning;
        cfg.vxlan.mtu = mtu;
        cfg.network = network;
        cfg.direct_routing = conf.backend.direct_routing;
        cfg.no_masq = conf.exempt_from_masquerade(&self.cli.no_masq_cidr);
        cfg.network6 = conf.ipv6.as_ref().map(|r| r.network);
        self.dp.set_config(cfg);
        if old_device != self.dp.device_name() {
            if let Err(e) = self.dp.netlink().delete_link(&old_device).await {
                warn!("removing {old_device} after the VNI change: {e}");
            }
        }
        self.network = network;
        self.mtu = mtu;
        self.req.conf = conf;
        let vni = self.req.conf.backend.vni;
        let mac = self.dp.ensure_device().await?.mac;
        self.req.attrs = LeaseAttrs {
            public_ipv6: self
                .req
                .attrs
                .public_ipv6
                .filter(|_| self.req.conf.ipv6.is_some()),
            ..LeaseAttrs::vxlan(self.req.attrs.public_ip, vni, &mac.to_string())
        };
        let keeps = self
            .req
            .conf
            .fits(self.held.key.v4.as_ref(), self.held.key.v6.as_ref())
            && self.held.attrs == self.req.attrs;
        if !keeps {
            // Out of the new range, or our advertised VNI/MAC changed: lease again (the
            // allocator drops our lease that no longer fits and prefers the same subnet).
            self.reacquire(cancel).await?;
        }
        // The address is re-checked against the new Network even when the lease stays.
        self.dp.set_lease(v4_subnet(&self.held)?).await?;
        self.dp.set_lease6(self.held.key.v6);
        self.refresh_policy().await;
        self.reconcile(Trigger::Event).await;
        self.bgp = bgp;
        if self.ready {
            self.write_subnet_env()?;
        } else {
            self.announce();
        }
        info!(subnet = %self.held.key, mtu, "config reloaded");
        Ok(())
    }

    fn next_renewal(&self) -> Instant {
        let margin = Duration::from_secs(self.cli.subnet_lease_renew_margin * 60);
        Instant::now() + schedule::renew_after(self.held.expiry, margin)
    }

    async fn reacquire(&mut self, cancel: &CancellationToken) -> Result<()> {
        warn!(subnet = %self.held.key, "our lease is gone; acquiring again, preferring the same subnet");
        self.req.previous = self.held.key;
        let held = acquire(&self.store, &self.req, cancel, &self.tel).await?;
        let moved = held.key != self.held.key;
        let a = self.table.set_own(held.key, held.attrs.clone());
        for ev in &a.events {
            info!(?ev, "a peer's standing changed with our new subnet");
        }
        self.note_rejections(&a);
        self.held = held;
        if moved {
            warn!(subnet = %self.held.key, "moved to a new subnet");
            self.dp.set_lease(v4_subnet(&self.held)?).await?;
            self.dp.set_lease6(self.held.key.v6);
            if self.ready {
                self.write_subnet_env()?;
            }
        }
        Ok(())
    }

    /// Re-reads what leases are judged against. Peers it refuses now are dropped by the
    /// full pass that follows, like deleted ones.
    async fn refresh_policy(&mut self) {
        let kube = self.cli.kube_subnet_mgr.then_some(&self.held.key);
        match lease_policy(
            self.dp.netlink(),
            self.dp.device_index(),
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

    /// Logs and counts each newly refused lease once; a refused lease is never programmed.
    fn note_rejections(&self, a: &Applied) {
        for (key, r) in &a.rejected {
            warn!(lease = %key, reason = r.reason(), "peer lease refused, not programmed: {r}");
            self.tel
                .leases_rejected
                .get_or_create(&crate::telemetry::label("reason", r.reason()))
                .inc();
        }
        if !a.rejected.is_empty() || !a.events.is_empty() {
            self.tel
                .leases_refused
                .set(self.table.rejected().count() as i64);
        }
    }

    /// The periodic pass when nothing touched our entries: device, address, rules.
    async fn check(&mut self) {
        match self.dp.check().await {
            // The device was gone (and is new and empty now): fill it.
            Ok(r) if r.device_created => {
                self.tel.repaired("device", 1);
                self.reconcile(Trigger::DeviceDeleted).await;
            }
            Ok(r) => {
                self.tel.repaired("rules", r.rule_repairs);
                self.note_repairs(&r.restored);
                self.tel.update_ready(|s| s.rules = r.rules_error.is_none());
            }
            Err(e) => warn!("periodic check failed, will retry: {e}"),
        }
    }

    async fn reconcile(&mut self, why: Trigger) {
        self.last_full = Instant::now();
        let pass = self.dp.on_peer_events(&[], &self.table, true).await;
        self.record_pass(pass, why);
    }

    /// Counts the objects a repair put back that were put back recently too, and leaves
    /// the list for `twilld doctor` beside subnet.env.
    fn note_repairs(&mut self, restored: &[(&'static str, String)]) {
        if restored.is_empty() {
            return;
        }
        let kinds = self.repairs.record(std::time::Instant::now(), restored);
        if kinds.is_empty() {
            return;
        }
        for kind in &kinds {
            self.tel
                .repair_conflicts
                .get_or_create(&crate::telemetry::label("kind", kind))
                .inc();
        }
        let conflicts = self.repairs.conflicts();
        if let Some(top) = conflicts.first() {
            warn!(
                kind = %top.kind,
                object = %top.object,
                repairs = top.repairs,
                "something else on this node keeps removing what twilld keeps; repairing it less eagerly"
            );
        }
        let path = repairs::conflicts_file(&self.cli.subnet_file);
        let json =
            serde_json::Value::from(conflicts.iter().map(|c| c.to_json()).collect::<Vec<_>>());
        if let Err(e) = write_atomic(&path, json.to_string().as_bytes(), 0o644) {
            warn!(path = %path.display(), "writing the repair conflicts: {e}");
        }
    }

    /// Metrics and readiness from a full pass (`Ok(None)`: the events went in alone).
    fn record_pass(&mut self, pass: Result<Option<ReconcileReport>, DataplaneError>, why: Trigger) {
        match pass {
            Ok(None) => {}
            Ok(Some(r)) => {
                self.tel.reconcile_seconds.observe(r.duration.as_secs_f64());
                let programmed = self.table.len().saturating_sub(r.entries_failed.len());
                self.tel
                    .set_entries(programmed.saturating_sub(r.direct_peers), r.direct_peers);
                // After an event (start, re-list, lease change, reload) changes are the
                // point; on a periodic or device-deleted pass they mean something broke.
                if why != Trigger::Event {
                    self.tel.repaired("entries", r.entries_changed);
                    self.tel.repaired("device", r.device_created as usize);
                    self.tel.repaired("rules", r.rule_repairs);
                    self.note_repairs(&r.restored);
                }
                let rules_ok = r.rules_error.is_none();
                self.tel.update_ready(|s| {
                    s.rules = rules_ok;
                    s.reconciled = true;
                });
            }
            Err(e) => warn!("reconcile failed, will retry: {e}"),
        }
    }

    /// systemd's Type=notify: READY=1 when /readyz would say 200 (subnet.env written, the
    /// rules in place, ...), so units ordered after twilld (the container runtime) find both.
    fn notify_ready(&mut self) {
        if self.notified || self.tel.not_ready().is_some() {
            return;
        }
        self.notified = true;
        let status = format!("subnet {} with {} peers", self.held.key, self.table.len());
        notify_systemd(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ]);
    }

    fn write_subnet_env(&mut self) -> Result<()> {
        let env = SubnetEnv::for_lease(
            Some(IpNetwork::V4(self.network)),
            self.held.key.v4,
            self.req.conf.ipv6.as_ref().map(|r| r.network),
            self.held.key.v6,
            self.mtu,
            self.cli.ip_masq,
        );
        write_atomic(&self.cli.subnet_file, env.render().as_bytes(), 0o644)
            .with_context(|| format!("writing {}", self.cli.subnet_file.display()))?;
        info!(path = %self.cli.subnet_file.display(), "wrote subnet.env");
        self.announce();
        Ok(())
    }

    /// Tells the BGP task the subnets we hold now (it rewrites BIRD's config if needed).
    fn announce(&mut self) {
        let Some(conf) = self.bgp.clone() else {
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
            bgp::spawn(self.cli.bgp_options(), rx, self.tel.clone());
            tx
        });
        let (v4, v6) = (self.held.key.v4, self.held.key.v6);
        tx.send_replace(Some((
            conf,
            bgp::Announce {
                router_id: self.underlay.0,
                local4: Some(self.underlay.0),
                local6: self.underlay.1,
                v4: match v4 {
                    Some(IpNetwork::V4(n)) => Some(n),
                    _ => None,
                },
                v6: match v6 {
                    Some(IpNetwork::V6(n)) => Some(n),
                    _ => None,
                },
            },
        )));
    }
}

fn v4_subnet(held: &HeldLease) -> Result<Ipv4Network> {
    match held.key.v4 {
        Some(IpNetwork::V4(n)) => Ok(n),
        _ => Err(anyhow!("lease {} has no IPv4 subnet", held.key)),
    }
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

fn read_config_doc(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--net-config-path {}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "config from {}: (document)=line {} column {}: invalid JSON: {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

/// net-conf.json from a file; `detected` fills a missing `Network`/`IPv6Network`.
pub(crate) fn load_file_config(path: &Path, detected: &[IpNetwork]) -> Result<NetConf> {
    if detected.is_empty() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--net-config-path {}", path.display()))?;
        return parse_conf(&text, &path.display().to_string());
    }
    let mut doc = read_config_doc(path)?;
    twill_kube::fill_networks(&mut doc, detected);
    let source = path.display().to_string();
    let (conf, warnings) =
        NetConf::from_value(doc).with_context(|| format!("config from {source}"))?;
    for w in warnings {
        warn!("net-conf.json ({source}): {w}");
    }
    Ok(conf)
}

fn parse_conf(text: &str, source: &str) -> Result<NetConf> {
    let (conf, warnings) = NetConf::parse(text).with_context(|| format!("config from {source}"))?;
    for w in warnings {
        warn!("net-conf.json ({source}): {w}");
    }
    Ok(conf)
}

async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken, tel: &Telemetry) -> Result<()> {
    tel.beat();
    tokio::select! {
        _ = cancel.cancelled() => bail!("interrupted during start-up"),
        _ = tokio::time::sleep(d) => Ok(()),
    }
}

/// Runs a store call until it succeeds or fails in a way retrying won't fix, backing off
/// from RETRY_MIN to RETRY_MAX between attempts.
pub(crate) async fn retry<T, F, Fut>(
    what: &str,
    cancel: &CancellationToken,
    tel: &Telemetry,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = RETRY_MIN;
    let mut said: Option<(String, Instant)> = None;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_permanent() => return Err(e.into()),
            // Waiting on an operator: check every second, repeat the explanation every
            // WAITING_LOG_EVERY (and whenever it changes), not on every check.
            Err(StoreError::Waiting(why)) => {
                let why = why.to_string();
                let repeat = said
                    .as_ref()
                    .is_some_and(|(s, at)| *s == why && at.elapsed() < WAITING_LOG_EVERY);
                if !repeat {
                    warn!("{what}: waiting: {why}");
                    said = Some((why, Instant::now()));
                }
                sleep_or_cancel(Duration::from_secs(1), cancel, tel).await?;
                continue;
            }
            Err(e) => warn!("{what}: {e}; retrying"),
        }
        sleep_or_cancel(delay, cancel, tel).await?;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

async fn connect_store(
    cli: &Cli,
    cancel: &CancellationToken,
    tel: &Telemetry,
) -> Result<EtcdStore> {
    let opts = cli.etcd_options();
    let what = format!("connecting to etcd {}", opts.endpoints.join(","));
    retry(&what, cancel, tel, || EtcdStore::connect(&opts)).await
}

pub(crate) async fn wait_for_etcd_config(
    store: &EtcdStore,
    cancel: &CancellationToken,
    tel: &Telemetry,
) -> Result<NetConf> {
    let key = store.config_key();
    let mut last_log: Option<Instant> = None;
    loop {
        let problem = match store.get_config().await {
            Ok(Some(text)) => return parse_conf(&text, &format!("etcd key {key}")),
            Ok(None) => format!(
                "network config not found: etcd key {key} is missing. Create it with: etcdctl put {key} '{{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'"
            ),
            Err(e) => format!("reading {key} from etcd: {e}"),
        };
        if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            warn!("{problem}; waiting");
            last_log = Some(Instant::now());
        }
        sleep_or_cancel(Duration::from_secs(1), cancel, tel).await?;
    }
}

async fn acquire<S: SubnetManager>(
    store: &S,
    req: &AcquireRequest,
    cancel: &CancellationToken,
    tel: &Telemetry,
) -> Result<HeldLease> {
    let h = retry("acquiring a subnet", cancel, tel, || store.acquire(req)).await?;
    info!(subnet = %h.key, source = ?h.source, expires_in_s = seconds_left(h.expiry), "lease held");
    Ok(h)
}

fn seconds_left(e: Expiry) -> i64 {
    schedule::seconds_left(e, std::time::Instant::now())
}

/// The rules driver net-conf.json asks for. What the other one left (an earlier run in the
/// other mode, or flanneld's) is removed first, as flanneld does, so the two never both
/// masquerade.
fn firewall(nftables: bool) -> Result<Arc<dyn Firewall>> {
    if nftables {
        for v6 in [false, true] {
            let tool = if v6 { "ip6tables" } else { "iptables" };
            match Iptables::new().and_then(|ipt| {
                // Only where the tool's table can be read: a host without ip6tables has
                // no IPv6 chains of ours either.
                if ipt.present(&RuleSet::none_of(v6))?.is_empty() {
                    return Ok(Default::default());
                }
                ipt.ensure(&RuleSet::none_of(v6))
            }) {
                Ok(r) if r.repairs > 0 => {
                    info!(removed = ?r.changes, "{tool} rules of the other mode removed")
                }
                Ok(_) => {}
                Err(e) => {
                    warn!("EnableNFTables: could not check for {tool} rules to remove: {e}")
                }
            }
        }
        return Ok(Arc::new(Nftables::new()?));
    }
    match twill_dataplane::firewall::remove_table() {
        Ok(true) => info!("nft tables ip {NFT_TABLE} / ip6 {NFT_TABLE6} of the other mode removed"),
        Ok(false) => {}
        // No nft binary is fine in iptables mode: then there is no table either.
        Err(e) => debug!("nft tables of the other mode not checked: {e}"),
    }
    Ok(Arc::new(Iptables::new().context("iptables")?))
}

fn read_previous(path: &Path) -> LeaseKey {
    let none = LeaseKey { v4: None, v6: None };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(_) => return none,
    };
    match SubnetEnv::parse(&text, &path.display().to_string()) {
        Ok(env) => LeaseKey {
            v4: env.lease_subnet(),
            v6: env.lease_subnet6(),
        },
        Err(e) => {
            warn!("ignoring the previous subnet file: {e}");
            none
        }
    }
}

async fn advertised_mac<S: SubnetManager>(store: &S, public_ip: std::net::Ipv4Addr) -> Option<Mac> {
    store.advertised_mac(public_ip).await?.parse().ok()
}
