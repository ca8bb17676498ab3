//! The pod network of a cluster, for a net-conf.json that names none: what kubeadm was
//! told (`--pod-network-cidr`, kept in the `kubeadm-config` ConfigMap), else the smallest
//! prefix covering every node's podCIDRs. Pure; the store reads the two sources.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// Where a detected pod network came from, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    KubeadmConfig,
    NodePodCidrs,
}

impl std::fmt::Display for Detected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Detected::KubeadmConfig => {
                "ConfigMap kube-system/kubeadm-config (ClusterConfiguration networking.podSubnet)"
            }
            Detected::NodePodCidrs => "the smallest prefix covering every node's podCIDRs",
        })
    }
}

/// `networking.podSubnet` of kubeadm's ClusterConfiguration (YAML), one CIDR per family,
/// comma-separated for dual stack.
pub fn kubeadm_pod_subnets(cluster_configuration: &str) -> Vec<IpNetwork> {
    let Ok(doc) = serde_saphyr::from_str::<serde_json::Value>(cluster_configuration) else {
        return Vec::new();
    };
    doc["networking"]["podSubnet"]
        .as_str()
        .unwrap_or("")
        .split(',')
        .filter_map(|s| s.trim().parse::<IpNetwork>().ok())
        .map(|n| IpNetwork::new(n.network(), n.prefix()).expect("same prefix"))
        .collect()
}

/// The smallest prefix covering every CIDR of one family (`None` without any).
pub fn covering(cidrs: &[IpNetwork], v4: bool) -> Option<IpNetwork> {
    let fam: Vec<&IpNetwork> = cidrs.iter().filter(|c| c.is_ipv4() == v4).collect();
    let bits: u8 = if v4 { 32 } else { 128 };
    let as_int = |a: IpAddr| match a {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    };
    let first = fam.first()?;
    let mut prefix = fam.iter().map(|c| c.prefix()).min()?;
    let base = as_int(first.network());
    // Shorten the prefix until every network shares it with the first.
    let shared = |p: u8| {
        let mask =
            if p == 0 { 0 } else { (!0u128) << (bits - p) } & if v4 { 0xffff_ffff } else { !0 };
        fam.iter()
            .all(|c| as_int(c.network()) & mask == base & mask)
    };
    while prefix > 0 && !shared(prefix) {
        prefix -= 1;
    }
    let mask = if prefix == 0 {
        0
    } else {
        (!0u128) << (bits - prefix)
    } & if v4 { 0xffff_ffff } else { !0 };
    let net = base & mask;
    let addr = if v4 {
        IpAddr::V4((net as u32).into())
    } else {
        IpAddr::V6(net.into())
    };
    IpNetwork::new(addr, prefix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNetwork> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn kubeadm_pod_subnet_single_and_dual_stack() {
        let cc = "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nnetworking:\n  dnsDomain: cluster.local\n  podSubnet: 10.244.0.0/16\n  serviceSubnet: 10.96.0.0/12\n";
        assert_eq!(kubeadm_pod_subnets(cc), nets(&["10.244.0.0/16"]));
        let dual = "networking:\n  podSubnet: \"10.244.0.0/16,fd00:10:244::/56\"\n";
        assert_eq!(
            kubeadm_pod_subnets(dual),
            nets(&["10.244.0.0/16", "fd00:10:244::/56"])
        );
        assert!(kubeadm_pod_subnets("networking:\n  serviceSubnet: 10.96.0.0/12\n").is_empty());
        assert!(kubeadm_pod_subnets("{not yaml").is_empty());
    }

    #[test]
    fn the_smallest_prefix_covering_node_pod_cidrs() {
        let c = nets(&[
            "10.244.1.0/24",
            "10.244.2.0/24",
            "10.244.77.0/24",
            "fd00::/64",
        ]);
        assert_eq!(covering(&c, true), Some("10.244.0.0/17".parse().unwrap()));
        assert_eq!(covering(&c, false), Some("fd00::/64".parse().unwrap()));
        assert_eq!(
            covering(&nets(&["10.244.3.0/24"]), true),
            Some("10.244.3.0/24".parse().unwrap())
        );
        assert_eq!(
            covering(&nets(&["10.0.0.0/24", "192.168.0.0/24"]), true),
            Some("0.0.0.0/0".parse().unwrap())
        );
        assert_eq!(covering(&[], true), None);
    }
}
