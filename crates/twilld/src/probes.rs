//! The daemon's side of the per-peer probes (`twill_probe` does the probing): which peers
//! to probe, from the lease table; what each round means, kept per peer for `twilld
//! status` and `doctor`, exported as metrics, logged once per change of verdict; and,
//! with --ready-requires-peers, the readiness gate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use twill_probe::{judge, IcmpEcho, Probe, Report, Round, Target, Timing, Verdict};
use twill_store::PeerEntry;

use crate::telemetry::Telemetry;

/// `--peer-probe-interval`, `--peer-probe-timeout`, `--ready-requires-peers`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeOptions {
    /// `None`: probing off.
    pub interval: Option<Duration>,
    pub timeout: Duration,
    pub ready_fraction: Option<f64>,
}

/// One peer as `status` and `doctor` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerProbe {
    pub peer: String,
    pub verdict: String,
    /// What is wrong and the fix; empty when ok.
    pub fix: String,
    pub overlay_rtt_ms: Option<f64>,
    pub underlay_rtt_ms: Option<f64>,
}

impl PeerProbe {
    #[cfg(test)]
    pub fn example(peer: &str, verdict: &str, fix: &str) -> Self {
        PeerProbe {
            peer: peer.into(),
            verdict: verdict.into(),
            fix: fix.into(),
            overlay_rtt_ms: None,
            underlay_rtt_ms: None,
        }
    }
}

/// Every probed peer's last round and verdict.
#[derive(Debug, Default)]
pub struct Board {
    /// Probing is on.
    pub on: bool,
    /// VXLAN's UDP port, for the fixes' wording.
    pub port: u16,
    peers: BTreeMap<String, (Verdict, Round)>,
}

impl Board {
    /// Records a round; the old verdict when the verdict changed.
    fn record(&mut self, peer: &str, round: Round) -> Option<Verdict> {
        let verdict = judge(&round);
        let old = self
            .peers
            .insert(peer.to_string(), (verdict, round))
            .map_or(Verdict::Unknown, |(v, _)| v);
        (old != verdict).then_some(old)
    }

    /// Keeps only the peers in `targets` (unprobed ones as unknown); the ones dropped.
    fn retain(&mut self, targets: &[Target]) -> Vec<String> {
        let mut gone = Vec::new();
        self.peers.retain(|p, _| {
            let keep = targets.iter().any(|t| t.peer == *p);
            if !keep {
                gone.push(p.clone());
            }
            keep
        });
        for t in targets {
            self.peers
                .entry(t.peer.clone())
                .or_insert((Verdict::Unknown, Round::default()));
        }
        gone
    }

    pub fn snapshot(&self) -> Option<Vec<PeerProbe>> {
        let ms = |p: Probe| p.rtt().map(|d| d.as_secs_f64() * 1000.0);
        self.on.then(|| {
            self.peers
                .iter()
                .map(|(peer, (v, r))| PeerProbe {
                    peer: peer.clone(),
                    verdict: v.label().to_string(),
                    fix: if v.is_ok() {
                        String::new()
                    } else {
                        v.explain(peer, self.port)
                    },
                    overlay_rtt_ms: ms(r.overlay),
                    underlay_rtt_ms: ms(r.underlay),
                })
                .collect()
        })
    }

    /// (peers whose verdict is ok, peers probed or to be).
    fn counts(&self) -> (usize, usize) {
        let ok = self.peers.values().filter(|(v, _)| v.is_ok()).count();
        (ok, self.peers.len())
    }

    fn failing(&self) -> usize {
        self.peers
            .values()
            .filter(|(v, _)| !v.is_ok() && *v != Verdict::Unknown)
            .count()
    }
}

/// The peers to probe (pure): one target per peer and family, named by its PublicIP; the
/// VTEP address only for a vxlan peer (a host-gw peer's pods sit behind its address).
pub fn targets(entries: impl Iterator<Item = PeerEntry>, mtu: u32) -> Vec<Target> {
    let mut v: Vec<Target> = entries
        .map(|e| Target {
            peer: e.public_ip.to_string(),
            public_ip: e.public_ip,
            vtep: e.mac.map(|_| e.vtep_ip),
            mtu,
        })
        .collect();
    v.sort();
    v.dedup_by(|a, b| a.peer == b.peer);
    v
}

/// Why /readyz waits, if it must: fewer than `fraction` of the peers answer over the
/// overlay (pure). No peers: nothing to wait for.
pub fn readiness(ok: usize, total: usize, fraction: f64) -> Option<String> {
    let need = (fraction * total as f64).ceil() as usize;
    (ok < need).then(|| {
        format!("{ok} of {total} peers reachable over the overlay; --ready-requires-peers={fraction} wants {need}")
    })
}

/// Starts probing when it is on: the sender is where the node publishes the peers.
pub fn start(
    opts: ProbeOptions,
    tel: Arc<Telemetry>,
    port: u16,
) -> Option<watch::Sender<Vec<Target>>> {
    let interval = opts.interval?;
    let echo = match IcmpEcho::new() {
        Ok(e) => Arc::new(e),
        Err(e) => {
            warn!("peer probes off: no ICMP socket ({e}); twilld needs CAP_NET_RAW for them");
            return None;
        }
    };
    {
        let mut b = tel.probes.lock().expect("not poisoned");
        b.on = true;
        b.port = port;
    }
    let (tx, rx) = watch::channel(Vec::new());
    let (rtx, rrx) = mpsc::unbounded_channel();
    let timing = Timing {
        interval,
        timeout: opts.timeout,
    };
    tokio::spawn(twill_probe::run(echo, rx.clone(), timing, rtx));
    tokio::spawn(consume(rrx, rx, tel, opts.ready_fraction));
    info!(
        interval_s = interval.as_secs(),
        "probing every peer over the overlay and the underlay"
    );
    Some(tx)
}

