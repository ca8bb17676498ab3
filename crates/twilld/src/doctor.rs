//! `twilld doctor`: read-only checks of everything twill needs and everything it made,
//! each a pass/warn/fail line with a hint, for the operator whose pods are stuck.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use ipnetwork::{IpNetwork, Ipv4Network};
use serde_json::json;
use twill_config::{NetConf, SubnetEnv, VXLAN_OVERHEAD_V4};
use twill_dataplane::{
    desired_peers, plan_peers, Blackhole, Iptables, Netlink, Nftables, RouteForm, RuleSet,
    Underlay, VxlanFlows, BLACKHOLE_METRIC,
};
use twill_etcd::EtcdStore;
use twill_store::{LeaseKey, PeerTable, StoredLease, WatchEvent};

use crate::cli::Cli;
use crate::policy::lease_policy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Doctor {
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    #[arg(long, default_value = "10-twill.conflist")]
    pub conflist_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

struct Check {
    name: &'static str,
    status: Status,
    detail: String,
    hint: String,
}

#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn add(
        &mut self,
        name: &'static str,
        status: Status,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.0.push(Check {
            name,
            status,
            detail: detail.into(),
            hint: hint.into(),
        });
    }
    fn pass(&mut self, name: &'static str, detail: impl Into<String>) {
        self.add(name, Status::Pass, detail, "");
    }
}

fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

