//! NetworkPolicy benchmark (`scripts/bench-netpol.sh` runs it; not part of the tests):
//! the lab of `tests/netpol.rs` on a real API server plus pods that exist only as API
//! objects (addresses outside the nodes' subnets, so they are set elements and nothing
//! else), then
//! - policy created -> enforced on every node (its jump in each node's ingress chain), with
//!   1 000 pods,
//! - pod created -> its address in the selecting peer set on every node,
//! - new TCP connections per second between two real pods with 0, 100 and 1 000 policies
//!   programmed (one of them selecting the server and allowing the client),
//! - twilld's memory with 5 000 pods and 1 000 policies,
//! - whether policy work stalls the node loop: a peer node added to the API -> its route on
//!   every node, idle and while 3 950 pods arrive under 1 000 policies, and the mean time
//!   one policy change takes to render and write (`twill_policy_sync_seconds`).
//!
//! Figures are printed; nothing is asserted beyond the measurements having happened.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams, PostParams};
use twill_e2e::netpol::PolicyLab;
use twill_testutil::{join_netns, Netns};

const NS: &str = "bench";

/// A pod that exists only in the API: 10.244.128.0/17, spread over the three nodes.
fn api_pod(i: usize, role: &str, node: &str) -> (Pod, String) {
    let ip = format!("10.244.{}.{}", 128 + i / 250, i % 250 + 2);
    let pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("p{i}"), "namespace": NS,
                     "labels": {"role": role, "app": format!("a{}", i % 10)}},
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
                 "tolerations": [{"operator": "Exists"}],
                 "containers": [{"name": "c", "image": "none",
                                 "ports": [{"name": "http", "containerPort": 80}]}]},
    }))
    .unwrap();
    (pod, ip)
}

fn policy(name: &str, select: serde_json::Value, from: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": NS},
        "spec": {"podSelector": select, "ingress": [{"from": [from], "ports": [{"port": "http"}]}]},
    }))
    .unwrap()
}

/// A cluster-admin client of the lab's API server for `f`.
fn with_api<T: Send + 'static>(
    lab: &PolicyLab,
    f: impl FnOnce(kube::Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>
        + Send
        + 'static,
) -> T {
    lab.cp.with_client(&lab.c, f)
}

fn add_pods(lab: &PolicyLab, range: std::ops::Range<usize>, role: &'static str) {
    let nodes: Vec<String> = (1..=3).map(|i| format!("npb-node{i}")).collect();
    with_api(lab, move |client| {
        Box::pin(async move {
            let api: Api<Pod> = Api::namespaced(client, NS);
            futures::stream::iter(range)
                .map(|i| {
                    let api = api.clone();
                    let (pod, ip) = api_pod(i, role, &nodes[i % 3]);
                    async move {
                        let name = pod.metadata.name.clone().unwrap();
                        api.create(&PostParams::default(), &pod).await.unwrap();
                        let status = serde_json::json!({"status": {"phase": "Running",
                            "podIP": ip, "podIPs": [{"ip": ip}]}});
                        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                            .await
                            .unwrap();
                    }
                })
                .buffer_unordered(64)
                .collect::<Vec<()>>()
                .await;
        })
    });
}

fn add_policies(lab: &PolicyLab, names: Vec<String>) {
    with_api(lab, move |client| {
        Box::pin(async move {
            let api: Api<NetworkPolicy> = Api::namespaced(client, NS);
            futures::stream::iter(names)
                .map(|n| {
                    let api = api.clone();
                    async move {
                        let p = policy(
                            &n,
                            serde_json::json!({"matchLabels": {"app": "a1"}}),
                            serde_json::json!({"podSelector": {"matchLabels": {"role": "client"}}}),
                        );
                        api.create(&PostParams::default(), &p).await.unwrap();
                    }
                })
                .buffer_unordered(64)
                .collect::<Vec<()>>()
                .await;
        })
    });
}

