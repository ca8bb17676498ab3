//! Operating twilld: health endpoints and metrics with real HTTP requests from inside the
//! node namespace (health on all addresses as flanneld, metrics on 127.0.0.1).

use twill_e2e::Cluster;
use twill_testutil::wait_until;

const CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const PORT: u16 = 8471;
const METRICS_PORT: u16 = 8472;

/// (status code, body) of GET http://<ip>:<port><path> in node `i`'s namespace.
fn get_at(c: &Cluster, i: usize, ip: &str, port: u16, path: &str) -> (u16, String) {
    let out = c.nodes[i].ns.sh(&format!(
        "curl -s -m 2 -w '\\n%{{http_code}}' http://{ip}:{port}{path} || true"
    ));
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn get(c: &Cluster, i: usize, path: &str) -> (u16, String) {
    get_at(c, i, "127.0.0.1", PORT, path)
}

fn metric(c: &Cluster, i: usize, name: &str, label: Option<(&str, &str)>) -> f64 {
    let (code, body) = get_at(c, i, "127.0.0.1", METRICS_PORT, "/metrics");
    assert_eq!(code, 200);
    twill_e2e::metric_in(&body, name, label)
}

#[test]
fn readyz_follows_startup_and_healthz_is_up_throughout() {
    let mut c = Cluster::new("h-ready");
    let port = format!("--healthz-port={PORT}");
    let i = c.add_node(&[&port]);
    wait_until(10, "HTTP up", || get(&c, i, "/healthz").0 == 200);
    let (code, body) = get(&c, i, "/readyz");
    assert_eq!(code, 503);
    assert!(body.contains("waiting for the network config"), "{body}");
    c.put_config(CONF);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while get(&c, i, "/readyz").0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "not ready: {:?}\n{}",
            get(&c, i, "/readyz"),
            c.nodes[i].log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        c.nodes[i].subnet_env().exists(),
        "ready only once subnet.env is written"
    );
    assert_eq!(get(&c, i, "/healthz").0, 200);
    assert_eq!(get(&c, i, "/nope").0, 404);
    // flannel's DaemonSet probes carry no host: the kubelet probes the node's address.
    let node_ip = c.nodes[i].ip.clone();
    assert_eq!(get_at(&c, i, &node_ip, PORT, "/healthz").0, 200);
    assert_eq!(get_at(&c, i, &node_ip, PORT, "/readyz").0, 200);
    // Metrics are not on the health port, and (without --metrics-port) nowhere.
    assert_eq!(get(&c, i, "/metrics").0, 404);
}

#[test]
fn metrics_stay_on_loopback_unless_published() {
    let mut c = Cluster::new("h-mip");
    c.put_config(CONF);
    let m = format!("--metrics-port={METRICS_PORT}");
    let i = c.add_node(&[&m]);
    c.nodes[i].wait_ready();
    let node_ip = c.nodes[i].ip.clone();
    assert_eq!(get_at(&c, i, "127.0.0.1", METRICS_PORT, "/metrics").0, 200);
    assert_eq!(
        get_at(&c, i, &node_ip, METRICS_PORT, "/metrics").0,
        0,
        "not on the node IP"
    );
    assert_eq!(get_at(&c, i, "127.0.0.1", METRICS_PORT, "/healthz").0, 404);
    // One address for both: one listener serves all three paths.
    let same = [
        format!("--healthz-port={PORT}"),
        format!("--metrics-port={PORT}"),
        "--metrics-ip=0.0.0.0".to_string(),
    ];
    let j = c.add_node(&same.iter().map(String::as_str).collect::<Vec<_>>());
    c.nodes[j].wait_ready();
    let ip = c.nodes[j].ip.clone();
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get_at(&c, j, &ip, PORT, path).0, 200, "{path}");
    }
}

