use super::*;
use crate::model::{NamedPort, Pod, PolicyId};

fn pod(ns: &str, name: &str, ips: &[&str], node: &str) -> Pod {
    Pod {
        ns: ns.into(),
        name: name.into(),
        labels: [("pod".to_string(), name.to_string())].into(),
        ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
        node: Some(node.into()),
        host_network: false,
        ports: vec![NamedPort {
            name: "serve-81-udp".into(),
            proto: Proto::Udp,
            port: 81,
        }],
    }
}

fn cluster() -> Cluster {
    let mut c = Cluster::default();
    for p in [
        pod("x", "a", &["10.0.1.2", "fd00::1:2"], "n1"),
        pod("x", "b", &["10.0.2.2"], "n2"),
        pod("y", "a", &["10.0.1.3"], "n1"),
    ] {
        c.pods.insert((p.ns.clone(), p.name.clone()), p);
    }
    let p = Policy {
        id: PolicyId {
            ns: "x".into(),
            name: "allow-b".into(),
        },
        select: Selector::labels(&[("pod", "a")]),
        ingress: Some(vec![Rule {
            peers: vec![
                Peer::Pods {
                    namespaces: NsScope::Own("x".into()),
                    pods: Selector::labels(&[("pod", "b")]),
                },
                Peer::Block {
                    cidr: "198.18.0.0/15".parse().unwrap(),
                    except: vec!["198.18.1.0/24".parse().unwrap()],
                },
                Peer::Nothing,
            ],
            ports: vec![
                Port::Range(Proto::Tcp, 80, 80),
                Port::Named(Proto::Udp, "serve-81-udp".into()),
            ],
        }]),
        egress: Some(vec![]),
        problems: vec![],
    };
    c.policies.insert(p.id.clone(), p);
    c
}

#[test]
fn no_policy_no_table() {
    let mut c = cluster();
    c.policies.clear();
    assert_eq!(render(&c, "n1", false), None);
}

#[test]
fn rules_name_sets_and_sets_hold_this_nodes_selected_pods() {
    let r = render(&cluster(), "n1", false).unwrap();
    let s = &r.skeleton;
    // Egress and ingress in two base chains on forward, replies and IPv6 neighbour
    // discovery first, then one lookup of the pod's group of policies.
    for want in [
        "chain egress {\n    type filter hook forward priority -6; policy accept;\n    ct state established,related accept\n    icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } accept\n    ip saddr vmap @egress_dispatch4\n    ip6 saddr vmap @egress_dispatch6\n  }\n",
        "    ip daddr vmap @ingress_dispatch4\n    ip6 daddr vmap @ingress_dispatch6\n",
        "  chain g0_ingress {\n    jump p0_ingress\n    counter name drops_ingress drop\n  }\n",
        "  map ingress_dispatch4 {\n    type ipv4_addr : verdict\n  }\n",
        // egress: [] allows nothing.
        "  chain p0_egress {\n  }\n",
        // The peer pods by set, the block with its exception, the named port resolved by a
        // set of (address, protocol, port); the unreadable peer gives no rule.
        "ip saddr @q0_4 meta l4proto tcp th dport 80 counter accept comment \"x/allow-b ingress 0\"",
        "ip saddr @q0_4 ip daddr . meta l4proto . th dport @n0_4 counter accept",
        "ip saddr 198.18.0.0/15 ip saddr != { 198.18.1.0/24 } meta l4proto tcp th dport 80 counter accept",
        "ip6 saddr @q0_6 meta l4proto tcp th dport 80 counter accept",
    ] {
        assert!(s.contains(want), "{want} in\n{s}");
    }
    assert_eq!(
        s.matches(" accept comment").count(),
        6,
        "(set, block) x (80, named) v4 + set x 2 v6\n{s}"
    );
    let el = |n: &str| r.sets[n].iter().cloned().collect::<Vec<_>>();
    assert_eq!(
        el("ingress_dispatch4"),
        ["10.0.1.2 : jump g0_ingress"],
        "x/a only: y/a is not x's, x/b is on n2"
    );
    assert_eq!(el("ingress_dispatch6"), ["fd00::1:2 : jump g0_ingress"]);
    assert_eq!(el("egress_dispatch4"), ["10.0.1.2 : jump g0_egress"]);
    assert_eq!(el("q0_4"), ["10.0.2.2"], "peers are cluster-wide");
    assert_eq!(
        el("n0_4"),
        [
            "10.0.1.2 . udp . 81",
            "10.0.1.3 . udp . 81",
            "10.0.2.2 . udp . 81"
        ]
    );
    let full = r.full_script();
    assert!(full.starts_with(
        "table inet twill-policy {}\ndelete table inet twill-policy\ntable inet twill-policy {\n"
    ));
    assert!(full.contains("add element inet twill-policy q0_4 { 10.0.2.2 }\n"));
}

