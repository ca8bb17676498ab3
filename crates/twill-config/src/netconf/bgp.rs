//! The `BGP` section of net-conf.json (twill's, flannel has none): announce each node's
//! pod subnets to the site's routers through a BGP engine on the node (BIRD), driven by
//! twilld. Per-node overrides (`--bgp-asn`, `--bgp-peers`) use [`BgpPeer::parse_list`].

use std::fmt;
use std::net::IpAddr;

use serde_json::Value;

use super::{compact, ConfigError, Fields, Warning};

/// How long a router keeps our routes while our speaker restarts, unless configured.
pub const DEFAULT_GRACEFUL_RESTART_TIME: u32 = 120;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpConf {
    /// This node's AS number.
    pub asn: u32,
    /// The routers this node announces its pod subnets to (may be empty when every node
    /// names its own with `--bgp-peers`).
    pub peers: Vec<BgpPeer>,
    /// Seconds a peer keeps our routes while our speaker restarts (graceful restart,
    /// RFC 4724); 0 turns graceful restart off.
    pub graceful_restart_time: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BgpPeer {
    pub address: IpAddr,
    pub asn: u32,
}

impl fmt::Display for BgpPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.asn),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.asn),
        }
    }
}

/// An AS number a speaker may use: not 0, AS_TRANS (23456), 65535 or 4294967295
/// (RFC 7607, 6793, 7300).
pub fn check_asn(field: &str, asn: u64) -> Result<u32, ConfigError> {
    match asn {
        0 | 23456 | 65535 => Err(ConfigError::new(field, asn, "a reserved AS number")),
        1..=4294967294 => Ok(asn as u32),
        _ => Err(ConfigError::new(
            field,
            asn,
            "must be between 1 and 4294967294",
        )),
    }
}

fn check_peer_address(field: &str, s: &str) -> Result<IpAddr, ConfigError> {
    let a: IpAddr = s
        .parse()
        .map_err(|_| ConfigError::new(field, s, "not an IP address"))?;
    if a.is_unspecified() || a.is_loopback() || a.is_multicast() {
        return Err(ConfigError::new(
            field,
            s,
            "not a router's address (unspecified, loopback or multicast)",
        ));
    }
    Ok(a)
}

impl BgpPeer {
    /// `--bgp-peers`: `ADDRESS:ASN` items separated by commas, an IPv6 address in
    /// brackets (`198.18.0.5:64513,[2001:db8::1]:64513`). An empty string is no peers.
    pub fn parse_list(field: &str, s: &str) -> Result<Vec<BgpPeer>, ConfigError> {
        let mut peers = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad =
                || ConfigError::new(field, item, "expected ADDRESS:ASN (IPv6: [ADDRESS]:ASN)");
            let (addr, asn) = item.rsplit_once(':').ok_or_else(bad)?;
            let addr = match addr.strip_prefix('[') {
                Some(a) => a.strip_suffix(']').ok_or_else(bad)?,
                None if addr.contains(':') => return Err(bad()),
                None => addr,
            };
            let asn: u64 = asn.parse().map_err(|_| bad())?;
            let peer = BgpPeer {
                address: check_peer_address(field, addr)?,
                asn: check_asn(field, asn)?,
            };
            push_unique(&mut peers, peer, field)?;
        }
        Ok(peers)
    }
}

fn push_unique(peers: &mut Vec<BgpPeer>, p: BgpPeer, field: &str) -> Result<(), ConfigError> {
    if peers.iter().any(|q| q.address == p.address) {
        return Err(ConfigError::new(
            field,
            p.address,
            "the same peer address twice",
        ));
    }
    peers.push(p);
    Ok(())
}

