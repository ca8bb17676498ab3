//! The alerts of manifests/charts/twill/files/twill-alerts.yaml against what real twilld
//! nodes serve. promtool (built from Prometheus' Go module, scripts/reference-versions)
//! checks the file, then evaluates every alert over the series scraped from a node while
//! healthy (none fires) and after a fault for each alert was injected (each fires): peers
//! cut off over the overlay, a refused lease in etcd, a lease close to expiry, an agent
//! fighting twill's routes, a BGP session that cannot come up, the underlay's address gone.

use twill_e2e::alerts::{
    alert_names, alert_test, dashboard_metrics, promtool, promtool_test, rules_file, scrape, value,
    KUBERNETES_ONLY,
};
use twill_e2e::routers::node_bird;
use twill_e2e::{Cluster, PREFIX};
use twill_testutil::{require_root, wait_until};

const METRICS: &str = "--metrics-port=8471";

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
        let s = scrape(&c.nodes[0].ns, 8471);
        value(&s, "twill_peers").is_some_and(|v| v == 1.0)
            && s.iter()
                .any(|(k, v)| k.starts_with("twill_peer_reachable{") && *v == 1.0)
    });
    let healthy = scrape(&c.nodes[0].ns, 8471);

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
            let s = scrape(&c.nodes[0].ns, 8471);
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
        value(&scrape(&c.nodes[0].ns, 8471), "twill_underlay_up") == Some(0.0)
    });
    let faulted = scrape(&c.nodes[0].ns, 8471);

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
    let names = alert_names();
    assert_eq!(names.len(), 7, "{names:?}");
    let alerts: Vec<(String, &str, String)> = names
        .iter()
        .filter(|n| !KUBERNETES_ONLY.contains(&n.as_str()))
        .map(|name| {
            let peer = if name == "TwillBgpSessionDown" {
                format!("\n              peer: '{bgp_peer}'")
            } else {
                String::new()
            };
            (name.clone(), severity(name), peer)
        })
        .collect();
    let t = alert_test(&alerts, &healthy, &faulted, dir.path());
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

    promtool_test(
        &t,
        dir.path(),
        &format!("--- node 1 ---\n{}", c.nodes[0].log()),
    );
}
