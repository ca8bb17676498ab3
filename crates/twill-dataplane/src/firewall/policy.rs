//! The NetworkPolicy table (`inet twill-policy`) in the kernel: what `twill_policy::render`
//! wants, written through `nft -f` so every change is one transaction. A change of pods
//! only adds and deletes set elements; a change of rules replaces the table.
//!
//! Drift is looked for two ways. On every nftables change (the monitor), the terse listing
//! (`nft -s -t`: no counters, no set contents, so cheap however many pods there are) is
//! compared with the one taken right after our last rewrite: a flushed chain, a deleted
//! table or a changed rule is put back in milliseconds. Periodically ([`PolicyTable::verify`])
//! the elements are compared too, from `nft -j`, with what we wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use twill_policy::{Ruleset, DROPS_EGRESS, DROPS_INGRESS, FAMILY, TABLE};

use super::nftables::chains;
use super::{feed, nft_read, watch_nftables, FirewallError};
use crate::change::ChangeFlag;

/// What one [`PolicyTable::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Unchanged,
    /// Only set elements changed: this many added or deleted.
    Elements(usize),
    /// The table was written whole.
    Rewritten,
    /// There is no policy: the table was deleted.
    Removed,
}

#[derive(Default)]
pub struct PolicyTable {
    /// What we last wrote, and the terse listing right after our last rewrite (element
    /// updates do not change it).
    written: Mutex<Option<(Ruleset, String)>>,
}

impl PolicyTable {
    pub fn new() -> Self {
        PolicyTable::default()
    }

    /// Raised on every nftables change, to look for drift (see `watch_nftables`).
    pub fn watch_changes() -> std::io::Result<Arc<ChangeFlag>> {
        watch_nftables()
    }

    /// Makes the kernel hold `want` (`None`: no table). Blocking: runs `nft`.
    pub fn apply(&self, want: Option<&Ruleset>) -> Result<Applied, FirewallError> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let Some(want) = want else {
            let present = terse_listing()?.is_some();
            *written = None;
            if !present {
                return Ok(Applied::Unchanged);
            }
            run(&Ruleset::remove_script(), "delete the table")?;
            return Ok(Applied::Removed);
        };
        let delta = written
            .as_ref()
            .and_then(|(old, _)| want.update_script(old).map(|s| (s, old)));
        let outcome = match delta {
            Some((s, _)) if s.is_empty() => return Ok(Applied::Unchanged),
            Some((s, old)) => {
                let n = changed_elements(want, old);
                // A delta fails when the kernel no longer holds what we wrote (the table
                // deleted under us): the whole table then.
                match run(&s, "update set elements") {
                    Ok(()) => Applied::Elements(n),
                    Err(e) => {
                        tracing::debug!("policy table: element update refused ({e}); rewriting");
                        run(&want.full_script(), "write the table")?;
                        Applied::Rewritten
                    }
                }
            }
            None => {
                run(&want.full_script(), "write the table")?;
                Applied::Rewritten
            }
        };
        let seen = match (outcome, written.take()) {
            (Applied::Elements(_), Some((_, seen))) => seen,
            _ => terse_listing()?.unwrap_or_default(),
        };
        *written = Some((want.clone(), seen));
        Ok(outcome)
    }

    /// Rewrites the table if it is not as we left it (flushed, deleted, edited). `Ok(true)`
    /// when it was repaired.
    pub fn repair(&self) -> Result<bool, FirewallError> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let Some((want, seen)) = written.as_mut() else {
            return Ok(false);
        };
        if terse_listing()?.as_deref() == Some(seen.as_str()) {
            return Ok(false);
        }
        run(&want.full_script(), "repair the table")?;
        *seen = terse_listing()?.unwrap_or_default();
        Ok(true)
    }

    /// [`PolicyTable::repair`] for set elements as well (an element deleted by hand):
    /// compares the whole table, read as JSON, with what we wrote. `Ok(true)` when it was
    /// rewritten.
    pub fn verify(&self) -> Result<bool, FirewallError> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let Some((want, seen)) = written.as_mut() else {
            return Ok(false);
        };
        let same = kernel_table()?.is_some_and(|k| differences(want, &k).is_empty());
        if same {
            return Ok(false);
        }
        run(&want.full_script(), "repair the table")?;
        *seen = terse_listing()?.unwrap_or_default();
        Ok(true)
    }
}

