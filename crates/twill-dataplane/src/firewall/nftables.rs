//! The nftables driver (net-conf.json `EnableNFTables: true`): flannel's table
//! `ip flannel-ipv4`, so a node moves between flanneld and twilld in nftables mode without
//! leftovers. The whole table is replaced in one `nft -f` transaction (create, delete,
//! create: atomic even when it does not exist yet), so traffic never sees half of it.
//!
//! Drift is found without parsing nft's output: after each write the driver keeps
//! `nft list table` as it was, and a later listing that differs (a flushed chain, a
//! deleted table, a firewall reload) means the table is rewritten. Unlike flanneld's
//! nftables mode, which writes once and never looks again.
//!
//! Hand-written against the `nft` binary rather than the `nftables` crate: the script is
//! a dozen lines, and the crate's JSON schema types would be most of the code.

use std::sync::{Arc, Mutex};

use super::{
    feed, nft_read, watch_nftables, Firewall, FirewallError, RuleIntent, RuleSet, RulesReport,
};
use crate::change::ChangeFlag;

pub const NFT_TABLE: &str = "flannel-ipv4";
/// flannel's IPv6 table (family `ip6`).
pub const NFT_TABLE6: &str = "flannel-ipv6";

/// The nft family and table of one address family: `ip flannel-ipv4` or `ip6 flannel-ipv6`.
pub fn nft_table(v6: bool) -> (&'static str, &'static str) {
    if v6 {
        ("ip6", NFT_TABLE6)
    } else {
        ("ip", NFT_TABLE)
    }
}

