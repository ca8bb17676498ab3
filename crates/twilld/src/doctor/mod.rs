//! `twilld doctor`: read-only checks of everything twill needs and everything it made,
//! each a pass/warn/fail line with a hint, for the operator whose pods are stuck.

use std::net::IpAddr;
use std::path::PathBuf;

pub use crate::status::Output;
use clap::Args;
use serde_json::json;
use twill_config::{BackendType, NetConf, SubnetEnv};
use twill_dataplane::netlink::Link;
use twill_dataplane::{ExtIface, Netlink, Underlay};
use twill_store::{Family, LeaseKey};

use crate::options::{NodeOptions, StoreOptions};
use crate::settings::{Facts, Pinned};

mod bgp;
mod conflicts;
mod dataplane;
mod host;
mod policy;
mod store;

use bgp::bgp;
use conflicts::conflicts;
use dataplane::{blackhole, peers, repair_conflicts, rules, PeerPath};
use host::{
    kernel, mtu_chain, other_cnis, privileges, spawn_kernel_probe, vxlan_firewall, vxlan_port,
};
use store::{etcd_checks, kube_checks, StoreView};

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

/// What the checks look at, read once: the node's options, the underlay as twilld would
/// choose it, what the store says, subnet.env and our device.
struct Context<'a> {
    node: &'a NodeOptions,
    nl: Netlink,
    /// The underlay and what twilld's lease would be known by from it (its PublicIP, or
    /// IPv6-only its PublicIPv6).
    underlay: Option<(ExtIface, IpAddr)>,
    store: StoreView,
    env: Option<SubnetEnv>,
    /// Our lease, as subnet.env names it.
    own_key: Option<LeaseKey>,
    device_name: String,
    device: Option<Link>,
}

impl<'a> Context<'a> {
    /// Reads everything, adding the checks that reading makes (underlay, store, config).
    async fn gather(node: &'a NodeOptions, c: &mut Checks) -> anyhow::Result<Self> {
        let nl = Netlink::connect()?;
        let store = match &node.store {
            StoreOptions::Kube(opts) => kube_checks(node, opts, c).await,
            StoreOptions::Etcd(opts) => etcd_checks(node, opts, c).await,
        };
        let ipv6_only = store.conf.as_ref().is_some_and(|c| c.ipv4.is_none());
        let underlay = underlay(c, &nl, node, ipv6_only).await;
        let env = std::fs::read_to_string(&node.subnet_file)
            .ok()
            .and_then(|t| SubnetEnv::parse(&t, &node.subnet_file.display().to_string()).ok());
        let own_key = env
            .as_ref()
            .map(|e| LeaseKey {
                v4: e.lease_subnet(),
                v6: e.lease_subnet6(),
            })
            .filter(|k| k.v4.is_some() || k.v6.is_some());
        let vni = store.conf.as_ref().map(|c| c.backend.vni).unwrap_or(1);
        // The device the checks look at: IPv6-only has only the v6 one.
        let device_name = if ipv6_only {
            format!("flannel-v6.{vni}")
        } else {
            format!("flannel.{vni}")
        };
        let device = nl.link_by_name(&device_name).await.ok().flatten();
        Ok(Context {
            node,
            nl,
            underlay,
            store,
            env,
            own_key,
            device_name,
            device,
        })
    }

    fn conf(&self) -> Option<&NetConf> {
        self.store.conf.as_ref()
    }
}

pub async fn run(node: &NodeOptions, args: &Doctor) -> anyhow::Result<bool> {
    let mut c = Checks::default();
    privileges(&mut c);
    // The probe runs while the other checks do; its verdict waits for the config, which
    // says whether iptables or nftables is the tool that must work.
    let probe = spawn_kernel_probe(node.rules.notrack);
    let kernel_at = c.0.len();
    sysctls(&mut c);
    let cx = Context::gather(node, &mut c).await?;
    let mut verdict = Checks::default();
    kernel(
        &mut verdict,
        probe,
        cx.conf().is_some_and(|c| c.enable_nftables),
    );
    c.0.splice(kernel_at..kernel_at, verdict.0);

    subnet_env(&mut c, &cx);
    let host_gw = cx
        .conf()
        .is_some_and(|c| c.backend.kind == BackendType::HostGw);
    if host_gw {
        host_gw_device(&mut c, &cx);
    } else {
        vxlan_device(&mut c, &cx);
        tx_checksum(&mut c, &cx);
    }
    mtu_chain(
        &mut c,
        cx.conf(),
        cx.underlay.as_ref().map(|(e, _)| e.mtu),
        cx.device.as_ref().map(|d| d.mtu).filter(|_| !host_gw),
        cx.env.as_ref(),
        &cx.nl,
    )
    .await;
    if !host_gw {
        vxlan_port(&mut c, cx.conf(), cx.device.is_some());
    }
    if node.rules.notrack && !host_gw {
        let port = cx
            .conf()
            .map(|c| c.backend.port)
            .unwrap_or(twill_config::DEFAULT_VXLAN_PORT);
        vxlan_firewall(&mut c, port);
    }
    peer_entries(&mut c, &cx).await;
    overlay(&mut c, node).await;
    if let Some(env) = &cx.env {
        let local = cx.underlay.as_ref().and_then(|(e, _)| e.addr);
        let local6 = cx.underlay.as_ref().and_then(|(e, _)| e.addr6);
        let mut flags = node.rules;
        // No VXLAN packets to keep out of conntrack.
        flags.notrack &= !host_gw;
        rules(
            &mut c,
            flags,
            &node.no_masq_cidr,
            cx.conf(),
            env,
            local,
            local6,
        )
        .await;
        blackhole(&mut c, &cx.nl, env, node.ip_blackhole_route).await;
    }
    repair_conflicts(&mut c, &node.subnet_file);
    if let (Some(conf), Some(opts)) = (cx.conf(), &cx.store.bgp) {
        bgp(&mut c, conf, opts, cx.own_key.as_ref()).await;
    }
    if let StoreOptions::Kube(opts) = &node.store {
        policy::network_policy(&mut c, opts).await;
    }
    conflicts(&mut c, &cx.nl, cx.conf(), args).await;
    other_cnis(&mut c, &cx.nl, cx.env.as_ref()).await;
    report(&c, args.output)
}

