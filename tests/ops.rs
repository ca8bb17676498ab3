//! Operating twilld: health endpoints and metrics with real HTTP requests from inside the
//! node namespace (where --healthz-ip 127.0.0.1 lives).

use twill_e2e::Cluster;
use twill_testutil::wait_until;

const CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const PORT: u16 = 8471;

/// (status code, body) of GET http://127.0.0.1:PORT<path> in node `i`'s namespace.
fn get(c: &Cluster, i: usize, path: &str) -> (u16, String) {
    let out = c.nodes[i].ns.sh(&format!(
        "curl -s -m 2 -w '\\n%{{http_code}}' http://127.0.0.1:{PORT}{path} || true"
    ));
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn metric(c: &Cluster, i: usize, name: &str, label: Option<(&str, &str)>) -> f64 {
    let (code, body) = get(c, i, "/metrics");
    assert_eq!(code, 200);
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("metrics parse as Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
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
}

#[test]
fn metrics_count_peers_entries_and_repairs() {
    let mut c = Cluster::new("h-metr");
    c.put_config(CONF);
    let port = format!("--healthz-port={PORT}");
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
    let before = metric(
        &c,
        0,
        "twill_reconcile_repairs_total",
        Some(("kind", "entries")),
    );
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