async fn consume(
    mut reports: mpsc::UnboundedReceiver<Report>,
    mut targets: watch::Receiver<Vec<Target>>,
    tel: Arc<Telemetry>,
    ready_fraction: Option<f64>,
) {
    loop {
        tokio::select! {
            changed = targets.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = targets.borrow_and_update().clone();
                let gone = tel.probes.lock().expect("not poisoned").retain(&now);
                for peer in gone {
                    for path in ["overlay", "underlay", "mtu"] {
                        tel.peer_reachable.remove(&labels(&peer, path));
                    }
                }
            }
            Some(r) = reports.recv() => {
                if !targets.borrow().contains(&r.target) {
                    continue;
                }
                note(&tel, &r);
            }
        }
        let (ok, total, failing) = {
            let b = tel.probes.lock().expect("not poisoned");
            let (ok, total) = b.counts();
            (ok, total, b.failing())
        };
        tel.peers_unreachable.set(failing as i64);
        if let Some(f) = ready_fraction {
            tel.update_ready(|r| r.peers_unreachable = readiness(ok, total, f));
        }
    }
}

fn labels(peer: &str, path: &str) -> Vec<(String, String)> {
    vec![
        ("peer".to_string(), peer.to_string()),
        ("path".to_string(), path.to_string()),
    ]
}

/// A round into the board, the metrics and (on a change of verdict) the log.
fn note(tel: &Telemetry, r: &Report) {
    let peer = &r.target.peer;
    let round = r.round;
    // host-gw: pod traffic takes the underlay path.
    let overlay = match round.overlay {
        Probe::NotSent => round.underlay,
        o => o,
    };
    for (path, p) in [
        ("overlay", overlay),
        ("underlay", round.underlay),
        ("mtu", round.full),
    ] {
        if p != Probe::NotSent {
            tel.peer_reachable
                .get_or_create(&labels(peer, path))
                .set(p.answered() as i64);
        }
    }
    for (path, p) in [("overlay", round.overlay), ("underlay", round.underlay)] {
        if let Some(rtt) = p.rtt() {
            tel.peer_rtt
                .get_or_create(&vec![("path".to_string(), path.to_string())])
                .observe(rtt.as_secs_f64());
        }
    }
    let (changed, port) = {
        let mut b = tel.probes.lock().expect("not poisoned");
        (b.record(peer, round), b.port)
    };
    let Some(old) = changed else {
        return;
    };
    let now = judge(&round);
    match (old, now) {
        (Verdict::Unknown, Verdict::Ok) => debug!(%peer, "peer answers over the overlay"),
        (_, Verdict::Ok) => {
            info!(%peer, was = old.label(), "peer reachable over the overlay again")
        }
        (_, v) => warn!(%peer, verdict = v.label(), "{}", v.explain(peer, port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(underlay: Probe, overlay: Probe) -> Round {
        Round {
            underlay,
            overlay,
            full: if overlay.answered() {
                underlay
            } else {
                Probe::NotSent
            },
            size: 1450,
            passes: None,
        }
    }

    const UP: Probe = Probe::Answered(Duration::from_millis(1));

    #[test]
    fn the_board_reports_each_change_of_verdict_once() {
        let mut b = Board {
            on: true,
            port: 8472,
            ..Default::default()
        };
        let t = |p: &str| Target {
            peer: p.into(),
            public_ip: p.parse().unwrap(),
            vtep: None,
            mtu: 1450,
        };
        b.retain(&[t("198.18.0.2"), t("198.18.0.3")]);
        assert_eq!(b.counts(), (0, 2), "unprobed peers count as not reachable");
        assert_eq!(b.failing(), 0, "but not as failing");
        assert_eq!(
            b.record("198.18.0.2", round(UP, UP)),
            Some(Verdict::Unknown)
        );
        assert_eq!(b.record("198.18.0.2", round(UP, UP)), None, "no change");
        assert_eq!(
            b.record("198.18.0.3", round(UP, Probe::Lost)),
            Some(Verdict::Unknown)
        );
        assert_eq!((b.counts(), b.failing()), ((1, 2), 1));
        let snap = b.snapshot().unwrap();
        assert_eq!(snap[1].verdict, "vxlan-blocked");
        assert!(snap[1].fix.contains("UDP 8472"), "{}", snap[1].fix);
        assert_eq!(b.retain(&[t("198.18.0.2")]), ["198.18.0.3"]);
        assert_eq!(b.counts(), (1, 1));
    }

    #[test]
    fn targets_name_peers_by_address_and_probe_vteps_only_for_vxlan() {
        let vx = PeerEntry::new(
            "10.244.2.0/24".parse().unwrap(),
            Some("0a:00:00:00:00:02".parse().unwrap()),
            "198.18.0.2".parse().unwrap(),
        );
        let hg = PeerEntry::new(
            "10.244.3.0/24".parse().unwrap(),
            None,
            "198.18.0.3".parse().unwrap(),
        );
        let t = targets([vx, hg].into_iter(), 1450);
        assert_eq!(t[0].vtep, Some("10.244.2.0".parse().unwrap()));
        assert_eq!(t[1].vtep, None);
        assert_eq!((t[0].mtu, t[1].peer.as_str()), (1450, "198.18.0.3"));
    }

    #[test]
    fn readiness_waits_for_the_fraction() {
        assert_eq!(readiness(0, 0, 1.0), None);
        assert_eq!(readiness(2, 3, 0.6), None);
        let why = readiness(1, 3, 0.6).unwrap();
        assert!(why.contains("1 of 3") && why.contains("wants 2"), "{why}");
        assert!(readiness(2, 3, 1.0).is_some());
    }
}
