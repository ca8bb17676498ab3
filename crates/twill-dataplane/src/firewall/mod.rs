//! MASQUERADE and FORWARD rules: flannel's exact set, in flannel's chains, so a node can
//! switch between flanneld and twilld without rule churn. Plus one thing flannel lacks:
//! the VXLAN packets themselves kept out of conntrack (raw table, our own chains).
//!
//! `RuleSet` is the desired state (pure). A `Firewall` driver makes the kernel match it:
//! `Iptables` (flannel's chains, each table repaired in one `iptables-restore --noflush`
//! commit) or `Nftables` (flannel's `ip flannel-ipv4` table, replaced in one `nft -f`).
//! Errors name the tool that failed and keep its own error as the source.

mod iptables;
mod nftables;
pub mod policy;

pub use iptables::Iptables;
pub use nftables::{nft_script, nft_table, remove_table, Nftables, NFT_TABLE, NFT_TABLE6};

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;

use ipnetwork::IpNetwork;

use crate::change::ChangeFlag;

pub const MASQ_CHAIN: &str = "FLANNEL-POSTRTG";
pub const FWD_CHAIN: &str = "FLANNEL-FWD";
pub const NOTRACK_IN_CHAIN: &str = "TWILL-NOTRACK-PRE";
pub const NOTRACK_OUT_CHAIN: &str = "TWILL-NOTRACK-OUT";
const MASQ_COMMENT: &str = r#"-m comment --comment "flanneld masq""#;
const FWD_COMMENT: &str = r#"-m comment --comment "flanneld forward""#;
const NOTRACK_COMMENT: &str = r#"-m comment --comment "twilld vxlan notrack""#;

/// Which rules the node wants besides the pod network itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOptions {
    pub ip_masq: bool,
    /// `--random-fully` on the MASQUERADE rules.
    pub fully_random: bool,
    pub forward: bool,
    /// Keep the VXLAN flows to and from this VTEP out of conntrack.
    pub notrack: Option<VxlanFlows>,
    /// Networks our pods and theirs reach each other without NAT (NonMasqueradeCIDRs,
    /// --no-masq-cidr), either family: RETURNs both ways ahead of the MASQUERADE rules of
    /// the same family.
    pub no_masq: Vec<IpNetwork>,
}

/// The rule flags as the operator gives them (`--ip-masq`, `--ip-masq-fully-random-disable`
/// inverted, `--iptables-forward-rules`, `--vxlan-notrack`). The daemon and doctor both go
/// from these to `RuleOptions` through `options`, so they never disagree on the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleFlags {
    pub ip_masq: bool,
    pub fully_random: bool,
    pub forward: bool,
    pub notrack: bool,
}

impl RuleFlags {
    /// The options for a VTEP at `vtep`; the notrack rules need it, and are left out
    /// without one (doctor on a node whose underlay it could not find). `no_masq` are the
    /// destinations exempt from masquerading.
    pub fn options(&self, vtep: Option<VxlanFlows>, no_masq: &[IpNetwork]) -> RuleOptions {
        RuleOptions {
            ip_masq: self.ip_masq,
            fully_random: self.fully_random,
            forward: self.forward,
            notrack: vtep.filter(|_| self.notrack),
            no_masq: no_masq.to_vec(),
        }
    }
}

/// Our VTEP's end of the tunnel: the underlay address the device sends from and the UDP
/// destination port every VXLAN packet carries, whichever way it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanFlows {
    /// Of the family of the rules it goes into: an IPv6 VTEP's flows in the IPv6 set.
    pub local: IpAddr,
    pub port: u16,
}

/// One of our chains, the built-in chain that jumps to it, and its rules, all spelled
/// exactly as `iptables -S` prints them (that is what makes comparison exact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub table: &'static str,
    pub chain: &'static str,
    pub parent: &'static str,
    pub jump: String,
    /// Insert the jump first in `parent` and keep it ahead of any DROP/REJECT there
    /// (flannel appends, and a distro's FORWARD DROP then shadows it: flannel #2116).
    pub jump_first: bool,
    /// `None`: the chain and its jump must not exist.
    pub rules: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// What the rules are made from: the nftables driver renders its table from this.
    pub intent: RuleIntent,
    /// The iptables rendering.
    pub chains: Vec<ChainSpec>,
}

/// The pod network, this node's lease and the options: everything a driver needs. One
/// family per intent: an IPv6 pod network gets its own (ip6tables, `ip6 flannel-ipv6`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleIntent {
    pub network: IpNetwork,
    pub pod_subnet: IpNetwork,
    pub opts: RuleOptions,
}

impl RuleIntent {
    pub fn v6(&self) -> bool {
        self.network.is_ipv6()
    }

    /// The exempt networks of this intent's family.
    pub fn no_masq(&self) -> impl Iterator<Item = &IpNetwork> {
        let v6 = self.v6();
        self.opts.no_masq.iter().filter(move |n| n.is_ipv6() == v6)
    }
}

