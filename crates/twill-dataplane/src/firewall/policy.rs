//! The NetworkPolicy table (`inet twill-policy`) in the kernel: what `twill_policy::render`
//! wants, written through `nft -f` so every change is one transaction. A change of pods
//! only adds and deletes set elements; a change of rules replaces the table. As with
//! flannel's table, drift is found by comparing `nft -s list table` with its listing right
//! after our last write (stateless: counters do not count as drift).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use twill_policy::{Ruleset, DROPS_EGRESS, DROPS_INGRESS, FAMILY, TABLE};

use super::{feed, watch_nftables, FirewallError};
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
    /// What we last wrote and how nft listed it right after.
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
            let present = listing()?.is_some();
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
        *written = Some((want.clone(), listing()?.unwrap_or_default()));
        Ok(outcome)
    }

    /// Rewrites the table if it is not as we left it (flushed, deleted, edited). `Ok(true)`
    /// when it was repaired.
    pub fn repair(&self) -> Result<bool, FirewallError> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let now = listing()?;
        let Some((want, seen)) = written.as_mut() else {
            return Ok(false);
        };
        if now.as_deref() == Some(seen.as_str()) {
            return Ok(false);
        }
        run(&want.full_script(), "repair the table")?;
        *seen = listing()?.unwrap_or_default();
        Ok(true)
    }

    /// Whether the kernel's table is the one we last wrote (`twilld doctor` asks the
    /// running daemon's model instead; this is the daemon's own view).
    pub fn written(&self) -> Option<Ruleset> {
        let w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        w.as_ref().map(|(r, _)| r.clone())
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

fn nft(args: &[&str], what: &str) -> Result<Option<String>, FirewallError> {
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

/// `nft -s list table inet twill-policy`: without counter values. `None`: no table.
pub fn listing() -> Result<Option<String>, FirewallError> {
    nft(
        &["-s", "list", "table", FAMILY, TABLE],
        &format!("list table {FAMILY} {TABLE}"),
    )
}

/// Packets dropped so far, (egress, ingress), from the table's named counters; zeros
/// without a table.
pub fn drop_counts() -> Result<(u64, u64), FirewallError> {
    let mut out = [0u64; 2];
    for (i, name) in [DROPS_EGRESS, DROPS_INGRESS].into_iter().enumerate() {
        let text = nft(
            &["list", "counter", FAMILY, TABLE, name],
            &format!("list counter {name}"),
        )?;
        out[i] = text.as_deref().map(packets).unwrap_or(0);
    }
    Ok((out[0], out[1]))
}

/// Packets accepted by each policy rule so far, by the rule's comment (`ns/name
/// ingress 0`), summed over the nft rules one policy rule became.
pub fn rule_counts() -> Result<BTreeMap<String, u64>, FirewallError> {
    let mut out = BTreeMap::new();
    let Some(text) = nft(
        &["list", "table", FAMILY, TABLE],
        &format!("list table {FAMILY} {TABLE}"),
    )?
    else {
        return Ok(out);
    };
    for line in text.lines() {
        let Some((rule, comment)) = line.split_once(" comment \"") else {
            continue;
        };
        let key = comment.trim_end_matches('"').to_string();
        *out.entry(key).or_insert(0) += packets(rule);
    }
    Ok(out)
}

/// The figure after `packets` in an nft counter.
fn packets(text: &str) -> u64 {
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