pub(super) fn parse_bgp(v: Value, warnings: &mut Vec<Warning>) -> Result<BgpConf, ConfigError> {
    let mut f = Fields::new("BGP.", v, "BGP")?;
    let asn = f
        .uint("ASN")?
        .ok_or_else(|| ConfigError::new("BGP.ASN", "(missing)", "required in BGP"))?;
    let asn = check_asn("BGP.ASN", asn)?;
    let mut peers = Vec::new();
    match f.take("Peers") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                let label = format!("BGP.Peers[{i}]");
                let Value::Object(mut m) = item else {
                    return Err(ConfigError::new(
                        &label,
                        compact(&item),
                        "expected {\"Address\": ..., \"ASN\": ...}",
                    ));
                };
                let mut take = |name: &str| {
                    let key = m.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned();
                    key.and_then(|k| m.remove(&k))
                };
                let address = match take("Address") {
                    Some(Value::String(s)) => check_peer_address(&format!("{label}.Address"), &s)?,
                    other => {
                        return Err(ConfigError::new(
                            &format!("{label}.Address"),
                            other.map(|v| compact(&v)).unwrap_or("(missing)".into()),
                            "expected the router's IP address as a string",
                        ))
                    }
                };
                let peer_asn = match take("ASN") {
                    Some(v) => v.as_u64().ok_or_else(|| {
                        ConfigError::new(
                            &format!("{label}.ASN"),
                            compact(&v),
                            "expected an AS number",
                        )
                    })?,
                    None => {
                        return Err(ConfigError::new(
                            &format!("{label}.ASN"),
                            "(missing)",
                            "required for every peer",
                        ))
                    }
                };
                let peer = BgpPeer {
                    address,
                    asn: check_asn(&format!("{label}.ASN"), peer_asn)?,
                };
                for k in m.keys() {
                    warnings.push(Warning(format!("{label}.{k}: unknown key, ignored")));
                }
                push_unique(&mut peers, peer, &format!("{label}.Address"))?;
            }
        }
        Some(other) => {
            return Err(ConfigError::new(
                "BGP.Peers",
                compact(&other),
                "expected a list of {\"Address\": ..., \"ASN\": ...}",
            ))
        }
    }
    let graceful_restart_time = match f.uint("GracefulRestartTime")? {
        None => DEFAULT_GRACEFUL_RESTART_TIME,
        Some(t) if t <= 4095 => t as u32,
        Some(t) => {
            return Err(ConfigError::new(
                "BGP.GracefulRestartTime",
                t,
                "must be between 0 and 4095 seconds (BGP's restart time field is 12 bits)",
            ))
        }
    };
    f.leftovers(warnings, |_| None);
    Ok(BgpConf {
        asn,
        peers,
        graceful_restart_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetConf;

    fn conf(bgp: &str) -> Result<BgpConf, ConfigError> {
        let text = format!(r#"{{"Network":"10.244.0.0/16","BGP":{bgp}}}"#);
        NetConf::parse(&text).map(|(c, _)| c.bgp.expect("BGP section"))
    }

    #[test]
    fn a_full_section_parses() {
        let c = conf(
            r#"{"ASN":64512,"Peers":[{"Address":"198.18.0.5","ASN":64513},{"address":"2001:db8::1","asn":4200000000}],"GracefulRestartTime":300}"#,
        )
        .unwrap();
        assert_eq!(c.asn, 64512);
        assert_eq!(c.graceful_restart_time, 300);
        assert_eq!(
            c.peers,
            [
                BgpPeer {
                    address: "198.18.0.5".parse().unwrap(),
                    asn: 64513
                },
                BgpPeer {
                    address: "2001:db8::1".parse().unwrap(),
                    asn: 4200000000
                }
            ]
        );
        let c = conf(r#"{"ASN":64512}"#).unwrap();
        assert!(c.peers.is_empty());
        assert_eq!(c.graceful_restart_time, DEFAULT_GRACEFUL_RESTART_TIME);
        assert_eq!(
            NetConf::parse(r#"{"Network":"10.244.0.0/16"}"#)
                .unwrap()
                .0
                .bgp,
            None
        );
    }

    #[test]
    fn bad_sections_name_the_field_and_value() {
        for (bgp, field, value) in [
            (r#"{}"#, "BGP.ASN", "(missing)"),
            (r#"{"ASN":0}"#, "BGP.ASN", "0"),
            (r#"{"ASN":23456}"#, "BGP.ASN", "23456"),
            (r#"{"ASN":4294967296}"#, "BGP.ASN", "4294967296"),
            (r#"{"ASN":"64512"}"#, "BGP.ASN", "\"64512\""),
            (r#"{"ASN":1,"Peers":{}}"#, "BGP.Peers", "{}"),
            (
                r#"{"ASN":1,"Peers":["198.18.0.5"]}"#,
                "BGP.Peers[0]",
                "\"198.18.0.5\"",
            ),
            (
                r#"{"ASN":1,"Peers":[{"ASN":2}]}"#,
                "BGP.Peers[0].Address",
                "(missing)",
            ),
            (
                r#"{"ASN":1,"Peers":[{"Address":"10.0.0.300","ASN":2}]}"#,
                "BGP.Peers[0].Address",
                "10.0.0.300",
            ),
            (
                r#"{"ASN":1,"Peers":[{"Address":"127.0.0.1","ASN":2}]}"#,
                "BGP.Peers[0].Address",
                "127.0.0.1",
            ),
            (
                r#"{"ASN":1,"Peers":[{"Address":"198.18.0.5"}]}"#,
                "BGP.Peers[0].ASN",
                "(missing)",
            ),
            (
                r#"{"ASN":1,"Peers":[{"Address":"198.18.0.5","ASN":65535}]}"#,
                "BGP.Peers[0].ASN",
                "65535",
            ),
            (
                r#"{"ASN":1,"Peers":[{"Address":"198.18.0.5","ASN":2},{"Address":"198.18.0.5","ASN":3}]}"#,
                "BGP.Peers[1].Address",
                "198.18.0.5",
            ),
            (
                r#"{"ASN":1,"GracefulRestartTime":5000}"#,
                "BGP.GracefulRestartTime",
                "5000",
            ),
            (r#"[]"#, "BGP", "[]"),
        ] {
            let e = conf(bgp).unwrap_err();
            assert_eq!(
                (e.field.as_str(), e.value.as_str()),
                (field, value),
                "{bgp}: {e}"
            );
        }
    }

    #[test]
    fn peer_lists_from_flags() {
        let p =
            BgpPeer::parse_list("--bgp-peers", " 198.18.0.5:64513, [2001:db8::1]:65001 ,").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].to_string(), "198.18.0.5:64513");
        assert_eq!(p[1].to_string(), "[2001:db8::1]:65001");
        assert!(BgpPeer::parse_list("--bgp-peers", "").unwrap().is_empty());
        for bad in [
            "198.18.0.5",
            "2001:db8::1:65001",
            "[2001:db8::1:65001",
            "198.18.0.5:x",
            "198.18.0.5:0",
            "0.0.0.0:64513",
            "198.18.0.5:1,198.18.0.5:2",
        ] {
            let e = BgpPeer::parse_list("--bgp-peers", bad).unwrap_err();
            assert_eq!(e.field, "--bgp-peers", "{bad}");
        }
    }
}
