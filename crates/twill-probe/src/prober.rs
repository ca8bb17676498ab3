//! The probing itself: one task per peer, each probing its peer once per interval at an
//! offset of its own (spread at random over the interval, so 1 000 peers are a steady
//! trickle of packets, not a burst), reporting every round. The peer list comes from the
//! node; a peer that goes is no longer probed, a new one starts at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken as Cancel;

use crate::icmp::Echo;
use crate::verdict::{next_size, Probe, Round};

/// One peer to probe.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    /// How the peer is named in logs, metrics and reports (its PublicIP).
    pub peer: String,
    pub public_ip: IpAddr,
    /// The peer's VTEP address (its subnet's network address on `flannel.<VNI>`); `None`
    /// under host-gw, where pod traffic goes to the node address itself.
    pub vtep: Option<IpAddr>,
    /// The full size to probe with DF: the pod MTU (`FLANNEL_MTU`).
    pub mtu: u32,
}

/// How often and how patiently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub interval: Duration,
    pub timeout: Duration,
}

/// A small echo: 64 bytes of ICMP and its IP header.
const SMALL: u32 = 84;

/// One echo, tried again once when lost: a single dropped packet is not a verdict.
async fn twice<E: Echo>(e: &E, to: IpAddr, size: u32, df: bool, t: Duration) -> Probe {
    for _ in 0..2 {
        if let Some(rtt) = e.echo(to, size, df, t).await {
            return Probe::Answered(rtt);
        }
    }
    Probe::Lost
}

/// One round for one peer: the underlay and the overlay at once, then (when the overlay
/// answers) the full size with DF, and when that is lost, the largest size that crosses.
/// When pod traffic's path is lost: whether the peer's probes over it reached us in the
/// last two intervals (it probes once per interval, at an offset of its own).
pub async fn probe<E: Echo>(e: &E, t: &Target, timing: Timing) -> Round {
    let timeout = timing.timeout;
    let underlay = twice(e, t.public_ip, SMALL, false, timeout);
    let overlay = async {
        match t.vtep {
            Some(v) => twice(e, v, SMALL, false, timeout).await,
            None => Probe::NotSent,
        }
    };
    let (underlay, overlay) = tokio::join!(underlay, overlay);
    let mut r = Round {
        underlay,
        overlay,
        size: t.mtu,
        ..Default::default()
    };
    // Pod traffic's path: through the VTEP, or (host-gw) to the node address.
    let path = match (t.vtep, overlay, underlay) {
        (Some(v), Probe::Answered(_), _) => v,
        (None, _, Probe::Answered(_)) => t.public_ip,
        (v, ..) => {
            r.heard = e.heard(v.unwrap_or(t.public_ip), timing.interval * 2);
            return r;
        }
    };
    r.full = twice(e, path, t.mtu, true, timeout).await;
    if r.full == Probe::Lost {
        let (mut lo, mut hi) = (SMALL, t.mtu);
        while let Some(size) = next_size(lo, hi) {
            if e.echo(path, size, true, timeout).await.is_some() {
                lo = size;
            } else {
                hi = size;
            }
        }
        r.passes = Some(lo);
    }
    r
}

/// A round's result.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: Target,
    pub round: Round,
}

/// Runs until `targets` is closed: a task per target, each reporting to `reports`.
pub async fn run<E: Echo>(
    echo: Arc<E>,
    mut targets: watch::Receiver<Vec<Target>>,
    timing: Timing,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut tasks: BTreeMap<Target, (JoinHandle<()>, Cancel)> = BTreeMap::new();
    loop {
        // A set: at 10 000 peers a list's contains() per task made each change quadratic.
        let want: BTreeSet<Target> = targets.borrow_and_update().iter().cloned().collect();
        tasks.retain(|t, (_, cancel)| {
            let keep = want.contains(t);
            if !keep {
                cancel.cancel();
            }
            keep
        });
        for t in want {
            if tasks.contains_key(&t) {
                continue;
            }
            let cancel = Cancel::new();
            let task = tokio::spawn(peer_loop(
                echo.clone(),
                t.clone(),
                timing,
                reports.clone(),
                cancel.clone(),
            ));
            tasks.insert(t, (task, cancel));
        }
        if targets.changed().await.is_err() {
            break;
        }
    }
    for (_, (task, cancel)) in tasks {
        cancel.cancel();
        let _ = task.await;
    }
}