fn changed_elements(want: &Ruleset, old: &Ruleset) -> usize {
    want.sets
        .iter()
        .map(|(name, els)| {
            old.sets
                .get(name)
                .map_or(els.len(), |o| o.symmetric_difference(els).count())
        })
        .sum()
}

fn run(script: &str, what: &str) -> Result<(), FirewallError> {
    feed(
        "nft",
        &["-f", "-"],
        script,
        &format!("{what} {FAMILY} {TABLE}"),
    )
}

/// `nft -s -t list table inet twill-policy`: without counter values or set contents.
/// `None`: no table.
fn terse_listing() -> Result<Option<String>, FirewallError> {
    nft_read(
        &["-s", "-t", "list", "table", FAMILY, TABLE],
        &format!("list table {FAMILY} {TABLE}"),
    )
}

/// Packets dropped so far, (egress, ingress), from the table's named counters; zeros
/// without a table.
pub fn drop_counts() -> Result<(u64, u64), FirewallError> {
    let mut out = [0u64; 2];
    for (i, name) in [DROPS_EGRESS, DROPS_INGRESS].into_iter().enumerate() {
        let text = nft_read(
            &["list", "counter", FAMILY, TABLE, name],
            &format!("list counter {name}"),
        )?;
        out[i] = text.as_deref().map(packets).unwrap_or(0);
    }
    Ok((out[0], out[1]))
}

