//! API objects into the model. Everything here is untrusted: the API server validates
//! what it stores, but a fake, an older server or a hand-edited etcd may not, and a part we
//! cannot read becomes one that matches nothing (a policy fails closed, never open).

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Namespace, Pod as KPod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{Labels, NamedPort, NsScope, Peer, Pod, Policy, PolicyId, Port, Proto, Rule};
use crate::selector::{labels_of, Selector};

pub fn namespace_labels(ns: &Namespace) -> (String, Labels) {
    (
        ns.metadata.name.clone().unwrap_or_default(),
        labels_of(ns.metadata.labels.as_ref()),
    )
}

/// The pod as policy sees it. A finished pod (Succeeded, Failed) keeps no address: its IP
/// may already be another pod's. Addresses that do not parse are left out.
pub fn pod_from_k8s(p: &KPod) -> Pod {
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let finished = matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let mut ips: Vec<IpAddr> = Vec::new();
    if !finished {
        let listed = status.and_then(|s| s.pod_ips.as_ref());
        let single = status.and_then(|s| s.pod_ip.as_ref());
        let texts: Vec<&str> = match listed {
            Some(l) if !l.is_empty() => l.iter().map(|i| i.ip.as_str()).collect(),
            _ => single.map(|s| vec![s.as_str()]).unwrap_or_default(),
        };
        for t in texts {
            if let Ok(ip) = t.parse::<IpAddr>() {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
    }
    let mut ports = Vec::new();
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        for cp in c.ports.iter().flatten() {
            let (Some(name), Ok(port)) = (&cp.name, u16::try_from(cp.container_port)) else {
                continue;
            };
            let proto = Proto::parse(cp.protocol.as_deref().unwrap_or("TCP"));
            if let (Some(proto), true) = (proto, port != 0) {
                ports.push(NamedPort {
                    name: name.clone(),
                    proto,
                    port,
                });
            }
        }
    }
    Pod {
        ns: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        labels: labels_of(p.metadata.labels.as_ref()),
        ips,
        node: spec.and_then(|s| s.node_name.clone()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ports,
    }
}

/// The policy with the API's defaulting of policyTypes (Ingress always, Egress when there
/// are egress rules). Unreadable parts are listed in `problems` and match nothing; an
/// unreadable podSelector selects every pod of the namespace, so the pods it may have
/// meant are isolated rather than left open.
pub fn policy_from_k8s(np: &NetworkPolicy) -> Policy {
    let id = PolicyId {
        ns: np.metadata.namespace.clone().unwrap_or_default(),
        name: np.metadata.name.clone().unwrap_or_default(),
    };
    let mut problems = Vec::new();
    let spec = np.spec.clone().unwrap_or_default();
    let select = match spec.pod_selector.as_ref().map(Selector::parse) {
        None => Selector::everything(),
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            problems.push(format!("spec.podSelector: {e}"));
            Selector::everything()
        }
    };
    let egress_rules = spec.egress.as_deref().unwrap_or_default();
    let types: Vec<String> = match &spec.policy_types {
        Some(t) if !t.is_empty() => t.clone(),
        _ => {
            let mut t = vec!["Ingress".to_string()];
            if !egress_rules.is_empty() {
                t.push("Egress".into());
            }
            t
        }
    };
    for t in &types {
        if t != "Ingress" && t != "Egress" {
            problems.push(format!("spec.policyTypes: unknown type {t:?}"));
        }
    }
    let ingress = types.iter().any(|t| t == "Ingress").then(|| {
        spec.ingress
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let field = format!("spec.ingress[{i}]");
                let (peers, ports) = (r.from.as_deref(), r.ports.as_deref());
                rule(&id, &field, "from", peers, ports, &mut problems)
            })
            .collect()
    });
    let egress = types.iter().any(|t| t == "Egress").then(|| {
        egress_rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let field = format!("spec.egress[{i}]");
                let (peers, ports) = (r.to.as_deref(), r.ports.as_deref());
                rule(&id, &field, "to", peers, ports, &mut problems)
            })
            .collect()
    });
    Policy {
        id,
        select,
        ingress,
        egress,
        problems,
    }
}