pub async fn run(cli: &Cli, args: &Doctor) -> anyhow::Result<bool> {
    let mut c = Checks::default();
    privileges(&mut c);
    // The probe runs while the other checks do; its verdict waits for the config, which
    // says whether iptables or nftables is the tool that must work.
    let probe = spawn_kernel_probe(cli.vxlan_notrack);
    let kernel_at = c.0.len();
    match read_sysctl("/proc/sys/net/ipv4/ip_forward").as_deref() {
        Some("1") => c.pass("ip_forward", "net.ipv4.ip_forward = 1"),
        other => c.add("ip_forward", Status::Fail, format!("net.ipv4.ip_forward = {}", other.unwrap_or("?")),
            "pods can't reach other nodes: sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d)"),
    }
    match read_sysctl("/proc/sys/net/bridge/bridge-nf-call-iptables").as_deref() {
        Some("1") => c.pass("br_netfilter", "net.bridge.bridge-nf-call-iptables = 1"),
        Some(v) => c.add("br_netfilter", Status::Warn, format!("net.bridge.bridge-nf-call-iptables = {v}"),
            "kube-proxy's rules won't see bridged pod traffic: sysctl -w net.bridge.bridge-nf-call-iptables=1"),
        None => c.add("br_netfilter", Status::Warn, "br_netfilter not loaded",
            "modprobe br_netfilter (kube-proxy needs it for Services between pods on one node)"),
    }

    let nl = Netlink::connect()?;
    let ext = match twill_dataplane::select_underlay(&nl, &cli.iface_selection()).await {
        Ok(e) => {
            let public = cli.public_ip.unwrap_or(e.addr);
            c.pass(
                "underlay",
                format!("{} {} (mtu {}), public IP {public}", e.name, e.addr, e.mtu),
            );
            Some((e, public))
        }
        Err(err) => {
            c.add(
                "underlay",
                Status::Fail,
                format!("{err:#}"),
                "pass --iface NAME|IP (or --iface-regex) as twilld runs",
            );
            None
        }
    };

    // In Kubernetes mode our lease is our node's: what it publishes as public-ip (maybe
    // a public-ip-overwrite) is what the lease must carry, not the interface address.
    let (conf, leases, published_ip) = if cli.kube_subnet_mgr {
        kube_checks(cli, &mut c).await
    } else {
        let (conf, leases) = etcd_checks(cli, &mut c).await;
        (conf, leases, None)
    };
    let nftables = conf.as_ref().is_some_and(|c| c.enable_nftables);
    let mut verdict = Checks::default();
    kernel(&mut verdict, probe, nftables);
    c.0.splice(kernel_at..kernel_at, verdict.0);
    let store_name = if cli.kube_subnet_mgr {
        "the Kubernetes API"
    } else {
        "etcd"
    };

    let env_text = std::fs::read_to_string(&cli.subnet_file).ok();
    let env = env_text
        .as_deref()
        .and_then(|t| SubnetEnv::parse(t, &cli.subnet_file.display().to_string()).ok());
    let own_key = env
        .as_ref()
        .and_then(|e| e.lease_subnet())
        .map(|s| LeaseKey {
            v4: Some(s),
            v6: env.as_ref().and_then(|e| e.lease_subnet6()),
        });
    match (&env, &own_key, &leases, &ext) {
        (None, ..) => c.add("subnet.env", Status::Fail, format!("{} missing or unreadable", cli.subnet_file.display()),
            "twilld writes it once it holds a lease; until then pods stay in ContainerCreating. Is twilld running? Look at its log"),
        (Some(_), Some(k), Some(l), Some((_, public))) => match l.iter().find(|x| x.key == *k) {
            Some(x) if x.attrs.as_ref().is_some_and(|a| a.public_ip == published_ip.unwrap_or(*public)) => c.pass("subnet.env", format!("{k} matches our lease in {store_name}")),
            Some(x) => c.add("subnet.env", Status::Fail, format!("lease {k} belongs to {:?}", x.attrs.as_ref().map(|a| a.public_ip)),
                "another node holds this subnet: stop twilld, remove subnet.env, start twilld"),
            None => c.add("subnet.env", Status::Fail, format!("{k} is not leased in {store_name}"), "twilld re-acquires a lost lease; is it running?"),
        },
        (Some(_), ..) => c.add("subnet.env", Status::Warn, "present, but the lease could not be checked", format!("see the {store_name} and underlay checks")),
    }

    let vni = conf.as_ref().map(|c| c.backend.vni).unwrap_or(1);
    let device_name = format!("flannel.{vni}");
    let device = nl.link_by_name(&device_name).await.ok().flatten();
    match &device {
        Some(d) if d.up => c.pass(
            "vxlan device",
            format!(
                "{device_name} up, mac {}",
                d.mac.map(|m| m.to_string()).unwrap_or_default()
            ),
        ),
        Some(_) => c.add(
            "vxlan device",
            Status::Fail,
            format!("{device_name} is down"),
            "twilld brings it up at the next resync; is it running?",
        ),
        None => c.add(
            "vxlan device",
            Status::Fail,
            format!("{device_name} does not exist"),
            "twilld creates it at start and within one resync after a deletion; is it running?",
        ),
    }
    mtu_chain(
        &mut c,
        conf.as_ref(),
        ext.as_ref().map(|(e, _)| e.mtu),
        device.as_ref().map(|d| d.mtu),
        env.as_ref(),
        &nl,
    )
    .await;
    vxlan_port(&mut c, conf.as_ref(), device.is_some());
    if cli.vxlan_notrack {
        let port = conf
            .as_ref()
            .map(|c| c.backend.port)
            .unwrap_or(twill_config::DEFAULT_VXLAN_PORT);
        vxlan_firewall(&mut c, port);
    }
    if let (Some(d), Some(l)) = (&device, &leases) {
        // Direct routes are only checked where twilld keeps them: with DirectRouting.
        let mode = match (&conf, &ext) {
            (Some(conf), Some((e, _))) if conf.backend.direct_routing => {
                match conf.ipv4.as_ref().map(|r| r.network) {
                    Some(IpNetwork::V4(n)) => Underlay::Direct(e.index, n),
                    _ => Underlay::Skip,
                }
            }
            _ => Underlay::Skip,
        };
        peers(
            &mut c,
            &nl,
            d.index,
            mode,
            conf.as_ref(),
            own_key.as_ref(),
            cli.kube_subnet_mgr,
            l,
            store_name,
        )
        .await;
    }
    if let Some(env) = &env {
        let local = ext.as_ref().map(|(e, _)| e.addr);
        rules(&mut c, cli, conf.as_ref(), env, local).await;
        blackhole(&mut c, &nl, env, cli.ip_blackhole_route).await;
    }
    other_cnis(&mut c, &nl, env.as_ref(), args).await;

    let ok = !c.0.iter().any(|x| x.status == Status::Fail);
    match args.output {
        Output::Json => {
            let checks: Vec<_> = c.0.iter().map(|x| json!({"name": x.name, "status": x.status.as_str(), "detail": x.detail, "hint": x.hint})).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"ok": ok, "checks": checks}))?
            );
        }
        Output::Text => {
            for x in &c.0 {
                println!(
                    "{:<4} {}: {}",
                    x.status.as_str().to_uppercase(),
                    x.name,
                    x.detail
                );
                if !x.hint.is_empty() {
                    println!("     hint: {}", x.hint);
                }
            }
        }
    }
    Ok(ok)
}

