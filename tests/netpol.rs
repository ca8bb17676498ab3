//! NetworkPolicy enforced by twilld (`--network-policy`) on a real API server, case by case
//! as the upstream NetworkPolicy e2e suite goes: namespaces x, y, z; pods a, b, c each
//! serving TCP and UDP on 80 and 81; pods spread over three nodes, so every case covers
//! pods on one node (the cni0 bridge) and across nodes (VXLAN). Every case asserts the full
//! matrix of new connections (9 x 8 pods x 2 ports x 2 protocols), over IPv4 and IPv6 on a
//! dual-stack cluster for the upstream cases.

use twill_e2e::metric_in;
use twill_e2e::netpol::{LabPod, PolicyLab, Proto};

fn is(p: &LabPod, id: &str) -> bool {
    p.id() == id
}

const METRICS: &str = "--metrics-port=8471";

#[test]
fn the_upstream_matrix_on_three_dual_stack_nodes() {
    let lab = PolicyLab::start_dual("np", &[METRICS]);
    assert!(lab.pods.iter().all(|p| p.ip6.is_some()));

    // Default deny ingress in x, then egress: only x's pods are cut off, each way.
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-ingress, namespace: x}\nspec: {podSelector: {}}\n",
    );
    lab.expect("default deny ingress in x", &|_, t, _, _| t.ns != "x");
    // twilld reads the drop counters every 5 s, so the denied probes show within two reads.
    let drops = || -> f64 {
        (0..3)
            .map(|i| {
                let body = lab.c.nodes[i]
                    .ns
                    .sh("curl -sf http://127.0.0.1:8471/metrics");
                metric_in(
                    &body,
                    "twill_policy_drops_total",
                    Some(("direction", "ingress")),
                )
            })
            .sum()
    };
    let waited = std::time::Instant::now();
    while drops() == 0.0 {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(12),
            "the denied probes are counted as ingress drops within 12 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    lab.delete_policies();
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-egress, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}\n",
    );
    lab.expect("default deny egress in x", &|f, _, _, _| f.ns != "x");
    lab.delete_policies();

    // Allow from a namespace; the policy updated to another; deleted.
    let from_ns = |ns: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: from-ns, namespace: x}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: \"{ns}\"}}}}\n"
        )
    };
    lab.apply(&from_ns("y"));
    lab.expect("x allows ingress from namespace y", &|f, t, _, _| {
        t.ns != "x" || f.ns == "y"
    });
    lab.apply(&from_ns("z"));
    lab.expect("the policy updated to namespace z", &|f, t, _, _| {
        t.ns != "x" || f.ns == "z"
    });
    lab.delete_policies();
    lab.expect("the policy deleted", &|_, _, _, _| true);

    // Pods in namespaces: both selectors in one peer (an AND), matchExpressions.
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-in-yz, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [\"y\", \"z\"]}]\n      podSelector: {matchLabels: {pod: b}}\n",
    );
    lab.expect("x/a from pod b of y and z", &|f, t, _, _| {
        !is(t, "x/a") || (f.name == "b" && f.ns != "x")
    });
    lab.delete_policies();

    // ipBlock with an exception, one block per family.
    let yb = lab.pod("y/b").ip;
    let yb6 = lab.pod("y/b").ip6.unwrap();
    lab.apply(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: block, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from:\n    - ipBlock: {{cidr: 10.244.0.0/16, except: [{yb}/32]}}\n    - ipBlock: {{cidr: \"fd00:10:244::/56\", except: [\"{yb6}/128\"]}}\n"
    ));
    lab.expect("x/a from the pod network except y/b", &|f, t, _, _| {
        !is(t, "x/a") || !is(f, "y/b")
    });
    lab.delete_policies();

    // Named ports, resolved on the destination pod, and a port range (endPort).
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: named, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: serve-81-tcp}, {port: serve-80-udp, protocol: UDP}]\n",
    );
    lab.expect(
        "x/a on its named ports 81/TCP and 80/UDP",
        &|_, t, port, proto| {
            !is(t, "x/a") || (port, proto) == (81, Proto::Tcp) || (port, proto) == (80, Proto::Udp)
        },
    );
    lab.delete_policies();
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: range, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 79, endPort: 80, protocol: UDP}]\n",
    );
    lab.expect("x/a on UDP 79-80", &|_, t, port, proto| {
        !is(t, "x/a") || (port, proto) == (80, Proto::Udp)
    });
    lab.delete_policies();

    // Two policies selecting one pod: their union.
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-zc, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"z\"}}, podSelector: {matchLabels: {pod: c}}}]\n",
    );
    lab.expect("x/a from y and from z/c", &|f, t, _, _| {
        !is(t, "x/a") || f.ns == "y" || is(f, "z/c")
    });
    lab.delete_policies();

    // A pod relabelled into a rule's selector, and back.
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n",
    );
    lab.expect("x/a from x/b", &|f, t, _, _| !is(t, "x/a") || is(f, "x/b"));
    lab.cp
        .kubectl(&["label", "pod", "c", "-n", "x", "pod=b", "--overwrite"]);
    lab.expect("x/c relabelled pod=b", &|f, t, _, _| {
        !is(t, "x/a") || is(f, "x/b") || is(f, "x/c")
    });
    lab.cp
        .kubectl(&["label", "pod", "c", "-n", "x", "pod=c", "--overwrite"]);
    lab.expect("x/c labelled back", &|f, t, _, _| {
        !is(t, "x/a") || is(f, "x/b")
    });
    lab.delete_policies();

    // A namespace relabelled into a rule's selector.
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-blue, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: blue}}}]\n",
    );
    lab.expect("x/a from no namespace yet", &|_, t, _, _| !is(t, "x/a"));
    lab.cp.kubectl(&["label", "namespace", "z", "team=blue"]);
    lab.expect("z labelled team=blue", &|f, t, _, _| {
        !is(t, "x/a") || f.ns == "z"
    });
    lab.cp.kubectl(&["label", "namespace", "z", "team-"]);
    lab.expect("z's label removed", &|_, t, _, _| !is(t, "x/a"));
    lab.delete_policies();

    // Egress to a DNS-like port only, beside a default deny ingress elsewhere; then egress
    // to one namespace.
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: dns-only, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: 81, protocol: UDP}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-ingress, namespace: z}\nspec: {podSelector: {}}\n",
    );
    lab.expect(
        "x/a egress to 81/UDP only; z denies ingress",
        &|f, t, port, proto| (!is(f, "x/a") || (port, proto) == (81, Proto::Udp)) && t.ns != "z",
    );
    lab.delete_policies();
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: to-y, namespace: x}\nspec:\n  podSelector: {}\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}}]\n",
    );
    lab.expect("x egress to y only, ingress to x denied", &|f, t, _, _| {
        (f.ns != "x" || t.ns == "y") && t.ns != "x"
    });

    // policy explain reads the same model: x/a -> y/c allowed by to-y's rule 0 on egress,
    // y/c -> x/a denied on ingress (to-y isolates x for ingress with no rule).
    let kubeconfig = lab.c.dir.path().join("sa.kubeconfig");
    let kc = format!("--kubeconfig-file={}", kubeconfig.display());
    let admin_ok = lab.c.nodes[0].twilld(&[
        "policy", "explain", "--from", "x/a", "--to", "y/c", "--port", "80/TCP", &kc,
    ]);
    assert!(admin_ok.0, "{}", admin_ok.1);
    assert!(admin_ok.1.starts_with("allow: x/a"), "{}", admin_ok.1);
    assert!(
        admin_ok.1.contains("allowed by x/to-y egress[0]"),
        "{}",
        admin_ok.1
    );
    let back = lab.c.nodes[0].twilld(&[
        "policy", "explain", "--from", "y/c", "--to", "x/a", "--port", "81/UDP", &kc,
    ]);
    assert!(back.1.starts_with("deny: y/c"), "{}", back.1);
    assert!(
        back.1.contains("selected by x/to-y; no rule allows it"),
        "{}",
        back.1
    );

    lab.delete_policies();
    lab.expect("every policy deleted", &|_, _, _, _| true);
    // No policy left: no table on any node.
    for n in &lab.c.nodes {
        assert!(!n
            .ns
            .try_sh("nft list table inet twill-policy >/dev/null 2>&1"));
    }
}

