//! The Kubernetes subnet manager (`--kube-subnet-mgr`): a node's lease is its
//! `spec.podCIDR`, published and discovered through flannel's node annotations, so
//! flanneld and twilld nodes see each other as peers.

mod annotations;
mod clients;
mod network;
mod peer_node;
mod policy_watch;
mod store;

pub use annotations::{
    network_condition_patch, network_condition_set, own_subnet, pod_cidrs, AnnotationKeys,
    NodeLeases, PodCidrError, PrefixError, CONDITION_REASON, DEFAULT_PREFIX,
};
pub use clients::{rewatching, Clients};
pub use network::{covering, kubeadm_pod_subnets, Detected};
pub use peer_node::PeerNode;
pub use policy_watch::{list_cluster, PolicyFeed, POLICY_ACCESS};
pub use store::{connect_client, KubeOptions, KubeStore, API_ACCESS, KUBEADM_CONFIG_ACCESS};
