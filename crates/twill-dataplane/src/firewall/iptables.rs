//! The iptables driver: flannel's chains, read with the `iptables` crate and written with
//! `iptables-restore --noflush`, one commit per table (the crate has no transaction API).

use std::process::Command;
use std::sync::Arc;

use super::{feed, watch_nftables, ChainSpec, Firewall, FirewallError, RuleSet, RulesReport};
use crate::change::ChangeFlag;

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

/// The iptables driver: reads with the `iptables` crate, writes chain contents with
/// `iptables-restore` for atomicity (the crate has no transaction API).
pub struct Iptables {
    ipt: iptables::IPTables,
    /// ip6tables, for an IPv6 pod network's rules; opened when first needed, so a host
    /// without ip6tables runs an IPv4-only network as before.
    ipt6: std::sync::OnceLock<Result<iptables::IPTables, String>>,
    /// iptables-nft (Debian's default) rather than iptables-legacy, whose tables change
    /// without telling anyone.
    nft_backend: bool,
}

impl Iptables {
    pub fn new() -> Result<Self, FirewallError> {
        let ipt = iptables::new(false).map_err(|e| Self::err("open", e))?;
        let nft_backend = Command::new("iptables")
            .arg("-V")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("nf_tables"));
        Ok(Iptables {
            ipt,
            ipt6: std::sync::OnceLock::new(),
            nft_backend,
        })
    }

    fn family(&self, v6: bool) -> Result<&iptables::IPTables, FirewallError> {
        if !v6 {
            return Ok(&self.ipt);
        }
        self.ipt6
            .get_or_init(|| iptables::new(true).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| FirewallError::Read {
                what: "open ip6tables".into(),
                source: e.clone().into(),
            })
    }

    /// The crate's errors are not `Send`; their text is what survives.
    fn err(what: &str, e: Box<dyn std::error::Error>) -> FirewallError {
        FirewallError::Read {
            what: what.to_string(),
            source: e.to_string().into(),
        }
    }

    /// Every chain of `table` with its rules (without the `-A CHAIN ` prefix), from one
    /// `iptables -t TABLE -S`: one process per table and pass instead of several per chain,
    /// which is most of a resync's cost. Never `iptables -L` (as the crate's `chain_exists`
    /// does): it resolves every address through DNS and hangs on a node whose resolver is
    /// unreachable or sits behind this very overlay; and iptables rejects `-S` with `-n`.
    fn table(&self, v6: bool, table: &str) -> Result<TableRules, FirewallError> {
        let lines = self
            .family(v6)?
            .list_table(table)
            .map_err(|e| Self::err("list table", e))?;
        Ok(TableRules::parse(&lines))
    }

    /// Brings one table's chains in line with one `iptables-restore --noflush`: the
    /// kernel swaps the table in a single commit, so a misplaced or duplicated jump is
    /// never briefly absent (with a DROP policy, a gap drops pod traffic).
    fn ensure_table(
        &self,
        v6: bool,
        table: &str,
        chains: &[&ChainSpec],
        report: &mut RulesReport,
    ) -> Result<(), FirewallError> {
        let Some(patch) = TablePatch::of(table, chains, &self.table(v6, table)?) else {
            return Ok(());
        };
        let (tool, label) = if v6 {
            ("ip6tables-restore", "ip6 ")
        } else {
            ("iptables-restore", "")
        };
        feed(
            tool,
            &["--noflush", "--wait"],
            &patch.payload,
            &format!("table {table}"),
        )?;
        report.repairs += patch.changes.len();
        report
            .changes
            .extend(patch.changes.into_iter().map(|c| format!("{label}{c}")));
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
        let v6 = rules.intent.v6();
        for c in &rules.chains {
            let t = self.table(v6, c.table)?;
            out.extend(ChainDrift::of(c, &t).describe(c, &t));
        }
        Ok(out)
    }

    /// Which of `rules`' chains and jumps exist right now, e.g. "nat/FLANNEL-POSTRTG".
    pub fn present(&self, rules: &RuleSet) -> Result<Vec<String>, FirewallError> {
        let mut out = Vec::new();
        let v6 = rules.intent.v6();
        let fam = if v6 { "ip6 " } else { "" };
        for c in &rules.chains {
            let t = match self.table(v6, c.table) {
                Ok(t) => t,
                // No ip6tables (or its table): nothing of ours there either.
                Err(_) if v6 => continue,
                Err(e) => return Err(e),
            };
            if t.chains.contains_key(c.chain) {
                out.push(format!("{fam}{}/{} chain", c.table, c.chain));
            }
            let parent = t.chains.get(c.parent).cloned().unwrap_or_default();
            let n = parent.iter().filter(|r| **r == c.jump).count();
            if n > 0 {
                out.push(format!(
                    "{fam}{}/{} jump to {} ({n}x)",
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
        // the other unrepaired; every failure is reported.
        let mut errors = Vec::new();
        let mut tables: Vec<&str> = rules.chains.iter().map(|c| c.table).collect();
        tables.dedup();
        for table in tables {
            let chains: Vec<&ChainSpec> =
                rules.chains.iter().filter(|c| c.table == table).collect();
            if let Err(e) = self.ensure_table(rules.intent.v6(), table, &chains, &mut report) {
                // Only the VXLAN notrack rules live in raw; a kernel without the raw table
                // can still run the overlay.
                let raw = table == "raw" && chains.iter().any(|c| c.rules.is_some());
                errors.push(if raw {
                    e.with_hint("twilld --vxlan-notrack=false does without the raw table")
                } else {
                    e
                });
            }
        }
        match FirewallError::all(errors) {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{RuleOptions, VxlanFlows, FWD_CHAIN, MASQ_CHAIN};
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
            no_masq: Vec::new(),
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

    /// NonMasqueradeCIDRs: a RETURN per destination, after flannel's RETURNs and before
    /// any MASQUERADE.
    #[test]
    fn non_masquerade_destinations_return_before_masquerading() {
        let mut o = opts(true, false);
        o.no_masq = vec![
            "172.20.0.0/16".parse().unwrap(),
            "192.0.2.0/24".parse().unwrap(),
        ];
        let r = rules(&o);
        let masq = r.chains[0].rules.as_ref().unwrap();
        let at = |needle: &str| masq.iter().position(|l| l.contains(needle)).unwrap();
        let first_masq = at("MASQUERADE");
        for c in ["172.20.0.0/16", "192.0.2.0/24"] {
            let i = at(&format!("-d {c} "));
            assert_eq!(
                masq[i],
                format!(
                    r#"-s 10.244.0.0/16 -d {c} -m comment --comment "flanneld masq" -j RETURN"#
                )
            );
            assert!(
                i > at("! -s 10.244.0.0/16 -d 10.244.3.0/24") && i < first_masq,
                "{masq:?}"
            );
            // And their traffic into the overlay keeps its source too.
            assert!(
                at(&format!("-s {c} -d 10.244.0.0/16 ")) < first_masq,
                "{masq:?}"
            );
        }
        assert_eq!(masq.len(), 10);
    }

    /// flannel's IPv6 set: the same chains with ff00::/8 for multicast, no VXLAN notrack
    /// for an IPv4 VTEP, and only the IPv6 exemptions.
    #[test]
    fn ipv6_rule_set_is_flannels() {
        let mut o = opts(true, true);
        o.no_masq = vec![
            "172.20.0.0/16".parse().unwrap(),
            "fd00:20::/56".parse().unwrap(),
        ];
        let r = RuleSet::new(
            "fd00:10:244::/56".parse().unwrap(),
            "fd00:10:244:3::/64".parse().unwrap(),
            &o,
        );
        assert!(r.intent.v6());
        let masq = r.chains[0].rules.as_ref().unwrap();
        let c = r#"-m comment --comment "flanneld masq""#;
        assert_eq!(
            masq,
            &vec![
                format!("-m mark --mark 0x4000/0x4000 {c} -j RETURN"),
                format!("-s fd00:10:244:3::/64 -d fd00:10:244::/56 {c} -j RETURN"),
                format!("-s fd00:10:244::/56 -d fd00:10:244:3::/64 {c} -j RETURN"),
                format!("! -s fd00:10:244::/56 -d fd00:10:244:3::/64 {c} -j RETURN"),
                format!("-s fd00:10:244::/56 -d fd00:20::/56 {c} -j RETURN"),
                format!("-s fd00:20::/56 -d fd00:10:244::/56 {c} -j RETURN"),
                format!("-s fd00:10:244::/56 ! -d ff00::/8 {c} -j MASQUERADE --random-fully"),
                format!(
                    "! -s fd00:10:244::/56 -d fd00:10:244::/56 {c} -j MASQUERADE --random-fully"
                ),
            ]
        );
        assert!(
            r.chains[2].rules.is_none() && r.chains[3].rules.is_none(),
            "no notrack"
        );
        // An IPv6 VTEP's flows go into the IPv6 set, as /128.
        o.notrack = Some(VxlanFlows {
            local: "2001:2::7".parse().unwrap(),
            port: 8472,
        });
        let r = RuleSet::new(
            "fd00:10:244::/56".parse().unwrap(),
            "fd00:10:244:3::/64".parse().unwrap(),
            &o,
        );
        assert_eq!(
            r.chains[2].rules.as_deref().unwrap(),
            [
                r#"-d 2001:2::7/128 -p udp -m udp --dport 8472 -m comment --comment "twilld vxlan notrack" -j NOTRACK"#
            ]
        );
        let v4 = RuleSet::new(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.3.0/24".parse().unwrap(),
            &o,
        );
        assert!(v4.chains[2].rules.is_none(), "not in the IPv4 set");
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

    /// FORWARD with a DROP first and our jump twice behind it, FLANNEL-FWD short of its
    /// second rule: all that can be wrong with the filter table at once.
    fn broken_filter(fwd: &ChainSpec) -> TableRules {
        let jump = format!("-A FORWARD {}", fwd.jump);
        let body = fwd_lines(fwd);
        table(&[
            "-A FORWARD -j DROP",
            &jump,
            &jump,
            &format!("-N {FWD_CHAIN}"),
            &body[0],
        ])
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
        let p = TablePatch::of("filter", &[fwd], &broken_filter(fwd)).unwrap();
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
        let t = broken_filter(fwd);
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
        assert!(RuleSet::none_of(false)
            .chains
            .iter()
            .all(|c| c.rules.is_none()));
    }
}