/// The table as an `nft -f` script, or `None` when no rule is wanted (no table at all).
pub fn nft_script(intent: &RuleIntent) -> Option<String> {
    let (n, p, o) = (intent.network, intent.pod_subnet, &intent.opts);
    let v6 = intent.v6();
    let notrack = o.notrack.filter(|f| f.local.is_ipv6() == v6);
    if !o.ip_masq && !o.forward && notrack.is_none() {
        return None;
    }
    let (family, table) = nft_table(v6);
    let ip = family;
    let multicast = if v6 { "ff00::/8" } else { "224.0.0.0/4" };
    let masq = if o.fully_random {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    let mut s = format!(
        "table {family} {table} {{}}\ndelete table {family} {table}\ntable {family} {table} {{\n"
    );
    // The same rules as the iptables chain, including its `--mark 0x4000/0x4000`: kube-proxy
    // sets that bit among others, so the mark is masked (flanneld's nftables mode compares
    // the whole mark), and `! -s <net> -d <pod>` (flanneld has the two prefixes the other
    // way round there).
    if o.ip_masq {
        let exempt: String = intent
            .no_masq()
            .map(|c| {
                format!(
                    "    {ip} saddr {n} {ip} daddr {c} return\n    {ip} saddr {c} {ip} daddr {n} return\n"
                )
            })
            .collect();
        s.push_str(&format!(
            "  chain postrtg {{\n    type nat hook postrouting priority srcnat; policy accept;\n\
             \x20   meta mark & 0x00004000 == 0x00004000 return\n\
             \x20   {ip} saddr {p} {ip} daddr {n} return\n\
             \x20   {ip} saddr {n} {ip} daddr {p} return\n\
             \x20   {ip} saddr != {n} {ip} daddr {p} return\n\
             {exempt}\
             \x20   {ip} saddr {n} {ip} daddr != {multicast} {masq}\n\
             \x20   {ip} saddr != {n} {ip} daddr {n} {masq}\n  }}\n"
        ));
    }
    if o.forward {
        s.push_str(&format!(
            "  chain forward {{\n    type filter hook forward priority filter; policy accept;\n\
             \x20   {ip} saddr {n} accept\n    {ip} daddr {n} accept\n  }}\n"
        ));
    }
    if let Some(f) = notrack {
        for (chain, hook, dir) in [
            ("twill-notrack-pre", "prerouting", "daddr"),
            ("twill-notrack-out", "output", "saddr"),
        ] {
            s.push_str(&format!(
                "  chain {chain} {{\n    type filter hook {hook} priority raw; policy accept;\n\
                 \x20   {ip} {dir} {} udp dport {} notrack\n  }}\n",
                f.local, f.port
            ));
        }
    }
    s.push_str("}\n");
    Some(s)
}

pub struct Nftables {
    /// What we last wrote, and how nft listed the table right after, per family (IPv4,
    /// IPv6).
    written: Mutex<[Option<(RuleIntent, String)>; 2]>,
}

impl Nftables {
    pub fn new() -> Result<Self, FirewallError> {
        let what = "EnableNFTables: nft --version";
        // nft that runs but fails says why, with the hint; nft missing is a Run error.
        let refused = |stderr: String| FirewallError::Refused {
            tool: "nft",
            what: what.into(),
            stderr,
            hint: Some("install nftables"),
        };
        match nft_read(&["--version"], what) {
            Ok(Some(_)) => {}
            // nft_read's "nothing listed": here nft failed with that on stderr.
            Ok(None) => return Err(refused("No such file or directory".into())),
            Err(FirewallError::Refused { stderr, .. }) => return Err(refused(stderr)),
            Err(e) => return Err(e),
        }
        Ok(Nftables {
            written: Mutex::new([None, None]),
        })
    }

    /// `nft list table ip flannel-ipv4` (or `ip6 flannel-ipv6`), `None` when there is no
    /// such table.
    pub fn listing(v6: bool) -> Result<Option<String>, FirewallError> {
        let (family, table) = nft_table(v6);
        nft_read(
            &["list", "table", family, table],
            &format!("list table {family} {table}"),
        )
    }

    fn run(script: &str, v6: bool) -> Result<(), FirewallError> {
        let (family, table) = nft_table(v6);
        feed(
            "nft",
            &["-f", "-"],
            script,
            &format!("write table {family} {table}"),
        )
    }
}

/// Each chain of an `nft` script or listing with its statements, trimmed, in order; the
/// chain's `type … hook …` line counts as one, so a chain on the wrong hook differs too.
pub(super) fn chains(text: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("chain ")
            .and_then(|l| l.strip_suffix('{'))
        {
            current = Some(name.trim().to_string());
            out.insert(name.trim().to_string(), Vec::new());
        } else if line == "}" {
            current = None;
        } else if let (Some(c), false) = (&current, line.is_empty()) {
            out.get_mut(c).expect("inserted").push(line.to_string());
        }
    }
    out
}

/// How the listed table differs from the wanted script, one line per problem (`twilld
/// doctor`; the driver itself compares whole listings).
pub fn drift(want: Option<&str>, listing: Option<&str>, v6: bool) -> Vec<String> {
    let (family, table) = nft_table(v6);
    let table = format!("nft table {family} {table}");
    match (want, listing) {
        (None, None) => Vec::new(),
        (None, Some(_)) => vec![format!("{table} present but not wanted")],
        (Some(_), None) => vec![format!("{table} missing")],
        (Some(want), Some(have)) => {
            let (want, have) = (chains(want), chains(have));
            let mut out = Vec::new();
            for (name, rules) in &want {
                match have.get(name) {
                    None => out.push(format!("{table} chain {name} missing")),
                    Some(h) if h != rules => {
                        let missing = rules.iter().filter(|r| !h.contains(r)).count();
                        let extra = h.iter().filter(|r| !rules.contains(r)).count();
                        out.push(format!(
                            "{table} chain {name} differs ({missing} rules missing, {extra} extra)"
                        ));
                    }
                    Some(_) => {}
                }
            }
            for name in have.keys().filter(|n| !want.contains_key(*n)) {
                out.push(format!("{table} chain {name} present but not wanted"));
            }
            out
        }
    }
}

