//! The alerts of manifests/charts/twill/files/twill-alerts.yaml against what real twilld
//! nodes serve. promtool (built from Prometheus' Go module, scripts/reference-versions)
//! checks the file, then evaluates every alert over the series scraped from a node while
//! healthy (none fires) and after a fault for each alert was injected (each fires): peers
//! cut off over the overlay, a refused lease in etcd, a lease close to expiry, an agent
//! fighting twill's routes, a BGP session that cannot come up, the underlay's address gone.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use twill_e2e::routers::node_bird;
use twill_e2e::{Cluster, PREFIX};
use twill_testutil::{require_root, wait_until};

const METRICS: &str = "--metrics-port=8471";

fn rules_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/charts/twill/files/twill-alerts.yaml")
}

fn promtool(args: &[&str]) -> (bool, String) {
    twill_e2e::run_reference("prometheus", "promtool", args)
}

/// Node `i`'s /metrics as (series, value): every sample line, histograms included.
fn scrape(c: &Cluster, i: usize) -> Vec<(String, f64)> {
    let body = c.nodes[i].ns.sh("curl -sf http://127.0.0.1:8471/metrics");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

/// promtool's input series: `before` for the first eleven minutes (0 to 11), then `after`
/// (12 to 22), so the 10-minute window of an alert evaluated at 20 minutes holds one sample
/// of each (a series missing from one is missing there).
fn input_series(before: &[(String, f64)], after: &[(String, f64)]) -> String {
    let mut names: Vec<&String> = before.iter().chain(after).map(|(s, _)| s).collect();
    names.sort();
    names.dedup();
    let fmt = |v: Option<f64>| v.map_or("_".to_string(), |v| v.to_string());
    let mut out = String::new();
    for s in names {
        let _ = writeln!(
            out,
            "      - series: '{s}'\n        values: '{}x11 {}x10'",
            fmt(value(before, s)),
            fmt(value(after, s))
        );
    }
    out
}

/// The rules without their annotations: promtool compares annotations too, and these are
/// prose for people (`promtool check rules` has checked their templates).
fn rules_without_annotations(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(rules_file()).unwrap();
    let kept: String = {
        let mut skipping = false;
        text.lines()
            .filter(|l| {
                let indent = l.len() - l.trim_start().len();
                if l.trim_start().starts_with("annotations:") {
                    skipping = true;
                    return false;
                }
                if skipping && indent > 8 {
                    return false;
                }
                skipping = false;
                true
            })
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let p = dir.join("rules.yaml");
    std::fs::write(&p, kept).unwrap();
    p
}

/// The metric names the dashboard's queries use (`twill_*`, `process_*`).
fn dashboard_metrics() -> Vec<String> {
    let path = rules_file().with_file_name("twill-dashboard.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = ["twill_", "process_"]
                .iter()
                .filter_map(|p| rest.find(p))
                .min()
            {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                names.push(name);
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

fn alert_names() -> Vec<String> {
    std::fs::read_to_string(rules_file())
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: ").map(str::to_string))
        .collect()
}

#[test]
fn each_alert_fires_in_its_fault_and_not_on_a_healthy_node() {
    require_root();
    let rules = rules_file();
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(ok, "promtool check rules: {out}");

    let mut c = Cluster::new("alerts");
    // A BGP router nobody runs: node 1's session to it never comes up.
    c.put_config(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"},"BGP":{"ASN":64512,"Peers":[{"Address":"198.18.0.250","ASN":64513}]}}"#,
    );
    for n in 1..=2 {
        let dir = c.dir.path().join(format!("n{n}"));
        let args = [
            METRICS.to_string(),
            "--peer-probe-interval=1".into(),
            format!("--bgp-config-file={}/bird.conf", dir.display()),
            format!("--bgp-control-socket={}/bird.ctl", dir.display()),
            format!("--bgp-include-dir={}/bird.d", dir.display()),
        ];
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        c.add_node(&a);
    }
    for i in 0..2 {
        c.nodes[i].wait_ready();
    }
    wait_until(20, "node 1's probes to find its peer reachable", || {
        let s = scrape(&c, 0);
        value(&s, "twill_peers").is_some_and(|v| v == 1.0)
            && s.iter()
                .any(|(k, v)| k.starts_with("twill_peer_reachable{") && *v == 1.0)
    });
    let healthy = scrape(&c, 0);

    // The faults, each one an alert's.
    // A lease close to expiry: node 1 back with a 20-minute lease.
    c.nodes[0].stop(libc::SIGTERM);
    c.nodes[0].args.extend([
        "--subnet-lease-ttl=20m".to_string(),
        "--subnet-lease-renew-margin=1".to_string(),
    ]);
    c.nodes[0].start();
    c.nodes[0].wait_ready();
    // BGP: BIRD on twilld's config, peering with nobody.
    let _bird = node_bird(&c.nodes[0].ns.name, &c.nodes[0].dir);
    // A lease outside Network in etcd.
    c.etcd.ctl(&[
        "put",
        &format!("{PREFIX}/subnets/10.99.0.0-24"),
        r#"{"PublicIP":"198.18.0.77","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:77"}}"#,
    ]);
    // Another agent deleting node 1's route to node 2 again and again.
    let peer = c.nodes[1].lease();
    c.nodes[0].ns.sh(&format!(
        "for i in $(seq 200); do ip route del {peer} dev flannel.1 2>/dev/null; sleep 0.02; done"
    ));
    // VXLAN dropped on the way into node 2.
    c.nodes[1]
        .ns
        .sh("iptables -I INPUT -p udp --dport 8472 -j DROP");
    wait_until(
        30,
        "node 1 to see its peer cut off, BIRD's session down",
        || {
            let s = scrape(&c, 0);
            value(&s, "twill_peers_unreachable") == Some(1.0)
                && value(&s, "twill_leases_refused_current") == Some(1.0)
                && s.iter()
                    .any(|(k, v)| k.starts_with("twill_bgp_session_up{") && *v == 0.0)
                && s.iter()
                    .any(|(k, v)| k.starts_with("twill_repair_conflicts_total") && *v > 0.0)
        },
    );
    // Last, the underlay's address gone.
    c.nodes[0].ns.sh("ip addr flush dev eth0");
    wait_until(20, "node 1 to find no underlay", || {
        value(&scrape(&c, 0), "twill_underlay_up") == Some(0.0)
    });
    let faulted = scrape(&c, 0);

    let bgp_peer = faulted
        .iter()
        .find_map(|(k, _)| {
            let rest = k.strip_prefix("twill_bgp_session_up{peer=\"")?;
            Some(rest.split('"').next()?.to_string())
        })
        .expect("a BGP session series");
    let severity = |name: &str| match name {
        "TwillLeaseExpiring" | "TwillUnderlayLost" => "critical",
        _ => "warning",
    };
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_without_annotations(dir.path());
    let mut t = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n",
        rules.display()
    );
    let names = alert_names();
    assert_eq!(names.len(), 6, "{names:?}");
    // Healthy for twenty minutes: nothing fires.
    t.push_str("  - interval: 1m\n    input_series:\n");
    t.push_str(&input_series(&healthy, &healthy));
    t.push_str("    alert_rule_test:\n");
    for name in &names {
        let _ = writeln!(
            t,
            "      - eval_time: 20m\n        alertname: {name}\n        exp_alerts: []"
        );
    }
    // Healthy for ten minutes, then every fault: each fires.
    t.push_str("  - interval: 1m\n    input_series:\n");
    t.push_str(&input_series(&healthy, &faulted));
    t.push_str("    alert_rule_test:\n");
    for name in &names {
        let peer = if name == "TwillBgpSessionDown" {
            format!("\n              peer: '{bgp_peer}'")
        } else {
            String::new()
        };
        let _ = writeln!(
            t,
            "      - eval_time: 20m\n        alertname: {name}\n        exp_alerts:\n          - exp_labels:\n              severity: {}{peer}",
            severity(name)
        );
    }
    // Every metric a dashboard panel queries is one twilld served (in one state or the
    // other): a renamed metric fails here, not on an operator's empty panel.
    let served: Vec<&str> = healthy
        .iter()
        .chain(&faulted)
        .map(|(s, _)| s.split('{').next().unwrap())
        .collect();
    let dash = dashboard_metrics();
    assert!(dash.len() >= 15, "{dash:?}");
    let unknown: Vec<&String> = dash
        .iter()
        .filter(|m| !served.contains(&m.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "dashboard metrics twilld does not serve: {unknown:?}"
    );

    let test_file = dir.path().join("alerts-test.yaml");
    std::fs::write(&test_file, &t).unwrap();
    let (ok, out) = promtool(&["test", "rules", test_file.to_str().unwrap()]);
    assert!(
        ok,
        "promtool test rules:\n{out}\n--- test file ---\n{t}\n--- node 1 ---\n{}",
        c.nodes[0].log()
    );
}
