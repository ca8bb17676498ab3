//! The daemon's side of the per-peer probes (`twill_probe` does the probing): which peers
//! to probe, from the lease table; what each round means, kept per peer for `twilld
//! status` and `doctor`, exported as metrics, logged once per change of verdict; and,
//! with --ready-requires-peers, the readiness gate.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use twill_probe::{IcmpEcho, Probe, Report, Target, Timing, Verdict};
use twill_store::PeerEntry;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use twill_probe::Round;

use crate::labels::{PathLabel, PeerIp, PeerPath, ProbePath};
use crate::options::ProbeOptions;
use crate::status::Board;
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

/// The `twill_peer_reachable` series of a peer's last round: (path, 1 or 0) for each path
/// probed. The peer's own probes reaching us tell only while ours are lost (asymmetric),
/// so the inbound series exists only then: a flanneld peer, which never probes, has no 0
/// to alert on.
pub fn reachable(round: &Round) -> impl Iterator<Item = (ProbePath, i64)> {
    [
        (ProbePath::Overlay, round.pod_path()),
        (ProbePath::Underlay, round.underlay),
        (ProbePath::Mtu, round.full),
    ]
    .into_iter()
    .filter(|(_, p)| *p != Probe::NotSent)
    .map(|(path, p)| (path, i64::from(p.answered())))
    .chain(round.heard.then_some((ProbePath::Inbound, 1)))
}

/// `twill_peer_reachable`, read off the board at each scrape. Series of their own (a
/// gauge per peer and path) were 20 000 small allocations made one by one as peers were
/// first probed, each pinning a page of heap among the probe rounds' garbage: 10 MB of
/// anonymous memory at 10 000 peers that glibc could not give back.
#[derive(Debug)]
pub struct ReachableCollector(pub Arc<Mutex<Board>>);

impl Collector for ReachableCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A copy, so the probes do not wait for the text to be written.
        let rounds: Vec<(IpAddr, Round)> = self.0.lock().expect("not poisoned").rounds().collect();
        let mut series = rounds
            .iter()
            .flat_map(|(peer, round)| reachable(round).map(move |(path, v)| (*peer, path, v)))
            .peekable();
        if series.peek().is_none() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "peer_reachable",
            "1 when the peer answered the last probe on the path (overlay: VTEP to VTEP; underlay: its PublicIP; mtu: the overlay at the full pod MTU with DF), else 0",
            None,
            MetricType::Gauge,
        )?;
        for (peer, path, v) in series {
            let labels = PeerPath {
                peer: PeerIp(peer),
                path,
            };
            ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
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

    #[test]
    fn reachable_is_read_off_the_board_at_each_scrape() {
        let board = Arc::new(Mutex::new(Board::default()));
        let mut registry = prometheus_client::registry::Registry::with_prefix("twill");
        registry.register_collector(Box::new(ReachableCollector(board.clone())));
        let scrape = || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        let t = |ip: &str, vtep: Option<&str>| Target {
            public_ip: ip.parse().unwrap(),
            vtep: vtep.map(|v| v.parse().unwrap()),
            mtu: 1450,
        };
        let (a, b) = (t("198.18.0.2", Some("10.244.2.0")), t("198.18.0.3", None));
        board.lock().unwrap().retain(&[a, b]);
        assert!(
            !scrape().contains("peer_reachable"),
            "unprobed peers have no series: {}",
            scrape()
        );
        let up = Probe::Answered(std::time::Duration::from_millis(1));
        let blocked = Round {
            underlay: up,
            overlay: Probe::Lost,
            heard: true,
            ..Default::default()
        };
        let hostgw = Round {
            underlay: up,
            full: Probe::Lost,
            ..Default::default()
        };
        board.lock().unwrap().record(a.public_ip, blocked);
        board.lock().unwrap().record(b.public_ip, hostgw);
        let text = scrape();
        let mut got: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("twill_peer_reachable{"))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                r#"twill_peer_reachable{peer="198.18.0.2",path="inbound"} 1"#,
                r#"twill_peer_reachable{peer="198.18.0.2",path="overlay"} 0"#,
                r#"twill_peer_reachable{peer="198.18.0.2",path="underlay"} 1"#,
                r#"twill_peer_reachable{peer="198.18.0.3",path="mtu"} 0"#,
                r#"twill_peer_reachable{peer="198.18.0.3",path="overlay"} 1"#,
                r#"twill_peer_reachable{peer="198.18.0.3",path="underlay"} 1"#,
            ]
        );
        assert!(text.contains("# TYPE twill_peer_reachable gauge"), "{text}");
        // A peer gone takes its series with it.
        board.lock().unwrap().retain(&[b]);
        assert!(!scrape().contains("198.18.0.2"));
    }
}
