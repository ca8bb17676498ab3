//! Command line: flanneld's flag names and defaults, each also read from
//! `FLANNELD_<NAME>` (the flag wins), so existing unit files and DaemonSets carry over.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "twilld",
    version,
    about = "twill node daemon: a flannel-compatible VXLAN overlay",
    long_about = None,
    // As Go's flag package (flanneld's): a flag given twice takes the last value, so a
    // wrapper can append overrides to a unit's or a manifest's command line.
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        global = true,
        env = "FLANNELD_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix holding config and subnets.
    #[arg(
        long,
        global = true,
        env = "FLANNELD_ETCD_PREFIX",
        default_value = "/coreos.com/network"
    )]
    pub etcd_prefix: String,
    #[arg(long, global = true, env = "FLANNELD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    #[arg(long, global = true, env = "FLANNELD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    #[arg(long, global = true, env = "FLANNELD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    #[arg(long, global = true, env = "FLANNELD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    #[arg(
        long,
        global = true,
        env = "FLANNELD_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,

    /// Underlay interface, by name or IP; repeat to give fallbacks (first match wins).
    #[arg(long, global = true, env = "FLANNELD_IFACE", action = ArgAction::Append)]
    pub iface: Vec<String>,
    /// Regex matched against addresses, then interface names; repeatable.
    #[arg(long, global = true, env = "FLANNELD_IFACE_REGEX", action = ArgAction::Append)]
    pub iface_regex: Vec<String>,
    /// Without --iface/--iface-regex: the interface (and source address) of the route to
    /// this address, as `ip route get` shows it.
    #[arg(long, global = true, env = "FLANNELD_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<IpAddr>,
    /// Address other nodes reach us at (default: the underlay interface's address).
    #[arg(long, global = true, env = "FLANNELD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// IPv6 address other nodes reach us at, published as the lease's PublicIPv6 when
    /// net-conf.json enables IPv6 (ignored otherwise, as flanneld ignores it).
    #[arg(long, global = true, env = "FLANNELD_PUBLIC_IPV6")]
    pub public_ipv6: Option<std::net::Ipv6Addr>,

    /// Masquerade traffic from pods to outside the pod network.
    #[arg(long, env = "FLANNELD_IP_MASQ", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub ip_masq: bool,
    /// Don't use --random-fully on MASQUERADE rules.
    #[arg(long, env = "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub ip_masq_fully_random_disable: bool,
    /// Accept forwarded traffic to and from the pod network (FLANNEL-FWD).
    #[arg(long, env = "FLANNELD_IPTABLES_FORWARD_RULES", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "true", value_parser = BoolishValueParser::new())]
    pub iptables_forward_rules: bool,
    /// Keep VXLAN packets to and from this node out of conntrack (raw table chains
    /// TWILL-NOTRACK-PRE/-OUT). Off by default, as flanneld: a host firewall that accepts
    /// the VXLAN port only in state NEW would drop the untracked packets.
    #[arg(long, global = true, env = "FLANNELD_VXLAN_NOTRACK", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub vxlan_notrack: bool,
    /// Route each peer through a nexthop object of its own (`<subnet> nhid <id>`) instead
    /// of flanneld's `<subnet> via <vtep> dev flannel.1 onlink`. The kernel then inserts
    /// peer routes in linear rather than quadratic time (10 000 peers: several times
    /// faster, see README). Off by default because `ip route` shows a different form from
    /// flanneld's. Needs Linux 5.3 or later.
    #[arg(long, env = "FLANNELD_ROUTE_NEXTHOPS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub route_nexthops: bool,
    /// Add a blackhole route for this node's own subnet, so traffic to pod addresses no
    /// local pod holds is dropped here rather than sent out the default route (before the
    /// first pod, or with cni0 gone). Unlike flanneld's, the route has the highest metric
    /// (4294967295): cni0's own route to the subnet always wins over it.
    #[arg(long, global = true, env = "FLANNELD_IP_BLACKHOLE_ROUTE", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub ip_blackhole_route: bool,
    /// Never masquerade from our pods to this CIDR (repeatable; the env variable takes a
    /// comma-separated list): another pod network during a CNI migration, say. Added to
    /// net-conf.json's NonMasqueradeCIDRs.
    #[arg(long, global = true, env = "FLANNELD_NO_MASQ_CIDR", action = ArgAction::Append, value_delimiter = ',')]
    pub no_masq_cidr: Vec<IpNetwork>,
    /// Transmit checksum offload on the VXLAN device: auto turns it off where it corrupts
    /// packets (kernels before 5.7, a vmxnet3 underlay; flannel #1279), on elsewhere.
    #[arg(long, global = true, env = "TWILLD_VXLAN_TX_CHECKSUM_OFFLOAD", default_value = "auto",
          value_parser = parse_offload)]
    pub vxlan_tx_checksum_offload: twill_dataplane::offload::OffloadMode,
    /// Seconds between two probes of each peer (ICMP echo over the overlay, over the
    /// underlay, and at the full pod MTU with DF); 0 turns probing off.
    #[arg(long, env = "TWILLD_PEER_PROBE_INTERVAL", default_value_t = 10)]
    pub peer_probe_interval: u64,
    /// Seconds a probe waits for its answer (a lost one is tried once more).
    #[arg(long, env = "TWILLD_PEER_PROBE_TIMEOUT", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub peer_probe_timeout: u64,
    /// Probe rounds started per second at most: past interval x rate peers, each peer is
    /// probed every peers / rate seconds instead, so probing costs a node the same at
    /// 10 000 peers as at 1 000.
    #[arg(long, env = "TWILLD_PEER_PROBE_RATE", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub peer_probe_rate: u32,
    /// /readyz says 503 until this fraction (0 to 1) of the peers answers over the overlay.
    /// Off by default, as flannel's /readyz.
    #[arg(long, env = "TWILLD_READY_REQUIRES_PEERS", value_parser = parse_fraction)]
    pub ready_requires_peers: Option<f64>,
    /// Seconds between full reconciles of rules and kernel state.
    #[arg(long, env = "FLANNELD_IPTABLES_RESYNC", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub iptables_resync: u64,

    /// Where to write subnet.env.
    #[arg(
        long,
        global = true,
        env = "FLANNELD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,
    /// Renew the lease this many minutes before it expires.
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=1439))]
    pub subnet_lease_renew_margin: u64,
    /// Lease lifetime: a duration like 24h, 90m, 30s (a bare number is seconds).
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_TTL", default_value = "24h", value_parser = parse_duration)]
    pub subnet_lease_ttl: Duration,
    /// Read net-conf.json from this file instead of etcd's <prefix>/config (with
    /// --kube-subnet-mgr the default is /etc/kube-flannel/net-conf.json, a ConfigMap mount).
    #[arg(long, global = true, env = "FLANNELD_NET_CONFIG_PATH")]
    pub net_config_path: Option<PathBuf>,

    /// /healthz and /readyz listen here: all addresses, as flanneld, so the probes of
    /// flannel's DaemonSet (no host: the kubelet probes the node IP) reach them.
    #[arg(
        long,
        global = true,
        env = "FLANNELD_HEALTHZ_IP",
        default_value = "0.0.0.0"
    )]
    pub healthz_ip: IpAddr,
    /// 0 disables the health endpoints.
    #[arg(
        long,
        global = true,
        env = "FLANNELD_HEALTHZ_PORT",
        default_value_t = 0
    )]
    pub healthz_port: u16,
    /// /metrics listens here: loopback unless you publish it (e.g. 0.0.0.0 for a
    /// Prometheus outside the node).
    #[arg(
        long,
        global = true,
        env = "TWILLD_METRICS_IP",
        default_value = "127.0.0.1"
    )]
    pub metrics_ip: IpAddr,
    /// 0 disables /metrics. Equal to --healthz-port with an equal --metrics-ip, one
    /// listener serves all three paths.
    #[arg(long, global = true, env = "TWILLD_METRICS_PORT", default_value_t = 0)]
    pub metrics_port: u16,

    /// BIRD's configuration file, which twilld writes (and owns) when BGP is configured.
    #[arg(
        long,
        global = true,
        env = "TWILLD_BGP_CONFIG_FILE",
        default_value = "/etc/bird/bird.conf"
    )]
    pub bgp_config_file: PathBuf,
    /// BIRD's control socket, through which twilld reloads it and reads its sessions.
    #[arg(
        long,
        global = true,
        env = "TWILLD_BGP_CONTROL_SOCKET",
        default_value = "/run/bird/bird.ctl"
    )]
    pub bgp_control_socket: PathBuf,
    /// The operator's own BIRD configuration: `<dir>/*.conf`, included by twilld's file.
    #[arg(
        long,
        global = true,
        env = "TWILLD_BGP_INCLUDE_DIR",
        default_value = "/etc/bird/twill.d"
    )]
    pub bgp_include_dir: PathBuf,
    /// This node's AS number, over net-conf.json's BGP.ASN (alone, it enables BGP).
    #[arg(long, global = true, env = "TWILLD_BGP_ASN", value_parser = parse_asn)]
    pub bgp_asn: Option<u32>,
    /// This node's BGP peers, over net-conf.json's BGP.Peers: ADDRESS:ASN items separated
    /// by commas, IPv6 addresses in brackets (198.18.0.5:64513,[2001:db8::1]:64513).
    #[arg(long, global = true, env = "TWILLD_BGP_PEERS", value_parser = parse_peers)]
    pub bgp_peers: Option<BgpPeers>,

    /// Use the Kubernetes API instead of etcd: the subnet is the node's spec.podCIDR.
    #[arg(long, global = true, env = "FLANNELD_KUBE_SUBNET_MGR", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub kube_subnet_mgr: bool,
    /// API server URL (overrides the kubeconfig's server); with neither this nor
    /// --kubeconfig-file, the in-cluster service account is used.
    #[arg(long, global = true, env = "FLANNELD_KUBE_API_URL")]
    pub kube_api_url: Option<String>,
    #[arg(long, global = true, env = "FLANNELD_KUBECONFIG_FILE")]
    pub kubeconfig_file: Option<PathBuf>,
    /// Prefix of the node annotations twill reads and writes, under flanneld's rules: a
    /// domain, then optionally `/` and a path part that the names follow after a `-`.
    #[arg(long, global = true, env = "FLANNELD_KUBE_ANNOTATION_PREFIX",
          default_value = twill_kube::DEFAULT_PREFIX, value_parser = annotation_prefix)]
    pub kube_annotation_prefix: String,
    /// Enforce Kubernetes NetworkPolicy for this node's pods, in the kernel (an nftables
    /// table of twill's). Needs --kube-subnet-mgr and list/watch of pods, namespaces and
    /// networkpolicies (manifests/kube-twill.yml grants them; flannel's ClusterRole does not).
    #[arg(long, env = "TWILLD_NETWORK_POLICY", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub network_policy: bool,
    /// Set the node condition NetworkUnavailable=False once the network is up.
    #[arg(long, env = "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "true", value_parser = BoolishValueParser::new())]
    pub set_node_network_unavailable: bool,

    /// Log as human-readable text (default) or JSON lines.
    #[arg(
        long,
        global = true,
        env = "FLANNELD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub klog: Klog,
}

