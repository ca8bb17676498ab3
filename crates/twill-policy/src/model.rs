//! The model NetworkPolicy is decided on: what of the pods, namespaces and policies the
//! verdict and the ruleset need, already judged.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

pub use crate::selector::Labels;
use crate::selector::Selector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// The API's spelling (`TCP`), which is also what a port's protocol defaults from.
    pub fn parse(s: &str) -> Option<Proto> {
        match s {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// nftables' name (`meta l4proto tcp`).
    pub fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        })
    }
}

/// A container port with a name: what a named port in a policy resolves to, per pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub proto: Proto,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub ns: String,
    pub name: String,
    pub labels: Labels,
    /// Its addresses (status.podIPs); empty until it has one.
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
    /// A hostNetwork pod is its node: never selected, never isolated.
    pub host_network: bool,
    pub ports: Vec<NamedPort>,
}

impl Pod {
    /// Whether policies can select it: it has a pod address of its own.
    pub fn selectable(&self) -> bool {
        !self.host_network && !self.ips.is_empty()
    }

    pub fn named_port(&self, name: &str, proto: Proto) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.proto == proto)
            .map(|p| p.port)
    }
}

/// Which namespaces a pod peer is looked for in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NsScope {
    /// The policy's own (a podSelector alone).
    Own(String),
    /// Every namespace whose labels match.
    Matching(Selector),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Pods {
        namespaces: NsScope,
        pods: Selector,
    },
    Block {
        cidr: IpNetwork,
        except: Vec<IpNetwork>,
    },
    /// A peer that could not be read: matches nothing (fails closed).
    Nothing,
}

impl Peer {
    pub fn block_contains(cidr: &IpNetwork, except: &[IpNetwork], ip: IpAddr) -> bool {
        cidr.contains(ip) && !except.iter().any(|e| e.contains(ip))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port {
    /// Every port of the protocol (a port entry with only `protocol`).
    Any(Proto),
    /// `port` alone (first == last) or `port`..=`endPort`.
    Range(Proto, u16, u16),
    /// A container port name, resolved on the destination pod.
    Named(Proto, String),
    /// A port entry that could not be read: matches nothing.
    Nothing,
}

impl Port {
    /// Whether `proto`/`port` to `dst` (the destination pod, if it is one) is this entry.
    pub fn matches(&self, proto: Proto, port: u16, dst: Option<&Pod>) -> bool {
        match self {
            Port::Any(p) => *p == proto,
            Port::Range(p, a, b) => *p == proto && (*a..=*b).contains(&port),
            Port::Named(p, name) => {
                *p == proto && dst.and_then(|d| d.named_port(name, proto)) == Some(port)
            }
            Port::Nothing => false,
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Any(p) => write!(f, "any/{p}"),
            Port::Range(p, a, b) if a == b => write!(f, "{a}/{p}"),
            Port::Range(p, a, b) => write!(f, "{a}-{b}/{p}"),
            Port::Named(p, n) => write!(f, "{n}/{p}"),
            Port::Nothing => f.write_str("(unreadable port)"),
        }
    }
}

/// One ingress or egress rule: peers and ports, each list empty for "any".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId {
    pub ns: String,
    pub name: String,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ns, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub id: PolicyId,
    /// The pods of `id.ns` it selects.
    pub select: Selector,
    /// `None`: the policy is not about ingress (policyTypes). `Some(empty)`: deny all.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
    /// What could not be read, each naming the field and value; those parts match
    /// nothing.
    pub problems: Vec<String>,
}

impl Policy {
    pub fn selects(&self, pod: &Pod) -> bool {
        pod.selectable() && pod.ns == self.id.ns && self.select.matches(&pod.labels)
    }
}

/// Everything the decisions read. Namespaces map to their labels.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: BTreeMap<(String, String), Pod>,
    pub policies: BTreeMap<PolicyId, Policy>,
}

impl Cluster {
    pub fn pod(&self, ns: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&(ns.to_string(), name.to_string()))
    }

    /// A namespace's labels; one not seen (yet) has the label the API server puts on
    /// every namespace, its name.
    pub fn ns_labels(&self, ns: &str) -> Labels {
        self.namespaces
            .get(ns)
            .cloned()
            .unwrap_or_else(|| Labels::from([(NAME_LABEL.to_string(), ns.to_string())]))
    }

    pub fn in_scope(&self, scope: &NsScope, ns: &str) -> bool {
        match scope {
            NsScope::Own(own) => own == ns,
            NsScope::Matching(sel) => sel.matches(&self.ns_labels(ns)),
        }
    }

    /// Whether `peer` is `pod` (a selectable one) or, for an ipBlock, `ip`.
    pub fn peer_matches(&self, peer: &Peer, pod: Option<&Pod>, ip: IpAddr) -> bool {
        match peer {
            Peer::Pods { namespaces, pods } => pod.is_some_and(|p| {
                p.selectable() && self.in_scope(namespaces, &p.ns) && pods.matches(&p.labels)
            }),
            Peer::Block { cidr, except } => Peer::block_contains(cidr, except, ip),
            Peer::Nothing => false,
        }
    }
}

/// `kubernetes.io/metadata.name`: set by the API server on every namespace.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";