async fn etcd_checks(cli: &Cli, c: &mut Checks) -> (Option<NetConf>, Option<Vec<StoredLease>>) {
    let store = EtcdStore::connect(&cli.etcd_options()).await;
    let conf = config(cli, store.as_ref().ok(), c).await;
    if let Err(e) = &store {
        c.add(
            "etcd",
            Status::Fail,
            format!("{e}"),
            format!(
                "check --etcd-endpoints {} and the TLS flags",
                cli.etcd_endpoints.join(",")
            ),
        );
    }
    let leases = match &store {
        Ok(s) => match s.list().await {
            Ok((l, _)) => {
                c.pass(
                    "etcd",
                    format!(
                        "{} reachable, {} leases",
                        cli.etcd_endpoints.join(","),
                        l.len()
                    ),
                );
                Some(l)
            }
            Err(e) => {
                c.add(
                    "etcd",
                    Status::Fail,
                    e.to_string(),
                    "is etcd up and reachable from this node?",
                );
                None
            }
        },
        Err(_) => None,
    };
    (conf, leases)
}

/// Kubernetes mode: the API is reachable, our node exists and its podCIDR lies inside
/// Network (the mismatch that leaves every node NotReady).
async fn kube_checks(
    cli: &Cli,
    c: &mut Checks,
) -> (
    Option<NetConf>,
    Option<Vec<StoredLease>>,
    Option<std::net::Ipv4Addr>,
) {
    let conf = config(cli, None, c).await;
    let ipv6 = conf.as_ref().is_some_and(|c| c.ipv6.is_some());
    let hint =
        "check --kubeconfig-file / --kube-api-url (or the pod's service account) and NODE_NAME";
    let store = match twill_kube::KubeStore::connect(&cli.kube_options(ipv6)).await {
        Ok(s) => s,
        Err(e) => {
            c.add("kubernetes", Status::Fail, e.to_string(), hint);
            return (conf, None, None);
        }
    };
    let node = match store.node().await {
        Ok(n) => n,
        Err(e) => {
            c.add("kubernetes", Status::Fail, e.to_string(), hint);
            return (conf, None, None);
        }
    };
    let leases = match store.list_leases().await {
        Ok(l) => {
            c.pass(
                "kubernetes",
                format!(
                    "API reachable, node {}, {} nodes publish a lease",
                    store.node_name(),
                    l.len()
                ),
            );
            Some(l)
        }
        Err(e) => {
            c.add(
                "kubernetes",
                Status::Fail,
                e.to_string(),
                "can this node's service account list nodes? (ClusterRole)",
            );
            None
        }
    };
    let mut published = None;
    if let Some(conf) = &conf {
        let mine = twill_kube::own_subnet(&node, conf).ok();
        published = leases
            .iter()
            .flatten()
            .find(|l| Some(l.key) == mine)
            .and_then(|l| Some(l.attrs.as_ref()?.public_ip));
        match twill_kube::own_subnet(&node, conf) {
            Ok(k) => c.pass("podCIDR", format!("node {} podCIDR {k} is inside Network", store.node_name())),
            Err(e) => c.add("podCIDR", Status::Fail, e.to_string(),
                "make kube-controller-manager --cluster-cidr (kubeadm --pod-network-cidr) and net-conf.json Network agree"),
        }
    }
    (conf, leases, published)
}

