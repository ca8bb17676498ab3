//! What the daemon knows about itself: readiness conditions, liveness heartbeat, and the
//! Prometheus metrics. Shared between the main loop (writer) and the HTTP server (reader).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub use crate::labels::label;
use crate::labels::{Labels, PathLabel};

/// Everything /readyz requires, in start-up order.
#[derive(Debug, Default, Clone)]
pub struct Readiness {
    pub config: bool,
    pub device: bool,
    pub lease: bool,
    pub rules: bool,
    pub reconciled: bool,
    pub subnet_env: bool,
    /// Why no underlay matches the selection flags now (it went away under a running
    /// node); `None` while one does.
    pub underlay_lost: Option<String>,
    /// With --ready-requires-peers: why too few peers answer over the overlay.
    pub peers_unreachable: Option<String>,
}

impl Readiness {
    /// `None` when ready, else what is missing, first blocker first.
    pub fn missing(&self) -> Option<String> {
        let steps = [
            (self.config, "waiting for the network config"),
            (self.device, "VXLAN device not set up"),
            (self.lease, "no subnet lease held"),
            (self.rules, "iptables rules not in place"),
            (self.reconciled, "peers not programmed yet"),
            (self.subnet_env, "subnet.env not written"),
        ];
        let mut missing: Vec<&str> = steps
            .iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, w)| *w)
            .collect();
        let lost = self
            .underlay_lost
            .as_ref()
            .map(|why| format!("no underlay: {why}"));
        missing.extend(lost.as_deref());
        missing.extend(self.peers_unreachable.as_deref());
        (!missing.is_empty()).then(|| missing.join("; "))
    }
}

pub struct Telemetry {
    pub ready: Mutex<Readiness>,
    heartbeat: AtomicU64,
    liveness_window: Duration,
    registry: Registry,
    /// The process_* metrics, without the twill_ prefix of `registry`.
    process: Registry,
    pub peers: Gauge,
    pub underlay_up: Gauge,
    pub entries: Family<Labels, Gauge>,
    pub reconcile_seconds: Histogram,
    /// From a batch of peer changes taken off the lease watch to the kernel following it.
    pub peer_change_seconds: Histogram,
    pub repairs: Family<Labels, Counter>,
    pub repair_conflicts: Family<Labels, Counter>,
    pub repair_passes: Counter,
    pub periodic_passes: Family<Labels, Counter>,
    pub store_events: Family<Labels, Counter>,
    pub store_errors: Counter,
    pub leases_rejected: Family<Labels, Counter>,
    /// Leases refused right now (a gauge beside the counter: what doctor and /readyz-like
    /// checks want to know is whether any are refused now, not how many ever were).
    pub leases_refused: Gauge,
    pub lease_renewals: Counter,
    pub lease_expiry: Gauge,
    pub bgp_session_up: Family<Labels, Gauge>,
    pub bgp_prefixes_announced: Gauge,
    /// BIRD's sessions as last read, for `twilld status`: (peer, established).
    pub bgp_sessions: Mutex<Vec<(String, bool)>>,
    pub peer_rtt: Family<PathLabel, Histogram, fn() -> Histogram>,
    pub peers_unreachable: Gauge,
    /// What `twilld status` shows: the node's part, written by the main loop.
    pub status: Mutex<crate::status::NodeStatus>,
    /// And the probes' part, written by the probe task.
    pub probes: Arc<Mutex<crate::status::Board>>,
    /// `--network-policy`'s metrics.
    pub policy: crate::policy_metrics::PolicyMetrics,
}

fn rtt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The BGP gauges from BIRD's current sessions (a peer no longer configured goes).
impl twill_bgp::SessionSink for Telemetry {
    fn sessions(&self, sessions: &[twill_bgp::Session]) {
        self.bgp_session_up.clear();
        *self.bgp_sessions.lock().expect("not poisoned") =
            sessions.iter().map(|s| (s.peer.clone(), s.up())).collect();
        let mut announced = 0;
        for s in sessions {
            self.bgp_session_up
                .get_or_create(&label("peer", &s.peer))
                .set(s.up() as i64);
            if s.up() {
                announced = announced.max(s.exported as i64);
            }
        }
        self.bgp_prefixes_announced.set(announced);
    }
}