impl Nftables {
    /// How the kernel differs from `rules`, read-only.
    pub fn drift(rules: &RuleSet) -> Result<Vec<String>, FirewallError> {
        let want = nft_script(&rules.intent);
        let v6 = rules.intent.v6();
        Ok(drift(want.as_deref(), Self::listing(v6)?.as_deref(), v6))
    }
}

/// Deletes the table if it is there (iptables mode starting after nftables mode, as
/// flanneld does): the driver's own path for "no rules wanted", without its `nft --version`
/// probe, since a host without nft has no table either. Whether there was one.
pub fn remove_table() -> Result<bool, FirewallError> {
    let nft = Nftables {
        written: Mutex::new([None, None]),
    };
    let v4 = nft.ensure(&RuleSet::none_of(false))?.repairs;
    let v6 = nft.ensure(&RuleSet::none_of(true))?.repairs;
    Ok(v4 + v6 > 0)
}

impl Firewall for Nftables {
    fn ensure(&self, rules: &RuleSet) -> Result<RulesReport, FirewallError> {
        let v6 = rules.intent.v6();
        let (family, table) = nft_table(v6);
        let mut all = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let written = &mut all[usize::from(v6)];
        let now = Self::listing(v6)?;
        let mut report = RulesReport::default();
        match nft_script(&rules.intent) {
            None => {
                if now.is_some() {
                    Self::run(&format!("delete table {family} {table}\n"), v6)?;
                    report.repairs += 1;
                    report
                        .changes
                        .push(format!("deleted nft table {family} {table}"));
                }
                *written = None;
            }
            Some(script) => {
                let intact = matches!((&*written, &now),
                    (Some((intent, listing)), Some(now)) if *intent == rules.intent && listing == now);
                if !intact {
                    Self::run(&script, v6)?;
                    let listing = Self::listing(v6)?.ok_or_else(|| FirewallError::Refused {
                        tool: "nft",
                        what: format!("list table {family} {table}"),
                        stderr: "missing right after writing it".into(),
                        hint: None,
                    })?;
                    *written = Some((rules.intent.clone(), listing));
                    report.repairs += 1;
                    report
                        .changes
                        .push(format!("wrote nft table {family} {table}"));
                }
            }
        }
        Ok(report)
    }