/// What the kernel holds changes as the model does: a pod relabelled changes set elements
/// only (the table is not rewritten); a flushed chain is put back; a policy the API server
/// would have refused (written to its etcd by hand, as a tampered store would hold it) is
/// reported and fails closed instead of opening anything.
#[test]
fn pods_change_elements_drift_heals_and_unreadable_policies_fail_closed() {
    let lab = PolicyLab::start("npd", &[METRICS]);
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n",
    );
    lab.expect("x/a from x/b", &|f, t, _, _| !is(t, "x/a") || is(f, "x/b"));
    let node = &lab.c.nodes[lab.pod("x/a").node].ns;
    // `# handle N` of the table: a rewritten table is a new table with a new handle.
    let table_handle = || node.sh("nft -a list table inet twill-policy | head -1");
    let before = table_handle();
    lab.cp
        .kubectl(&["label", "pod", "c", "-n", "x", "pod=b", "--overwrite"]);
    lab.expect("x/c relabelled pod=b", &|f, t, _, _| {
        !is(t, "x/a") || is(f, "x/b") || is(f, "x/c")
    });
    assert_eq!(table_handle(), before, "a pod change rewrote the table");
    let xc = lab.pod("x/c").ip.to_string();
    assert!(node.sh("nft list set inet twill-policy q0_4").contains(&xc));
    // doctor renders the model for the node from the API and finds the kernel holding it
    // (a drifted table is repaired by twilld faster than doctor could be run to see it: the
    // differences doctor would name are unit-tested).
    let i = lab.pod("x/a").node;
    let doctor = || {
        let n = &lab.c.nodes[i];
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &n.ns.name])
            .arg(twill_e2e::twilld_bin())
            .args(["doctor", "--output=json", "--iface=eth0"])
            .args(n.args.iter().filter(|a| {
                !a.starts_with("--ip-masq")
                    && !a.starts_with("--network-policy")
                    && !a.starts_with("--metrics")
            }))
            .arg(format!("--subnet-file={}", n.subnet_env().display()))
            .envs(n.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        twill_e2e::doctor_check(&twill_e2e::text(&out), "network-policy")
    };
    let check = doctor();
    assert_eq!(check["status"], "pass", "{check}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("matches the model"),
        "{check}"
    );

    // Someone flushes the policy's chain: put back within milliseconds (the nftables
    // monitor), measured here by polling.
    let started = std::time::Instant::now();
    node.sh("nft flush chain inet twill-policy p0_ingress");
    twill_testutil::wait_until(10, "the flushed chain rewritten", || {
        node.sh("nft list chain inet twill-policy p0_ingress")
            .contains("accept")
    });
    eprintln!("flushed policy chain back in {:?}", started.elapsed());
    // An element deleted by hand: elements are compared within 10 s of an nftables change.
    let xb = lab.pod("x/b").ip.to_string();
    node.sh(&format!(
        "nft delete element inet twill-policy q0_4 {{ {xb} }}"
    ));
    twill_testutil::wait_until(15, "the deleted element put back", || {
        node.sh("nft list set inet twill-policy q0_4").contains(&xb)
    });
    lab.expect("after the repair", &|f, t, _, _| {
        !is(t, "x/a") || is(f, "x/b") || is(f, "x/c")
    });
    lab.delete_policies();

    // A rule whose peer selector has an operator the API server refuses: the rule matches
    // nothing, so x/a is isolated with nothing allowed (closed, not open).
    let healthy = twill_e2e::alerts::scrape(node, 8471);
    let bad = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"bad","namespace":"x","uid":"9b6f2a4e-0000-4000-8000-000000000001","creationTimestamp":"2026-12-04T00:00:00Z"},"spec":{"podSelector":{"matchLabels":{"pod":"a"}},"policyTypes":["Ingress"],"ingress":[{"from":[{"podSelector":{"matchExpressions":[{"key":"pod","operator":"Near","values":["b"]}]}}]}]}}"#;
    let file = lab.c.dir.path().join("bad-policy.json");
    std::fs::write(&file, bad).unwrap();
    lab.c.etcd_host().sh(&format!(
        "ETCDCTL_API=3 etcdctl --endpoints=http://{}:2379 put /registry/networkpolicies/x/bad < {}",
        twill_e2e::ETCD_IP,
        file.display()
    ));
    lab.expect("x/a cut off by the unreadable rule", &|_, t, _, _| {
        !is(t, "x/a")
    });
    let log: String = lab.c.nodes.iter().map(|n| n.log()).collect();
    assert!(
        log.contains("cannot be expressed in full")
            && log.contains("spec.ingress[0].from[0]: podSelector: matchExpressions[0]: unknown operator \"Near\""),
        "{log}"
    );
    let body = node.sh("curl -sf http://127.0.0.1:8471/metrics");
    assert!(
        metric_in(
            &body,
            "twill_policy_errors_total",
            Some(("reason", "unreadable"))
        ) >= 1.0,
        "{body}"
    );
    // The alert for it fires on what the node serves now, and not on what it served before.
    let faulted = twill_e2e::alerts::scrape(node, 8471);
    let dir = tempfile::tempdir().unwrap();
    let t = twill_e2e::alerts::alert_test(
        &[(
            "TwillNetworkPolicyNotEnforced".into(),
            "warning",
            String::new(),
        )],
        &healthy,
        &faulted,
        dir.path(),
    );
    twill_e2e::alerts::promtool_test(&t, dir.path(), "");
    lab.cp
        .kubectl(&["delete", "networkpolicy", "bad", "-n", "x"]);
    lab.expect("the bad policy deleted", &|_, _, _, _| true);
}
