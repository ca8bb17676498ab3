//! How twilld runs on this node, as `doctor` and `cleanup` need to know it: the flags they
//! share with the daemon, gathered once from the command line. The subcommands take this
//! and not the `Cli`, so they don't depend on the command line's shape (and `cli` may name
//! their argument structs without the modules importing each other).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use twill_dataplane::{IfaceSelection, RuleFlags};
use twill_etcd::EtcdOptions;
use twill_kube::KubeOptions;

#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// `--subnet-file`.
    pub subnet_file: PathBuf,
    /// `--net-config-path`, or the Kubernetes default; `None` reads the config from etcd.
    pub config_file: Option<PathBuf>,
    pub store: StoreOptions,
    pub iface: IfaceSelection,
    /// `--public-ip`.
    pub public_ip: Option<Ipv4Addr>,
    pub rules: RuleFlags,
    /// `--no-masq-cidr`.
    pub no_masq_cidr: Vec<ipnetwork::IpNetwork>,
    /// `--ip-blackhole-route`.
    pub ip_blackhole_route: bool,
    /// `--bgp-*`.
    pub bgp: twill_bgp::BgpOptions,
    /// `--vxlan-tx-checksum-offload`.
    pub tx_checksum: twill_dataplane::offload::OffloadMode,
    /// `--healthz-ip`/`--healthz-port`; `None` when the port is 0.
    pub healthz: Option<std::net::SocketAddr>,
    /// `--metrics-ip`/`--metrics-port`; `None` when the port is 0.
    pub metrics: Option<std::net::SocketAddr>,
}

/// The store the node's twilld uses, with the options to reach it.
#[derive(Debug, Clone)]
pub enum StoreOptions {
    Etcd(EtcdOptions),
    Kube(KubeOptions),
}

impl StoreOptions {
    /// The name operators know it by, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            StoreOptions::Etcd(_) => "etcd",
            StoreOptions::Kube(_) => "the Kubernetes API",
        }
    }
}

/// The Kubernetes options for a network with or without an IPv6 half, which decides the
/// annotations twilld reads and writes.
pub fn kube_with_ipv6(opts: &KubeOptions, ipv6: bool) -> KubeOptions {
    KubeOptions {
        ipv6,
        ..opts.clone()
    }
}

/// Everything the daemon runs with beyond what its subcommands share: gathered once by
/// `Cli::daemon_options`, so no module below the command line knows its shape.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub node: NodeOptions,
    /// `--iptables-resync`: the periodic pass, and the cap on a repair's backoff.
    pub resync: std::time::Duration,
    /// `--subnet-lease-renew-margin`, as a duration.
    pub renew_margin: std::time::Duration,
    /// `--subnet-lease-ttl`.
    pub lease_ttl: std::time::Duration,
    /// `--public-ipv6`.
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    /// `--route-nexthops`.
    pub route_form: twill_dataplane::RouteForm,
    /// `--peer-probe-*`, `--ready-requires-peers`.
    pub probes: ProbeOptions,
    /// `--network-policy`.
    pub network_policy: bool,
}

impl DaemonOptions {
    pub fn kube_subnet_mgr(&self) -> bool {
        matches!(self.node.store, StoreOptions::Kube(_))
    }
}

/// `--peer-probe-interval`, `--peer-probe-timeout`, `--peer-probe-rate`,
/// `--ready-requires-peers`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeOptions {
    /// `None`: probing off.
    pub interval: Option<std::time::Duration>,
    pub timeout: std::time::Duration,
    /// Rounds started per second at most.
    pub per_second: u32,
    pub ready_fraction: Option<f64>,
}
