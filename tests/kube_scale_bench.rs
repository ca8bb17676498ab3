//! Kubernetes mode at scale, twilld beside the real flanneld on the real API server
//! (`scripts/bench-kube-flanneld.sh` runs it; not part of the tests). One cluster on a real
//! kube-apiserver and controller-manager, three twilld nodes and three flanneld nodes in it
//! (a mixed cluster, as in a migration), then 1 000 and 4 000 more peer nodes created in
//! the API (kubeadm-sized objects, ~11 KB each, annotated as flannel nodes announce
//! themselves). Both daemons take the same creates from the same server at the same time,
//! so its delivery, which swings from run to run, is paired. Per step and per daemon:
//! - the time until its three nodes route every peer, after the last create, split where a
//!   watch of our own got the last peer from the API server: the server's share and the
//!   daemons',
//! - peak RSS (largest of its three) and its daemons' CPU meanwhile,
//! - printed per node, when its daemon took the last peer and when it routed it;
//! - then the CPU of the next 60 s, while nothing is created.
//!
//! Figures are printed with the ratio twilld / flanneld; nothing is asserted on them.
//! `BENCH_TWILLD_ARGS` adds twilld flags (e.g. `--peer-probe-interval=0`);
//! `BENCH_FLANNELD_FIRST=1` starts flanneld's nodes first (nodes 1-3).

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::{tz::TimeZone, Timestamp};
use kube::api::{Api, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, watcher, Event};
use serde::de::DeserializeOwned;
use twill_e2e::control_plane::{kube_cluster, manifest, ControlPlane};
use twill_e2e::Cluster;
use twill_kube::PeerNode;

/// 10.0.0.0/8, so 5 000 peers fit beside the nodes' 10.244.x.0/24 from the controller.
const NET_CONF: &str = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#;

