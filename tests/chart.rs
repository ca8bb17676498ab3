//! The Helm chart (manifests/charts/twill) rendered by the real helm (built from its Go
//! module, scripts/reference-versions): lint-clean, the one source of
//! manifests/kube-twill.yml, and what flannel's chart values, dual stack, IPv6-only and
//! BGP values turn into. The objects themselves are checked object by object in
//! tests/packaging.rs (through kube-twill.yml) and applied to a real API server in
//! tests/kube_real.rs.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    repo().join("manifests/charts/twill")
}

fn helm(args: &[&str]) -> (bool, String) {
    twill_e2e::run_reference("helm", "helm", args)
}

/// `helm template` of the chart with `extra` arguments; panics with helm's words if it
/// refuses.
fn render(extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec![
        "template",
        "twill",
        chart.to_str().unwrap(),
        "--namespace",
        "kube-twill",
    ];
    args.extend(extra);
    let (ok, out) = helm(&args);
    assert!(ok, "helm template {extra:?}: {out}");
    out
}

fn objects(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("rendered YAML");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn object<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn config(objs: &[Value], file: &str) -> Value {
    let text = object(objs, "ConfigMap")["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("no {file}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{file}: {e}\n{text}"))
}

fn command(objs: &[Value]) -> Vec<String> {
    object(objs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// net-conf.json as twilld reads it: parsed and checked by twill's own config code.
fn net_conf(objs: &[Value]) -> twill_config::NetConf {
    let text = object(objs, "ConfigMap")["data"]["net-conf.json"]
        .as_str()
        .unwrap();
    twill_config::NetConf::parse(text)
        .unwrap_or_else(|e| panic!("{e}: {text}"))
        .0
}

#[test]
fn the_manifest_is_the_chart_rendered_with_its_defaults() {
    let file = std::fs::read_to_string(repo().join("manifests/kube-twill.yml")).unwrap();
    let body: String = file
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        body,
        render(&["--set", "createNamespace=true"]),
        "manifests/kube-twill.yml is not the chart's rendering: run scripts/render-manifests.sh"
    );
    // Without createNamespace (helm's own namespace handling) the same objects but the
    // Namespace.
    let with = objects(&body);
    let without = objects(&render(&[]));
    assert_eq!(with.len(), without.len() + 1);
    assert!(without.iter().all(|o| o["kind"] != "Namespace"));
}

#[test]
fn helm_lint_passes_for_the_default_and_other_values() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for extra in [
        &[][..],
        &["--set", "podCidrv6=fd00:10:244::/56"][..],
        &["--set", "flannel.backend=host-gw"][..],
    ] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend(extra);
        let (ok, out) = helm(&args);
        assert!(ok && out.contains("0 chart(s) failed"), "{extra:?}: {out}");
    }
}

/// flannel's own chart values (flannel v0.28.9's values.yaml, untouched but for the
/// image) install twill: flannel's conflist is served by twill's plugin, flanneld's flags
/// and resources are kept, the network is the one flannel's values give.
#[test]
fn flannel_chart_values_install_twill_with_only_the_image_changed() {
    let values = twill_e2e::reference_bin("flanneld", "kube-flannel-values.yaml");
    let objs = objects(&render(&[
        "-f",
        values.to_str().unwrap(),
        "--set",
        "flannel.image.repository=ghcr.io/twill-net/twilld",
        "--set",
        "flannel.image.tag=0.1.0",
    ]));
    let conflist = config(&objs, "cni-conf.json");
    assert_eq!(conflist["plugins"][0]["type"], "twill", "{conflist}");
    assert_eq!(
        conflist["cniVersion"], "0.3.1",
        "flannel's, kept: {conflist}"
    );
    let cmd = command(&objs);
    assert_eq!(
        cmd[..3],
        ["/usr/local/bin/twilld", "--ip-masq", "--kube-subnet-mgr"]
    );
    assert!(cmd.contains(&"--healthz-port=8081".to_string()), "{cmd:?}");
    let ds = &object(&objs, "DaemonSet")["spec"]["template"]["spec"];
    let twilld = &ds["containers"][0];
    assert_eq!(twilld["image"], "ghcr.io/twill-net/twilld:0.1.0");
    assert_eq!(
        twilld["resources"]["requests"]["memory"], "50Mi",
        "flannel's"
    );
    assert_eq!(
        twilld["readinessProbe"]["initialDelaySeconds"], 5,
        "flannel's"
    );
    let conf = net_conf(&objs);
    assert_eq!(conf.network4().unwrap().to_string(), "10.244.0.0/16");
    assert_eq!(conf.backend.kind.as_str(), "vxlan");
    // flannel's values say netpol.enabled: false: no NetworkPolicy, flannel's RBAC.
    assert!(!cmd.contains(&"--network-policy".to_string()), "{cmd:?}");
    let rules = object(&objs, "ClusterRole")["rules"].to_string();
    assert!(!rules.contains("networkpolicies"), "{rules}");
}

/// `netpol.enabled` (flannel's switch for its kube-network-policies sidecar) is twill's
/// own enforcement: --network-policy and the reads it needs, on by default.
#[test]
fn netpol_enabled_is_twills_network_policy() {
    for (set, on) in [(None, true), (Some("netpol.enabled=false"), false)] {
        let objs = objects(&render(&set.map(|s| vec!["--set", s]).unwrap_or_default()));
        let cmd = command(&objs);
        assert_eq!(
            cmd.contains(&"--network-policy".to_string()),
            on,
            "{set:?}: {cmd:?}"
        );
        let rules = object(&objs, "ClusterRole")["rules"].to_string();
        assert_eq!(rules.contains("networkpolicies"), on, "{set:?}: {rules}");
        assert_eq!(rules.contains("namespaces"), on, "{set:?}: {rules}");
    }
}

#[test]
fn dual_stack_ipv6_only_host_gw_and_bgp_values_render_net_conf() {
    let dual = objects(&render(&["--set", "podCidrv6=fd00:10:244::/56"]));
    let conf = net_conf(&dual);
    assert_eq!(conf.network4().unwrap().to_string(), "10.244.0.0/16");
    assert_eq!(conf.network6().unwrap().to_string(), "fd00:10:244::/56");

    let v6 = objects(&render(&[
        "--set",
        "podCidr=",
        "--set",
        "podCidrv6=fd00:10:244::/56",
    ]));
    let conf = net_conf(&v6);
    assert!(conf.ipv4.is_none(), "IPv6-only: EnableIPv4 false");
    assert_eq!(config(&v6, "net-conf.json")["EnableIPv4"], false);

    let hg = objects(&render(&[
        "--set",
        "flannel.backend=host-gw",
        "--set",
        "flannel.directRouting=true",
    ]));
    assert_eq!(
        config(&hg, "net-conf.json")["Backend"],
        serde_json::json!({"Type": "host-gw"}),
        "vxlan's options only with vxlan, as flannel's chart"
    );
    let vx = objects(&render(&[
        "--set",
        "flannel.vni=4",
        "--set",
        "flannel.backendPort=4789",
        "--set",
        "flannel.mtu=9000",
        "--set",
        "flannel.directRouting=true",
    ]));
    let conf = net_conf(&vx);
    assert_eq!(
        (conf.backend.vni, conf.backend.port, conf.backend.mtu),
        (4, 4789, Some(9000))
    );
    assert!(conf.backend.direct_routing);

    let bgp = objects(&render(&[
        "--set-json",
        r#"twill.bgp={"ASN":64512,"Peers":[{"Address":"198.18.0.4","ASN":64513}]}"#,
        "--set",
        "twill.metrics.ip=0.0.0.0",
        "--set",
        "twill.peerProbeInterval=30",
        "--set",
        "twill.peerProbeRate=40",
    ]));
    let conf = net_conf(&bgp);
    let b = conf.bgp.expect("the BGP section");
    assert_eq!(b.asn, 64512);
    assert_eq!(b.peers[0].address.to_string(), "198.18.0.4");
    let cmd = command(&bgp);
    for flag in [
        "--metrics-ip=0.0.0.0",
        "--peer-probe-interval=30",
        "--peer-probe-rate=40",
    ] {
        assert!(cmd.contains(&flag.to_string()), "{cmd:?}");
    }
    let containers = &object(&bgp, "DaemonSet")["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[1]["name"], "bird");
    let no_bird = objects(&render(&["--set", "twill.bird.enabled=false"]));
    let containers = &object(&no_bird, "DaemonSet")["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().unwrap().len(), 1);
}

#[test]
fn values_twill_cannot_honour_are_refused_by_name() {
    let chart = chart();
    let (ok, out) = helm(&[
        "template",
        "twill",
        chart.to_str().unwrap(),
        "--set",
        "flannel.backend=wireguard",
    ]);
    assert!(!ok && out.contains("flannel.backend=wireguard"), "{out}");
    let (ok, out) = helm(&[
        "template",
        "twill",
        chart.to_str().unwrap(),
        "--set",
        "podCidr=",
    ]);
    assert!(!ok && out.contains("podCidr"), "{out}");
}

/// The Prometheus Operator objects: off by default; on, a PodMonitor on the DaemonSet's
/// named metrics port (twilld then listening on the node's address) and a PrometheusRule
/// carrying files/twill-alerts.yaml unchanged (the file promtool checks, tests/alerts.rs).
#[test]
fn pod_monitor_and_prometheus_rule_when_asked() {
    assert!(objects(&render(&[]))
        .iter()
        .all(|o| o["kind"] != "PodMonitor" && o["kind"] != "PrometheusRule"));
    let objs = objects(&render(&[
        "--set",
        "monitoring.podMonitor.enabled=true",
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.prometheusRule.labels.release=kube-prometheus-stack",
    ]));
    let pm = object(&objs, "PodMonitor");
    assert_eq!(pm["spec"]["selector"]["matchLabels"]["k8s-app"], "twill");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    let twilld = &object(&objs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(twilld["ports"][0]["name"], "metrics");
    assert_eq!(twilld["ports"][0]["containerPort"], 9464);
    assert!(
        command(&objs).contains(&"--metrics-ip=$(HOST_IP)".to_string()),
        "{:?}",
        command(&objs)
    );
    assert!(twilld["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "HOST_IP"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"));
    let rule = object(&objs, "PrometheusRule");
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let file: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(chart().join("files/twill-alerts.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(rule["spec"], file, "the rules file, unchanged");
}

/// The dashboard's ConfigMap, labelled for Grafana's sidecar, holds
/// files/twill-dashboard.json unchanged. (tests/alerts.rs checks its queries name only
/// metrics a real twilld serves.)
#[test]
fn grafana_dashboard_config_map_when_asked() {
    assert!(objects(&render(&[]))
        .iter()
        .all(|o| o["metadata"]["name"] != "twill-grafana-dashboard"));
    let objs = objects(&render(&[
        "--set",
        "monitoring.grafanaDashboard.enabled=true",
        "--set",
        "monitoring.grafanaDashboard.namespace=monitoring",
    ]));
    let cm = objs
        .iter()
        .find(|o| o["metadata"]["name"] == "twill-grafana-dashboard")
        .expect("the dashboard ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let got: Value = serde_json::from_str(cm["data"]["twill.json"].as_str().unwrap()).unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("files/twill-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(got, file);
}