/// A peer node in the API as a twilld node announces itself (podCIDR, public-ip, VTEP),
/// created; returns when the create was sent. `k` (below 108) picks 10.244.(20 + k).0/24,
/// clear of the nodes' podCIDRs and the API pods' addresses.
fn add_peer(lab: &PolicyLab, k: usize) -> Instant {
    let a = "flannel.alpha.coreos.com";
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("peer{k}"), "annotations": {
            format!("{a}/backend-type"): "vxlan",
            format!("{a}/backend-data"): format!(r#"{{"VNI":1,"VtepMAC":"02:00:00:00:01:{k:02x}"}}"#),
            format!("{a}/kube-subnet-manager"): "true",
            format!("{a}/public-ip"): format!("198.18.2.{k}"),
        }},
        "spec": {"podCIDR": format!("10.244.{}.0/24", 20 + k),
                 "podCIDRs": [format!("10.244.{}.0/24", 20 + k)]},
    }))
    .unwrap();
    with_api(lab, move |client| {
        Box::pin(async move {
            let api: Api<Node> = Api::all(client);
            let sent = Instant::now();
            api.create(&PostParams::default(), &node).await.unwrap();
            sent
        })
    })
}

/// Peer nodes `ks` added one by one: how long each took to be routed on every node.
fn peer_routes(lab: &PolicyLab, ks: std::ops::Range<usize>) -> Vec<Duration> {
    ks.map(|k| {
        let started = add_peer(lab, k);
        let cidr = format!("10.244.{}.0/24", 20 + k);
        until_all(lab, started, |n| {
            !n.sh(&format!("ip route show {cidr}")).trim().is_empty()
        })
    })
    .collect()
}

/// Peer nodes `ks` added one after another while `work` runs (as many as it takes): how
/// long each took to be routed on every node.
fn peers_during(
    lab: &PolicyLab,
    ks: std::ops::Range<usize>,
    work: impl FnOnce() + Send,
) -> Vec<Duration> {
    std::thread::scope(|s| {
        let work = s.spawn(work);
        let mut took = Vec::new();
        for k in ks {
            if work.is_finished() {
                break;
            }
            took.extend(peer_routes(lab, k..k + 1));
        }
        work.join().unwrap();
        took
    })
}

/// Policy chains in `ns`'s table (each bench policy has one: ingress), from the terse
/// listing (no set contents).
fn policy_chains(ns: &Netns) -> usize {
    ns.sh("nft -t list table inet twill-policy 2>/dev/null || true")
        .matches("chain p")
        .count()
}

/// Polls every node at once until `done(node)`; the time the slowest took.
fn until_all(lab: &PolicyLab, started: Instant, done: impl Fn(&Netns) -> bool + Sync) -> Duration {
    std::thread::scope(|s| {
        let hs: Vec<_> = lab
            .c
            .nodes
            .iter()
            .map(|n| {
                let done = &done;
                s.spawn(move || {
                    while !done(&n.ns) {
                        assert!(
                            started.elapsed() < Duration::from_secs(60),
                            "not enforced in 60 s"
                        );
                    }
                    started.elapsed()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).max().unwrap()
    })
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

/// New TCP connections per second from `from` to `to` ([`serve_fast`]): the median of three 2 s runs of
/// 4 clients, after 5 s for the nodes and the API server to settle. Each connection is
/// closed with a reset (as the server closes its side), so no TIME_WAIT holds a port.
fn conn_rate(lab: &PolicyLab, from: &str, to: &str) -> f64 {
    std::thread::sleep(Duration::from_secs(5));
    let mut runs: Vec<f64> = (0..3).map(|_| conn_run(lab, from, to)).collect();
    runs.sort_by(f64::total_cmp);
    runs[1]
}

/// The server of the connection-rate runs: port 8080 in `pod`'s namespace, with a deep
/// accept queue and an accept thread of its own, so a run measures the network and the
/// table, not how soon the test's busy runtime accepts (the lab's servers listen with
/// std's backlog; when that queue overflows SYNs are dropped and each costs a 1 s
/// retransmit: the runs of ~1 000 connections/s). Lives until the benchmark ends.
fn serve_fast(lab: &PolicyLab, pod: &str) {
    let path = lab.pod(pod).netns.path();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        join_netns(&path);
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], RATE_PORT)).into())
            .unwrap();
        s.listen(4096).unwrap();
        let l: std::net::TcpListener = s.into();
        tx.send(()).unwrap();
        for c in l.incoming() {
            drop(c);
        }
    });
    rx.recv().unwrap();
}

