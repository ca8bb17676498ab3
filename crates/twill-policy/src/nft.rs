//! The nftables table a node programs for the model: `inet twill-policy`, hooked on
//! forward, which sees pod traffic between nodes (routed) and on the node's bridge (with
//! bridge netfilter, `net.bridge.bridge-nf-call-iptables=1`, as kube-proxy needs it too).
//! Traffic between a pod and its own node never crosses forward, so it is always allowed.
//!
//! The rules name sets and maps, and those hold the addresses: which policies select each of
//! this node's pods (a verdict map), which pods each peer selector matches, what each named
//! port is on each pod. A pod coming or going changes elements only
//! ([`Ruleset::update_script`]); a policy change rewrites the table in one transaction
//! ([`Ruleset::full_script`]). Two base chains, egress then ingress: an `accept` ends only
//! its own base chain, so a flow must pass both, and within one an `accept` from any
//! selecting policy is their union.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::model::{Cluster, NsScope, Peer, Policy, Port, Proto, Rule};
use crate::selector::Selector;

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "twill-policy";
/// IPv6 neighbour discovery, let through by both base chains.
const ND: &str = "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } accept";
/// Named counters of the packets the table dropped, per direction.
pub const DROPS_INGRESS: &str = "drops_ingress";
pub const DROPS_EGRESS: &str = "drops_egress";

/// The table without its elements, and the elements of each named set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub skeleton: String,
    pub sets: BTreeMap<String, BTreeSet<String>>,
}

impl Ruleset {
    /// The whole table, replacing whatever is there, as one `nft -f` transaction (create,
    /// delete, create: atomic even when the table does not exist yet).
    pub fn full_script(&self) -> String {
        let mut s = format!("table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n");
        s.push_str(&self.skeleton);
        for (name, elements) in self.sets.iter().filter(|(_, e)| !e.is_empty()) {
            element_line(&mut s, "add", name, elements.iter());
        }
        s
    }

    /// The element changes from `old` to this, or `None` when the rules differ and the
    /// table must be rewritten. An empty script: nothing to do.
    pub fn update_script(&self, old: &Ruleset) -> Option<String> {
        if self.skeleton != old.skeleton {
            return None;
        }
        let mut s = String::new();
        let empty = BTreeSet::new();
        for (name, want) in &self.sets {
            let had = old.sets.get(name).unwrap_or(&empty);
            let gone: Vec<&String> = had.difference(want).collect();
            if !gone.is_empty() {
                element_line(&mut s, "delete", name, gone.into_iter());
            }
            let new: Vec<&String> = want.difference(had).collect();
            if !new.is_empty() {
                element_line(&mut s, "add", name, new.into_iter());
            }
        }
        Some(s)
    }

    /// Removes the table (nothing to enforce), without failing when it is absent.
    pub fn remove_script() -> String {
        format!("table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n")
    }

    pub fn elements(&self) -> usize {
        self.sets.values().map(BTreeSet::len).sum()
    }
}

fn element_line<'a>(
    s: &mut String,
    verb: &str,
    set: &str,
    elements: impl Iterator<Item = &'a String>,
) {
    let list: Vec<&str> = elements.map(String::as_str).collect();
    let _ = writeln!(
        s,
        "{verb} element {FAMILY} {TABLE} {set} {{ {} }}",
        list.join(", ")
    );
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Fam {
    V4,
    V6,
}

impl Fam {
    const BOTH: [Fam; 2] = [Fam::V4, Fam::V6];

    fn of(ip: &IpAddr) -> Fam {
        if ip.is_ipv4() {
            Fam::V4
        } else {
            Fam::V6
        }
    }
    fn kw(self) -> &'static str {
        match self {
            Fam::V4 => "ip",
            Fam::V6 => "ip6",
        }
    }
    fn addr_type(self) -> &'static str {
        match self {
            Fam::V4 => "ipv4_addr",
            Fam::V6 => "ipv6_addr",
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Fam::V4 => "4",
            Fam::V6 => "6",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        }
    }
    /// Which address is the pod the policy selects, and which the peer.
    fn own(self) -> &'static str {
        match self {
            Dir::Ingress => "daddr",
            Dir::Egress => "saddr",
        }
    }
    fn peer(self) -> &'static str {
        match self {
            Dir::Ingress => "saddr",
            Dir::Egress => "daddr",
        }
    }
}

/// Named sets as they are wanted: declarations in order, elements by name, and the peer
/// and named-port sets shared by every rule that means the same thing.
#[derive(Default)]
struct Sets {
    decls: String,
    elements: BTreeMap<String, BTreeSet<String>>,
    peers: HashMap<(NsScope, Selector), usize>,
    named: HashMap<(String, Proto), usize>,
}

impl Sets {
    /// A named set (`kind` "set") or map ("map") of type `ty`.
    fn declare(
        &mut self,
        name: String,
        ty: &str,
        elements: BTreeSet<String>,
        kind: &str,
    ) -> String {
        let _ = writeln!(self.decls, "  {kind} {name} {{\n    type {ty}\n  }}");
        self.elements.insert(name.clone(), elements);
        name
    }
}