impl RuleSet {
    /// `network` is the whole pod network, `pod_subnet` this node's lease, both of one
    /// family. The IPv6 set is flannel's with `ff00::/8` for multicast; VXLAN notrack rules
    /// go into the set of the VTEP's family (an IPv6 overlay over an IPv6 underlay).
    pub fn new(network: IpNetwork, pod_subnet: IpNetwork, opts: &RuleOptions) -> Self {
        let v6 = network.is_ipv6();
        let multicast = if v6 { "ff00::/8" } else { "224.0.0.0/4" };
        let mut opts = opts.clone();
        opts.notrack = opts.notrack.filter(|f| f.local.is_ipv6() == v6);
        let opts = &opts;
        let masq_target = if opts.fully_random {
            "-j MASQUERADE --random-fully"
        } else {
            "-j MASQUERADE"
        };
        let (n, p) = (network, pod_subnet);
        let mut masq = vec![
            // kube-proxy marks traffic it will masquerade itself.
            format!("-m mark --mark 0x4000/0x4000 {MASQ_COMMENT} -j RETURN"),
            format!("-s {p} -d {n} {MASQ_COMMENT} -j RETURN"),
            format!("-s {n} -d {p} {MASQ_COMMENT} -j RETURN"),
            format!("! -s {n} -d {p} {MASQ_COMMENT} -j RETURN"),
        ];
        // A second pod network (the CNI being migrated to) and ours see each other's own
        // addresses, both ways: ours going out, and its traffic that this node forwards
        // into the overlay (which flannel's `! -s <network> -d <network>` would NAT).
        let same_family = opts.no_masq.iter().filter(|c| c.is_ipv6() == v6);
        masq.extend(same_family.flat_map(|c| {
            [
                format!("-s {n} -d {c} {MASQ_COMMENT} -j RETURN"),
                format!("-s {c} -d {n} {MASQ_COMMENT} -j RETURN"),
            ]
        }));
        masq.extend([
            format!("-s {n} ! -d {multicast} {MASQ_COMMENT} {masq_target}"),
            format!("! -s {n} -d {n} {MASQ_COMMENT} {masq_target}"),
        ]);
        let fwd = vec![
            format!("-s {n} {FWD_COMMENT} -j ACCEPT"),
            format!("-d {n} {FWD_COMMENT} -j ACCEPT"),
        ];
        // A VXLAN "connection" never sees a reply (both directions use the destination
        // port, from per-flow source ports), so conntrack only fills up with UNREPLIED
        // entries for it and costs a lookup on every packet, twice per node (Calico and
        // OpenShift SDN untrack theirs too). The inner packets stay tracked: kube-proxy's
        // NAT and our MASQUERADE need them.
        let notrack = |addr: &str| {
            opts.notrack.map(|f| {
                let host = if v6 { 128 } else { 32 };
                vec![format!(
                    "{addr} {}/{host} -p udp -m udp --dport {} {NOTRACK_COMMENT} -j NOTRACK",
                    f.local, f.port
                )]
            })
        };
        RuleSet {
            intent: RuleIntent {
                network,
                pod_subnet,
                opts: opts.clone(),
            },
            chains: vec![
                ChainSpec {
                    table: "nat",
                    chain: MASQ_CHAIN,
                    parent: "POSTROUTING",
                    jump: format!("{MASQ_COMMENT} -j {MASQ_CHAIN}"),
                    jump_first: false,
                    rules: opts.ip_masq.then_some(masq),
                },
                ChainSpec {
                    table: "filter",
                    chain: FWD_CHAIN,
                    parent: "FORWARD",
                    jump: format!("{FWD_COMMENT} -j {FWD_CHAIN}"),
                    jump_first: true,
                    rules: opts.forward.then_some(fwd),
                },
                ChainSpec {
                    table: "raw",
                    chain: NOTRACK_IN_CHAIN,
                    parent: "PREROUTING",
                    jump: format!("{NOTRACK_COMMENT} -j {NOTRACK_IN_CHAIN}"),
                    jump_first: false,
                    rules: notrack("-d"),
                },
                ChainSpec {
                    table: "raw",
                    chain: NOTRACK_OUT_CHAIN,
                    parent: "OUTPUT",
                    jump: format!("{NOTRACK_COMMENT} -j {NOTRACK_OUT_CHAIN}"),
                    jump_first: false,
                    rules: notrack("-s"),
                },
            ],
        }
    }

    /// The chains of one family, all absent: what cleanup and a switch of mode want.
    pub fn none_of(v6: bool) -> Self {
        let opts = RuleOptions {
            ip_masq: false,
            fully_random: false,
            forward: false,
            notrack: None,
            no_masq: Vec::new(),
        };
        let (net, pod) = if v6 {
            ("fd00::/8", "fd00::/64")
        } else {
            ("10.0.0.0/8", "10.0.0.0/24")
        };
        let mut r = RuleSet::new(
            net.parse().expect("literal"),
            pod.parse().expect("literal"),
            &opts,
        );
        for c in &mut r.chains {
            c.rules = None;
        }
        r
    }
}