const RATE_PORT: u16 = 8080;

fn conn_run(lab: &PolicyLab, from: &str, to: &str) -> f64 {
    let dst = std::net::SocketAddr::from((lab.pod(to).ip, RATE_PORT));
    let path = lab.pod(from).netns.path();
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let (count, stop, path) = (count.clone(), stop.clone(), path.clone());
            std::thread::spawn(move || {
                join_netns(&path);
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(s) =
                        std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(1))
                    {
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / 2.0
}

#[test]
#[ignore = "a benchmark: scripts/bench-netpol.sh"]
fn network_policy_figures() {
    let lab = PolicyLab::start("npb", &["--metrics-port=8471"]);
    lab.cp.kubectl(&["create", "namespace", NS]);
    twill_testutil::wait_until(30, "the bench namespace's service account", || {
        lab.cp
            .kubectl_ok(&["get", "serviceaccount", "default", "-n", NS])
    });
    let t = Instant::now();
    let mut storm = peers_during(&lab, 0..40, || add_pods(&lab, 0..1000, "client"));
    println!("1000 API pods created with status in {:?}", t.elapsed());
    let mut idle = peer_routes(&lab, 40..60);

    // Policy created -> its jump on every node.
    let mut enforce = Vec::new();
    for k in 0..50 {
        let started = Instant::now();
        add_policies(&lab, vec![format!("e{k:03}")]);
        enforce.push(until_all(&lab, started, |n| policy_chains(n) > k));
    }
    println!(
        "policy created -> enforced on all 3 nodes (1000 pods, 1-50 policies): p50 {:.1} ms, p99 {:.1} ms",
        pct(&mut enforce, 0.5),
        pct(&mut enforce, 0.99)
    );

    // Pod created -> its address in the peer set on every node.
    let mut arrive = Vec::new();
    for i in 1000..1050 {
        let ip = format!("10.244.{}.{}", 128 + i / 250, i % 250 + 2);
        let started = Instant::now();
        add_pods(&lab, i..i + 1, "client");
        arrive.push(until_all(&lab, started, |n| {
            n.sh("nft list set inet twill-policy q0_4")
                .contains(&format!("{ip},"))
                || n.sh("nft list set inet twill-policy q0_4")
                    .contains(&format!("{ip} "))
        }));
    }
    println!(
        "pod created -> in the selecting set on all 3 nodes (1050 pods, 50 policies): p50 {:.1} ms, p99 {:.1} ms",
        pct(&mut arrive, 0.5),
        pct(&mut arrive, 0.99)
    );

    // Connections per second: no policy, 100, 1000 (two of them selecting the servers x/b
    // and y/c and allowing x/a), no policy again; the ratio is to the mean of the two
    // runs without. Reset connections leave CLOSE entries in conntrack: 1 s, not 10 s, so
    // the table never fills during a run.
    lab.cp
        .kubectl(&["delete", "networkpolicy", "--all", "-n", NS]);
    until_all(&lab, Instant::now(), |n| policy_chains(n) == 0);
    for n in &lab.c.nodes {
        n.ns.sh("sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_close=1");
    }
    let pairs = [("x/a", "x/b", "across nodes"), ("x/a", "y/c", "one node")];
    for (_, to, _) in pairs {
        serve_fast(&lab, to);
    }
    let rates = |lab: &PolicyLab| -> Vec<f64> {
        pairs.iter().map(|(f, t, _)| conn_rate(lab, f, t)).collect()
    };
    let base_a = rates(&lab);
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-a, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: a}}}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-xa, namespace: \"y\"}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}]\n",
    );
    let mut with = Vec::new();
    for (from, to) in [(0usize, 98usize), (98, 998)] {
        add_policies(&lab, (from..to).map(|k| format!("c{k:04}")).collect());
        until_all(&lab, Instant::now(), |node| policy_chains(node) >= to + 2);
        with.push((to + 2, rates(&lab)));
    }
    lab.delete_policies();
    lab.cp
        .kubectl(&["delete", "networkpolicy", "--all", "-n", NS]);
    until_all(&lab, Instant::now(), |n| policy_chains(n) == 0);
    let base_b = rates(&lab);
    for (p, (f, t, what)) in pairs.iter().enumerate() {
        let base = (base_a[p] + base_b[p]) / 2.0;
        let figures: Vec<String> = with
            .iter()
            .map(|(n, r)| format!("{n} policies {:.0} ({:.2})", r[p], r[p] / base))
            .collect();
        println!(
            "new TCP connections/s {f} -> {t} ({what}): no policy {:.0} and {:.0}; {}",
            base_a[p],
            base_b[p],
            figures.join(", ")
        );
    }
    add_policies(&lab, (0..1000).map(|k| format!("m{k:04}")).collect());

    // Memory with 5000 pods and 1000 policies; peer nodes added while the pods arrive.
    let t = Instant::now();
    let mut busy = peers_during(&lab, 60..108, || add_pods(&lab, 1050..5000, "client"));
    println!(
        "peer node added -> routed on all 3 nodes: idle (1000 pods, no policy) p50 {:.1} ms, p99 {:.1} ms; \
         while the first 1000 pods arrive, no policy ({} peers) p50 {:.1} ms, p99 {:.1} ms; \
         while 3950 more arrive under 1000 policies ({} peers) p50 {:.1} ms, p99 {:.1} ms",
        pct(&mut idle, 0.5),
        pct(&mut idle, 0.99),
        storm.len(),
        pct(&mut storm, 0.5),
        pct(&mut storm, 0.99),
        busy.len(),
        pct(&mut busy, 0.5),
        pct(&mut busy, 0.99)
    );
    until_all(&lab, t, |n| {
        n.sh("nft list set inet twill-policy q0_4 | grep -o '10\\.244\\.' | wc -l")
            .trim()
            .parse::<usize>()
            .unwrap_or(0)
            >= 5000
    });
    println!("3950 more pods -> in every node's set: {:?}", t.elapsed());
    until_all(&lab, Instant::now(), |node| policy_chains(node) >= 1000);
    for (i, n) in lab.c.nodes.iter().enumerate() {
        let body = n.ns.sh("curl -sf http://127.0.0.1:8471/metrics");
        let sum = twill_e2e::metric_in(&body, "twill_policy_sync_seconds_sum", None);
        let count = twill_e2e::metric_in(&body, "twill_policy_sync_seconds_count", None);
        println!(
            "twilld node{}: {count:.0} policy syncs (rendered and written), mean {:.1} ms",
            i + 1,
            sum / count * 1000.0
        );
    }
    for (i, n) in lab.c.nodes.iter().enumerate() {
        let pid = n.pid().unwrap();
        println!(
            "twilld node{} with 5000 pods and 1000 policies: VmHWM {:.1} MB, VmRSS {:.1} MB, RssAnon {:.1} MB",
            i + 1,
            twill_e2e::proc_status_kb(pid, "VmHWM") as f64 / 1024.0,
            twill_e2e::proc_status_kb(pid, "VmRSS") as f64 / 1024.0,
            twill_e2e::proc_status_kb(pid, "RssAnon") as f64 / 1024.0
        );
    }
}
