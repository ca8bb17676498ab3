//! What peer leases are judged against, read from the config and the kernel. The judging
//! itself is pure (`twill_store::LeasePolicy`); the daemon and `twilld doctor` both build
//! the policy here, so they refuse the same leases.

use anyhow::{anyhow, Context, Result};
use ipnetwork::IpNetwork;
use twill_config::{BackendType, NetConf};
use twill_dataplane::Netlink;
use twill_store::{LeaseKey, LeasePolicy};

/// The bridge the CNI plugin's delegate creates: its address and route are our own subnet.
pub const CNI_BRIDGE: &str = "cni0";

/// The policy for `conf` on this node as the kernel is now. `vxlan` are our VXLAN
/// devices, whose addresses and routes are ours rather than the underlay's. `underlay` is
/// the underlay device, whose connected prefixes bound host-gw's peers (`None` under
/// host-gw: every host-gw peer is refused, there being no link to judge by). `own` is the
/// subnet we hold: in Kubernetes mode subnets are sized by kube-controller-manager's
/// `--node-cidr-mask-size`, not by SubnetLen (flanneld ignores it there too), so peers
/// are held to the size of ours.
pub async fn lease_policy(
    nl: &Netlink,
    vxlan: &[u32],
    underlay: Option<u32>,
    conf: &NetConf,
    kube: Option<&LeaseKey>,
) -> Result<LeasePolicy> {
    let mut policy = conf_policy(conf, kube)?;
    let mut ours: Vec<u32> = vxlan.to_vec();
    if let Some(l) = nl.link_by_name(CNI_BRIDGE).await? {
        ours.push(l.index);
    }
    let networks: Vec<(IpNetwork, u8)> = policy
        .ipv4
        .map(|(n, len)| (IpNetwork::V4(n), len))
        .into_iter()
        .chain(policy.ipv6.map(|(n, len)| (IpNetwork::V6(n), len)))
        .collect();
    let node = nl
        .node_prefixes(&ours, &networks, underlay)
        .await
        .context("reading this node's addresses and routes")?;
    policy.local_addrs = node.local_addrs;
    policy.protected = node.protected;
    if conf.backend.kind == BackendType::HostGw {
        policy.onlink = Some(node.onlink);
    }
    Ok(policy)
}

/// The part of the policy the config alone decides (nothing of a node's own): what a
/// host that is not a node, such as the ExaBGP feed, judges leases by.
pub fn conf_policy(conf: &NetConf, kube: Option<&LeaseKey>) -> Result<LeasePolicy> {
    let v4_len = |len: u8| kube.and_then(|k| k.v4).map(|n| n.prefix()).unwrap_or(len);
    let ipv4 = conf
        .ipv4
        .as_ref()
        .zip(conf.network4())
        .map(|(r, n)| (n, v4_len(r.subnet_len)));
    if ipv4.is_none() && conf.network6().is_none() {
        return Err(anyhow!("net-conf.json: no Network and no IPv6Network"));
    }
    let v6_len = |len: u8| kube.and_then(|k| k.v6).map(|n| n.prefix()).unwrap_or(len);
    let ipv6 = conf
        .ipv6
        .as_ref()
        .zip(conf.network6())
        .map(|(r, n)| (n, v6_len(r.subnet_len)));
    Ok(LeasePolicy {
        ipv4,
        ipv6,
        backend_type: conf.backend.kind.as_str().to_string(),
        vni: conf.backend.vni,
        local_addrs: Vec::new(),
        protected: Vec::new(),
        onlink: None,
    })
}
