//! The verdict on one flow and why: the source's egress and the destination's ingress,
//! each allowed when no policy isolates that pod for that direction or when a rule of one
//! of the policies that do allows it (their union). `twilld policy explain` prints this;
//! [`crate::render`] programs the same decisions.

use std::net::IpAddr;

use crate::model::{Cluster, Pod, PolicyId, Proto, Rule};

/// One end of a flow: an address, and the pod behind it when there is one (a hostNetwork
/// pod is its node, so it is an address only).
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    pub ip: IpAddr,
    pub pod: Option<&'a Pod>,
}

impl<'a> Endpoint<'a> {
    pub fn pod(pod: &'a Pod, ip: IpAddr) -> Self {
        Endpoint {
            ip,
            pod: pod.selectable().then_some(pod),
        }
    }

    pub fn ip(ip: IpAddr) -> Self {
        Endpoint { ip, pod: None }
    }
}

/// One direction's part of the verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Side {
    /// The policies that select the pod for this direction; empty: not isolated.
    pub isolated_by: Vec<PolicyId>,
    /// The (policy, rule index) pairs that allow the flow.
    pub allowed_by: Vec<(PolicyId, usize)>,
}

impl Side {
    pub fn allowed(&self) -> bool {
        self.isolated_by.is_empty() || !self.allowed_by.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub egress: Side,
    pub ingress: Side,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.egress.allowed() && self.ingress.allowed()
    }
}

