//! The probing itself: every peer probed once per interval at an offset of its own (spread
//! at random over the interval, so 1 000 peers are a steady trickle of packets, not a
//! burst), no more rounds started a second than the budget allows, every round reported.
//! The peer list comes from the node; a peer that goes is no longer probed (a round of its
//! in flight is dropped), a new one is scheduled at once.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::time::{delay_queue, DelayQueue};

use crate::icmp::Echo;
use crate::verdict::{judge, next_size, Probe, Round, Verdict};

/// One peer to probe, named in logs, metrics and reports by its PublicIP. Plain data (no
/// name string of its own): the node, the prober and the board each hold every target,
/// 10 000 of them at 10 000 peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
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
    /// Rounds started per second at most, whatever the number of peers: past
    /// `interval * per_second` peers, each is probed every `peers / per_second` seconds
    /// instead. A node's probing costs the same at 10 000 peers as at 1 000, and the whole
    /// cluster's grows with its nodes, not with their square.
    pub per_second: u32,
}

/// Hands out start times: a round due while the budget is spent waits for the first tick
/// with room, which is then its own. Rounds start together on ticks, a few at a time (10
/// per 100 ms at 100 a second), so their timeouts end together too: one wake-up of the
/// runtime for a tick's rounds instead of one for each. Starting each round on its own
/// woke twilld 500 times a second at 10 000 unanswering peers, and the context switches
/// cost more than the echoes.
#[derive(Debug)]
struct Budget {
    /// Time between two ticks.
    every: Duration,
    per_tick: u32,
    /// The latest tick given out, and how many rounds it has.
    tick: Instant,
    used: u32,
}

impl Budget {
    fn new(per_second: u32, now: Instant) -> Budget {
        let per_second = per_second.max(1);
        // About ten ticks a second, each with a whole number of rounds.
        let per_tick = per_second.div_ceil(10);
        Budget {
            every: Duration::from_secs(1) * per_tick / per_second,
            per_tick,
            tick: now,
            used: 0,
        }
    }