/// The figure after `packets` in an nft counter.
fn packets(text: &str) -> u64 {
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The table as the kernel holds it: each set's elements, and each chain's rule count.
#[derive(Debug, Default)]
pub struct KernelTable {
    /// Each set's elements, as the renderer writes them.
    pub sets: BTreeMap<String, BTreeSet<String>>,
    /// Rules per chain.
    pub rules: BTreeMap<String, usize>,
}

/// The table as `nft -j` lists it, read into [`KernelTable`]; `None`: no table.
pub fn kernel_table() -> Result<Option<KernelTable>, FirewallError> {
    let what = format!("list table {FAMILY} {TABLE} as JSON");
    let Some(text) = nft_read(&["-j", "list", "table", FAMILY, TABLE], &what)? else {
        return Ok(None);
    };
    let json: Value = serde_json::from_str(&text).map_err(|e| FirewallError::Read {
        what,
        source: Box::new(e),
    })?;
    Ok(Some(parse(&json)))
}

fn parse(json: &Value) -> KernelTable {
    let mut k = KernelTable::default();
    for item in json["nftables"].as_array().into_iter().flatten() {
        if let Some(set) = item.get("set").or_else(|| item.get("map")) {
            let name = set["name"].as_str().unwrap_or_default().to_string();
            let elems = set["elem"]
                .as_array()
                .into_iter()
                .flatten()
                .map(element)
                .collect();
            k.sets.insert(name, elems);
        } else if let Some(chain) = item.get("chain") {
            k.rules
                .entry(chain["name"].as_str().unwrap_or_default().to_string())
                .or_insert(0);
        } else if let Some(rule) = item.get("rule") {
            *k.rules
                .entry(rule["chain"].as_str().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
    }
    k
}

/// An element as the renderer writes it: `10.0.0.1`, `10.0.0.1 . udp . 81`.
fn element(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) if o.contains_key("concat") => o["concat"]
            .as_array()
            .into_iter()
            .flatten()
            .map(element)
            .collect::<Vec<_>>()
            .join(" . "),
        Value::Object(o) if o.contains_key("elem") => element(&o["elem"]["val"]),
        // A map's element: [key, verdict].
        Value::Array(kv) if kv.len() == 2 => format!("{} : {}", element(&kv[0]), verdict(&kv[1])),
        other => other.to_string(),
    }
}

/// A verdict as the renderer writes it: `jump g0_ingress`.
fn verdict(v: &Value) -> String {
    match v.as_object().and_then(|o| o.iter().next()) {
        Some((kind, target)) => match target["target"].as_str() {
            Some(t) => format!("{kind} {t}"),
            None => kind.clone(),
        },
        None => v.to_string(),
    }
}

/// Rules per chain of the wanted table: its statements but the `type … hook` line.
fn wanted_rules(r: &Ruleset) -> BTreeMap<String, usize> {
    chains(&r.skeleton)
        .into_iter()
        .map(|(name, lines)| {
            let rules = lines.iter().filter(|l| !l.starts_with("type ")).count();
            (name, rules)
        })
        .collect()
}

/// How the kernel's table differs from `want`, one line per set or chain; empty: the same.
pub fn differences(want: &Ruleset, k: &KernelTable) -> Vec<String> {
    let mut out = Vec::new();
    for (name, els) in &want.sets {
        match k.sets.get(name) {
            None => out.push(format!("set {name} missing")),
            Some(have) if have != els => {
                let missing = els.difference(have).count();
                let extra = have.difference(els).count();
                out.push(format!(
                    "set {name}: {missing} elements missing, {extra} extra"
                ));
            }
            Some(_) => {}
        }
    }
    for (chain, n) in wanted_rules(want) {
        match k.rules.get(&chain) {
            None => out.push(format!("chain {chain} missing")),
            Some(h) if *h != n => out.push(format!("chain {chain}: {h} rules, {n} wanted")),
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kernel_json_is_compared_by_elements_and_rule_counts() {
        let want = Ruleset {
            skeleton: "table inet twill-policy {\n  chain ingress {\n    type filter hook forward priority -5; policy accept;\n    ct state established,related accept\n    ip daddr @p0_sel4 jump p0_ingress\n  }\n  chain p0_ingress {\n  }\n}\n".into(),
            sets: [
                ("p0_sel4".to_string(), BTreeSet::from(["10.0.0.1".to_string()])),
                ("n0_4".to_string(), BTreeSet::from(["10.0.0.1 . udp . 81".to_string()])),
                ("ingress_dispatch4".to_string(), BTreeSet::from(["10.0.0.1 : jump g0_ingress".to_string()])),
            ]
            .into(),
        };
        let listing = json!({"nftables": [
            {"metainfo": {}},
            {"set": {"name": "p0_sel4", "elem": ["10.0.0.1"]}},
            {"set": {"name": "n0_4", "elem": [{"concat": ["10.0.0.1", "udp", 81]}]}},
            {"map": {"name": "ingress_dispatch4", "map": "verdict",
                     "elem": [["10.0.0.1", {"jump": {"target": "g0_ingress"}}]]}},
            {"chain": {"name": "ingress"}},
            {"chain": {"name": "p0_ingress"}},
            {"rule": {"chain": "ingress"}},
            {"rule": {"chain": "ingress"}},
        ]});
        assert!(differences(&want, &parse(&listing)).is_empty());
        let drifted = json!({"nftables": [
            {"set": {"name": "p0_sel4"}},
            {"chain": {"name": "ingress"}},
            {"rule": {"chain": "ingress"}},
        ]});
        let d = differences(&want, &parse(&drifted));
        assert_eq!(
            d,
            [
                "set ingress_dispatch4 missing",
                "set n0_4 missing",
                "set p0_sel4: 1 elements missing, 0 extra",
                "chain ingress: 1 rules, 2 wanted",
                "chain p0_ingress missing"
            ]
        );
    }

    #[test]
    fn packets_are_read_from_counter_listings() {
        assert_eq!(packets("\t\tpackets 12 bytes 720"), 12);
        assert_eq!(
            packets("ip saddr @q0_4 counter packets 3 bytes 180 accept"),
            3
        );
        assert_eq!(packets("counter name \"drops_egress\" drop"), 0);
    }
}
