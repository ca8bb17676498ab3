use super::*;
use serde_json::json;

fn policy(spec: serde_json::Value) -> Policy {
    let np: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "x", "name": "p"},
        "spec": spec,
    }))
    .unwrap();
    policy_from_k8s(&np)
}

#[test]
fn policy_types_default_as_the_api_server_defaults_them() {
    let p = policy(json!({"podSelector": {}}));
    assert_eq!(p.ingress, Some(vec![]), "Ingress is always defaulted in");
    assert_eq!(p.egress, None);
    let p = policy(json!({"podSelector": {}, "egress": [{}]}));
    assert_eq!(p.ingress, Some(vec![]));
    assert_eq!(p.egress, Some(vec![Rule::default()]));
    let p = policy(json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}));
    assert_eq!(p.ingress, None, "given policyTypes are kept as given");
    assert_eq!(p.egress, Some(vec![]), "Egress with no rules denies all");
    assert!(p.problems.is_empty());
}

#[test]
fn peers_ports_and_blocks_are_read() {
    let p = policy(json!({
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{
            "from": [
                {"podSelector": {"matchLabels": {"pod": "b"}}},
                {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "c"}}},
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}
            ],
            "ports": [
                {"port": 80},
                {"port": 81, "protocol": "UDP"},
                {"port": "serve-80-tcp"},
                {"port": 8000, "endPort": 8100},
                {"protocol": "UDP"}
            ]
        }]
    }));
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let r = &p.ingress.unwrap()[0];
    assert_eq!(
        r.peers[0],
        Peer::Pods {
            namespaces: NsScope::Own("x".into()),
            pods: Selector::labels(&[("pod", "b")])
        }
    );
    assert_eq!(
        r.peers[1],
        Peer::Pods {
            namespaces: NsScope::Matching(Selector::labels(&[("ns", "y")])),
            pods: Selector::everything()
        }
    );
    assert_eq!(
        r.peers[2],
        Peer::Pods {
            namespaces: NsScope::Matching(Selector::everything()),
            pods: Selector::labels(&[("pod", "c")])
        }
    );
    assert_eq!(
        r.peers[3],
        Peer::Block {
            cidr: "10.0.0.0/8".parse().unwrap(),
            except: vec!["10.1.0.0/16".parse().unwrap()]
        }
    );
    assert_eq!(
        r.ports,
        vec![
            Port::Range(Proto::Tcp, 80, 80),
            Port::Range(Proto::Udp, 81, 81),
            Port::Named(Proto::Tcp, "serve-80-tcp".into()),
            Port::Range(Proto::Tcp, 8000, 8100),
            Port::Any(Proto::Udp),
        ]
    );
}

#[test]
fn what_cannot_be_read_fails_closed_and_is_named() {
    let p = policy(json!({
        "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Near", "values": ["a"]}]},
        "policyTypes": ["Ingress", "Sideways"],
        "ingress": [{
            "from": [
                {"ipBlock": {"cidr": "10.0.0.0/33"}},
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}},
                {}
            ],
            "ports": [{"port": 70000}, {"port": 90, "endPort": 80}, {"protocol": "ICMP"}]
        }]
    }));
    let text = p.problems.join("\n");
    for want in [
        "spec.podSelector: matchExpressions[0]: unknown operator \"Near\"",
        "spec.policyTypes: unknown type \"Sideways\"",
        "spec.ingress[0].from[0]: ipBlock.cidr \"10.0.0.0/33\"",
        "spec.ingress[0].from[1]: ipBlock.except[0] \"11.0.0.0/16\" is not inside cidr",
        "spec.ingress[0].from[2]: neither podSelector",
        "spec.ingress[0].ports[0]: port 70000 is not a port",
        "spec.ingress[0].ports[1]: endPort 80 is below port 90",
        "spec.ingress[0].ports[2]: protocol \"ICMP\"",
    ] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
    // Every pod of the namespace is selected, and nothing unreadable matches: the rule's
    // peers and ports stay lists of Nothing, never empty lists (which would mean "any").
    assert!(p.select.is_everything());
    let r = &p.ingress.unwrap()[0];
    assert_eq!(r.peers, vec![Peer::Nothing; 3]);
    assert_eq!(r.ports, vec![Port::Nothing; 3]);
}

#[test]
fn pods_keep_addresses_and_named_ports_until_they_finish() {
    let pod: KPod = serde_json::from_value(json!({
        "metadata": {"namespace": "x", "name": "a", "labels": {"pod": "a"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
            {"name": "serve-80-tcp", "containerPort": 80},
            {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"},
            {"containerPort": 82}
        ]}]},
        "status": {"phase": "Running", "podIP": "10.244.1.5",
                   "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}, {"ip": "bogus"}]}
    }))
    .unwrap();
    let p = pod_from_k8s(&pod);
    assert_eq!(
        p.ips,
        vec![
            "10.244.1.5".parse::<IpAddr>().unwrap(),
            "fd00::5".parse().unwrap()
        ]
    );
    assert_eq!(p.named_port("serve-81-udp", Proto::Udp), Some(81));
    assert_eq!(p.named_port("serve-81-udp", Proto::Tcp), None);
    assert_eq!(p.ports.len(), 2, "unnamed ports cannot be referred to");
    assert_eq!(p.node.as_deref(), Some("n1"));
    let mut done = pod.clone();
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    assert!(pod_from_k8s(&done).ips.is_empty() && !pod_from_k8s(&done).selectable());
}
