//! Repairs as they happen, and fights with another agent. The daemon repairs a removed
//! entry within milliseconds of the kernel's notification; when the same object needs
//! putting back again and again, something else on the node keeps deleting it, and
//! repairing it at once every time would only make the two of us spin. So each repair of an
//! object it already repaired within [`WINDOW`] is a conflict: counted, named for `twilld
//! doctor`, and it doubles the wait before the next immediate repair (capped; the periodic
//! pass still repairs at its own pace). Pure: the daemon passes in the time.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Bursts of notifications (an `ip route flush` of 10 000 routes) within this become one
/// repair pass.
pub const COALESCE: Duration = Duration::from_millis(15);
/// Rule changes are coalesced longer: kube-proxy rewrites its own tables in bursts, and
/// every one of them wakes the nftables monitor.
pub const COALESCE_RULES: Duration = Duration::from_millis(50);
/// A second repair of one object within this is a conflict.
pub const WINDOW: Duration = Duration::from_secs(30);
/// The backoff is forgotten after this long without a conflict.
pub const QUIET: Duration = Duration::from_secs(60);
/// Objects remembered at most: a flush of 10 000 routes is one burst to repair, not 10 000
/// things to remember.
const REMEMBERED: usize = 1024;

/// One object put back more than once, for doctor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub kind: String,
    pub object: String,
    /// Repairs that came within [`WINDOW`] of the one before.
    pub repairs: u64,
}

#[derive(Debug, Default)]
pub struct Repairs {
    last: HashMap<(&'static str, String), Instant>,
    conflicts: BTreeMap<(&'static str, String), u64>,
    level: u32,
    last_conflict: Option<Instant>,
}

impl Repairs {
    /// Records the objects a repair pass put back at `now`; returns the kind of each one
    /// that is in conflict.
    pub fn record(
        &mut self,
        now: Instant,
        restored: &[(&'static str, String)],
    ) -> Vec<&'static str> {
        self.last.retain(|_, at| now.duration_since(*at) < WINDOW);
        let mut kinds = Vec::new();
        for obj in restored {
            match self.last.get(obj) {
                Some(at) if now.duration_since(*at) < WINDOW => {
                    *self.conflicts.entry(obj.clone()).or_default() += 1;
                    kinds.push(obj.0);
                }
                _ => {}
            }
            if self.last.len() < REMEMBERED || self.last.contains_key(obj) {
                self.last.insert(obj.clone(), now);
            }
        }
        if !kinds.is_empty() {
            let quiet = self
                .last_conflict
                .is_none_or(|t| now.duration_since(t) >= QUIET);
            self.level = if quiet {
                1
            } else {
                self.level.saturating_add(1)
            };
            self.last_conflict = Some(now);
        }
        kinds
    }

    /// How long after a removal to repair: the coalescing window, doubled per conflict
    /// since the last quiet minute, at most `cap`.
    pub fn delay(&self, now: Instant, base: Duration, cap: Duration) -> Duration {
        let fighting = self
            .last_conflict
            .is_some_and(|t| now.duration_since(t) < QUIET);
        if !fighting {
            return base;
        }
        base.saturating_mul(1u32 << self.level.min(20))
            .min(cap)
            .max(base)
    }

    /// Every object put back more than once, most repaired first.
    pub fn conflicts(&self) -> Vec<Conflict> {
        let mut all: Vec<Conflict> = self
            .conflicts
            .iter()
            .map(|((kind, object), n)| Conflict {
                kind: kind.to_string(),
                object: object.clone(),
                repairs: *n,
            })
            .collect();
        all.sort_by_key(|c| std::cmp::Reverse(c.repairs));
        all
    }
}

impl Conflict {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"kind": self.kind, "object": self.object, "repairs": self.repairs})
    }

    pub fn from_json(v: &serde_json::Value) -> Option<Conflict> {
        Some(Conflict {
            kind: v["kind"].as_str()?.to_string(),
            object: v["object"].as_str()?.to_string(),
            repairs: v["repairs"].as_u64()?,
        })
    }
}

/// Where the daemon leaves its conflicts for `twilld doctor`: beside subnet.env.
pub fn conflicts_file(subnet_file: &std::path::Path) -> std::path::PathBuf {
    subnet_file.with_file_name("twill-repair-conflicts.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(n: &str) -> (&'static str, String) {
        ("route", n.to_string())
    }

    #[test]
    fn a_second_repair_within_the_window_is_a_conflict() {
        let mut r = Repairs::default();
        let t0 = Instant::now();
        assert!(r.record(t0, &[route("10.244.2.0/24")]).is_empty());
        assert_eq!(r.delay(t0, COALESCE, Duration::from_secs(5)), COALESCE);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            r.record(t1, &[route("10.244.2.0/24"), route("10.244.3.0/24")]),
            ["route"]
        );
        assert_eq!(
            r.conflicts(),
            [Conflict {
                kind: "route".into(),
                object: "10.244.2.0/24".into(),
                repairs: 1
            }]
        );
        // Outside the window it is a new repair, not a conflict.
        let t2 = t1 + WINDOW;
        assert!(r.record(t2, &[route("10.244.3.0/24")]).is_empty());
    }

    #[test]
    fn the_wait_doubles_per_conflict_up_to_the_cap_and_resets_when_quiet() {
        let mut r = Repairs::default();
        let cap = Duration::from_secs(5);
        let mut t = Instant::now();
        r.record(t, &[route("a")]);
        let mut waits = Vec::new();
        for _ in 0..12 {
            t += Duration::from_millis(200);
            r.record(t, &[route("a")]);
            waits.push(r.delay(t, COALESCE, cap));
        }
        assert_eq!(waits[0], COALESCE * 2);
        assert_eq!(waits[1], COALESCE * 4);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), cap);
        assert_eq!(r.conflicts()[0].repairs, 12);
        assert_eq!(
            r.delay(t + QUIET, COALESCE, cap),
            COALESCE,
            "forgotten when quiet"
        );
    }

    #[test]
    fn a_flush_of_many_is_one_burst_and_memory_stays_bounded() {
        let mut r = Repairs::default();
        let t = Instant::now();
        let many: Vec<_> = (0..10_000)
            .map(|i| route(&format!("10.{}.{}.0/24", i / 256, i % 256)))
            .collect();
        assert!(r.record(t, &many).is_empty());
        assert!(r.last.len() <= REMEMBERED);
        assert_eq!(r.delay(t, COALESCE, Duration::from_secs(5)), COALESCE);
    }
}