/// flanneld's klog flags, so its command lines carry over: `-v` sets twill's log level; the
/// others are accepted and ignored, since twill always logs to stderr through tracing.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Klog {
    /// klog verbosity, as flanneld's -v: 0 logs at info, 1-3 add twill's debug events, 4
    /// and up its trace events. RUST_LOG, when set, wins.
    #[arg(
        short = 'v',
        long = "v",
        global = true,
        env = "FLANNELD_V",
        value_name = "LEVEL"
    )]
    pub v: Option<u8>,
    #[arg(long = "vmodule", global = true, hide = true, num_args = 0..=1, default_missing_value = "")]
    vmodule: Option<String>,
    #[arg(long = "log_backtrace_at", global = true, hide = true, num_args = 0..=1, default_missing_value = "")]
    log_backtrace_at: Option<String>,
    #[arg(long = "logtostderr", global = true, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    logtostderr: Option<String>,
    #[arg(long = "alsologtostderr", global = true, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    alsologtostderr: Option<String>,
    #[arg(long = "stderrthreshold", global = true, hide = true, num_args = 0..=1, default_missing_value = "")]
    stderrthreshold: Option<String>,
    #[arg(long = "log_dir", global = true, hide = true, num_args = 0..=1, default_missing_value = "")]
    log_dir: Option<String>,
    #[arg(long = "log_file", global = true, hide = true, num_args = 0..=1, default_missing_value = "")]
    log_file: Option<String>,
}