/// What a pass changed; `repairs` counts chains rewritten and jumps (re)placed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RulesReport {
    pub repairs: usize,
    pub changes: Vec<String>,
}

/// What went wrong writing or reading rules, naming the tool (`iptables-restore`, `nft`,
/// ...) and keeping its own error.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The tool could not be started or talked to.
    #[error("{tool}: {what}: {source}")]
    Run {
        tool: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The tool ran and refused; `stderr` is what it said.
    #[error("{tool}: {what}: {stderr}{}", hint_text(*.hint))]
    Refused {
        tool: &'static str,
        what: String,
        stderr: String,
        hint: Option<&'static str>,
    },
    /// The `iptables` crate failed reading a table.
    #[error("iptables: {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The blocking task running the tools died.
    #[error("rules task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Several tables failed; every one is reported.
    #[error("{}", join(.0))]
    Several(Vec<FirewallError>),
}

fn hint_text(hint: Option<&'static str>) -> String {
    hint.map(|h| format!(" ({h})")).unwrap_or_default()
}

fn join(errors: &[FirewallError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl FirewallError {
    /// One error from the failures of a pass, `None` when there were none.
    pub fn all(mut errors: Vec<FirewallError>) -> Option<FirewallError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(FirewallError::Several(errors)),
        }
    }

    /// The same error with a hint on what to do about it.
    pub fn with_hint(self, h: &'static str) -> Self {
        match self {
            FirewallError::Refused {
                tool, what, stderr, ..
            } => FirewallError::Refused {
                tool,
                what,
                stderr,
                hint: Some(h),
            },
            other => other,
        }
    }
}

/// A replaceable rule backend: `Iptables`, or `Nftables` (net-conf.json EnableNFTables).
pub trait Firewall: Send + Sync {
    /// Makes the kernel match `rules`. Idempotent; blocking (runs the iptables tools).
    fn ensure(&self, rules: &RuleSet) -> Result<RulesReport, FirewallError>;

    /// A flag raised whenever the kernel's ruleset may have changed, if this driver can
    /// watch it; without one every periodic pass checks the rules.
    fn watch_changes(&self) -> Option<Arc<ChangeFlag>> {
        None
    }
}

/// Raises a flag on every nftables ruleset change: iptables-nft writes through nftables,
/// so this sees `iptables -F`, a firewalld reload and our own writes alike. A plain
/// blocking thread: the socket is quiet almost always and needs no runtime.
pub(crate) fn watch_nftables() -> std::io::Result<Arc<ChangeFlag>> {
    use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
    // NFNLGRP_NFTABLES in linux/netfilter/nfnetlink.h.
    const NFNLGRP_NFTABLES: u32 = 7;
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.add_membership(NFNLGRP_NFTABLES)?;
    let flag = Arc::new(ChangeFlag::default());
    let raised = flag.clone();
    std::thread::Builder::new()
        .name("nft-monitor".into())
        .spawn(move || loop {
            match sock.recv_from_full() {
                Ok(_) => raised.mark(),
                // The socket overflowed: something changed, we don't know what.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => raised.mark(),
                Err(e) => {
                    tracing::warn!("nftables monitor stopped ({e}); every pass checks the rules");
                    raised.mark_broken();
                    return;
                }
            }
        })?;
    Ok(flag)
}

/// `nft <args>`'s output, `None` when what it lists does not exist. `what` says what it
/// was for.
pub(crate) fn nft_read(args: &[&str], what: &str) -> Result<Option<String>, FirewallError> {
    let out = Command::new("nft")
        .args(args)
        .output()
        .map_err(|source| FirewallError::Run {
            tool: "nft",
            what: what.into(),
            source,
        })?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") {
        return Ok(None);
    }
    Err(FirewallError::Refused {
        tool: "nft",
        what: what.into(),
        stderr: err.trim().to_string(),
        hint: None,
    })
}

/// Runs `tool args` with `input` on its stdin: how both drivers write a whole change in
/// one transaction (`iptables-restore`, `nft -f -`). `what` says what it was for.
pub(crate) fn feed(
    tool: &'static str,
    args: &[&str],
    input: &str,
    what: &str,
) -> Result<(), FirewallError> {
    let run = |source| FirewallError::Run {
        tool,
        what: what.to_string(),
        source,
    };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(run)?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .map_err(run)?;
    let out = child.wait_with_output().map_err(run)?;
    if !out.status.success() {
        return Err(FirewallError::Refused {
            tool,
            what: what.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            hint: None,
        });
    }
    Ok(())
}