fn privileges(c: &mut Checks) {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let cap_net_admin = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 12) != 0);
    match (root, cap_net_admin) {
        (true, _) => c.pass("privileges", "running as root"),
        (false, true) => c.pass("privileges", "CAP_NET_ADMIN"),
        _ => c.add(
            "privileges",
            Status::Fail,
            "neither root nor CAP_NET_ADMIN",
            "run twilld (and this check) as root or with CAP_NET_ADMIN and CAP_NET_RAW",
        ),
    }
}

type Probes = Vec<(&'static str, Result<(), String>)>;

/// Creates a VXLAN device, a bridge, a NAT chain and an nftables table in a throw-away
/// network namespace: a kernel without the modules fails here, not in production.
fn spawn_kernel_probe(raw_table: bool) -> std::thread::JoinHandle<Probes> {
    std::thread::spawn(move || -> Probes {
        // SAFETY: unshare affects only this thread, which ends with the probe; the
        // namespace dies with it (nothing else references it).
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let e = std::io::Error::last_os_error().to_string();
            return vec![("netns", Err(e))];
        }
        let run = |cmd: &str, args: &[&str]| -> Result<(), String> {
            let out = std::process::Command::new(cmd)
                .args(args)
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        };
        let ip = |args: &[&str]| run("ip", args);
        let iptables = |args: &[&str]| run("iptables", args);
        let mut probes = vec![
            (
                "vxlan",
                ip(&[
                    "link", "add", "twprobe0", "type", "vxlan", "id", "42", "dstport", "8472",
                ]),
            ),
            ("bridge", ip(&["link", "add", "twprobe1", "type", "bridge"])),
            (
                "iptables nat",
                iptables(&["-t", "nat", "-N", "TWILL-PROBE"]),
            ),
            (
                "nftables nat",
                run("nft", &["add table ip twill-probe; add chain ip twill-probe p { type nat hook postrouting priority srcnat; }"]),
            ),
        ];
        if raw_table {
            probes.push((
                "iptables raw",
                iptables(&["-t", "raw", "-N", "TWILL-PROBE"]),
            ));
        }
        probes
    })
}

/// The probe's verdict for the rules tool in use: iptables, or nft with EnableNFTables.
fn kernel(c: &mut Checks, probe: std::thread::JoinHandle<Probes>, nftables: bool) {
    let Ok(results) = probe.join() else {
        c.add("kernel", Status::Fail, "the probe crashed", "");
        return;
    };
    let tool = if nftables { "nftables" } else { "iptables" };
    let failed: Vec<String> = results
        .iter()
        .filter(|(n, _)| !n.starts_with(if nftables { "iptables" } else { "nftables" }))
        .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
        .collect();
    if failed.is_empty() {
        c.pass(
            "kernel",
            format!("vxlan, bridge and {tool} work (probed in a throw-away namespace)"),
        );
    } else {
        c.add(
            "kernel",
            Status::Fail,
            failed.join("; "),
            format!("load the modules (modprobe vxlan bridge iptable_nat iptable_raw nf_tables) or install {tool}"),
        );
    }
}

async fn config(cli: &Cli, store: Option<&EtcdStore>, c: &mut Checks) -> Option<NetConf> {
    let (text, source) = match &cli.config_file() {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| e.to_string()),
            p.display().to_string(),
        ),
        None => {
            let Some(s) = store else {
                c.add(
                    "config",
                    Status::Fail,
                    "etcd unreachable",
                    "see the etcd check",
                );
                return None;
            };
            let key = s.config_key();
            match s.get_config().await {
                Ok(Some(t)) => (Ok(t), format!("etcd key {key}")),
                Ok(None) => {
                    c.add("config", Status::Fail, format!("etcd key {key} is missing"),
                        format!("etcdctl put {key} '{{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'"));
                    return None;
                }
                Err(e) => (Err(e.to_string()), format!("etcd key {key}")),
            }
        }
    };
    match text.map(|t| NetConf::parse(&t)) {
        Ok(Ok((conf, warnings))) => {
            let net = conf
                .ipv4
                .as_ref()
                .map(|r| r.network.to_string())
                .unwrap_or_default();
            if warnings.is_empty() {
                c.pass(
                    "config",
                    format!("{source}: Network {net}, VNI {}", conf.backend.vni),
                );
            } else {
                let w: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
                c.add(
                    "config",
                    Status::Warn,
                    format!("{source}: {}", w.join("; ")),
                    "fix or remove the keys named",
                );
            }
            Some(conf)
        }
        Ok(Err(e)) => {
            c.add(
                "config",
                Status::Fail,
                e.to_string(),
                "fix the field named; twilld refuses this config",
            );
            None
        }
        Err(e) => {
            c.add("config", Status::Fail, format!("{source}: {e}"), "");
            None
        }
    }
}