fn sysctls(c: &mut Checks) {
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
}

async fn underlay(
    c: &mut Checks,
    nl: &Netlink,
    node: &NodeOptions,
    ipv6_only: bool,
) -> Option<(ExtIface, IpAddr)> {
    match twill_dataplane::select_underlay(nl, &node.iface, ipv6_only).await {
        Ok(e) => {
            // What the daemon's lease is known by, derived as the daemon derives it.
            let pinned = Pinned {
                v4: node.public_ip,
                v6: None,
            };
            let public = Facts::new(e.clone(), pinned, ipv6_only).node_ip();
            c.pass(
                "underlay",
                format!("{e} (mtu {}), public IP {public}", e.mtu),
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
    }
}

/// subnet.env names a lease the store holds for this node. In Kubernetes mode our lease is
/// our node's: what it publishes as public-ip (maybe a public-ip-overwrite) is what the
/// lease must carry, not the interface address.
fn subnet_env(c: &mut Checks, cx: &Context<'_>) {
    let store_name = cx.node.store.name();
    let published = cx.store.published_ip;
    match (&cx.env, &cx.own_key, &cx.store.leases, &cx.underlay) {
        (None, ..) => c.add("subnet.env", Status::Fail, format!("{} missing or unreadable", cx.node.subnet_file.display()),
            "twilld writes it once it holds a lease; until then pods stay in ContainerCreating. Is twilld running? Look at its log"),
        (Some(_), Some(k), Some(l), Some((_, public))) => match l.iter().find(|x| x.key == *k) {
            Some(x) if x.attrs.as_ref().is_some_and(|a| a.node_ip() == published.unwrap_or(*public)) => c.pass("subnet.env", format!("{k} matches our lease in {store_name}")),
            Some(x) => c.add("subnet.env", Status::Fail, format!("lease {k} belongs to {:?}", x.attrs.as_ref().map(|a| a.node_ip())),
                "another node holds this subnet: stop twilld, remove subnet.env, start twilld"),
            None => c.add("subnet.env", Status::Fail, format!("{k} is not leased in {store_name}"), "twilld re-acquires a lost lease; is it running?"),
        },
        (Some(_), ..) => c.add("subnet.env", Status::Warn, "present, but the lease could not be checked", format!("see the {store_name} and underlay checks")),
    }
}

/// Whether every peer answers over the overlay, as the running daemon's probes found (it
/// is asked over its control socket: doctor does not probe on its own).
async fn overlay(c: &mut Checks, node: &NodeOptions) {
    let st = match crate::status::fetch(node).await {
        Ok(st) => st,
        Err(e) => return c.add(
            "overlay",
            Status::Warn,
            format!("{e:#}"),
            "the overlay check asks the running twilld; run doctor with the daemon's --subnet-file",
        ),
    };
    let Some(peers) = st.probes else {
        return c.add(
            "overlay",
            Status::Warn,
            "twilld does not probe its peers (--peer-probe-interval=0)",
            "give twilld a --peer-probe-interval to know whether packets get through",
        );
    };
    let ok = peers.iter().filter(|p| p.verdict == "ok").count();
    let pending = peers.iter().filter(|p| p.verdict == "unknown").count();
    let failing: Vec<&crate::status::PeerProbe> = peers.iter().filter(|p| p.failing()).collect();
    let waiting = if pending > 0 {
        format!(" ({pending} not probed yet)")
    } else {
        String::new()
    };
    if failing.is_empty() {
        return c.pass(
            "overlay",
            format!(
                "{ok}/{} peers answer over the overlay{waiting}",
                peers.len()
            ),
        );
    }
    let bad: Vec<String> = failing
        .iter()
        .map(|p| format!("{} {}", p.peer, p.verdict))
        .collect();
    let fixes: Vec<String> = failing.iter().map(|p| p.fix.clone()).collect();
    c.add(
        "overlay",
        Status::Fail,
        format!(
            "{ok}/{} peers answer over the overlay; {}",
            peers.len(),
            bad.join(", ")
        ),
        fixes.join("; "),
    );
}

/// host-gw has no device; one of ours still there is the vxlan backend's, left behind.
fn host_gw_device(c: &mut Checks, cx: &Context<'_>) {
    let iface = cx
        .underlay
        .as_ref()
        .map_or("the underlay", |(e, _)| e.name.as_str());
    match &cx.device {
        None => c.pass(
            "backend",
            format!("host-gw: no VXLAN device, peers routed on {iface}"),
        ),
        Some(_) => c.add(
            "backend",
            Status::Warn,
            format!(
                "host-gw, but {} (the vxlan backend's device) is still there",
                cx.device_name
            ),
            format!(
                "twilld removes it when it starts with host-gw; by hand: ip link del {}",
                cx.device_name
            ),
        ),
    }
}

/// The device's transmit checksum offload against what twilld keeps it at.
fn tx_checksum(c: &mut Checks, cx: &Context<'_>) {
    use twill_dataplane::offload;
    if cx.device.is_none() {
        return;
    }
    let name = &cx.device_name;
    let driver = cx
        .underlay
        .as_ref()
        .and_then(|(e, _)| offload::driver(&e.name).ok());
    let (want, why) = offload::decide(
        cx.node.tx_checksum,
        offload::kernel_version(),
        driver.as_deref(),
    );
    let word = |on: bool| if on { "on" } else { "off" };
    match offload::tx_checksum(name) {
        Ok(on) if on == want => c.pass(
            "tx checksum offload",
            format!("{name}: {} ({why})", word(on)),
        ),
        Ok(on) => c.add(
            "tx checksum offload",
            Status::Warn,
            format!("{name}: {}, twilld keeps it {} ({why})", word(on), word(want)),
            "twilld sets it back within a resync; if this persists it runs with another --vxlan-tx-checksum-offload than doctor was given",
        ),
        Err(e) => c.add(
            "tx checksum offload",
            Status::Warn,
            format!("{name}: could not read it: {e}"),
            "run doctor as root",
        ),
    }
}

fn vxlan_device(c: &mut Checks, cx: &Context<'_>) {
    let name = &cx.device_name;
    match &cx.device {
        Some(d) if d.up => c.pass(
            "vxlan device",
            format!(
                "{name} up, mac {}",
                d.mac.map(|m| m.to_string()).unwrap_or_default()
            ),
        ),
        Some(_) => c.add(
            "vxlan device",
            Status::Fail,
            format!("{name} is down"),
            "twilld brings it up at the next resync; is it running?",
        ),
        None => c.add(
            "vxlan device",
            Status::Fail,
            format!("{name} does not exist"),
            "twilld creates it at start and within one resync after a deletion; is it running?",
        ),
    }
}

/// Every peer's entries on our devices (and direct routes where twilld keeps them: with
/// DirectRouting), or under host-gw its routes on the underlay; per family.
async fn peer_entries(c: &mut Checks, cx: &Context<'_>) {
    let (Some(l), Some(conf)) = (&cx.store.leases, cx.conf()) else {
        return;
    };
    let underlay = cx.underlay.as_ref().map(|(e, _)| e.index);
    let host_gw = conf.backend.kind == BackendType::HostGw;
    let networks = [
        (Family::V4, conf.network4().map(ipnetwork::IpNetwork::V4)),
        (Family::V6, conf.network6().map(ipnetwork::IpNetwork::V6)),
    ];
    let mut paths = Vec::new();
    for (family, network) in networks {
        let Some(network) = network else {
            continue;
        };
        if host_gw {
            if let Some(u) = underlay {
                paths.push((
                    family,
                    PeerPath::HostGw {
                        underlay: u,
                        network,
                    },
                ));
            }
            continue;
        }
        let device = match family {
            Family::V4 => cx.device.clone(),
            Family::V6 => {
                let name = format!("flannel-v6.{}", conf.backend.vni);
                cx.nl.link_by_name(&name).await.ok().flatten()
            }
        };
        let Some(d) = device else {
            continue;
        };
        let mode = match underlay {
            Some(u) if conf.backend.direct_routing => Underlay::Direct(u, network),
            _ => Underlay::Skip,
        };
        paths.push((
            family,
            PeerPath::Vxlan {
                device: d.index,
                mode,
            },
        ));
    }
    if paths.is_empty() {
        return;
    }
    peers(
        c,
        &cx.nl,
        &paths,
        underlay,
        Some(conf),
        cx.own_key.as_ref(),
        matches!(cx.node.store, StoreOptions::Kube(_)),
        l,
        cx.node.store.name(),
    )
    .await;
}

fn report(c: &Checks, output: Output) -> anyhow::Result<bool> {
    let ok = !c.0.iter().any(|x| x.status == Status::Fail);
    match output {
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

#[cfg(test)]
mod tests {
    use super::host::state_gated_accepts;

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