impl Klog {
    /// The tracing filter `-v` asks for; dependencies stay at info either way.
    pub fn filter(&self) -> &'static str {
        match self.v.unwrap_or(0) {
            0 => "info",
            1..=3 => "info,twill=debug",
            _ => "info,twill=trace",
        }
    }

    /// The klog flags given whose intent twilld doesn't follow, as `--name` (it does log
    /// to stderr, so -logtostderr and -alsologtostderr need no word).
    pub fn ignored(&self) -> Vec<&'static str> {
        [
            ("--vmodule", &self.vmodule),
            ("--log_backtrace_at", &self.log_backtrace_at),
            ("--stderrthreshold", &self.stderrthreshold),
            ("--log_dir", &self.log_dir),
            ("--log_file", &self.log_file),
        ]
        .into_iter()
        .filter(|(_, v)| v.is_some())
        .map(|(n, _)| n)
        .collect()
    }
}

/// Tasks other than running the daemon.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Install the `twill` CNI plugin and its conflist (DaemonSet init container, bare nodes).
    InstallCni(crate::install_cni::InstallCni),
    /// Remove everything twill put on this node (dry run unless --yes).
    Cleanup(crate::cleanup::Cleanup),
    /// Check this node: read-only, one pass/warn/fail line per check with a hint.
    Doctor(crate::doctor::Doctor),
    /// Run as an ExaBGP `process`: print announce/withdraw lines for every lease in etcd.
    ExabgpFeed(crate::exabgp::ExabgpFeed),
    /// NetworkPolicy as twill enforces it: `policy explain --from NS/POD --to NS/POD
    /// --port 80/TCP` (reads the Kubernetes API: --kubeconfig-file or --kube-api-url).
    Policy(crate::explain::PolicyCmd),
    /// One screen from the running twilld (through its control socket beside
    /// --subnet-file): lease, peers reachable over the overlay, rules, BGP, repairs,
    /// refused leases. Exits 1 when it is not ready or a peer is unreachable.
    Status(crate::status::StatusArgs),
}