impl Cluster {
    /// The verdict on a new connection from `from` to `to`'s `proto`/`port`.
    pub fn verdict(&self, from: Endpoint, to: Endpoint, proto: Proto, port: u16) -> Verdict {
        let mut v = Verdict::default();
        let matches = |r: &Rule, other: Endpoint| {
            (r.peers.is_empty()
                || r.peers
                    .iter()
                    .any(|p| self.peer_matches(p, other.pod, other.ip)))
                && (r.ports.is_empty() || r.ports.iter().any(|p| p.matches(proto, port, to.pod)))
        };
        for p in self.policies.values() {
            if let (Some(rules), Some(src)) = (&p.egress, from.pod) {
                if p.selects(src) {
                    v.egress.isolated_by.push(p.id.clone());
                    for (i, r) in rules.iter().enumerate() {
                        if matches(r, to) {
                            v.egress.allowed_by.push((p.id.clone(), i));
                        }
                    }
                }
            }
            if let (Some(rules), Some(dst)) = (&p.ingress, to.pod) {
                if p.selects(dst) {
                    v.ingress.isolated_by.push(p.id.clone());
                    for (i, r) in rules.iter().enumerate() {
                        if matches(r, from) {
                            v.ingress.allowed_by.push((p.id.clone(), i));
                        }
                    }
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NamedPort, NsScope, Peer, Policy, Port};
    use crate::selector::Selector;

    pub(crate) fn pod(ns: &str, name: &str, ip: &str, node: &str) -> Pod {
        Pod {
            ns: ns.into(),
            name: name.into(),
            labels: [("pod".to_string(), name.to_string())].into(),
            ips: vec![ip.parse().unwrap()],
            node: Some(node.into()),
            host_network: false,
            ports: vec![NamedPort {
                name: "serve-80-tcp".into(),
                proto: Proto::Tcp,
                port: 80,
            }],
        }
    }

    fn cluster(policies: Vec<Policy>) -> Cluster {
        let mut c = Cluster::default();
        for (ns, name, ip) in [
            ("x", "a", "10.0.1.2"),
            ("x", "b", "10.0.2.2"),
            ("y", "a", "10.0.3.2"),
        ] {
            c.pods
                .insert((ns.into(), name.into()), pod(ns, name, ip, "n1"));
            c.namespaces
                .insert(ns.into(), [("ns".to_string(), ns.to_string())].into());
        }
        for p in policies {
            c.policies.insert(p.id.clone(), p);
        }
        c
    }

    fn policy(
        name: &str,
        select: Selector,
        ingress: Option<Vec<Rule>>,
        egress: Option<Vec<Rule>>,
    ) -> Policy {
        Policy {
            id: PolicyId {
                ns: "x".into(),
                name: name.into(),
            },
            select,
            ingress,
            egress,
            problems: vec![],
        }
    }

    fn flow(c: &Cluster, from: (&str, &str), to: (&str, &str), proto: Proto, port: u16) -> Verdict {
        let f = c.pod(from.0, from.1).unwrap();
        let t = c.pod(to.0, to.1).unwrap();
        c.verdict(
            Endpoint::pod(f, f.ips[0]),
            Endpoint::pod(t, t.ips[0]),
            proto,
            port,
        )
    }

    #[test]
    fn no_policy_allows_and_deny_all_isolates_only_selected_pods() {
        let c = cluster(vec![]);
        assert!(flow(&c, ("y", "a"), ("x", "a"), Proto::Tcp, 80).allowed());
        let c = cluster(vec![policy(
            "deny",
            Selector::labels(&[("pod", "a")]),
            Some(vec![]),
            None,
        )]);
        let v = flow(&c, ("y", "a"), ("x", "a"), Proto::Tcp, 80);
        assert!(!v.allowed());
        assert_eq!(v.ingress.isolated_by[0].to_string(), "x/deny");
        assert!(
            flow(&c, ("y", "a"), ("x", "b"), Proto::Tcp, 80).allowed(),
            "x/b not selected"
        );
        assert!(
            flow(&c, ("x", "a"), ("y", "a"), Proto::Tcp, 80).allowed(),
            "egress not isolated"
        );
    }

    #[test]
    fn policies_add_up_and_named_ports_resolve_on_the_destination() {
        let from_ns_y = Rule {
            peers: vec![Peer::Pods {
                namespaces: NsScope::Matching(Selector::labels(&[("ns", "y")])),
                pods: Selector::everything(),
            }],
            ports: vec![Port::Named(Proto::Tcp, "serve-80-tcp".into())],
        };
        let from_x_b = Rule {
            peers: vec![Peer::Pods {
                namespaces: NsScope::Own("x".into()),
                pods: Selector::labels(&[("pod", "b")]),
            }],
            ports: vec![],
        };
        let c = cluster(vec![
            policy("one", Selector::everything(), Some(vec![from_ns_y]), None),
            policy(
                "two",
                Selector::labels(&[("pod", "a")]),
                Some(vec![from_x_b]),
                None,
            ),
        ]);
        let v = flow(&c, ("y", "a"), ("x", "a"), Proto::Tcp, 80);
        assert!(v.allowed());
        assert_eq!(v.ingress.isolated_by.len(), 2);
        assert_eq!(
            v.ingress.allowed_by,
            vec![(c.policies.keys().next().unwrap().clone(), 0)]
        );
        assert!(
            !flow(&c, ("y", "a"), ("x", "a"), Proto::Tcp, 81).allowed(),
            "port name is 80 only"
        );
        assert!(!flow(&c, ("y", "a"), ("x", "a"), Proto::Udp, 80).allowed());
        assert!(
            flow(&c, ("x", "b"), ("x", "a"), Proto::Udp, 81).allowed(),
            "policy two: any port"
        );
        assert!(
            !flow(&c, ("x", "a"), ("x", "b"), Proto::Udp, 81).allowed(),
            "b: only policy one"
        );
    }

    #[test]
    fn egress_to_a_block_with_except_and_to_a_bare_address() {
        let to_block = Rule {
            peers: vec![Peer::Block {
                cidr: "10.0.0.0/16".parse().unwrap(),
                except: vec!["10.0.2.0/24".parse().unwrap()],
            }],
            ports: vec![Port::Range(Proto::Tcp, 80, 81)],
        };
        let c = cluster(vec![policy(
            "eg",
            Selector::labels(&[("pod", "a")]),
            None,
            Some(vec![to_block]),
        )]);
        assert!(flow(&c, ("x", "a"), ("y", "a"), Proto::Tcp, 81).allowed());
        assert!(!flow(&c, ("x", "a"), ("y", "a"), Proto::Tcp, 82).allowed());
        assert!(
            !flow(&c, ("x", "a"), ("x", "b"), Proto::Tcp, 80).allowed(),
            "except"
        );
        let a = c.pod("x", "a").unwrap();
        let out = Endpoint::ip("10.0.9.9".parse().unwrap());
        assert!(c
            .verdict(Endpoint::pod(a, a.ips[0]), out, Proto::Tcp, 80)
            .allowed());
        // A hostNetwork pod is its node: never isolated, never a pod peer.
        let mut host = a.clone();
        host.host_network = true;
        assert!(Endpoint::pod(&host, host.ips[0]).pod.is_none());
    }
}
