//! Checks of the host itself: privileges, kernel features, MTUs, the VXLAN port and
//! a firewall in front of it, other CNIs' leftovers.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use twill_config::{NetConf, SubnetEnv, VXLAN_OVERHEAD_V4};
use twill_dataplane::Netlink;

use super::{Checks, Status};

pub(super) fn privileges(c: &mut Checks) {
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

pub(super) type Probes = Vec<(&'static str, Result<(), String>)>;

/// Creates a VXLAN device, a bridge, a NAT chain and an nftables table in a throw-away
/// network namespace: a kernel without the modules fails here, not in production.
pub(super) fn spawn_kernel_probe(raw_table: bool) -> std::thread::JoinHandle<Probes> {
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
pub(super) fn kernel(c: &mut Checks, probe: std::thread::JoinHandle<Probes>, nftables: bool) {
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

pub(super) async fn mtu_chain(
    c: &mut Checks,
    conf: Option<&NetConf>,
    iface: Option<u32>,
    device: Option<u32>,
    env: Option<&SubnetEnv>,
    nl: &Netlink,
) {
    let underlay = conf.and_then(|c| c.backend.mtu).or(iface);
    let host_gw = conf.is_some_and(|c| !c.backend.kind.is_vxlan());
    // host-gw adds no header: pods get the underlay's MTU.
    let overhead = if host_gw { 0 } else { VXLAN_OVERHEAD_V4 };
    let expect = underlay.map(|m| m.saturating_sub(overhead));
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

pub(super) fn vxlan_port(c: &mut Checks, conf: Option<&NetConf>, device_exists: bool) {
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
pub(super) fn vxlan_firewall(c: &mut Checks, port: u16) {
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
pub(super) fn state_gated_accepts(ruleset: &str, port: u16) -> Vec<String> {
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
pub(super) fn conntrack_states(t: &[&str]) -> Vec<String> {
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

/// Leftovers of another CNI that do no harm by themselves but can capture pod traffic.
/// (What breaks pods outright is the `CNI conflicts` check.)
pub(super) async fn other_cnis(c: &mut Checks, nl: &Netlink, env: Option<&SubnetEnv>) {
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
                found.push(format!("interface {n} (ip link del {n})"));
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
    if found.is_empty() {
        c.pass("other CNIs", "no leftovers of other CNIs found");
    } else {
        c.add("other CNIs", Status::Warn, found.join("; "), "leftovers of a previous CNI can capture pod traffic: run that CNI's uninstall, or the command given with each");
    }
}
