//! MASQUERADE and FORWARD rules: flannel's exact set, in flannel's chains, so a node can
//! switch between flanneld and twilld without rule churn. Plus one thing flannel lacks:
//! the VXLAN packets themselves kept out of conntrack (raw table, our own chains).
//!
//! `RuleSet` is the desired state (pure). A `Firewall` driver makes the kernel match it;
//! each chain's content is compared with `iptables -S` output and, when it differs,
//! rewritten in one `iptables-restore --noflush` transaction, so traffic never sees a
//! half-written chain.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Arc;

use ipnetwork::Ipv4Network;

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
}

/// Our VTEP's end of the tunnel: the underlay address the device sends from and the UDP
/// destination port every VXLAN packet carries, whichever way it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanFlows {
    pub local: Ipv4Addr,
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

/// The pod network, this node's lease and the options: everything a driver needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleIntent {
    pub network: Ipv4Network,
    pub pod_subnet: Ipv4Network,
    pub opts: RuleOptions,
}

impl RuleSet {
    /// `network` is the whole pod network, `pod_subnet` this node's lease.
    pub fn new(network: Ipv4Network, pod_subnet: Ipv4Network, opts: &RuleOptions) -> Self {
        let masq_target = if opts.fully_random {
            "-j MASQUERADE --random-fully"
        } else {
            "-j MASQUERADE"
        };
        let (n, p) = (network, pod_subnet);
        let masq = vec![
            // kube-proxy marks traffic it will masquerade itself.
            format!("-m mark --mark 0x4000/0x4000 {MASQ_COMMENT} -j RETURN"),
            format!("-s {p} -d {n} {MASQ_COMMENT} -j RETURN"),
            format!("-s {n} -d {p} {MASQ_COMMENT} -j RETURN"),
            format!("! -s {n} -d {p} {MASQ_COMMENT} -j RETURN"),
            format!("-s {n} ! -d 224.0.0.0/4 {MASQ_COMMENT} {masq_target}"),
            format!("! -s {n} -d {n} {MASQ_COMMENT} {masq_target}"),
        ];
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
                vec![format!(
                    "{addr} {}/32 -p udp -m udp --dport {} {NOTRACK_COMMENT} -j NOTRACK",
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

    /// The same chains, all absent: what cleanup wants.
    pub fn none() -> Self {
        let opts = RuleOptions {
            ip_masq: false,
            fully_random: false,
            forward: false,
            notrack: None,
        };
        let mut r = RuleSet::new(
            "10.0.0.0/8".parse().expect("literal"),
            "10.0.0.0/24".parse().expect("literal"),
            &opts,
        );
        for c in &mut r.chains {
            c.rules = None;
        }
        r
    }
}

/// One table as `iptables -S` prints it.
#[derive(Debug, Default, PartialEq, Eq)]
struct TableRules {
    chains: std::collections::HashMap<String, Vec<String>>,
}

impl TableRules {
    fn parse(lines: &[String]) -> Self {
        let mut t = TableRules::default();
        for l in lines {
            let mut parts = l.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                // -N CHAIN (user chain) and -P CHAIN POLICY (built-in) declare chains.
                (Some("-N" | "-P"), Some(chain), _) => {
                    t.chains.entry(chain.to_string()).or_default();
                }
                (Some("-A"), Some(chain), Some(rule)) => {
                    t.chains
                        .entry(chain.to_string())
                        .or_default()
                        .push(rule.to_string());
                }
                _ => {}
            }
        }
        t
    }
}

/// What a pass changed; `repairs` counts chains rewritten and jumps (re)placed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RulesReport {
    pub repairs: usize,
    pub changes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("iptables: {0}")]
pub struct FirewallError(pub String);

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

/// Runs `program args` with `input` on its stdin: how both drivers write a whole change in
/// one transaction (`iptables-restore`, `nft -f -`). The error carries the tool's stderr.
pub(crate) fn feed(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {program}: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .map_err(|e| format!("write to {program}: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The iptables driver: reads with the `iptables` crate, writes chain contents with
/// `iptables-restore` for atomicity (the crate has no transaction API).
pub struct Iptables {
    ipt: iptables::IPTables,
    /// iptables-nft (Debian's default) rather than iptables-legacy, whose tables change
    /// without telling anyone.
    nft_backend: bool,
}

impl Iptables {
    pub fn new() -> Result<Self, FirewallError> {
        let ipt = iptables::new(false).map_err(|e| FirewallError(e.to_string()))?;
        let nft_backend = Command::new("iptables")
            .arg("-V")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("nf_tables"));
        Ok(Iptables { ipt, nft_backend })
    }

    fn err(what: &str, e: Box<dyn std::error::Error>) -> FirewallError {
        FirewallError(format!("{what}: {e}"))
    }

    /// Every chain of `table` with its rules (without the `-A CHAIN ` prefix), from one
    /// `iptables -t TABLE -S`: one process per table and pass instead of several per chain,
    /// which is most of a resync's cost. Never `iptables -L` (as the crate's `chain_exists`
    /// does): it resolves every address through DNS and hangs on a node whose resolver is
    /// unreachable or sits behind this very overlay; and iptables rejects `-S` with `-n`.
    fn table(&self, table: &str) -> Result<TableRules, FirewallError> {
        let lines = self
            .ipt
            .list_table(table)
            .map_err(|e| Self::err("list table", e))?;
        Ok(TableRules::parse(&lines))
    }

    /// Brings one table's chains in line with one `iptables-restore --noflush`: the
    /// kernel swaps the table in a single commit, so a misplaced or duplicated jump is
    /// never briefly absent (with a DROP policy, a gap drops pod traffic).
    fn ensure_table(
        &self,
        table: &str,
        chains: &[&ChainSpec],
        report: &mut RulesReport,
    ) -> Result<(), FirewallError> {
        let Some(patch) = TablePatch::of(table, chains, &self.table(table)?) else {
            return Ok(());
        };
        feed("iptables-restore", &["--noflush", "--wait"], &patch.payload)
            .map_err(|e| FirewallError(format!("iptables-restore for table {table}: {e}")))?;
        report.repairs += patch.changes.len();
        report.changes.extend(patch.changes);
        Ok(())
    }
}

/// One table's repair as an `iptables-restore --noflush` input: chain (re)declarations
/// first (declaring an existing user chain flushes it), then jump deletions, rules,
/// jump insertions and chain deletions, all under one COMMIT.
#[derive(Debug, PartialEq, Eq)]
struct TablePatch {
    payload: String,
    /// What it changes, in words: one entry per chain rewritten or jump (re)placed.
    changes: Vec<String>,
}

impl TablePatch {
    /// `None` when the table already matches.
    fn of(table: &str, chains: &[&ChainSpec], t: &TableRules) -> Option<Self> {
        let (mut decl, mut dels, mut body, mut tail, mut changes) =
            (vec![], vec![], vec![], vec![], vec![]);
        for c in chains {
            let d = ChainDrift::of(c, t);
            let exists = t.chains.contains_key(c.chain);
            let drop_jumps = |dels: &mut Vec<String>| {
                for _ in 0..d.jumps {
                    dels.push(format!("-D {} {}", c.parent, c.jump));
                }
            };
            match &c.rules {
                Some(want) => {
                    if d.chain_wrong {
                        decl.push(format!(":{} - [0:0]", c.chain));
                        body.extend(want.iter().map(|r| format!("-A {} {r}", c.chain)));
                        changes.push(format!("rewrote {table}/{}", c.chain));
                    }
                    if d.jump_wrong {
                        drop_jumps(&mut dels);
                        tail.push(if c.jump_first {
                            format!("-I {} 1 {}", c.parent, c.jump)
                        } else {
                            format!("-A {} {}", c.parent, c.jump)
                        });
                        changes.push(format!("placed jump {table}/{} -> {}", c.parent, c.chain));
                    }
                }
                None => {
                    drop_jumps(&mut dels);
                    if exists {
                        decl.push(format!(":{} - [0:0]", c.chain));
                        tail.push(format!("-X {}", c.chain));
                    }
                    if d.jumps > 0 || exists {
                        changes.push(format!("removed {table}/{}", c.chain));
                    }
                }
            }
        }
        if changes.is_empty() {
            return None;
        }
        let mut payload = format!("*{table}\n");
        for l in decl.iter().chain(&dels).chain(&body).chain(&tail) {
            payload.push_str(l);
            payload.push('\n');
        }
        payload.push_str("COMMIT\n");
        Some(TablePatch { payload, changes })
    }
}

/// How one chain and its jump differ from their spec, read from one `iptables -S` table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ChainDrift {
    /// Wanted: the chain is missing or its rules differ. Unwanted: the chain exists.
    chain_wrong: bool,
    /// Jumps from the parent chain to ours.
    jumps: usize,
    /// Wanted: the jump is missing, duplicated or (for `jump_first`) behind a DROP or
    /// REJECT. Unwanted: any jump is left.
    jump_wrong: bool,
    /// The first DROP/REJECT rule of the parent ahead of our jump, if one is.
    shadowed_by: Option<String>,
}

impl ChainDrift {
    fn of(c: &ChainSpec, t: &TableRules) -> Self {
        let current = t.chains.get(c.chain);
        let parent = t
            .chains
            .get(c.parent)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let jumps: Vec<usize> = parent
            .iter()
            .enumerate()
            .filter(|(_, r)| **r == c.jump)
            .map(|(i, _)| i)
            .collect();
        match &c.rules {
            Some(want) => {
                // Only a jump that must come first can be misplaced.
                let shadowed_by = jumps.first().filter(|_| c.jump_first).and_then(|&first| {
                    parent[..first]
                        .iter()
                        .find(|r| r.contains("-j DROP") || r.contains("-j REJECT"))
                        .cloned()
                });
                ChainDrift {
                    chain_wrong: current != Some(want),
                    jumps: jumps.len(),
                    jump_wrong: jumps.len() != 1 || shadowed_by.is_some(),
                    shadowed_by,
                }
            }
            None => ChainDrift {
                chain_wrong: current.is_some(),
                jumps: jumps.len(),
                jump_wrong: !jumps.is_empty(),
                shadowed_by: None,
            },
        }
    }

    /// What is wrong, in words (empty when nothing is).
    fn describe(&self, c: &ChainSpec, t: &TableRules) -> Vec<String> {
        let name = format!("{}/{}", c.table, c.chain);
        let mut out = Vec::new();
        match (&c.rules, t.chains.get(c.chain)) {
            (Some(_), None) if self.chain_wrong => out.push(format!("{name} missing")),
            (Some(want), Some(have)) if self.chain_wrong => {
                let missing = want.iter().filter(|r| !have.contains(r)).count();
                let extra = have.iter().filter(|r| !want.contains(r)).count();
                out.push(format!(
                    "{name} differs ({missing} rules missing, {extra} extra{})",
                    if missing + extra == 0 { ", order" } else { "" }
                ));
            }
            (None, Some(_)) => out.push(format!("{name} present but not wanted")),
            _ => {}
        }
        let jump = format!("jump {}/{} -> {}", c.table, c.parent, c.chain);
        match (&c.rules, self.jumps, &self.shadowed_by) {
            (Some(_), 0, _) => out.push(format!("{jump} missing")),
            (Some(_), 1, Some(r)) => out.push(format!("{jump} comes after \"{r}\"")),
            (Some(_), n, _) if n > 1 => out.push(format!("{jump} present {n} times")),
            (None, n, _) if n > 0 => out.push(format!("{jump} present but not wanted")),
            _ => {}
        }
        out
    }
}

impl Iptables {
    /// How the kernel differs from `rules`, read-only (`twilld doctor`): one line per
    /// problem, none when everything is in place.
    pub fn drift(&self, rules: &RuleSet) -> Result<Vec<String>, FirewallError> {
        let mut out = Vec::new();
        for c in &rules.chains {
            let t = self.table(c.table)?;
            out.extend(ChainDrift::of(c, &t).describe(c, &t));
        }
        Ok(out)
    }

    /// Which of `rules`' chains and jumps exist right now, e.g. "nat/FLANNEL-POSTRTG".
    pub fn present(&self, rules: &RuleSet) -> Result<Vec<String>, FirewallError> {
        let mut out = Vec::new();
        for c in &rules.chains {
            let t = self.table(c.table)?;
            if t.chains.contains_key(c.chain) {
                out.push(format!("{}/{} chain", c.table, c.chain));
            }
            let parent = t.chains.get(c.parent).cloned().unwrap_or_default();
            let n = parent.iter().filter(|r| **r == c.jump).count();
            if n > 0 {
                out.push(format!(
                    "{}/{} jump to {} ({n}x)",
                    c.table, c.parent, c.chain
                ));
            }
        }
        Ok(out)
    }
}

impl Firewall for Iptables {
    fn watch_changes(&self) -> Option<Arc<ChangeFlag>> {
        if !self.nft_backend {
            return None;
        }
        watch_nftables()
            .map_err(|e| tracing::warn!("no nftables monitor ({e}); every pass checks the rules"))
            .ok()
    }

    fn ensure(&self, rules: &RuleSet) -> Result<RulesReport, FirewallError> {
        let mut report = RulesReport::default();
        // Every table is attempted even if one fails, so one broken table doesn't leave
        // the other unrepaired; the first error is returned after.
        let mut first_err = None;
        let mut tables: Vec<&str> = rules.chains.iter().map(|c| c.table).collect();
        tables.dedup();
        for table in tables {
            let chains: Vec<&ChainSpec> =
                rules.chains.iter().filter(|c| c.table == table).collect();
            if let Err(mut e) = self.ensure_table(table, &chains, &mut report) {
                if table == "raw" && chains.iter().any(|c| c.rules.is_some()) {
                    // Only the VXLAN notrack rules live there; a kernel without the raw
                    // table can still run the overlay.
                    e.0.push_str(" (twilld --vxlan-notrack=false does without the raw table)");
                }
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(ip_masq: bool, notrack: bool) -> RuleOptions {
        RuleOptions {
            ip_masq,
            fully_random: true,
            forward: true,
            notrack: notrack.then_some(VxlanFlows {
                local: "198.18.0.7".parse().unwrap(),
                port: 8472,
            }),
        }
    }

    fn rules(opts: &RuleOptions) -> RuleSet {
        RuleSet::new(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.3.0/24".parse().unwrap(),
            opts,
        )
    }

    #[test]
    fn flannel_rule_set() {
        let r = rules(&opts(true, true));
        let masq = r.chains[0].rules.as_ref().unwrap();
        assert_eq!(masq.len(), 6);
        assert_eq!(
            masq[4],
            r#"-s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#
        );
        assert_eq!(
            masq[3],
            r#"! -s 10.244.0.0/16 -d 10.244.3.0/24 -m comment --comment "flanneld masq" -j RETURN"#
        );
        assert_eq!(
            r.chains[1].rules.as_ref().unwrap()[0],
            r#"-s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#
        );
        assert!(r.chains[1].jump_first && !r.chains[0].jump_first);
    }

    #[test]
    fn table_listing_parses_chains_in_order() {
        let lines: Vec<String> = [
            "-P FORWARD ACCEPT",
            "-N FLANNEL-FWD",
            "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD",
            "-A FLANNEL-FWD -s 10.244.0.0/16 -j ACCEPT",
            "-A FLANNEL-FWD -d 10.244.0.0/16 -j ACCEPT",
            "-N EMPTY",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let t = TableRules::parse(&lines);
        assert_eq!(
            t.chains["FLANNEL-FWD"],
            ["-s 10.244.0.0/16 -j ACCEPT", "-d 10.244.0.0/16 -j ACCEPT"]
        );
        assert_eq!(t.chains["FORWARD"].len(), 1);
        assert!(t.chains["EMPTY"].is_empty());
        assert!(!t.chains.contains_key("NOPE"));
    }

    #[test]
    fn vxlan_flows_untracked_both_ways() {
        let r = rules(&opts(true, true));
        let pre = &r.chains[2];
        assert_eq!((pre.table, pre.parent), ("raw", "PREROUTING"));
        assert_eq!(
            pre.rules.as_deref().unwrap(),
            [
                r#"-d 198.18.0.7/32 -p udp -m udp --dport 8472 -m comment --comment "twilld vxlan notrack" -j NOTRACK"#
            ]
        );
        let out = &r.chains[3];
        assert_eq!((out.table, out.parent), ("raw", "OUTPUT"));
        assert_eq!(
            out.rules.as_deref().unwrap(),
            [
                r#"-s 198.18.0.7/32 -p udp -m udp --dport 8472 -m comment --comment "twilld vxlan notrack" -j NOTRACK"#
            ]
        );
        let off = rules(&opts(true, false));
        assert!(off.chains[2].rules.is_none() && off.chains[3].rules.is_none());
        // Turning it off must remove the chains it made, so they are named either way.
        assert_eq!(off.chains[2].chain, pre.chain);
    }

    fn table(lines: &[&str]) -> TableRules {
        let v: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        TableRules::parse(&v)
    }

    fn fwd_lines(spec: &ChainSpec) -> Vec<String> {
        spec.rules
            .as_ref()
            .unwrap()
            .iter()
            .map(|r| format!("-A {FWD_CHAIN} {r}"))
            .collect()
    }

    #[test]
    fn a_table_is_repaired_in_one_transaction() {
        let r = rules(&opts(true, false));
        let fwd = &r.chains[1];
        let jump = format!("-A FORWARD {}", fwd.jump);
        let mut ok = vec![jump.clone(), format!("-N {FWD_CHAIN}")];
        ok.extend(fwd_lines(fwd));
        let t = table(&ok.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(TablePatch::of("filter", &[fwd], &t), None);

        // The jump doubled and behind a DROP, the chain short of a rule: the deletions,
        // the rewrite and the new jump land in one COMMIT, deletions first.
        let body = fwd_lines(fwd);
        let t = table(&[
            "-A FORWARD -j DROP",
            &jump,
            &jump,
            &format!("-N {FWD_CHAIN}"),
            &body[0],
        ]);
        let p = TablePatch::of("filter", &[fwd], &t).unwrap();
        let want = format!(
            "*filter\n:{FWD_CHAIN} - [0:0]\n-D FORWARD {j}\n-D FORWARD {j}\n{b0}\n{b1}\n-I FORWARD 1 {j}\nCOMMIT\n",
            j = fwd.jump,
            b0 = body[0],
            b1 = body[1]
        );
        assert_eq!(p.payload, want);
        assert_eq!(p.payload.matches("COMMIT").count(), 1);
        assert_eq!(p.changes.len(), 2);

        // Unwanted: jump out, chain flushed and deleted, still one transaction.
        let mut off = fwd.clone();
        off.rules = None;
        let t = table(&[&jump, &format!("-N {FWD_CHAIN}"), &body[0]]);
        let p = TablePatch::of("filter", &[&off], &t).unwrap();
        assert_eq!(
            p.payload,
            format!(
                "*filter\n:{FWD_CHAIN} - [0:0]\n-D FORWARD {}\n-X {FWD_CHAIN}\nCOMMIT\n",
                fwd.jump
            )
        );
        assert_eq!(TablePatch::of("filter", &[&off], &table(&[])), None);
    }

    #[test]
    fn drift_of_a_chain_and_its_jump() {
        let r = rules(&opts(true, false));
        let fwd = &r.chains[1];
        let jump = format!("-A FORWARD {}", fwd.jump);
        let body = fwd_lines(fwd);
        let mut lines = vec!["-P FORWARD ACCEPT".to_string(), jump.clone()];
        lines.push(format!("-N {FWD_CHAIN}"));
        lines.extend(body.iter().cloned());
        let t = table(&lines.iter().map(String::as_str).collect::<Vec<_>>());
        let d = ChainDrift::of(fwd, &t);
        assert_eq!(
            d,
            ChainDrift {
                jumps: 1,
                ..Default::default()
            }
        );
        assert!(d.describe(fwd, &t).is_empty());

        // One rule gone, the jump behind a DROP and doubled.
        let t = table(&[
            "-A FORWARD -j DROP",
            &jump,
            &jump,
            &format!("-N {FWD_CHAIN}"),
            &body[0],
        ]);
        let d = ChainDrift::of(fwd, &t);
        assert!(d.chain_wrong && d.jump_wrong && d.jumps == 2);
        assert_eq!(
            d.describe(fwd, &t),
            [
                "filter/FLANNEL-FWD differs (1 rules missing, 0 extra)",
                "jump filter/FORWARD -> FLANNEL-FWD present 2 times",
            ]
        );
        let t = table(&["-A FORWARD -j REJECT", &jump]);
        assert_eq!(
            ChainDrift::of(fwd, &t).describe(fwd, &t),
            [
                "filter/FLANNEL-FWD missing",
                "jump filter/FORWARD -> FLANNEL-FWD comes after \"-j REJECT\"",
            ]
        );
        // The masquerade jump is appended, so a DROP before it is not ours to judge.
        let masq = &r.chains[0];
        let t = table(&[
            "-A POSTROUTING -j DROP",
            &format!("-A POSTROUTING {}", masq.jump),
        ]);
        let d = ChainDrift::of(masq, &t);
        assert!(!d.jump_wrong && d.shadowed_by.is_none());
    }

    #[test]
    fn drift_when_rules_are_unwanted() {
        let off = rules(&opts(false, false));
        let masq = &off.chains[0];
        let t = table(&[
            &format!("-A POSTROUTING {}", masq.jump),
            &format!("-N {MASQ_CHAIN}"),
        ]);
        let d = ChainDrift::of(masq, &t);
        assert!(d.chain_wrong && d.jump_wrong);
        assert_eq!(
            d.describe(masq, &t),
            [
                "nat/FLANNEL-POSTRTG present but not wanted",
                "jump nat/POSTROUTING -> FLANNEL-POSTRTG present but not wanted",
            ]
        );
        assert_eq!(ChainDrift::of(masq, &table(&[])), ChainDrift::default());
    }

    #[test]
    fn masq_off_means_chain_absent() {
        let r = rules(&opts(false, true));
        assert!(r.chains[0].rules.is_none());
        assert!(RuleSet::none().chains.iter().all(|c| c.rules.is_none()));
    }
}