#[test]
fn metrics_count_peers_entries_and_repairs() {
    let mut c = Cluster::new("h-metr");
    c.put_config(CONF);
    let port = format!("--metrics-port={METRICS_PORT}");
    for _ in 0..3 {
        c.add_node(&[&port, "--iptables-resync=1"]);
    }
    for i in 0..3 {
        c.nodes[i].wait_ready();
    }
    wait_until(15, "two peers programmed", || {
        metric(&c, 0, "twill_kernel_entries", Some(("kind", "route"))) == 2.0
    });
    assert_eq!(metric(&c, 0, "twill_peers", None), 2.0);
    assert!(metric(&c, 0, "twill_store_events_total", Some(("type", "added"))) >= 2.0);
    assert!(metric(&c, 0, "twill_reconcile_duration_seconds_count", None) >= 1.0);
    assert!(metric(&c, 0, "twill_lease_expiry_seconds", None) > 80_000.0);
    // A lease arriving on the watch is timed from the batch to the kernel following it;
    // the others may have come in node 1's first snapshot, so one more is put here.
    let changes = |what| {
        metric(
            &c,
            0,
            &format!("twill_peer_change_duration_seconds_{what}"),
            None,
        )
    };
    let (count, sum) = (changes("count"), changes("sum"));
    let key = format!("{}/subnets/{}-24", twill_e2e::PREFIX, c.unleased_subnet());
    c.etcd.ctl(&[
        "put",
        &key,
        r#"{"PublicIP":"198.18.0.90","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:90"}}"#,
    ]);
    wait_until(15, "the put peer programmed", || {
        metric(&c, 0, "twill_kernel_entries", Some(("kind", "route"))) == 3.0
    });
    assert!(
        changes("count") > count,
        "the new peer's batch was not timed"
    );
    assert!(changes("sum") > sum);
    c.etcd.ctl(&["del", &key]);
    wait_until(15, "the put peer gone", || {
        metric(&c, 0, "twill_kernel_entries", Some(("kind", "route"))) == 2.0
    });
    // Idle: periodic passes stop reading the kernel once nothing touches our entries.
    let passes = |kind| metric(&c, 0, "twill_periodic_passes_total", Some(("kind", kind)));
    wait_until(10, "a light periodic pass", || passes("light") >= 2.0);
    let full_idle = passes("full");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(passes("full"), full_idle, "idle passes read the kernel");
    assert!(passes("light") >= 4.0);
    let before = metric(
        &c,
        0,
        "twill_reconcile_repairs_total",
        Some(("kind", "entries")),
    );
    // An entry removed by someone else: the monitor's notice starts a repair pass at once.
    let repair_passes = metric(&c, 0, "twill_repair_passes_total", None);
    let peer = c.nodes[1].lease();
    c.nodes[0].ns.sh(&format!("ip route del {peer}"));
    wait_until(10, "the repair counted", || {
        metric(
            &c,
            0,
            "twill_reconcile_repairs_total",
            Some(("kind", "entries")),
        ) > before
    });
    assert!(metric(&c, 0, "twill_repair_passes_total", None) > repair_passes);
    let neigh = c.nodes[2].lease().replace(".0/24", ".0");
    c.nodes[0]
        .ns
        .sh(&format!("ip neigh del {neigh} dev flannel.1"));
    wait_until(10, "the neighbour put back", || {
        c.nodes[0].ns.try_sh(&format!(
            "ip neigh show {neigh} dev flannel.1 | grep -q PERMANENT"
        ))
    });
    let rules_before = metric(
        &c,
        0,
        "twill_reconcile_repairs_total",
        Some(("kind", "rules")),
    );
    c.nodes[0].ns.sh("iptables -F FLANNEL-FWD");
    wait_until(10, "the rules repair counted", || {
        metric(
            &c,
            0,
            "twill_reconcile_repairs_total",
            Some(("kind", "rules")),
        ) > rules_before
    });
}

fn twilld_in(c: &Cluster, i: usize, args: &[String]) -> (bool, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.nodes[i].twilld(&args)
}

#[test]
fn cleanup_dry_run_then_removes_everything_and_is_idempotent() {
    let mut c = Cluster::with_pods("h-clean", CONF, 2, &["--ip-masq", "--vxlan-notrack"]);
    let dir = c.nodes[0].dir.clone();
    let (conf_dir, bin_dir) = (dir.join("net.d"), dir.join("bin"));
    let paths = vec![
        format!("--subnet-file={}", c.nodes[0].subnet_env().display()),
        format!("--cni-conf-dir={}", conf_dir.display()),
        format!("--cni-bin-dir={}", bin_dir.display()),
        format!("--cni-data-dir={}", dir.join("cni-state").display()),
    ];
    let (ok, out) = twilld_in(
        &c,
        0,
        &["install-cni".into(), paths[1].clone(), paths[2].clone()],
    );
    assert!(ok, "{out}");
    c.nodes[0].ns.sh("nft add table ip flannel-ipv4");
    // The NetworkPolicy table (--network-policy) goes too.
    c.nodes[0].ns.sh("nft add table inet twill-policy");
    c.nodes[0].stop(libc::SIGTERM);
    let lease = c.nodes[0].lease();

    let mut cleanup = vec!["cleanup".to_string()];
    cleanup.extend(paths.clone());
    let (ok, out) = twilld_in(&c, 0, &cleanup);
    assert!(ok, "{out}");
    for want in [
        "would remove: link flannel.1",
        "would remove: link cni0",
        "FLANNEL-POSTRTG",
        "FLANNEL-FWD",
        "TWILL-NOTRACK-PRE",
        "TWILL-NOTRACK-OUT",
        "nft table ip flannel-ipv4",
        "nft table inet twill-policy",
        "10-twill.conflist",
        "subnet.env",
        "dry run",
    ] {
        assert!(out.contains(want), "{want:?} missing from dry run:\n{out}");
    }
    assert!(
        c.nodes[0].ns.try_sh("ip link show flannel.1"),
        "a dry run removes nothing"
    );
    assert!(
        !out.contains("is running in this network namespace"),
        "twilld was stopped; the other node's runs elsewhere:\n{out}"
    );

    cleanup.extend([
        "--yes".into(),
        "--release-lease".into(),
        format!("--etcd-endpoints=http://{}:2379", twill_e2e::ETCD_IP),
    ]);
    let (ok, out) = twilld_in(&c, 0, &cleanup);
    assert!(ok, "{out}");
    let n0 = &c.nodes[0].ns;
    let links = n0.sh("ip -o link");
    assert!(
        !links.contains("flannel.") && !links.contains("cni0"),
        "{links}"
    );
    assert!(
        !n0.sh("ip route").contains("10.244."),
        "{}",
        n0.sh("ip route")
    );
    let ipt = n0.sh("iptables-save");
    assert!(
        !ipt.contains("FLANNEL") && !ipt.contains("flanneld") && !ipt.contains("TWILL"),
        "{ipt}"
    );
    let ruleset = n0.sh("nft list ruleset");
    assert!(
        !ruleset.contains("flannel") && !ruleset.contains("twill-policy"),
        "nft tables of flannel's nft mode and twill's policy removed:\n{ruleset}"
    );
    assert_eq!(std::fs::read_dir(&conf_dir).unwrap().count(), 0);
    assert!(!bin_dir.join("twill").exists() && !dir.join("cni-state").exists());
    assert!(!c.nodes[0].subnet_env().exists());
    let leases = c.leases();
    assert_eq!(
        leases.len(),
        1,
        "our lease released, the other node's kept: {leases:?}"
    );
    assert!(!leases[0].ends_with(&lease.replace('/', "-")));

    let (ok, out) = twilld_in(&c, 0, &cleanup);
    assert!(ok, "{out}");
    assert!(out.contains("nothing of twill's left"), "{out}");
}