async fn peer_loop<E: Echo>(
    echo: Arc<E>,
    t: Target,
    timing: Timing,
    reports: mpsc::UnboundedSender<Report>,
    cancel: Cancel,
) {
    let offset = timing.interval.mul_f64(rand::random::<f64>());
    tokio::select! {
        () = tokio::time::sleep(offset) => {}
        () = cancel.cancelled() => return,
    }
    let mut tick = tokio::time::interval(timing.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        // Boxed: a round's future (sockets' waits, timers, the size search) is large, and
        // unboxed it would size every idle peer's task, a thousand of them at 1 000 peers.
        let round = tokio::select! {
            r = Box::pin(probe(echo.as_ref(), &t, timing)) => r,
            () = cancel.cancelled() => return,
        };
        let report = Report {
            target: t.clone(),
            round,
        };
        if cancel.is_cancelled() || reports.send(report).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An echo whose answers the test decides: the paths that answer, and the largest
    /// size the overlay carries.
    struct Fake {
        answers: Mutex<Vec<IpAddr>>,
        carries: u32,
        sent: Mutex<Vec<(IpAddr, u32, bool)>>,
        /// Whose echo requests reach us.
        heard: Vec<IpAddr>,
    }

    impl Echo for Fake {
        async fn echo(&self, to: IpAddr, size: u32, df: bool, _: Duration) -> Option<Duration> {
            self.sent.lock().unwrap().push((to, size, df));
            let up = self.answers.lock().unwrap().contains(&to);
            (up && size <= self.carries).then_some(Duration::from_micros(300))
        }

        fn heard(&self, from: IpAddr, _: Duration) -> bool {
            self.heard.contains(&from)
        }
    }

    fn target(vtep: Option<&str>) -> Target {
        Target {
            peer: "198.18.0.2".into(),
            public_ip: "198.18.0.2".parse().unwrap(),
            vtep: vtep.map(|v| v.parse().unwrap()),
            mtu: 1450,
        }
    }

    fn fake(answers: &[&str], carries: u32) -> Fake {
        Fake {
            answers: Mutex::new(answers.iter().map(|a| a.parse().unwrap()).collect()),
            carries,
            sent: Mutex::new(Vec::new()),
            heard: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_round_probes_each_path_and_searches_the_size_that_passes() {
        let t = target(Some("10.244.2.0"));
        let ms = Timing {
            interval: Duration::from_secs(10),
            timeout: Duration::from_millis(10),
        };
        let all = fake(&["198.18.0.2", "10.244.2.0"], 1500);
        let r = probe(&all, &t, ms).await;
        assert!(r.underlay.answered() && r.overlay.answered() && r.full.answered());
        assert_eq!(crate::judge(&r).label(), "ok");
        // The full-size probe went to the VTEP with DF.
        assert!(all
            .sent
            .lock()
            .unwrap()
            .contains(&("10.244.2.0".parse().unwrap(), 1450, true)));

        let blocked = fake(&["198.18.0.2"], 1500);
        let r = probe(&blocked, &t, ms).await;
        assert_eq!(crate::judge(&r).label(), "vxlan-blocked");
        assert_eq!(r.full, Probe::NotSent);
        // A lost probe is tried once more before it counts.
        let tries = blocked
            .sent
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.0.to_string() == "10.244.2.0")
            .count();
        assert_eq!(tries, 2);
        assert!(!r.heard);

        // The same, with the peer's own overlay probes reaching us: one way only.
        let one_way = Fake {
            heard: vec!["10.244.2.0".parse().unwrap()],
            ..fake(&["198.18.0.2"], 1500)
        };
        let r = probe(&one_way, &t, ms).await;
        assert_eq!(crate::judge(&r).label(), "asymmetric");
        // Heard matters only for a lost path.
        let heard_ok = Fake {
            heard: vec!["10.244.2.0".parse().unwrap()],
            ..fake(&["198.18.0.2", "10.244.2.0"], 1500)
        };
        assert!(!probe(&heard_ok, &t, ms).await.heard);

        let narrow = fake(&["198.18.0.2", "10.244.2.0"], 1400);
        let r = probe(&narrow, &t, ms).await;
        let v = crate::judge(&r);
        assert_eq!(v.label(), "mtu");
        assert!((1393..=1400).contains(&r.passes.unwrap()), "{r:?}");

        let hostgw = fake(&["198.18.0.2"], 1500);
        let r = probe(&hostgw, &target(None), ms).await;
        assert_eq!(crate::judge(&r).label(), "ok");
        assert_eq!(r.overlay, Probe::NotSent);
    }

    #[tokio::test(start_paused = true)]
    async fn peers_are_probed_every_interval_and_dropped_ones_stop() {
        let echo = Arc::new(fake(&["198.18.0.2", "10.244.2.0"], 1500));
        let (tx, rx) = watch::channel(vec![target(Some("10.244.2.0"))]);
        let (rtx, mut reports) = mpsc::unbounded_channel();
        let timing = Timing {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
        };
        let runner = tokio::spawn(run(echo.clone(), rx, timing, rtx));
        for _ in 0..3 {
            let r = reports.recv().await.unwrap();
            assert_eq!(r.target.peer, "198.18.0.2");
        }
        tx.send(Vec::new()).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sent = echo.sent.lock().unwrap().len();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(echo.sent.lock().unwrap().len(), sent, "probing went on");
        drop(tx);
        runner.await.unwrap();
    }
}