async fn mtu_chain(
    c: &mut Checks,
    conf: Option<&NetConf>,
    iface: Option<u32>,
    device: Option<u32>,
    env: Option<&SubnetEnv>,
    nl: &Netlink,
) {
    let underlay = conf.and_then(|c| c.backend.mtu).or(iface);
    let expect = underlay.map(|m| m.saturating_sub(VXLAN_OVERHEAD_V4));
    let cni0 = nl.link_by_name("cni0").await.ok().flatten().map(|l| l.mtu);
    let env_mtu = env.and_then(|e| e.mtu);
    let parts = [
        ("expected", expect),
        ("flannel device", device),
        ("subnet.env", env_mtu),
        ("cni0", cni0),
    ];
    let shown: Vec<String> = parts
        .iter()
        .filter_map(|(n, v)| v.map(|v| format!("{n} {v}")))
        .collect();
    let values: Vec<u32> = parts.iter().filter_map(|(_, v)| *v).collect();
    if values.windows(2).all(|w| w[0] == w[1]) {
        c.pass("mtu", shown.join(", "));
    } else {
        c.add("mtu", Status::Fail, shown.join(", "), "pods get one MTU and the tunnel another: restart twilld after MTU changes (it corrects the device and subnet.env); recreate pods to pick up a new cni0 MTU");
    }
}

fn vxlan_port(c: &mut Checks, conf: Option<&NetConf>, device_exists: bool) {
    let port = conf
        .map(|c| c.backend.port)
        .unwrap_or(twill_config::DEFAULT_VXLAN_PORT);
    if device_exists {
        c.pass("vxlan port", format!("UDP {port} held by our device"));
        return;
    }
    match std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)) {
        Ok(_) => c.pass("vxlan port", format!("UDP {port} free")),
        Err(e) => c.add(
            "vxlan port",
            Status::Fail,
            format!("UDP {port}: {e}"),
            "another VXLAN device or program holds the port; flannel and twill need it",
        ),
    }
}

/// twilld untracks VXLAN packets, so to conntrack they are UNTRACKED, never NEW: a
/// host firewall that accepts the VXLAN port only in state NEW would now drop them.
fn vxlan_firewall(c: &mut Checks, port: u16) {
    let mut gated = Vec::new();
    for (cmd, args) in [
        ("iptables-save", &[][..]),
        ("nft", &["list", "ruleset"][..]),
    ] {
        if let Ok(out) = std::process::Command::new(cmd).args(args).output() {
            for l in state_gated_accepts(&String::from_utf8_lossy(&out.stdout), port) {
                if !gated.contains(&l) {
                    gated.push(l);
                }
            }
        }
    }
    if gated.is_empty() {
        c.pass(
            "vxlan firewall",
            format!("no rule accepts UDP {port} only in conntrack state NEW"),
        );
    } else {
        c.add(
            "vxlan firewall",
            Status::Warn,
            format!("accepted only when NEW: {}", gated.join(" | ")),
            "twilld keeps VXLAN out of conntrack (state UNTRACKED): add UNTRACKED to these rules' states (firewalld does: ct state new,untracked), or run twilld --vxlan-notrack=false",
        );
    }
}

/// Lines of an `iptables-save` or `nft list ruleset` text that accept destination port
/// `port` only in connection states that include NEW but not UNTRACKED.
fn state_gated_accepts(ruleset: &str, port: u16) -> Vec<String> {
    let port = port.to_string();
    ruleset
        .lines()
        .map(str::trim)
        .filter(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let names_port = t.windows(2).any(|w| {
                matches!(w[0], "--dport" | "dport" | "--dports")
                    && w[1].split(',').any(|p| p == port)
            });
            let accepts = t.contains(&"ACCEPT") || t.last() == Some(&"accept");
            let states = conntrack_states(&t);
            names_port
                && accepts
                && states.iter().any(|s| s == "new")
                && !states.iter().any(|s| s == "untracked")
        })
        .map(str::to_string)
        .collect()
}

