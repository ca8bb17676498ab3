//! `--network-policy`'s metrics, registered with the others by `Telemetry` and written by
//! `network_policy`.

use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::labels::{label, Labels};

pub struct PolicyMetrics {
    pub errors: Family<Labels, Counter>,
    pub drops: Family<Labels, Counter>,
    pub sync_seconds: Histogram,
    pub elements: Gauge,
    /// The kernel's drop counters as last read: (egress, ingress).
    drops_seen: Mutex<(u64, u64)>,
}

/// Reasons of `twill_policy_errors_total`.
pub const ERROR_REASONS: [&str; 2] = ["unreadable", "program"];

impl PolicyMetrics {
    pub fn new() -> Self {
        PolicyMetrics {
            errors: Family::default(),
            drops: Family::default(),
            sync_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            elements: Gauge::default(),
            drops_seen: Mutex::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "policy_errors",
            "NetworkPolicy problems, by reason: unreadable (a part of a policy twill cannot express: it matches nothing), program (the table could not be written: the selected pods are cut off until it can)",
            self.errors.clone(),
        );
        for r in ERROR_REASONS {
            let _ = self.errors.get_or_create(&label("reason", r));
        }
        registry.register(
            "policy_drops",
            "Packets dropped by NetworkPolicy on this node, by direction (ingress, egress)",
            self.drops.clone(),
        );
        // At 0 from the start, so an alert's increase() counts the first drop.
        for d in ["ingress", "egress"] {
            let _ = self.drops.get_or_create(&label("direction", d));
        }
        registry.register(
            "policy_sync_seconds",
            "Time to program one change of pods, namespaces or policies: the model rendered and the kernel's table written (after 20 ms of coalescing)",
            self.sync_seconds.clone(),
        );
        registry.register(
            "policy_set_elements",
            "Addresses in the NetworkPolicy table's sets",
            self.elements.clone(),
        );
    }

    /// Adds what the kernel counted since the last read; a rewritten table restarts its
    /// counters, so a figure below the last one counts from zero.
    pub fn drops_read(&self, egress: u64, ingress: u64) {
        let mut seen = self.drops_seen.lock().unwrap_or_else(|e| e.into_inner());
        for (dir, now, last) in [("egress", egress, seen.0), ("ingress", ingress, seen.1)] {
            let add = if now >= last { now - last } else { now };
            self.drops
                .get_or_create(&label("direction", dir))
                .inc_by(add);
        }
        *seen = (egress, ingress);
    }
}

impl Default for PolicyMetrics {
    fn default() -> Self {
        Self::new()
    }
}
