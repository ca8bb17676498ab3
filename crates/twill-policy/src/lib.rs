//! NetworkPolicy decided purely. The API objects become a [`Cluster`] (pods, namespaces,
//! policies: judged on the way in, a part that cannot be expressed matches nothing, so a
//! broken policy fails closed); [`Cluster::verdict`] answers one flow (`twilld policy
//! explain`) and [`render`] gives the nftables table a node programs. Both read the same
//! model, so what explain says is what the kernel does. No I/O here.

mod k8s;
mod model;
mod nft;
mod selector;
mod verdict;

pub use k8s::{namespace_labels, pod_from_k8s, policy_from_k8s};
pub use model::{
    Cluster, Labels, NamedPort, NsScope, Peer, Pod, Policy, PolicyId, Port, Proto, Rule,
};
pub use nft::{render, Ruleset, DROPS_EGRESS, DROPS_INGRESS, FAMILY, TABLE};
pub use selector::Selector;
pub use verdict::{Endpoint, Side, Verdict};