/// The states a rule matches on, lower-cased: `--state`/`--ctstate A,B` (iptables) or
/// `ct state a` / `ct state { a, b }` (nft).
fn conntrack_states(t: &[&str]) -> Vec<String> {
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.to_ascii_lowercase())
            .collect()
    };
    for (i, w) in t.iter().enumerate() {
        if matches!(*w, "--state" | "--ctstate") {
            return t.get(i + 1).map(|s| list(s)).unwrap_or_default();
        }
        if *w == "ct" && t.get(i + 1) == Some(&"state") {
            return match t.get(i + 2) {
                Some(&"{") => t[i + 3..]
                    .iter()
                    .take_while(|x| **x != "}")
                    .flat_map(|x| list(x))
                    .collect(),
                Some(s) => list(s),
                None => Vec::new(),
            };
        }
    }
    Vec::new()
}

#[allow(clippy::too_many_arguments)]
async fn peers(
    c: &mut Checks,
    nl: &Netlink,
    index: u32,
    mode: Underlay,
    conf: Option<&NetConf>,
    own: Option<&LeaseKey>,
    kube: bool,
    leases: &[StoredLease],
    store_name: &str,
) {
    // Judged as the daemon judges them, so doctor expects exactly what twilld programs.
    let mut table = match conf {
        Some(conf) => match lease_policy(nl, Some(index), conf, own.filter(|_| kube)).await {
            Ok(p) => PeerTable::with_policy(p),
            Err(e) => {
                c.add(
                    "leases",
                    Status::Warn,
                    format!("could not judge the leases: {e:#}"),
                    "",
                );
                PeerTable::new()
            }
        },
        None => PeerTable::new(),
    };
    if let Some(own) = own {
        if let Some(mine) = leases
            .iter()
            .find(|l| l.key == *own)
            .and_then(|l| l.attrs.clone())
        {
            table.set_own(*own, mine);
        }
    }
    table.apply(WatchEvent::Snapshot(leases.to_vec()));
    leases_refused(c, &table, store_name);
    let desired = desired_peers(table.entries());
    let Ok(plan) = plan_peers(nl, index, mode, &desired, None).await else {
        c.add("peers", Status::Warn, "could not read kernel state", "");
        return;
    };
    let (ops, direct) = (&plan.ops, &plan.direct);
    let missing = ops.add_routes.len()
        + ops.add_nexthops.len()
        + ops.add_neighs.len()
        + ops.add_fdb.len()
        + direct.add.len();
    let extra = ops.del_routes.len()
        + ops.del_nexthops.len()
        + ops.del_neighs.len()
        + ops.del_fdb.len()
        + direct.del.len();
    let mut how = Vec::new();
    if let Underlay::Direct(..) = mode {
        how.push(format!("{} by direct route", plan.direct_peers));
    }
    if plan.form == RouteForm::Nexthop {
        how.push("routes by nexthop id".to_string());
    }
    let via = if how.is_empty() {
        String::new()
    } else {
        format!(" ({})", how.join(", "))
    };
    let detail = format!(
        "{} peers in {store_name}{via}; {missing} entries missing, {extra} extra",
        desired.len()
    );
    let hint = "twilld repairs these within --iptables-resync seconds; if they persist, it is not running or can't write (see its log)";
    match (missing, extra) {
        (0, 0) => c.pass("peers", detail),
        (0, _) => c.add("peers", Status::Warn, detail, hint),
        _ => c.add("peers", Status::Fail, detail, hint),
    }
}