impl Telemetry {
    pub fn new(liveness_window: Duration) -> Self {
        let mut registry = Registry::with_prefix("twill");
        let t = Telemetry {
            ready: Mutex::default(),
            heartbeat: AtomicU64::new(now_secs()),
            liveness_window,
            registry: Registry::default(),
            process: Registry::default(),
            peers: Gauge::default(),
            underlay_up: Gauge::default(),
            entries: Family::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            // 100 µs (one route into a small table) to 3.3 s (a re-list of 10 000 peers).
            peer_change_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            repairs: Family::default(),
            repair_conflicts: Family::default(),
            repair_passes: Counter::default(),
            periodic_passes: Family::default(),
            store_events: Family::default(),
            store_errors: Counter::default(),
            leases_rejected: Family::default(),
            leases_refused: Gauge::default(),
            lease_renewals: Counter::default(),
            lease_expiry: Gauge::default(),
            bgp_session_up: Family::default(),
            bgp_prefixes_announced: Gauge::default(),
            bgp_sessions: Mutex::default(),
            peer_rtt: Family::new_with_constructor(rtt_histogram),
            peers_unreachable: Gauge::default(),
            status: Mutex::default(),
            probes: Arc::default(),
            policy: crate::policy_metrics::PolicyMetrics::new(),
        };
        t.policy.register(&mut registry);
        registry.register_collector(Box::new(crate::probe_metrics::ReachableCollector(
            t.probes.clone(),
        )));
        registry.register(
            "peer_rtt_seconds",
            "Round-trip time of answered probes, by path (overlay, underlay)",
            t.peer_rtt.clone(),
        );
        registry.register(
            "peers_unreachable",
            "Probed peers whose verdict is not ok (vxlan-blocked, mtu, peer-down)",
            t.peers_unreachable.clone(),
        );
        registry.register(
            "bgp_session_up",
            "1 when the BGP session with the peer is Established (BIRD's word), else 0",
            t.bgp_session_up.clone(),
        );
        registry.register(
            "bgp_prefixes_announced",
            "Pod subnets of this node announced over an Established BGP session",
            t.bgp_prefixes_announced.clone(),
        );
        registry.register("peers", "Peers in the lease table", t.peers.clone());
        t.underlay_up.set(1);
        registry.register(
            "underlay_up",
            "1 while an interface matches the underlay selection flags, 0 while none does",
            t.underlay_up.clone(),
        );
        registry.register(
            "kernel_entries",
            "Kernel entries programmed for peers, by kind (route, neigh, fdb, direct_route)",
            t.entries.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile pass",
            t.reconcile_seconds.clone(),
        );
        registry.register(
            "peer_change_duration_seconds",
            "From a batch of peer lease changes taken off the store's watch to the kernel following it: judging, the peer table, and the kernel's entries added, changed or removed (this node's share of a new peer's convergence; the store's delivery is not in it)",
            t.peer_change_seconds.clone(),
        );
        registry.register(
            "reconcile_repairs",
            "Things found missing, extra or wrong by a periodic reconcile and fixed, by kind (entries, rules, device)",
            t.repairs.clone(),
        );
        registry.register(
            "repair_conflicts",
            "Objects put back again within 30 s of their last repair (something else on the node keeps removing them), by kind (route, neigh, fdb, nexthop, direct-route, blackhole, device, rules); twilld doctor names them",
            t.repair_conflicts.clone(),
        );
        registry.register(
            "repair_passes",
            "Passes started by the kernel's notification that something of ours was removed (coalesced: a flush of many entries is one pass)",
            t.repair_passes.clone(),
        );
        registry.register(
            "periodic_passes",
            "Periodic passes, by kind: full (kernel entries read and diffed) or light (the netlink monitor saw nothing touch them; device, address and rules only)",
            t.periodic_passes.clone(),
        );
        registry.register(
            "leases_rejected",
            "Peer leases refused before they could reach the kernel, by reason (outside-network, underlay-overlap, overlap, vtep-mac, ...); each refusal counted once",
            t.leases_rejected.clone(),
        );
        registry.register(
            "leases_refused_current",
            "Peer leases refused right now",
            t.leases_refused.clone(),
        );
        for reason in twill_store::Rejection::REASONS {
            let _ = t.leases_rejected.get_or_create(&label("reason", reason));
        }
        // At 0 from the start, so an alert's increase() counts a node's first conflict.
        for kind in twill_dataplane::RESTORED_KINDS {
            let _ = t.repair_conflicts.get_or_create(&label("kind", kind));
        }
        registry.register(
            "store_events",
            "Lease events from the store, by type (added, changed, removed, snapshot)",
            t.store_events.clone(),
        );
        registry.register(
            "store_errors",
            "Failed store operations (reconnects, failed renewals)",
            t.store_errors.clone(),
        );
        registry.register(
            "lease_renewals",
            "Successful lease renewals",
            t.lease_renewals.clone(),
        );
        registry.register(
            "lease_expiry_seconds",
            "Seconds until our lease expires unless renewed",
            t.lease_expiry.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        let mut process = Registry::default();
        process.register_collector(Box::new(crate::process_metrics::ProcessCollector));
        Telemetry {
            registry,
            process,
            ..t
        }
    }

    pub fn beat(&self) {
        self.heartbeat.store(now_secs(), Ordering::Relaxed);
    }

    /// Alive when the main loop has been around within the window.
    pub fn alive(&self) -> Result<(), String> {
        let age = now_secs().saturating_sub(self.heartbeat.load(Ordering::Relaxed));
        if age <= self.liveness_window.as_secs() {
            Ok(())
        } else {
            Err(format!("main loop silent for {age}s"))
        }
    }

    /// What /readyz reports: `None` when ready.
    pub fn not_ready(&self) -> Option<String> {
        self.ready.lock().expect("not poisoned").missing()
    }

    pub fn update_ready(&self, f: impl FnOnce(&mut Readiness)) {
        f(&mut self.ready.lock().expect("not poisoned"));
    }

    /// `vxlan` peers have a route, a neighbour and an FDB entry each; `direct` ones
    /// (DirectRouting) a route on the underlay only.
    pub fn set_entries(&self, vxlan: usize, direct: usize) {
        for (kind, n) in [
            ("route", vxlan),
            ("neigh", vxlan),
            ("fdb", vxlan),
            ("direct_route", direct),
        ] {
            self.entries
                .get_or_create(&label("kind", kind))
                .set(n as i64);
        }
    }

    pub fn repaired(&self, kind: &str, n: usize) {
        if n > 0 {
            self.repairs
                .get_or_create(&label("kind", kind))
                .inc_by(n as u64);
        }
    }

    pub fn store_event(&self, kind: &str, n: usize) {
        if n > 0 {
            self.store_events
                .get_or_create(&label("type", kind))
                .inc_by(n as u64);
        }
    }

    /// The process_* metrics, then twill's (one OpenMetrics exposition: one `# EOF`).
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text::encode;
        let mut out = String::new();
        encode(&mut out, &self.process).expect("string writes");
        out.truncate(out.strip_suffix("# EOF\n").map_or(out.len(), str::len));
        encode(&mut out, &self.registry).expect("string writes");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_the_first_blockers() {
        let mut r = Readiness::default();
        assert!(r
            .missing()
            .unwrap()
            .starts_with("waiting for the network config"));
        r = Readiness {
            config: true,
            device: true,
            lease: true,
            rules: true,
            reconciled: true,
            subnet_env: false,
            underlay_lost: None,
            peers_unreachable: None,
        };
        assert_eq!(r.missing().unwrap(), "subnet.env not written");
        r.subnet_env = true;
        assert!(r.missing().is_none());
        r.underlay_lost = Some("--iface eth0: no such interface".into());
        assert_eq!(
            r.missing().unwrap(),
            "no underlay: --iface eth0: no such interface"
        );
    }

    #[test]
    fn metrics_encode_with_prefix() {
        let t = Telemetry::new(Duration::from_secs(30));
        t.set_entries(3, 2);
        t.repaired("entries", 2);
        t.store_event("added", 1);
        let text = t.encode();
        for want in [
            "twill_kernel_entries{kind=\"route\"} 3",
            "twill_kernel_entries{kind=\"fdb\"} 3",
            "twill_kernel_entries{kind=\"direct_route\"} 2",
            "twill_reconcile_repairs_total{kind=\"entries\"} 2",
            "twill_store_events_total{type=\"added\"} 1",
            "twill_build_info{version=",
            "twill_repair_conflicts_total{kind=\"route\"} 0",
            "# TYPE process_cpu_seconds counter",
            "process_resident_memory_bytes ",
            "process_threads ",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
        assert_eq!(text.matches("# EOF").count(), 1, "one exposition");
        assert!(text.ends_with("# EOF\n"));
        assert!(t.alive().is_ok());
    }
}