/// The table for `node`'s pods, `None` when there is no policy at all (no table: no cost
/// on the packet path). `closed`: every allow rule left out, for when the table as wanted
/// cannot be programmed; the selected pods are then isolated with nothing allowed.
///
/// A new connection costs one map lookup whatever the number of policies: each direction's
/// base chain sends a packet of an isolated pod of this node (`<dir>_dispatch4`/`6`, pod
/// address to verdict) to the group chain of exactly the policies that select it, which
/// jumps to each policy's chain (an `accept` there is final) and drops what none accepted.
/// Every policy has a group of its own, so only a pod selected by a combination of policies
/// no other pod here has needs a new chain; everything else a pod does is map elements.
pub fn render(c: &Cluster, node: &str, closed: bool) -> Option<Ruleset> {
    if c.policies.is_empty() {
        return None;
    }
    let mut sets = Sets::default();
    let mut chains = String::new();
    let policies: Vec<&Policy> = c.policies.values().collect();
    let local: Vec<_> = c
        .pods
        .values()
        .filter(|p| p.selectable() && p.node.as_deref() == Some(node))
        .collect();
    let mut base = [String::new(), String::new()];
    let mut groups = String::new();
    for (d, dir) in [Dir::Egress, Dir::Ingress].into_iter().enumerate() {
        // Which policies select each local pod for this direction, and the combinations of
        // two or more that occur (in order, so their chains are named the same each time).
        let selecting: Vec<(&crate::model::Pod, Vec<usize>)> = local
            .iter()
            .map(|pod| {
                let by: Vec<usize> = policies
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| rules_of(p, dir).is_some() && p.selects(pod))
                    .map(|(i, _)| i)
                    .collect();
                (*pod, by)
            })
            .filter(|(_, by)| !by.is_empty())
            .collect();
        let combos: BTreeSet<&Vec<usize>> = selecting
            .iter()
            .map(|(_, by)| by)
            .filter(|by| by.len() > 1)
            .collect();
        let combos: Vec<&Vec<usize>> = combos.into_iter().collect();
        let counter = [DROPS_EGRESS, DROPS_INGRESS][d];
        let mut group = |name: String, members: &[usize]| {
            let _ = writeln!(groups, "  chain {name} {{");
            for i in members {
                let _ = writeln!(groups, "    jump p{i}_{}", dir.name());
            }
            let _ = writeln!(groups, "    counter name {counter} drop\n  }}");
        };
        for (i, p) in policies.iter().enumerate() {
            if rules_of(p, dir).is_some() {
                group(format!("g{i}_{}", dir.name()), &[i]);
            }
        }
        for (k, members) in combos.iter().enumerate() {
            group(format!("c{k}_{}", dir.name()), members);
        }
        for f in Fam::BOTH {
            let elements: BTreeSet<String> = selecting
                .iter()
                .flat_map(|(pod, by)| {
                    let target = match by.as_slice() {
                        [one] => format!("g{one}_{}", dir.name()),
                        many => format!(
                            "c{}_{}",
                            combos
                                .iter()
                                .position(|c| c.as_slice() == many)
                                .expect("collected"),
                            dir.name()
                        ),
                    };
                    pod.ips
                        .iter()
                        .filter(move |ip| Fam::of(ip) == f)
                        .map(move |ip| format!("{ip} : jump {target}"))
                })
                .collect();
            let map = sets.declare(
                format!("{}_dispatch{}", dir.name(), f.suffix()),
                &format!("{} : verdict", f.addr_type()),
                elements,
                "map",
            );
            let _ = writeln!(base[d], "    {} {} vmap @{map}", f.kw(), dir.own());
        }
    }
    for (i, p) in policies.iter().enumerate() {
        for dir in [Dir::Egress, Dir::Ingress] {
            let Some(rules) = rules_of(p, dir) else {
                continue;
            };
            let _ = writeln!(chains, "  chain p{i}_{} {{", dir.name());
            if !closed {
                for (r, rule) in rules.iter().enumerate() {
                    let comment = format!("{} {} {r}", p.id, dir.name());
                    for line in rule_lines(c, &mut sets, rule, dir) {
                        let _ = writeln!(chains, "    {line}counter accept comment \"{comment}\"");
                    }
                }
            }
            chains.push_str("  }\n");
        }
    }
    let mut s = format!("table {FAMILY} {TABLE} {{\n");
    let _ = writeln!(
        s,
        "  counter {DROPS_EGRESS} {{\n  }}\n  counter {DROPS_INGRESS} {{\n  }}"
    );
    s.push_str(&sets.decls);
    // Egress first: a flow leaves its pod before it reaches the other. Neighbour discovery
    // is accepted before any policy: it is how IPv6 pods on one bridge find each other
    // (the part ARP plays for IPv4, which never reaches these hooks), conntrack leaves it
    // untracked so no reply rides an established flow, and a pod that cannot answer a
    // solicitation loses the connections its policies allow.
    for (d, dir) in [Dir::Egress, Dir::Ingress].into_iter().enumerate() {
        let _ = write!(
            s,
            "  chain {} {{\n    type filter hook forward priority {}; policy accept;\n    ct state established,related accept\n    {ND}\n{}  }}\n",
            dir.name(),
            [-6, -5][d],
            base[d]
        );
    }
    s.push_str(&groups);
    s.push_str(&chains);
    s.push_str("}\n");
    Some(Ruleset {
        skeleton: s,
        sets: sets.elements,
    })
}