    /// When a round due `now` may start: the first tick at or after `now` with room.
    fn slot(&mut self, now: Instant) -> Instant {
        if now > self.tick {
            let behind = (now - self.tick).as_nanos();
            let every = self.every.as_nanos().max(1);
            let ticks = behind.div_ceil(every);
            self.tick += self.every * u32::try_from(ticks).unwrap_or(u32::MAX);
            self.used = 0;
        }
        if self.used == self.per_tick {
            self.tick += self.every;
            self.used = 0;
        }
        self.used += 1;
        self.tick
    }
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

/// Where one peer stands: waiting for its next round, waiting for the start time the budget
/// gave it, or in a round.
enum Slot {
    Waiting(delay_queue::Key),
    Slotted(delay_queue::Key),
    Probing(AbortHandle),
}

struct Peer {
    slot: Slot,
    /// Rounds in a row it answered nothing (`peer-down`).
    down: u32,
}

/// How many intervals to the next round of a peer `down` rounds in a row: a peer that
/// answers nothing is probed at the interval once more (one lost round is not a node
/// gone), then every 2, 4 and at most 6 intervals, and at the interval again as soon as
/// anything answers. A node that is gone but whose lease stays (etcd keeps it up to 24 h)
/// costs its peers four echoes and their timeouts per interval otherwise; at 10 000 such
/// peers that was most of twilld's idle CPU. Coming back is seen within 6 intervals.
pub fn intervals_after(down: u32) -> u32 {
    match down {
        0 | 1 => 1,
        2 => 2,
        3 => 4,
        _ => 6,
    }
}

/// A finished round, with when it started (the next starts an interval after that).
type Done = (Target, Instant, Round);

/// Runs until `targets` is closed, reporting every peer's rounds to `reports`.
///
/// One task drives every peer: their next rounds wait in one timer queue, and only a round
/// in flight is a task of its own. A task per peer, asleep most of the interval, cost
/// about a kilobyte each (1 MB of twilld's heap at 1 000 peers, 11 MB at 10 000).
pub async fn run<E: Echo>(
    echo: Arc<E>,
    mut targets: watch::Receiver<Vec<Target>>,
    timing: Timing,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut peers: HashMap<Target, Peer> = HashMap::new();
    let mut due: DelayQueue<Target> = DelayQueue::new();
    let mut rounds: JoinSet<Done> = JoinSet::new();
    let mut budget = Budget::new(timing.per_second, Instant::now());
    let mut changed = true;
    loop {
        if changed {
            let want: HashSet<Target> = targets.borrow_and_update().iter().copied().collect();
            peers.retain(|t, p| {
                let keep = want.contains(t);
                if !keep {
                    match &p.slot {
                        Slot::Waiting(key) | Slot::Slotted(key) => drop(due.remove(key)),
                        Slot::Probing(task) => task.abort(),
                    }
                }
                keep
            });
            // A new peer's first round at an offset of its own, spread at random over the
            // interval: 1 000 peers are a steady trickle of packets, not a burst.
            for t in want {
                if let Entry::Vacant(v) = peers.entry(t) {
                    let first = Instant::now() + timing.interval.mul_f64(rand::random::<f64>());
                    let key = due.insert_at(*v.key(), first);
                    v.insert(Peer {
                        slot: Slot::Waiting(key),
                        down: 0,
                    });
                }
            }
            changed = false;
        }
        tokio::select! {
            c = targets.changed() => {
                if c.is_err() {
                    break;
                }
                changed = true;
            }
            Some(expired) = std::future::poll_fn(|cx| due.poll_expired(cx)) => {
                let t = expired.into_inner();
                let Some(p) = peers.get_mut(&t) else { continue };
                if let Slot::Waiting(_) = p.slot {
                    let now = Instant::now();
                    let at = budget.slot(now);
                    if at > now {
                        p.slot = Slot::Slotted(due.insert_at(t, at));
                        continue;
                    }
                }
                let echo = echo.clone();
                p.slot = Slot::Probing(rounds.spawn(async move {
                    let started = Instant::now();
                    let round = probe(echo.as_ref(), &t, timing).await;
                    (t, started, round)
                }));
            }
            Some(done) = rounds.join_next_with_id() => {
                // An aborted round (its peer went) or one whose peer went and came back
                // while it ran is not reported.
                let Ok((id, (t, started, round))) = done else { continue };
                let Some(p) = peers.get_mut(&t) else { continue };
                if !matches!(&p.slot, Slot::Probing(task) if task.id() == id) {
                    continue;
                }
                p.down = if judge(&round) == Verdict::PeerDown { p.down + 1 } else { 0 };
                // The next round that many intervals after this one started, or at once
                // when this one took longer than that.
                let next = (started + timing.interval * intervals_after(p.down)).max(Instant::now());
                p.slot = Slot::Waiting(due.insert_at(t, next));
                if reports.send(Report { target: t, round }).is_err() {
                    break;
                }
            }
        }
    }
    rounds.shutdown().await;
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
            per_second: 100,
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

    fn peer(i: u8) -> Target {
        Target {
            public_ip: IpAddr::from([198, 18, 1, i]),
            vtep: Some(IpAddr::from([10, 244, i, 0])),
            mtu: 1450,
        }
    }

    const TEN_S: Timing = Timing {
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(1),
        per_second: 100,
    };

    #[tokio::test(start_paused = true)]
    async fn each_of_many_peers_is_probed_once_per_interval() {
        let all: Vec<Target> = (1..=40).map(peer).collect();
        let echo = Arc::new(Silent::answering(&all));
        let (tx, rx) = watch::channel(all.clone());
        let (rtx, mut reports) = mpsc::unbounded_channel();
        let runner = tokio::spawn(run(echo, rx, TEN_S, rtx));
        tokio::time::sleep(Duration::from_secs(100)).await;
        let mut rounds: HashMap<IpAddr, usize> = HashMap::new();
        while let Ok(r) = reports.try_recv() {
            *rounds.entry(r.target.public_ip).or_default() += 1;
        }
        // The first round waits 0-10 s.
        for t in &all {
            let n = rounds.get(&t.public_ip).copied().unwrap_or(0);
            assert!(
                (9..=10).contains(&n),
                "{}: {n} rounds in 100 s",
                t.public_ip
            );
        }
        drop(tx);
        runner.await.unwrap();
    }

    /// An echo that answers the peers (both their addresses) it is told to at once, and
    /// no one else, taking its whole timeout to say so.
    struct Silent {
        answers: Mutex<HashSet<IpAddr>>,
        sent: Mutex<usize>,
    }

    impl Silent {
        fn answering(peers: &[Target]) -> Silent {
            let answers = peers.iter().flat_map(|t| [t.public_ip, t.vtep.unwrap()]);
            Silent {
                answers: Mutex::new(answers.collect()),
                sent: Mutex::new(0),
            }
        }
    }

    impl Echo for Silent {
        async fn echo(&self, to: IpAddr, _: u32, _: bool, timeout: Duration) -> Option<Duration> {
            *self.sent.lock().unwrap() += 1;
            if self.answers.lock().unwrap().contains(&to) {
                return Some(Duration::from_micros(300));
            }
            tokio::time::sleep(timeout).await;
            None
        }

        fn heard(&self, _: IpAddr, _: Duration) -> bool {
            false
        }
    }

    #[test]
    fn the_budget_gives_ticks_with_room_on_its_grid() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Budget::new(100, t0);
        // 25 rounds due at once: 10 on each tick, the rest on the ticks after.
        let got: Vec<Duration> = (0..25).map(|_| b.slot(t0) - t0).collect();
        assert_eq!(&got[..10], &[ms(0); 10]);
        assert_eq!(&got[10..20], &[ms(100); 10]);
        assert_eq!(&got[20..], &[ms(200); 5]);
        // Due later, with room: the next tick of the same grid, not the moment it is due.
        assert_eq!(b.slot(t0 + ms(250)) - t0, ms(300));
        assert_eq!(b.slot(t0 + ms(5_000)) - t0, ms(5_000));
        assert_eq!(b.slot(t0 + ms(5_001)) - t0, ms(5_100));
        // A small budget: one round a tick, ticks as far apart as it says.
        let mut slow = Budget::new(4, t0);
        let got: Vec<Duration> = (0..3).map(|_| slow.slot(t0) - t0).collect();
        assert_eq!(got, [ms(0), ms(250), ms(500)]);
        // One not divisible into ten ticks: 15 a second, 2 a tick every 133 ms.
        let mut odd = Budget::new(15, t0);
        let last = (0..30).map(|_| odd.slot(t0)).last().unwrap() - t0;
        assert!((ms(1_850)..ms(2_000)).contains(&last), "{last:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_budget_peers_share_it_instead_of_probing_faster() {
        let all: Vec<Target> = (0..1000u16)
            .map(|i| {
                let [hi, lo] = i.to_be_bytes();
                Target {
                    public_ip: IpAddr::from([198, 18, 2 + hi, lo]),
                    vtep: Some(IpAddr::from([10, hi, lo, 0])),
                    mtu: 1450,
                }
            })
            .collect();
        let echo = Arc::new(Silent::answering(&all));
        let (tx, rx) = watch::channel(all.clone());
        let (rtx, mut reports) = mpsc::unbounded_channel();
        // 1 000 peers every 10 s would be 100 rounds a second; the budget is 20.
        let timing = Timing {
            per_second: 20,
            ..TEN_S
        };
        let runner = tokio::spawn(run(echo, rx, timing, rtx));
        let start = Instant::now();
        let end = start + Duration::from_secs(200);
        let mut in_second: HashMap<u64, usize> = HashMap::new();
        let mut of_peer: HashMap<IpAddr, usize> = HashMap::new();
        // The echoes answer at once, so a round is reported the moment it starts.
        loop {
            tokio::select! {
                Some(r) = reports.recv() => {
                    *in_second.entry((Instant::now() - start).as_secs()).or_default() += 1;
                    *of_peer.entry(r.target.public_ip).or_default() += 1;
                }
                () = tokio::time::sleep_until(end) => break,
            }
        }
        let busiest = in_second.values().max().copied().unwrap_or(0);
        assert!(busiest <= 20, "{busiest} rounds started in one second");
        let total: usize = of_peer.values().sum();
        assert!(
            total >= 3800,
            "the budget went unused: {total} rounds in 200 s"
        );
        // Each peer in turn: every 50 s, none starved, none favoured.
        assert_eq!(of_peer.len(), all.len());
        let (lo, hi) = (of_peer.values().min(), of_peer.values().max());
        assert!(
            lo >= Some(&3) && hi <= Some(&5),
            "rounds per peer in 200 s: {lo:?} to {hi:?}"
        );
        drop(tx);
        runner.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_goes_mid_round_is_not_reported_and_one_back_starts_afresh() {
        // Peer 1 answers nothing (its rounds last 2 s), peer 2 answers.
        let echo = Arc::new(Silent::answering(&[peer(2)]));
        let (tx, rx) = watch::channel(vec![peer(1)]);
        let (rtx, mut reports) = mpsc::unbounded_channel();
        let runner = tokio::spawn(run(echo.clone(), rx, TEN_S, rtx));
        while *echo.sent.lock().unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Gone in its round (its echoes wait out their timeouts), another peer in.
        tx.send(vec![peer(2)]).unwrap();
        let count = |reports: &mut mpsc::UnboundedReceiver<Report>| {
            let mut n: HashMap<IpAddr, usize> = HashMap::new();
            while let Ok(r) = reports.try_recv() {
                *n.entry(r.target.public_ip).or_default() += 1;
            }
            let mut of = |i| n.remove(&peer(i).public_ip).unwrap_or(0);
            (of(1), of(2))
        };
        tokio::time::sleep(Duration::from_secs(60)).await;
        let (one, two) = count(&mut reports);
        assert_eq!(one, 0, "the dropped peer's round was reported");
        assert!((5..=6).contains(&two), "{two} rounds of the other in 60 s");
        // Back: probed again, once per interval from an offset of its own.
        tx.send(vec![peer(1), peer(2)]).unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let (one, _) = count(&mut reports);
        assert!((2..=3).contains(&one), "{one} rounds in 30 s");
        drop(tx);
        runner.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_answers_nothing_is_probed_less_often_until_it_answers() {
        let echo = Arc::new(Silent::answering(&[]));
        let (tx, rx) = watch::channel(vec![peer(1)]);
        let (rtx, mut reports) = mpsc::unbounded_channel();
        let runner = tokio::spawn(run(echo.clone(), rx, TEN_S, rtx));
        // Rounds start at o, o+10, o+30, o+70, then every 60 s (o within the first 10 s).
        tokio::time::sleep(Duration::from_secs(300)).await;
        let mut down = Vec::new();
        while let Ok(r) = reports.try_recv() {
            down.push(crate::judge(&r.round));
        }
        assert!(down.iter().all(|v| *v == Verdict::PeerDown), "{down:?}");
        assert!(
            (6..=7).contains(&down.len()),
            "{} rounds in 300 s",
            down.len()
        );
        // It answers again: seen within 6 intervals, then probed every interval.
        echo.answers
            .lock()
            .unwrap()
            .extend([peer(1).public_ip, peer(1).vtep.unwrap()]);
        let back = reports.recv().await.unwrap();
        assert_eq!(crate::judge(&back.round), Verdict::Ok);
        tokio::time::sleep(Duration::from_secs(35)).await;
        let mut n = 0;
        while reports.try_recv().is_ok() {
            n += 1;
        }
        assert!((3..=4).contains(&n), "{n} rounds in 35 s after it answered");
        drop(tx);
        runner.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn peers_are_probed_every_interval_and_dropped_ones_stop() {
        let echo = Arc::new(fake(&["198.18.0.2", "10.244.2.0"], 1500));
        let (tx, rx) = watch::channel(vec![target(Some("10.244.2.0"))]);
        let (rtx, mut reports) = mpsc::unbounded_channel();
        let timing = Timing {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            per_second: 100,
        };
        let runner = tokio::spawn(run(echo.clone(), rx, timing, rtx));
        for _ in 0..3 {
            let r = reports.recv().await.unwrap();
            assert_eq!(r.target.public_ip.to_string(), "198.18.0.2");
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
