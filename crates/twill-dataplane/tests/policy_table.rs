//! The NetworkPolicy table against the real kernel and nft, in a throw-away namespace: a
//! rendered table with every kind of match (both families, named ports, blocks, a
//! combination group) is accepted, reads back as exactly what was written (so the periodic
//! element check never rewrites a healthy table, which would loop: a rewrite is a change),
//! and drift of either kind is found and put back.

use std::net::IpAddr;

use twill_dataplane::firewall::policy::{differences, kernel_table, Applied, PolicyTable};
use twill_policy::{
    render, Cluster, NamedPort, NsScope, Peer, Pod, Policy, PolicyId, Port, Proto, Rule, Selector,
};
use twill_testutil::Netns;

fn pod(ns: &str, name: &str, ips: &[&str], node: &str) -> Pod {
    Pod {
        ns: ns.into(),
        name: name.into(),
        labels: [("pod".to_string(), name.to_string())].into(),
        ips: ips.iter().map(|i| i.parse::<IpAddr>().unwrap()).collect(),
        node: Some(node.into()),
        host_network: false,
        ports: vec![NamedPort {
            name: "serve-81-udp".into(),
            proto: Proto::Udp,
            port: 81,
        }],
    }
}

fn policy(name: &str, select: &str, rules: Vec<Rule>) -> Policy {
    Policy {
        id: PolicyId {
            ns: "x".into(),
            name: name.into(),
        },
        select: Selector::labels(&[("pod", select)]),
        ingress: Some(rules),
        egress: Some(vec![Rule::default()]),
        problems: vec![],
    }
}

fn cluster() -> Cluster {
    let mut c = Cluster::default();
    for p in [
        pod("x", "a", &["10.244.1.2", "fd00:10:244:1::2"], "n1"),
        pod("x", "b", &["10.244.2.2", "fd00:10:244:2::2"], "n2"),
        pod("x", "c", &["10.244.1.3"], "n1"),
    ] {
        c.pods.insert((p.ns.clone(), p.name.clone()), p);
    }
    let from_b = Rule {
        peers: vec![
            Peer::Pods {
                namespaces: NsScope::Own("x".into()),
                pods: Selector::labels(&[("pod", "b")]),
            },
            Peer::Block {
                cidr: "198.18.0.0/15".parse().unwrap(),
                except: vec!["198.18.1.0/24".parse().unwrap()],
            },
            Peer::Block {
                cidr: "2001:2::/48".parse().unwrap(),
                except: vec![],
            },
        ],
        ports: vec![
            Port::Range(Proto::Tcp, 80, 81),
            Port::Named(Proto::Udp, "serve-81-udp".into()),
            Port::Any(Proto::Sctp),
        ],
    };
    for p in [
        policy("one", "a", vec![from_b]),
        policy("two", "a", vec![]),
        policy("three", "c", vec![Rule::default()]),
    ] {
        c.policies.insert(p.id.clone(), p);
    }
    c
}

#[test]
fn the_table_reads_back_as_written_and_drift_is_put_back() {
    let ns = Netns::new("poltab");
    let (ok, listing) = ns.run(|| {
        Box::pin(async {
            let c = cluster();
            let want = render(&c, "n1", false).unwrap();
            assert!(
                want.skeleton.contains("chain c0_ingress"),
                "a combination group"
            );
            let table = PolicyTable::new();
            assert_eq!(table.apply(Some(&want)).unwrap(), Applied::Rewritten);
            let k = kernel_table().unwrap().expect("the table");
            let diffs = differences(&want, &k);
            assert!(diffs.is_empty(), "{diffs:?}");
            assert!(!table.verify().unwrap(), "a healthy table is left alone");
            assert!(!table.repair().unwrap());
            // A pod more: elements only, and still read back the same.
            let mut c2 = c.clone();
            c2.pods.insert(("x".into(), "a2".into()), {
                let mut p = pod("x", "a", &["10.244.1.9"], "n1");
                p.name = "a2".into();
                p
            });
            let want2 = render(&c2, "n1", false).unwrap();
            assert!(matches!(
                table.apply(Some(&want2)).unwrap(),
                Applied::Elements(_)
            ));
            assert!(!table.verify().unwrap());
            // An element deleted behind our back: found by verify (the rules look the same).
            let out = std::process::Command::new("nft")
                .args([
                    "delete",
                    "element",
                    "inet",
                    "twill-policy",
                    "q0_4",
                    "{ 10.244.2.2 }",
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            assert!(
                !table.repair().unwrap(),
                "the terse listing cannot see elements"
            );
            assert!(table.verify().unwrap(), "verify puts it back");
            assert!(differences(&want2, &kernel_table().unwrap().unwrap()).is_empty());
            // A chain flushed: found by the cheap check.
            let out = std::process::Command::new("nft")
                .args(["flush", "chain", "inet", "twill-policy", "p0_ingress"])
                .output()
                .unwrap();
            assert!(out.status.success());
            assert!(table.repair().unwrap());
            assert!(!table.verify().unwrap());
            // No policy: the table goes.
            assert_eq!(table.apply(None).unwrap(), Applied::Removed);
            let gone = kernel_table().unwrap().is_none();
            (gone, String::new())
        })
    });
    assert!(ok, "{listing}");
}