fn rule(
    id: &PolicyId,
    field: &str,
    peers_field: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    problems: &mut Vec<String>,
) -> Rule {
    let peers = peers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(j, p)| {
            peer(id, p).unwrap_or_else(|e| {
                problems.push(format!("{field}.{peers_field}[{j}]: {e}"));
                Peer::Nothing
            })
        })
        .collect();
    let ports = ports
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(j, p)| {
            port(p).unwrap_or_else(|e| {
                problems.push(format!("{field}.ports[{j}]: {e}"));
                Port::Nothing
            })
        })
        .collect();
    Rule { peers, ports }
}

fn peer(id: &PolicyId, p: &NetworkPolicyPeer) -> Result<Peer, String> {
    let sel = |s: &Option<_>, what: &str| -> Result<Option<Selector>, String> {
        s.as_ref()
            .map(Selector::parse)
            .transpose()
            .map_err(|e| format!("{what}: {e}"))
    };
    let pods = sel(&p.pod_selector, "podSelector")?;
    let namespaces = sel(&p.namespace_selector, "namespaceSelector")?;
    match (&p.ip_block, pods, namespaces) {
        (Some(b), None, None) => {
            let cidr: IpNetwork = b
                .cidr
                .parse()
                .map_err(|e| format!("ipBlock.cidr {:?}: {e}", b.cidr))?;
            let mut except = Vec::new();
            for (k, e) in b.except.iter().flatten().enumerate() {
                let n: IpNetwork = e
                    .parse()
                    .map_err(|err| format!("ipBlock.except[{k}] {e:?}: {err}"))?;
                if n.is_ipv4() != cidr.is_ipv4() || !cidr.contains(n.network()) {
                    return Err(format!(
                        "ipBlock.except[{k}] {e:?} is not inside cidr {:?}",
                        b.cidr
                    ));
                }
                except.push(n);
            }
            Ok(Peer::Block { cidr, except })
        }
        (Some(_), _, _) => Err("ipBlock together with a selector".into()),
        (None, None, None) => Err("neither podSelector, namespaceSelector nor ipBlock".into()),
        (None, pods, namespaces) => Ok(Peer::Pods {
            namespaces: match namespaces {
                Some(s) => NsScope::Matching(s),
                None => NsScope::Own(id.ns.clone()),
            },
            pods: pods.unwrap_or_default(),
        }),
    }
}

fn port(p: &NetworkPolicyPort) -> Result<Port, String> {
    let proto_text = p.protocol.as_deref().unwrap_or("TCP");
    let proto = Proto::parse(proto_text).ok_or_else(|| format!("protocol {proto_text:?}"))?;
    let number = |n: i32, what: &str| {
        u16::try_from(n)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| format!("{what} {n} is not a port"))
    };
    match (&p.port, p.end_port) {
        (None, None) => Ok(Port::Any(proto)),
        (None, Some(e)) => Err(format!("endPort {e} without port")),
        (Some(IntOrString::Int(n)), end) => {
            let first = number(*n, "port")?;
            let last = match end {
                Some(e) => number(e, "endPort")?,
                None => first,
            };
            if last < first {
                return Err(format!("endPort {last} is below port {first}"));
            }
            Ok(Port::Range(proto, first, last))
        }
        (Some(IntOrString::String(s)), None) => match s.parse::<i32>() {
            // A number sent as a string is a number (the API's IntOrString does the same).
            Ok(n) => Ok(Port::Range(proto, number(n, "port")?, number(n, "port")?)),
            Err(_) if s.is_empty() => Err("port \"\"".into()),
            Err(_) => Ok(Port::Named(proto, s.clone())),
        },
        (Some(IntOrString::String(s)), Some(e)) => {
            Err(format!("endPort {e} with named port {s:?}"))
        }
    }
}

#[cfg(test)]
mod tests;