fn rules_of(p: &Policy, dir: Dir) -> Option<&Vec<Rule>> {
    match dir {
        Dir::Ingress => p.ingress.as_ref(),
        Dir::Egress => p.egress.as_ref(),
    }
}

/// The match part of each nft rule one policy rule becomes: one per (peer, port) pair
/// and family; none when nothing of it can match.
fn rule_lines(c: &Cluster, sets: &mut Sets, rule: &Rule, dir: Dir) -> Vec<String> {
    let mut out = Vec::new();
    for f in Fam::BOTH {
        let peers: Vec<String> = if rule.peers.is_empty() {
            vec![String::new()]
        } else {
            rule.peers
                .iter()
                .filter_map(|p| peer_match(c, sets, p, dir, f))
                .collect()
        };
        let ports: Vec<String> = if rule.ports.is_empty() {
            vec![String::new()]
        } else {
            rule.ports
                .iter()
                .filter_map(|p| port_match(c, sets, p, f))
                .collect()
        };
        for peer in &peers {
            for port in &ports {
                out.push(format!("{peer}{port}"));
            }
        }
    }
    out
}

fn peer_match(c: &Cluster, sets: &mut Sets, peer: &Peer, dir: Dir, f: Fam) -> Option<String> {
    let kw = f.kw();
    let addr = dir.peer();
    match peer {
        Peer::Nothing => None,
        Peer::Block { cidr, except } => {
            if cidr.is_ipv4() != (f == Fam::V4) {
                return None;
            }
            let mut m = format!("{kw} {addr} {cidr} ");
            if !except.is_empty() {
                let list: Vec<String> = except.iter().map(ToString::to_string).collect();
                let _ = write!(m, "{kw} {addr} != {{ {} }} ", list.join(", "));
            }
            Some(m)
        }
        Peer::Pods { namespaces, pods } => {
            let key = (namespaces.clone(), pods.clone());
            let n = sets.peers.len();
            let idx = *sets.peers.entry(key).or_insert(n);
            let name = format!("q{idx}_{}", f.suffix());
            if !sets.elements.contains_key(&name) {
                let members: BTreeSet<String> = c
                    .pods
                    .values()
                    .filter(|p| c.peer_matches(peer, Some(p), IpAddr::from([0, 0, 0, 0])))
                    .flat_map(|p| p.ips.iter().filter(|ip| Fam::of(ip) == f))
                    .map(IpAddr::to_string)
                    .collect();
                sets.declare(name.clone(), f.addr_type(), members, "set");
            }
            Some(format!("{kw} {addr} @{name} "))
        }
    }
}

fn port_match(c: &Cluster, sets: &mut Sets, port: &Port, f: Fam) -> Option<String> {
    match port {
        Port::Nothing => None,
        Port::Any(p) => Some(format!("meta l4proto {} ", p.nft())),
        Port::Range(p, a, b) if a == b => Some(format!("meta l4proto {} th dport {a} ", p.nft())),
        Port::Range(p, a, b) => Some(format!("meta l4proto {} th dport {a}-{b} ", p.nft())),
        Port::Named(p, name) => {
            // Resolved per destination pod: the set holds (address, protocol, port) of
            // every pod with a container port of that name.
            let key = (name.clone(), *p);
            let n = sets.named.len();
            let idx = *sets.named.entry(key).or_insert(n);
            let set = format!("n{idx}_{}", f.suffix());
            if !sets.elements.contains_key(&set) {
                let members: BTreeSet<String> = c
                    .pods
                    .values()
                    .filter(|pod| pod.selectable())
                    .filter_map(|pod| pod.named_port(name, *p).map(|port| (pod, port)))
                    .flat_map(|(pod, port)| {
                        pod.ips
                            .iter()
                            .filter(|ip| Fam::of(ip) == f)
                            .map(move |ip| format!("{ip} . {} . {port}", p.nft()))
                    })
                    .collect();
                let ty = format!("{} . inet_proto . inet_service", f.addr_type());
                sets.declare(set.clone(), &ty, members, "set");
            }
            Some(format!(
                "{} daddr . meta l4proto . th dport @{set} ",
                f.kw()
            ))
        }
    }
}

#[cfg(test)]
mod tests;
