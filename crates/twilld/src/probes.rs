//! The daemon's side of the per-peer probes (`twill_probe` does the probing): which peers
//! to probe, from the lease table; what each round means, kept per peer for `twilld
//! status` and `doctor`, exported as metrics, logged once per change of verdict; and,
//! with --ready-requires-peers, the readiness gate.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use twill_probe::{IcmpEcho, Report, Target, Timing, Verdict};
use twill_store::PeerEntry;

use crate::labels::{PathLabel, ProbePath};
use crate::options::ProbeOptions;
use crate::telemetry::Telemetry;

/// The peers to probe (pure): one target per peer and family, named by its PublicIP; the
/// VTEP address only for a vxlan peer (a host-gw peer's pods sit behind its address).
pub fn targets(entries: impl Iterator<Item = PeerEntry>, mtu: u32) -> Vec<Target> {
    let mut v: Vec<Target> = entries
        .map(|e| Target {
            public_ip: e.public_ip,
            vtep: e.mac.map(|_| e.vtep_ip),
            mtu,
        })
        .collect();
    v.sort();
    v.dedup_by(|a, b| a.public_ip == b.public_ip);
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
        per_second: opts.per_second,
    };
    tokio::spawn(twill_probe::run(echo, rx.clone(), timing, rtx));
    tokio::spawn(consume(rrx, rx, tel, opts.ready_fraction));
    info!(
        interval_s = interval.as_secs(),
        rounds_per_s = opts.per_second,
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
    // The current targets as a set: each report is checked against it, 10 000 times per
    // interval at 10 000 peers.
    let mut current: HashSet<Target> = HashSet::new();
    loop {
        tokio::select! {
            changed = targets.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = targets.borrow_and_update().clone();
                tel.probes.lock().expect("not poisoned").retain(&now);
                current = now.into_iter().collect();
            }
            Some(r) = reports.recv() => {
                if !current.contains(&r.target) {
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

/// A round into the board, the metrics and (on a change of verdict) the log.
fn note(tel: &Telemetry, r: &Report) {
    let peer = r.target.public_ip;
    let round = r.round;
    for (path, p) in [
        (ProbePath::Overlay, round.overlay),
        (ProbePath::Underlay, round.underlay),
    ] {
        if let Some(rtt) = p.rtt() {
            tel.peer_rtt
                .get_or_create(&PathLabel { path })
                .observe(rtt.as_secs_f64());
        }
    }
    let ((old, now), port) = {
        let mut b = tel.probes.lock().expect("not poisoned");
        (b.record(peer, round), b.port)
    };
    if old == now {
        return;
    }
    match (old, now) {
        (Verdict::Unknown, Verdict::Ok) => debug!(%peer, "peer answers over the overlay"),
        (_, Verdict::Ok) => {
            info!(%peer, was = old.label(), "peer reachable over the overlay again")
        }
        (_, v) => warn!(%peer, verdict = v.label(), "{}", v.explain(&peer.to_string(), port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            (t[0].mtu, t[1].public_ip.to_string()),
            (1450, "198.18.0.3".into())
        );
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
