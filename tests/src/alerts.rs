//! Alert rules against what real nodes serve, through promtool (built from Prometheus' Go
//! module): scraping, promtool's input series from two scrapes, the rules file without its
//! prose. Shared by tests/alerts.rs (etcd-mode faults) and tests/netpol.rs (NetworkPolicy's).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use twill_testutil::Netns;

/// Alerts whose fault needs Kubernetes mode: tests/netpol.rs fires them.
pub const KUBERNETES_ONLY: &[&str] = &["TwillNetworkPolicyNotEnforced"];

pub fn rules_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/charts/twill/files/twill-alerts.yaml")
}

pub fn promtool(args: &[&str]) -> (bool, String) {
    crate::run_reference("prometheus", "promtool", args)
}

/// A node's /metrics on `port` as (series, value): every sample line, histograms included.
pub fn scrape(ns: &Netns, port: u16) -> Vec<(String, f64)> {
    let body = ns.sh(&format!("curl -sf http://127.0.0.1:{port}/metrics"));
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

pub fn value(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

/// promtool's input series: `before` for the first eleven minutes (0 to 11), then `after`
/// (12 to 22), so the 10-minute window of an alert evaluated at 20 minutes holds one sample
/// of each (a series missing from one is missing there).
pub fn input_series(before: &[(String, f64)], after: &[(String, f64)]) -> String {
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
pub fn rules_without_annotations(dir: &Path) -> PathBuf {
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
pub fn dashboard_metrics() -> Vec<String> {
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

pub fn alert_names() -> Vec<String> {
    std::fs::read_to_string(rules_file())
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: ").map(str::to_string))
        .collect()
}

/// A promtool test file for `alerts` (name, severity, extra expected labels): none fires
/// over twenty minutes of `healthy`, each fires at 20 minutes after ten of `healthy` and
/// then `faulted`.
pub fn alert_test(
    alerts: &[(String, &str, String)],
    healthy: &[(String, f64)],
    faulted: &[(String, f64)],
    dir: &Path,
) -> String {
    let rules = rules_without_annotations(dir);
    let mut t = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n",
        rules.display()
    );
    t.push_str("  - interval: 1m\n    input_series:\n");
    t.push_str(&input_series(healthy, healthy));
    t.push_str("    alert_rule_test:\n");
    for (name, _, _) in alerts {
        let _ = writeln!(
            t,
            "      - eval_time: 20m\n        alertname: {name}\n        exp_alerts: []"
        );
    }
    t.push_str("  - interval: 1m\n    input_series:\n");
    t.push_str(&input_series(healthy, faulted));
    t.push_str("    alert_rule_test:\n");
    for (name, severity, extra) in alerts {
        let _ = writeln!(
            t,
            "      - eval_time: 20m\n        alertname: {name}\n        exp_alerts:\n          - exp_labels:\n              severity: {severity}{extra}"
        );
    }
    t
}

/// Runs promtool's unit test `t`; panics with its output and `context` when it fails.
pub fn promtool_test(t: &str, dir: &Path, context: &str) {
    let test_file = dir.join("alerts-test.yaml");
    std::fs::write(&test_file, t).unwrap();
    let (ok, out) = promtool(&["test", "rules", test_file.to_str().unwrap()]);
    assert!(
        ok,
        "promtool test rules:\n{out}\n--- test file ---\n{t}\n{context}"
    );
}