/// Where the DaemonSet mounts net-conf.json; flannel's default in Kubernetes mode.
pub const KUBE_NET_CONF: &str = "/etc/kube-flannel/net-conf.json";

impl Cli {
    /// The net-conf.json file to read, if the config comes from a file.
    pub fn config_file(&self) -> Option<PathBuf> {
        match (&self.net_config_path, self.kube_subnet_mgr) {
            (Some(p), _) => Some(p.clone()),
            (None, true) => Some(PathBuf::from(KUBE_NET_CONF)),
            (None, false) => None,
        }
    }

    /// What `doctor` and `cleanup` share with the daemon, gathered from these flags.
    pub fn node_options(&self) -> crate::options::NodeOptions {
        use crate::options::StoreOptions;
        let addr = |ip, port| (port != 0).then(|| std::net::SocketAddr::new(ip, port));
        crate::options::NodeOptions {
            subnet_file: self.subnet_file.clone(),
            config_file: self.config_file(),
            store: if self.kube_subnet_mgr {
                // The IPv6 half is known only once the config is read.
                StoreOptions::Kube(self.kube_options(false))
            } else {
                StoreOptions::Etcd(self.etcd_options())
            },
            iface: self.iface_selection(),
            public_ip: self.public_ip,
            rules: self.rule_flags(),
            no_masq_cidr: self.no_masq_cidr.clone(),
            ip_blackhole_route: self.ip_blackhole_route,
            bgp: self.bgp_options(),
            tx_checksum: self.vxlan_tx_checksum_offload,
            healthz: addr(self.healthz_ip, self.healthz_port),
            metrics: addr(self.metrics_ip, self.metrics_port),
        }
    }

    /// What the daemon runs with: the subcommands' share and its own flags.
    pub fn daemon_options(&self) -> crate::options::DaemonOptions {
        crate::options::DaemonOptions {
            node: self.node_options(),
            resync: Duration::from_secs(self.iptables_resync),
            renew_margin: Duration::from_secs(self.subnet_lease_renew_margin * 60),
            lease_ttl: self.subnet_lease_ttl,
            public_ipv6: self.public_ipv6,
            route_form: if self.route_nexthops {
                twill_dataplane::RouteForm::Nexthop
            } else {
                twill_dataplane::RouteForm::Plain
            },
            probes: crate::options::ProbeOptions {
                interval: (self.peer_probe_interval > 0)
                    .then(|| Duration::from_secs(self.peer_probe_interval)),
                timeout: Duration::from_secs(self.peer_probe_timeout),
                per_second: self.peer_probe_rate,
                ready_fraction: self.ready_requires_peers,
            },
            network_policy: self.network_policy,
        }
    }

    pub fn bgp_options(&self) -> twill_bgp::BgpOptions {
        twill_bgp::BgpOptions {
            config_file: self.bgp_config_file.clone(),
            control_socket: self.bgp_control_socket.clone(),
            include_dir: self.bgp_include_dir.clone(),
            asn: self.bgp_asn,
            peers: self.bgp_peers.clone().map(|p| p.0),
        }
    }

    /// Kubernetes client options; the node comes from NODE_NAME, else from our pod.
    pub fn kube_options(&self, ipv6: bool) -> twill_kube::KubeOptions {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        twill_kube::KubeOptions {
            api_url: self.kube_api_url.clone(),
            kubeconfig: self.kubeconfig_file.clone(),
            annotation_prefix: self.kube_annotation_prefix.clone(),
            node_name: env("NODE_NAME"),
            pod: env("POD_NAMESPACE").zip(env("POD_NAME")),
            set_network_unavailable: self.set_node_network_unavailable,
            ipv6,
        }
    }