    fn watch_changes(&self) -> Option<Arc<ChangeFlag>> {
        match watch_nftables() {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!("no nftables monitor ({e}); every pass lists the table");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `nft list table` prints for `intent`'s script: the same lines, tab-indented.
    fn listed(intent: &RuleIntent) -> String {
        let script = nft_script(intent).unwrap();
        let body = script
            .split_once("delete table ip flannel-ipv4\n")
            .unwrap()
            .1;
        body.lines()
            .map(|l| format!("\t{}\n", l.trim()))
            .collect::<String>()
    }

    #[test]
    fn non_masquerade_destinations_return_before_masquerading() {
        let mut i = sample_intent(true, false);
        i.opts.no_masq = vec!["172.20.0.0/16".parse().unwrap()];
        let s = nft_script(&i).unwrap();
        let ret = s
            .find("ip saddr 10.244.0.0/16 ip daddr 172.20.0.0/16 return")
            .expect(&s);
        assert!(ret < s.find("masquerade").unwrap(), "{s}");
        assert!(
            ret > s
                .find("ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return")
                .unwrap()
        );
    }

    #[test]
    fn ipv6_table_is_flannels_ip6_flannel_ipv6() {
        let mut opts = sample_intent(true, true).opts;
        opts.no_masq = vec![
            "fd00:20::/56".parse().unwrap(),
            "172.20.0.0/16".parse().unwrap(),
        ];
        let i = RuleIntent {
            network: "fd00:10:244::/56".parse().unwrap(),
            pod_subnet: "fd00:10:244:3::/64".parse().unwrap(),
            opts,
        };
        let s = nft_script(&i).unwrap();
        assert!(
            s.starts_with("table ip6 flannel-ipv6 {}\ndelete table ip6 flannel-ipv6\n"),
            "{s}"
        );
        for want in [
            "ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random",
            "ip6 saddr fd00:10:244::/56 ip6 daddr fd00:20::/56 return",
            "ip6 saddr fd00:10:244::/56 accept",
        ] {
            assert!(s.contains(want), "{want}: {s}");
        }
        assert!(
            !s.contains("notrack") && !s.contains("172.20.0.0/16") && !s.contains(" ip saddr"),
            "{s}"
        );
    }

    fn sample_intent(ip_masq: bool, notrack: bool) -> RuleIntent {
        intent(RuleOptions {
            ip_masq,
            fully_random: true,
            forward: true,
            notrack: notrack.then_some(VxlanFlows {
                local: "198.18.0.1".parse().unwrap(),
                port: 8472,
            }),
            no_masq: Vec::new(),
        })
    }

    #[test]
    fn drift_compares_chains_and_rules() {
        let full = sample_intent(true, true);
        let want = nft_script(&full).unwrap();
        assert!(drift(Some(&want), Some(&listed(&full)), false).is_empty());
        assert!(drift(None, None, false).is_empty());
        assert_eq!(
            drift(Some(&want), None, false),
            ["nft table ip flannel-ipv4 missing"]
        );
        assert_eq!(
            drift(None, Some(&listed(&full)), false),
            ["nft table ip flannel-ipv4 present but not wanted"]
        );
        // Masquerade on in the kernel, off in the config; one forward rule flushed away.
        let no_masq = sample_intent(false, true);
        let have = listed(&full).replace("\tip daddr 10.244.0.0/16 accept\n", "");
        assert_eq!(
            drift(nft_script(&no_masq).as_deref(), Some(&have), false),
            [
                "nft table ip flannel-ipv4 chain forward differs (1 rules missing, 0 extra)",
                "nft table ip flannel-ipv4 chain postrtg present but not wanted",
            ]
        );
    }
    use crate::firewall::{RuleOptions, VxlanFlows};

    fn intent(opts: RuleOptions) -> RuleIntent {
        RuleIntent {
            network: "10.244.0.0/16".parse().unwrap(),
            pod_subnet: "10.244.3.0/24".parse().unwrap(),
            opts,
        }
    }

    #[test]
    fn masquerade_and_forward_as_flannel() {
        let s = nft_script(&intent(RuleOptions {
            ip_masq: true,
            fully_random: true,
            forward: true,
            notrack: None,
            no_masq: Vec::new(),
        }))
        .unwrap();
        // Created before it is deleted, so the delete never fails; all one transaction.
        assert!(s.starts_with(
            "table ip flannel-ipv4 {}\ndelete table ip flannel-ipv4\ntable ip flannel-ipv4 {\n"
        ));
        for want in [
            "type nat hook postrouting priority srcnat; policy accept;",
            "meta mark & 0x00004000 == 0x00004000 return",
            "ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return",
            "ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
            "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
            "type filter hook forward priority filter; policy accept;",
            "ip saddr 10.244.0.0/16 accept",
            "ip daddr 10.244.0.0/16 accept",
        ] {
            assert!(s.contains(want), "{want:?} missing:\n{s}");
        }
        assert!(!s.contains("notrack"));
    }

    #[test]
    fn options_select_chains() {
        let s = nft_script(&intent(RuleOptions {
            ip_masq: true,
            fully_random: false,
            forward: false,
            notrack: Some(VxlanFlows {
                local: "198.18.0.1".parse().unwrap(),
                port: 8472,
            }),
            no_masq: Vec::new(),
        }))
        .unwrap();
        assert!(s.contains("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade\n"));
        assert!(!s.contains("chain forward"));
        assert!(s.contains("type filter hook prerouting priority raw; policy accept;\n    ip daddr 198.18.0.1 udp dport 8472 notrack"));
        assert!(s.contains("type filter hook output priority raw; policy accept;\n    ip saddr 198.18.0.1 udp dport 8472 notrack"));
        assert_eq!(nft_script(&RuleSet::none_of(false).intent), None);
    }
}