#[test]
fn cleanup_keeps_a_cni0_that_is_not_ours() {
    let mut c = Cluster::new("h-keep");
    let i = c.add_node_stopped(&[]);
    let n = &c.nodes[i];
    n.ns.sh("ip link add cni0 type bridge && ip addr add 10.99.0.1/24 dev cni0");
    std::fs::write(n.subnet_env(), "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n").unwrap();
    let d = n.dir.display().to_string();
    let (ok, out) = twilld_in(
        &c,
        i,
        &[
            "cleanup".into(),
            "--yes".into(),
            format!("--subnet-file={}", n.subnet_env().display()),
            format!("--cni-conf-dir={d}/net.d"),
            format!("--cni-bin-dir={d}/bin"),
            format!("--cni-data-dir={d}/state"),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("kept cni0"), "{out}");
    assert!(c.nodes[i].ns.try_sh("ip link show cni0"));
}

#[test]
fn restarts_lose_no_ping_and_touch_no_device_or_route() {
    let mut c = Cluster::with_pods("h-rest", CONF, 2, &["--ip-masq"]);
    // Watch every link and route change in both node namespaces for the whole restart.
    let monitors: Vec<std::process::Child> = (0..2)
        .map(|i| {
            let log = std::fs::File::create(c.nodes[i].dir.join("monitor.log")).unwrap();
            std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &c.nodes[i].ns.name,
                    "ip",
                    "monitor",
                    "link",
                    "route",
                    "neigh",
                ])
                .stdout(log)
                .spawn()
                .unwrap()
        })
        .collect();
    let dst = c.pod(1).ip.clone();
    let pinger = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.pod(0).ns.name,
            "ping",
            "-i",
            "0.05",
            "-w",
            "9",
            "-q",
            &dst,
        ])
        .output();
    let pinger = std::thread::spawn(move || pinger);
    std::thread::sleep(std::time::Duration::from_millis(500));
    for (sig, round) in [(libc::SIGTERM, 2), (libc::SIGKILL, 3)] {
        for i in 0..2 {
            c.nodes[i].stop(sig);
            c.nodes[i].start();
        }
        for i in 0..2 {
            wait_until(15, "restarted node ready", || {
                c.nodes[i].log().matches(" ready").count() >= round
            });
        }
    }
    let out = pinger.join().unwrap().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    // Control: a change the monitors must have seen, so silence below means something.
    for i in 0..2 {
        c.nodes[i]
            .ns
            .sh("ip route add 198.18.9.0/24 dev eth0 && ip route del 198.18.9.0/24 dev eth0");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    for mut m in monitors {
        let _ = m.kill();
        let _ = m.wait();
    }
    let stats = summary
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("{summary}"));
    let nums: Vec<u64> = stats
        .split(|ch: char| !ch.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(nums[0] > 100, "{stats}");
    assert_eq!(nums[0], nums[1], "pings lost during restarts: {stats}");
    for i in 0..2 {
        let mon = std::fs::read_to_string(c.nodes[i].dir.join("monitor.log")).unwrap();
        assert!(
            mon.contains("Deleted 198.18.9.0/24"),
            "node {}: the monitor saw nothing:\n{mon}",
            i + 1
        );
        let bad: Vec<&str> = mon
            .lines()
            .filter(|l| {
                l.starts_with("Deleted") && (l.contains("flannel.1") || l.contains("10.244."))
            })
            .collect();
        assert!(
            bad.is_empty(),
            "node {}: our device or routes were deleted during restart:\n{}",
            i + 1,
            bad.join("\n")
        );
        assert!(
            !mon.contains("flannel.1: <"),
            "node {}: flannel.1 was re-created or changed:\n{mon}",
            i + 1
        );
    }
}