/// Names every lease twilld refuses to program (and why): a peer unreachable from here,
/// or someone writing what they should not into the store.
fn leases_refused(c: &mut Checks, table: &PeerTable, store_name: &str) {
    if table.policy().is_none() {
        return;
    }
    let refused: Vec<String> = table
        .rejected()
        .map(|(k, r)| format!("{k} ({}: {r})", r.reason()))
        .collect();
    if refused.is_empty() {
        c.pass(
            "leases",
            format!("every peer lease in {store_name} is usable"),
        );
    } else {
        c.add(
            "leases",
            Status::Warn,
            format!("{} refused, never programmed: {}", refused.len(), refused.join("; ")),
            format!("fix or delete these in {store_name}; twilld counts them in twill_leases_rejected_total"),
        );
    }
}

/// subnet.env's IPv4 lease and the network it is in.
fn v4_lease(env: &SubnetEnv) -> Option<(Ipv4Network, Ipv4Network)> {
    match (env.lease_subnet()?, *env.networks.first()?) {
        (IpNetwork::V4(own), IpNetwork::V4(network)) => Some((own, network)),
        _ => None,
    }
}

/// The MASQUERADE/FORWARD (and notrack) rules as the running twilld keeps them: masquerade
/// as subnet.env says it does, the rest from the flags doctor is given.
async fn rules(
    c: &mut Checks,
    cli: &Cli,
    conf: Option<&NetConf>,
    env: &SubnetEnv,
    local: Option<Ipv4Addr>,
) {
    let (Some((own, network)), Some(conf)) = (v4_lease(env), conf) else {
        return;
    };
    // Masquerade as the running twilld recorded it; the rest from the flags.
    let mut flags = cli.rule_flags();
    flags.ip_masq = env.ipmasq.unwrap_or(flags.ip_masq);
    let opts = flags.options(local.map(|local| VxlanFlows {
        local,
        port: conf.backend.port,
    }));
    let want = RuleSet::new(network, own, &opts);
    let nftables = conf.enable_nftables;
    let found = tokio::task::spawn_blocking(move || {
        if nftables {
            Nftables::drift(&want)
        } else {
            Iptables::new().and_then(|fw| fw.drift(&want))
        }
    })
    .await;
    let tool = if nftables { "nftables" } else { "iptables" };
    let wanted: Vec<&str> = [
        (opts.ip_masq, "masquerade"),
        (opts.forward, "forward"),
        (opts.notrack.is_some(), "vxlan notrack"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect();
    let unchecked = if cli.vxlan_notrack && local.is_none() {
        " (vxlan notrack not checked: no underlay address)"
    } else {
        ""
    };
    match found {
        Ok(Ok(d)) if d.is_empty() => c.pass(
            "rules",
            format!("{tool}: {} rules in place{unchecked}", if wanted.is_empty() { "no".to_string() } else { wanted.join(", ") }),
        ),
        Ok(Ok(d)) => c.add("rules", Status::Fail, format!("{tool}: {}", d.join("; ")),
            "twilld rewrites its rules within --iptables-resync seconds; if this persists it is not running, runs with other flags than doctor was given, or something rewrites the rules after it"),
        Ok(Err(e)) => c.add("rules", Status::Warn, format!("could not read the {tool} rules: {e}"), "run doctor as root"),
        Err(e) => c.add("rules", Status::Warn, format!("rules check: {e}"), ""),
    }
}

/// Our subnet's blackhole route: present with --ip-blackhole-route, and never in
/// flanneld's form, which shadows cni0's route to the local pods.
async fn blackhole(c: &mut Checks, nl: &Netlink, env: &SubnetEnv, want: bool) {
    let Some((own, network)) = v4_lease(env) else {
        return;
    };
    let Ok(found) = nl.blackholes().await else {
        c.add("blackhole route", Status::Warn, "could not read routes", "");
        return;
    };
    let plan = twill_dataplane::blackhole::plan(&found, network, own, want);
    // The kernel refuses a same-metric route while cni0's is there, so one that exists was
    // added first and sits in front of cni0's.
    let flanneld = Blackhole {
        net: own,
        metric: 0,
    };
    let ours = Blackhole {
        net: own,
        metric: BLACKHOLE_METRIC,
    };
    if plan.del.contains(&flanneld) {
        c.add("blackhole route", Status::Fail, format!("route {flanneld} (flanneld's --ip-blackhole-route) shadows cni0's route: local pods are unreachable"),
            format!("twilld replaces it at start; by hand: ip route del blackhole {own} metric 0"));
    } else if plan.add.is_some() {
        c.add("blackhole route", Status::Fail, format!("no blackhole route for {own}"),
            "twilld --ip-blackhole-route adds it within --iptables-resync seconds; is it running with the flag?");
    } else if want {
        c.pass("blackhole route", format!("route {ours}"));
    } else if !plan.del.is_empty() {
        let stale: Vec<String> = plan.del.iter().map(|b| b.to_string()).collect();
        c.add(
            "blackhole route",
            Status::Warn,
            format!(
                "left by an earlier --ip-blackhole-route: {}",
                stale.join(", ")
            ),
            "twilld removes them at start; pass --ip-blackhole-route if it should be kept",
        );
    }
}

async fn other_cnis(c: &mut Checks, nl: &Netlink, env: Option<&SubnetEnv>, args: &Doctor) {
    let mut found = Vec::new();
    if let Ok(ifaces) = nl.interfaces().await {
        for i in &ifaces {
            let n = i.name.as_str();
            if n.starts_with("cali")
                || n.starts_with("cilium_")
                || n.starts_with("weave")
                || n == "vxlan.calico"
                || n.starts_with("kube-bridge")
            {
                found.push(format!("interface {n}"));
            }
            if n == "cni0" {
                let ours = env.and_then(|e| e.lease_subnet());
                let theirs: Vec<String> = i
                    .addrs
                    .iter()
                    .filter(|a| ours.is_none_or(|s: IpNetwork| !s.contains(IpAddr::V4(a.ip))))
                    .map(|a| format!("{}/{}", a.ip, a.prefix))
                    .collect();
                if !theirs.is_empty() && ours.is_some() {
                    found.push(format!("cni0 with {} outside our subnet", theirs.join(",")));
                }
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(&args.cni_conf_dir) {
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".conf") || n.ends_with(".conflist") || n.ends_with(".json"))
            .collect();
        names.sort();
        for n in names.iter().take_while(|n| **n != args.conflist_name) {
            found.push(format!(
                "{} sorts before {} (the runtime uses the first)",
                args.cni_conf_dir.join(n).display(),
                args.conflist_name
            ));
        }
    }
    if found.is_empty() {
        c.pass("other CNIs", "no leftovers of other CNIs found");
    } else {
        c.add("other CNIs", Status::Warn, found.join("; "), "leftovers of a previous CNI can capture pod traffic: remove them (that CNI's uninstall, or ip link del / rm the conflist)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_vxlan_accepted_only_when_new() {
        let iptables = r#"*filter
:INPUT DROP [0:0]
-A INPUT -p udp -m udp --dport 8472 -m conntrack --ctstate NEW -j ACCEPT
-A INPUT -p udp -m udp --dport 8472 -m state --state NEW,UNTRACKED -j ACCEPT
-A INPUT -p udp -m multiport --dports 53,8472 -m state --state NEW -j ACCEPT
-A INPUT -p udp -m udp --dport 84720 -m state --state NEW -j ACCEPT
-A INPUT -p udp -m udp --dport 8472 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 8472 -m state --state NEW -j LOG
COMMIT"#;
        assert_eq!(
            state_gated_accepts(iptables, 8472),
            [
                "-A INPUT -p udp -m udp --dport 8472 -m conntrack --ctstate NEW -j ACCEPT",
                "-A INPUT -p udp -m multiport --dports 53,8472 -m state --state NEW -j ACCEPT",
            ]
        );
        let nft = "table inet filter {\n\tchain input {\n\t\tudp dport 8472 ct state { new, untracked } accept\n\t\tudp dport 8472 ct state new accept\n\t\tudp dport 8472 ct state new,related counter accept\n\t}\n}";
        assert_eq!(
            state_gated_accepts(nft, 8472),
            [
                "udp dport 8472 ct state new accept",
                "udp dport 8472 ct state new,related counter accept"
            ]
        );
        assert!(state_gated_accepts(iptables, 4789).is_empty());
    }
}