    /// The rule flags, as the data plane takes them.
    pub fn rule_flags(&self) -> twill_dataplane::RuleFlags {
        twill_dataplane::RuleFlags {
            ip_masq: self.ip_masq,
            fully_random: !self.ip_masq_fully_random_disable,
            forward: self.iptables_forward_rules,
            notrack: self.vxlan_notrack,
        }
    }

    /// The underlay selection flags, as the data plane takes them.
    pub fn iface_selection(&self) -> twill_dataplane::IfaceSelection {
        twill_dataplane::IfaceSelection {
            iface: self.iface.clone(),
            iface_regex: self.iface_regex.clone(),
            can_reach: self.iface_can_reach,
            public_ip: self.public_ip,
            public_ipv6: self.public_ipv6,
        }
    }

    pub fn etcd_options(&self) -> twill_etcd::EtcdOptions {
        twill_etcd::EtcdOptions {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            ca_file: self.etcd_cafile.clone(),
            cert_file: self.etcd_certfile.clone(),
            key_file: self.etcd_keyfile.clone(),
            username: self.etcd_username.clone(),
            password: self.etcd_password.clone(),
        }
    }
}

fn annotation_prefix(s: &str) -> Result<String, String> {
    twill_kube::AnnotationKeys::new(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?,
    };
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?}: must be at least 1s"));
    }
    Ok(d)
}

/// flanneld is a Go program, so `-etcd-endpoints=...` (one dash) works there; accept it
/// here too so unit files and scripts carry over unchanged.
/// flanneld's rule for its environment: a variable that is set but empty is as good as
/// unset (a manifest's `value: ""`, a blank line in an env file). Removes those of ours,
/// so the defaults stand. Call before any other thread exists.
pub fn drop_empty_env() {
    let empty: Vec<std::ffi::OsString> = std::env::vars_os()
        .filter(|(k, v)| {
            v.is_empty()
                && k.to_str()
                    .is_some_and(|k| k.starts_with("FLANNELD_") || k.starts_with("TWILLD_"))
        })
        .map(|(k, _)| k)
        .collect();
    for k in empty {
        // SAFETY: main calls this first, while it is the only thread, so nothing reads
        // the environment concurrently.
        unsafe { std::env::remove_var(k) };
    }
}

/// A parse error that comes from a variable rather than the command line, reworded the
/// way flanneld words it: `invalid value "x" for FLANNELD_Y: why`. `None` for errors of
/// the command line itself (clap's own message names the flag).
pub fn env_error(err: &clap::Error, args: &[String]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let ContextValue::String(arg) = err.get(ContextKind::InvalidArg)? else {
        return None;
    };
    let flag = arg.split_whitespace().next()?.split('[').next()?;
    let given = args
        .iter()
        .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    if given {
        return None;
    }
    let long = flag.trim_start_matches('-');
    let cmd = <Cli as clap::CommandFactory>::command();
    let env = cmd
        .get_arguments()
        .chain(cmd.get_subcommands().flat_map(|s| s.get_arguments()))
        .find(|a| a.get_long() == Some(long))?
        .get_env()?
        .to_str()?
        .to_string();
    let value = std::env::var(&env).ok()?;
    let why = std::error::Error::source(err)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "not one of the accepted values".into());
    Some(format!("invalid value {value:?} for {env} ({flag}): {why}"))
}

pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let long_with_one_dash = i > 0
                && a.starts_with('-')
                && !a.starts_with("--")
                && a.len() > 2
                && a.as_bytes()[1].is_ascii_alphabetic()
                && a.split('=').next().is_some_and(|n| n.len() > 2);
            if long_with_one_dash {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

/// `--bgp-peers`, parsed (a newtype: clap takes a `Vec` as a repeated flag).
#[derive(Debug, Clone)]
pub struct BgpPeers(pub Vec<twill_config::BgpPeer>);

fn parse_peers(s: &str) -> Result<BgpPeers, String> {
    twill_config::BgpPeer::parse_list("--bgp-peers", s)
        .map(BgpPeers)
        .map_err(|e| e.to_string())
}

fn parse_offload(s: &str) -> Result<twill_dataplane::offload::OffloadMode, String> {
    s.parse()
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1")),
    }
}

fn parse_asn(s: &str) -> Result<u32, String> {
    let n: u64 = s.parse().map_err(|_| format!("{s}: not an AS number"))?;
    twill_config::check_asn("--bgp-asn", n).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