/// Peer `i`: podCIDR 10.(1 + i / 256).(i % 256).0/24, an underlay address in 198.19.0.0/16
/// (no node has a route there: nothing reaches it), a VTEP MAC of its own.
fn peer(i: usize) -> Node {
    let cidr = format!("10.{}.{}.0/24", 1 + i / 256, i % 256);
    let ip = format!("198.19.{}.{}", i / 250, i % 250 + 1);
    let mac = format!("0a:03:00:{:02x}:{:02x}:01", (i >> 8) as u8, i as u8);
    let name = format!("peer-{i:05}");
    let mut v = twill_testutil::kube_nodes::flannel_peer(&name, &cidr, &ip, &mac, 0);
    // managedFields are the server's to write.
    v["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("managedFields");
    serde_json::from_value(v).expect("a Node")
}

fn add_peers(c: &Cluster, cp: &ControlPlane, range: std::ops::Range<usize>) {
    cp.with_client(c, move |client| {
        Box::pin(async move {
            let api: Api<Node> = Api::all(client);
            futures::stream::iter(range)
                .map(|i| {
                    let api = api.clone();
                    async move {
                        api.create(&PostParams::default(), &peer(i)).await.unwrap();
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<()>>()
                .await;
        })
    });
}

/// When a watch of the bench's own first saw each peer node: the `k`th entry is when it
/// had seen `k + 1` of them. Its thread stops when `stop` is set. Two are run: one for
/// metadata only (the server sends names, not whole nodes), the figures' split point, and
/// one for whole nodes decoded as twilld decodes them, to tell the server's delivery of
/// whole objects from the daemons' own time.
#[derive(Default)]
struct Delivered {
    seen: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl Delivered {
    fn watch<'s, K>(&self, s: &'s std::thread::Scope<'s, '_>, c: &'s Cluster, cp: &'s ControlPlane)
    where
        K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let (seen, stop) = (self.seen.clone(), self.stop.clone());
        s.spawn(move || {
            cp.with_client(c, move |client| {
                Box::pin(async move {
                    let api: Api<K> = Api::all(client);
                    let stream = watcher(api, watcher::Config::default());
                    futures::pin_mut!(stream);
                    let mut names = HashSet::new();
                    while !stop.load(Ordering::Relaxed) {
                        let next = tokio::time::timeout(Duration::from_millis(100), stream.next());
                        let Ok(Some(ev)) = next.await else { continue };
                        let (Ok(Event::Apply(m)) | Ok(Event::InitApply(m))) = ev else {
                            continue;
                        };
                        let name = m.meta().name.clone().unwrap_or_default();
                        if name.starts_with("peer-") && names.insert(name) {
                            seen.lock().unwrap().push(Instant::now());
                        }
                    }
                })
            })
        });
    }

    /// When the watch had seen `n` peers, waiting up to `limit` for it.
    fn at(&self, n: usize, limit: Duration) -> Option<Instant> {
        nth(&self.seen, n, Instant::now() + limit)
    }
}

/// When `seen` got its `n`th entry, waiting for it until `deadline`.
fn nth(seen: &Mutex<Vec<Instant>>, n: usize, deadline: Instant) -> Option<Instant> {
    loop {
        if let Some(t) = seen.lock().unwrap().get(n - 1) {
            return Some(*t);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// When each node's peer routes appeared, as `ip monitor route` in its namespace reports
/// them: the `k`th entry of a node is when it had `k + 1` peer subnets (the nodes' own
/// 10.244.x.0/24 left out). Listening instead of polling: `ip route show` of 5 000 routes
/// takes ~20 ms a node, which made the daemons' share up to ~90 ms coarse.
struct Routes {
    seen: Vec<Arc<Mutex<Vec<Instant>>>>,
    monitors: Vec<std::process::Child>,
}

impl Routes {
    fn watch(c: &Cluster) -> Routes {
        use std::io::BufRead;
        let mut routes = Routes {
            seen: Vec::new(),
            monitors: Vec::new(),
        };
        for n in &c.nodes {
            let mut child = std::process::Command::new("ip")
                .args(["-n", &n.ns.name, "monitor", "route"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("ip monitor");
            let out = std::io::BufReader::new(child.stdout.take().expect("piped"));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let mine = seen.clone();
            std::thread::spawn(move || {
                let mut subnets = HashSet::new();
                for line in out.lines().map_while(Result::ok) {
                    let mut words = line.split_whitespace();
                    let Some(dst) = words.next() else { continue };
                    let peer = line.contains(" dev flannel.1")
                        && dst.starts_with("10.")
                        && !dst.starts_with("10.244.");
                    if peer && subnets.insert(dst.to_string()) {
                        mine.lock().unwrap().push(Instant::now());
                    }
                }
            });
            routes.seen.push(seen);
            routes.monitors.push(child);
        }
        // ip monitor is listening once it runs; give it that long.
        std::thread::sleep(Duration::from_millis(200));
        routes
    }

    /// When the last of `nodes` had `want` peer routes; `None` after `limit`.
    fn all_at(&self, nodes: &[usize], want: usize, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        let mut last = None;
        for &i in nodes {
            last = last.max(Some(nth(&self.seen[i], want, deadline)?));
        }
        last
    }
}

impl Drop for Routes {
    fn drop(&mut self) {
        for m in &mut self.monitors {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

/// Where each node's part of the daemons' share went, printed in ms after our metadata
/// watch had the last peer: when each daemon took the last of them from its own watch
/// (read off its log), and when it routed the last one.
/// Not a figure with a ratio: twilld logs a batch as it takes it and then programs all of
/// it, flanneld logs each event as it programs it, so their "took" moments differ in kind.
/// `BENCH_KEEP_LOGS=DIR` keeps the logs.
fn per_node(
    c: &Cluster,
    nodes: &[usize],
    routes: &Routes,
    total: usize,
    seen: Instant,
    clock: (Instant, SystemTime),
) {
    // The logs' wall clock onto our monotonic one, through the pair taken at the start.
    let mono = |wall: SystemTime| match wall.duration_since(clock.1) {
        Ok(d) => clock.0 + d,
        Err(e) => clock.0 - e.duration(),
    };
    for &i in nodes {
        let n = &c.nodes[i];
        let log = n.log();
        let has_all = watch_has_all_at(&log, total, c.nodes.len() - 1, clock.1).map(mono);
        let routed = nth(&routes.seen[i], total, Instant::now());
        eprintln!(
            "node {} at {total} peers, after our watch: took the last peer {}, routed {}",
            i + 1,
            after(has_all, seen),
            after(routed, seen)
        );
        if let Some(dir) = std::env::var_os("BENCH_KEEP_LOGS") {
            let path = std::path::Path::new(&dir).join(format!("{}-{total}.log", n.ns.name));
            let kept = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &log));
            if let Err(e) = kept {
                eprintln!("keeping {}: {e}", path.display());
            }
        }
    }
}

/// `t` in ms after `since`, signed (before it is negative); "-" for none.
fn after(t: Option<Instant>, since: Instant) -> String {
    t.map_or("-".into(), |t| {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let signed =
            ms(t.saturating_duration_since(since)) - ms(since.saturating_duration_since(t));
        format!("{signed:+.1} ms")
    })
}

/// When a daemon's log shows its watch holding all `peers` peer nodes (and the `others`
/// cluster nodes). twilld logs "peer table updated changed=N peers=M" per batch, M counting
/// the other cluster nodes too; flanneld logs "Creating the node lease for IPv4. This is
/// the n.Spec.PodCIDRs: [10.x.y.0/24]" for every node event it takes, counted here by
/// distinct peer subnet (the cluster nodes' 10.244.x.0/24 left out, as the routes are).
/// glog's time has no year: `now`'s is used (the bench does not run across New Year).
fn watch_has_all_at(log: &str, peers: usize, others: usize, now: SystemTime) -> Option<SystemTime> {
    let year = Timestamp::try_from(now)
        .ok()?
        .to_zoned(TimeZone::UTC)
        .year();
    let mut subnets = HashSet::new();
    log.lines().find_map(|l| {
        if let Some((_, rest)) = l.split_once(" peer table updated ") {
            let have = rest.split_once("peers=")?.1.split_whitespace().next()?;
            if have.parse::<usize>().ok()? < peers + others {
                return None;
            }
            let at: Timestamp = l.split_whitespace().next()?.parse().ok()?;
            return Some(at.into());
        }
        let (_, cidr) = l.split_once("This is the n.Spec.PodCIDRs: [")?;
        let cidr = cidr.trim_end_matches(']');
        if cidr.starts_with("10.244.") || !subnets.insert(cidr.to_string()) || subnets.len() < peers
        {
            return None;
        }
        // "I1205 06:55:07.163261 ..." is month, day, time of day (UTC here).
        let mut words = l.split_whitespace();
        let (date, time) = (words.next()?.get(1..)?, words.next()?);
        let at: Timestamp = format!("{year}-{}-{}T{time}Z", date.get(..2)?, date.get(2..)?)
            .parse()
            .ok()?;
        Some(at.into())
    })
}

/// Largest of the daemons on `nodes`, MB.
fn largest(c: &Cluster, nodes: &[usize], field: &str) -> f64 {
    nodes
        .iter()
        .map(|&i| twill_e2e::proc_status_kb(c.nodes[i].pid().expect("running"), field) as f64)
        .fold(0.0, f64::max)
        / 1024.0
}

/// Prints where the resident set of each daemon's first node sits (the issue's breakdown:
/// program text, libraries, heap, stacks), twilld's then flanneld's.
fn breakdown(c: &Cluster, groups: &[Vec<usize>; 2], when: &str) {
    for (daemon, g) in ["twilld", "flanneld"].iter().zip(groups) {
        let pid = c.nodes[g[0]].pid().expect("running");
        let parts: Vec<String> = twill_e2e::rss_breakdown(pid)
            .iter()
            .map(|(k, v)| match *k {
                "threads" => format!("{v:.0} threads"),
                _ => format!("{k} {v:.1}"),
            })
            .collect();
        eprintln!(
            "where {daemon}'s resident set sits {when} (node {}), MB: {}",
            g[0] + 1,
            parts.join(", ")
        );
    }
}

/// CPU seconds of the daemons on `nodes` so far (ticks of USER_HZ, 100 on Linux).
fn cpu(c: &Cluster, nodes: &[usize]) -> f64 {
    nodes
        .iter()
        .map(|&i| c.nodes[i].cpu_ticks() as f64 / 100.0)
        .sum()
}

/// (figure, value) in print order; `None` where it was not reached in time.
type Figures = Vec<(String, Option<f64>)>;

/// One cluster, both daemons: figures for twilld's three nodes and flanneld's three.
fn measure() -> [Figures; 2] {
    let flanneld_first = std::env::var_os("BENCH_FLANNELD_FIRST").is_some();
    let runs_flanneld: Vec<bool> = (0..6).map(|i| (i < 3) == flanneld_first).collect();
    let groups: [Vec<usize>; 2] =
        [false, true].map(|f| (0..6).filter(|&i| runs_flanneld[i] == f).collect());
    let extra = std::env::var("BENCH_TWILLD_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let (c, cp, _) = kube_cluster(
        "ksb",
        &runs_flanneld,
        &manifest("kube-twill.yml"),
        "kube-twill",
        "twill",
        NET_CONF,
        &extra,
    );
    let mut out: [Figures; 2] = Default::default();
    let each = |out: &mut [Figures; 2], figure: &str, v: &dyn Fn(&[usize]) -> Option<f64>| {
        for (o, g) in out.iter_mut().zip(&groups) {
            o.push((figure.to_string(), v(g)));
        }
    };
    each(&mut out, "peak RSS at 2 peers, MB", &|g| {
        Some(largest(&c, g, "VmHWM"))
    });
    breakdown(&c, &groups, "before the peers are created");
    let size = serde_json::to_string(&peer(0)).map_or(0, |s| s.len());
    let mut have = 0;
    let delivered = Delivered::default();
    let whole = Delivered::default();
    let routes = Routes::watch(&c);
    let clock = (Instant::now(), SystemTime::now());
    let ms = |a: Option<Instant>, b: Option<Instant>| {
        a.zip(b)
            .map(|(a, b)| a.saturating_duration_since(b).as_secs_f64() * 1000.0)
    };
    std::thread::scope(|s| {
        delivered.watch::<PartialObjectMeta<Node>>(s, &c, &cp);
        whole.watch::<PeerNode>(s, &c, &cp);
        for total in [1000, 5000] {
            let c0 = groups.clone().map(|g| cpu(&c, &g));
            add_peers(&c, &cp, have..total);
            let last_create = Instant::now();
            have = total;
            let seen = delivered.at(total, Duration::from_secs(600));
            let done = groups
                .clone()
                .map(|g| routes.all_at(&g, total, Duration::from_secs(600)));
            if let Some(seen) = seen {
                let whole = whole.at(total, Duration::from_secs(60));
                eprintln!(
                    "at {total} peers, our watch of whole nodes after the names-only one: {}",
                    after(whole, seen)
                );
                for g in &groups {
                    per_node(&c, g, &routes, total, seen, clock);
                }
            }
            for (i, o) in out.iter_mut().enumerate() {
                o.push((
                    format!("{total} peers routed on every node, ms after the last create"),
                    ms(done[i], Some(last_create)),
                ));
                o.push((
                    "of which the API server: last create -> a watch has the last peer, ms".into(),
                    ms(seen, Some(last_create)),
                ));
                o.push((
                    "of which the daemons: that watch -> routed on every node, ms".into(),
                    ms(done[i], seen),
                ));
                o.push((
                    format!("CPU of the 3 daemons taking in {total} peers, s"),
                    Some(cpu(&c, &groups[i]) - c0[i]),
                ));
            }
            each(&mut out, &format!("peak RSS at {total} peers, MB"), &|g| {
                Some(largest(&c, g, "VmHWM"))
            });
            each(
                &mut out,
                &format!("anonymous RSS at {total} peers, MB"),
                &|g| Some(largest(&c, g, "RssAnon")),
            );
            breakdown(&c, &groups, &format!("at {total} peers"));
        }
        delivered.stop.store(true, Ordering::Relaxed);
        whole.stop.store(true, Ordering::Relaxed);
    });
    let c1 = groups.clone().map(|g| cpu(&c, &g));
    std::thread::sleep(Duration::from_secs(60));
    for (i, o) in out.iter_mut().enumerate() {
        o.push((
            "CPU of the 3 daemons over the next 60 s at 5000 peers, s".into(),
            Some(cpu(&c, &groups[i]) - c1[i]),
        ));
    }
    each(&mut out, "peak RSS after those 60 s, MB", &|g| {
        Some(largest(&c, g, "VmHWM"))
    });
    eprintln!("peer node objects of {size} bytes as sent");
    out
}

#[test]
#[ignore = "a benchmark: scripts/bench-kube-flanneld.sh"]
fn kubernetes_mode_at_1000_and_5000_nodes_beside_flanneld() {
    let [twilld, flanneld] = measure();
    let show = |v: Option<f64>| v.map_or("not reached".to_string(), |v| format!("{v:.1}"));
    println!("| figure (3 nodes each, one real API server) | twilld | flanneld | ratio |");
    println!("|---|---|---|---|");
    for ((figure, t), (_, f)) in twilld.iter().zip(&flanneld) {
        let ratio = match (t, f) {
            (Some(t), Some(f)) if *f > 0.0 => format!("{:.2}", t / f),
            _ => "-".into(),
        };
        println!("| {figure} | {} | {} | {ratio} |", show(*t), show(*f));
    }
}

#[test]
fn both_daemons_logs_tell_when_their_watch_had_every_peer() {
    let now = SystemTime::from("2026-12-05T12:00:00Z".parse::<Timestamp>().unwrap());
    let at = |s: &str| Some(SystemTime::from(s.parse::<Timestamp>().unwrap()));
    let twilld = "\
2026-12-05T06:53:31.815657Z  INFO twilld::node: peer table updated changed=15 peers=3
2026-12-05T06:53:31.825056Z  INFO twilld::node: peer table updated changed=2 peers=4
2026-12-05T06:53:31.900000Z  INFO twilld::node: peer table updated changed=1 peers=5";
    // 2 peers and the 2 other cluster nodes: the second line.
    assert_eq!(
        watch_has_all_at(twilld, 2, 2, now),
        at("2026-12-05T06:53:31.825056Z")
    );
    assert_eq!(watch_has_all_at(twilld, 9, 2, now), None);
    let lease = |t: &str, cidr: &str| {
        format!("I1205 {t}    9574 kube.go:561] Creating the node lease for IPv4. This is the n.Spec.PodCIDRs: [{cidr}]\n")
    };
    // A cluster node's subnet and a repeated peer do not count.
    let flanneld = [
        lease("06:55:07.100000", "10.244.1.0/24"),
        lease("06:55:07.160564", "10.4.219.0/24"),
        lease("06:55:07.161000", "10.4.219.0/24"),
        lease("06:55:07.163261", "10.4.230.0/24"),
    ]
    .concat();
    assert_eq!(
        watch_has_all_at(&flanneld, 2, 2, now),
        at("2026-12-05T06:55:07.163261Z")
    );
    assert_eq!(watch_has_all_at(&flanneld, 3, 2, now), None);
}