#[test]
fn a_pod_changes_elements_a_policy_changes_the_table() {
    let c = cluster();
    let before = render(&c, "n1", false).unwrap();
    let mut c2 = c.clone();
    c2.pods.insert(("x".into(), "b2".into()), {
        let mut p = pod("x", "b", &["10.0.2.9"], "n2");
        p.name = "b2".into();
        p
    });
    c2.pods.remove(&("x".to_string(), "b".to_string()));
    let after = render(&c2, "n1", false).unwrap();
    let script = after.update_script(&before).expect("same rules");
    assert!(
        script.contains("delete element inet twill-policy q0_4 { 10.0.2.2 }\n"),
        "{script}"
    );
    assert!(
        script.contains("add element inet twill-policy q0_4 { 10.0.2.9 }\n"),
        "{script}"
    );
    assert!(!script.contains("chain"), "{script}");
    assert_eq!(after.update_script(&after).as_deref(), Some(""));
    let mut c3 = c.clone();
    c3.policies.values_mut().next().unwrap().ingress = Some(vec![Rule::default()]);
    assert_eq!(
        render(&c3, "n1", false).unwrap().update_script(&before),
        None
    );
}

#[test]
fn closed_keeps_isolation_and_allows_nothing() {
    let r = render(&cluster(), "n1", true).unwrap();
    assert!(!r.skeleton.contains(" accept comment"), "{}", r.skeleton);
    assert!(r.skeleton.contains(
        "  chain g0_ingress {\n    jump p0_ingress\n    counter name drops_ingress drop\n"
    ));
    assert_eq!(r.sets["ingress_dispatch4"].len(), 1);
}

#[test]
fn a_pod_under_several_policies_gets_their_group_and_only_a_new_group_is_a_rewrite() {
    let mut c = cluster();
    let mut second = c.policies.values().next().unwrap().clone();
    second.id.name = "also-a".into();
    second.egress = None;
    c.policies.insert(second.id.clone(), second);
    let r = render(&c, "n1", false).unwrap();
    // x/allow-b is p0, x/also-a p1: x/a's ingress group holds both, in order.
    assert!(
        r.skeleton.contains(
            "  chain c0_ingress {\n    jump p0_ingress\n    jump p1_ingress\n    counter name drops_ingress drop\n  }\n"
        ),
        "{}",
        r.skeleton
    );
    let el = |r: &Ruleset, n: &str| r.sets[n].iter().cloned().collect::<Vec<_>>();
    assert_eq!(el(&r, "ingress_dispatch4"), ["10.0.1.2 : jump c0_ingress"]);
    assert_eq!(
        el(&r, "egress_dispatch4"),
        ["10.0.1.2 : jump g0_egress"],
        "one egress policy"
    );
    // Another pod of the same group: elements only.
    let mut c2 = c.clone();
    c2.pods.insert(("x".into(), "a2".into()), {
        let mut p = pod("x", "a", &["10.0.1.9"], "n1");
        p.name = "a2".into();
        p
    });
    let script = render(&c2, "n1", false)
        .unwrap()
        .update_script(&r)
        .expect("same rules");
    assert_eq!(
        script,
        "add element inet twill-policy egress_dispatch4 { 10.0.1.9 : jump g0_egress }\nadd element inet twill-policy ingress_dispatch4 { 10.0.1.9 : jump c0_ingress }\nadd element inet twill-policy n0_4 { 10.0.1.9 . udp . 81 }\n"
    );
    // The combination gone (the second policy deleted): the table is rewritten.
    let mut c3 = c.clone();
    c3.policies.retain(|id, _| id.name != "also-a");
    assert_eq!(render(&c3, "n1", false).unwrap().update_script(&r), None);
}
