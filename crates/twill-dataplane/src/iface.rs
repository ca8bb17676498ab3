//! Choosing the underlay interface and address, flanneld's way: `--iface` (names or IPs,
//! first match wins), then `--iface-regex` (matched against addresses, then names), else
//! the interface of the default route. Pure over a snapshot of the host's interfaces.

use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    /// Scope global (not host/link).
    pub global: bool,
    /// Not a temporary or dynamic address.
    pub permanent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub addrs: Vec<IfAddr>,
}

/// The chosen underlay: VXLAN packets leave through `name` from `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtIface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub addr: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfaceError {
    #[error("--iface {0}: no such interface or address on this host")]
    NotFound(String),
    #[error("--iface {0}: the interface has no global IPv4 address")]
    NoAddress(String),
    #[error("--iface-regex {0}: invalid regular expression: {1}")]
    BadRegex(String, String),
    #[error("--iface-regex {0:?}: no interface name or address matches")]
    NoRegexMatch(Vec<String>),
    #[error(
        "no default route to pick the underlay interface from; pass --iface NAME or --iface IP"
    )]
    NoDefaultRoute,
}

fn best_addr(i: &InterfaceInfo) -> Option<Ipv4Addr> {
    let mut global: Vec<&IfAddr> = i.addrs.iter().filter(|a| a.global).collect();
    global.sort_by_key(|a| !a.permanent);
    global.first().map(|a| a.ip)
}

fn ext(i: &InterfaceInfo, addr: Ipv4Addr) -> ExtIface {
    ExtIface {
        index: i.index,
        name: i.name.clone(),
        mtu: i.mtu,
        addr,
    }
}

pub fn choose_interface(
    ifaces: &[InterfaceInfo],
    iface: &[String],
    iface_regex: &[String],
    default_route_index: Option<u32>,
) -> Result<ExtIface, IfaceError> {
    if !iface.is_empty() {
        let mut last_err = None;
        for want in iface {
            if let Ok(ip) = want.parse::<Ipv4Addr>() {
                if let Some(i) = ifaces.iter().find(|i| i.addrs.iter().any(|a| a.ip == ip)) {
                    return Ok(ext(i, ip));
                }
                last_err = Some(IfaceError::NotFound(want.clone()));
            } else if let Some(i) = ifaces.iter().find(|i| &i.name == want) {
                match best_addr(i) {
                    Some(a) => return Ok(ext(i, a)),
                    None => last_err = Some(IfaceError::NoAddress(want.clone())),
                }
            } else {
                last_err = Some(IfaceError::NotFound(want.clone()));
            }
        }
        return Err(last_err.expect("non-empty"));
    }
    if !iface_regex.is_empty() {
        for pat in iface_regex {
            let re = regex::Regex::new(pat)
                .map_err(|e| IfaceError::BadRegex(pat.clone(), e.to_string()))?;
            for i in ifaces {
                if let Some(a) = i
                    .addrs
                    .iter()
                    .find(|a| a.global && re.is_match(&a.ip.to_string()))
                {
                    return Ok(ext(i, a.ip));
                }
            }
            for i in ifaces {
                if re.is_match(&i.name) {
                    if let Some(a) = best_addr(i) {
                        return Ok(ext(i, a));
                    }
                }
            }
        }
        return Err(IfaceError::NoRegexMatch(iface_regex.to_vec()));
    }
    let idx = default_route_index.ok_or(IfaceError::NoDefaultRoute)?;
    let i = ifaces
        .iter()
        .find(|i| i.index == idx)
        .ok_or(IfaceError::NoDefaultRoute)?;
    let a = best_addr(i).ok_or_else(|| IfaceError::NoAddress(i.name.clone()))?;
    Ok(ext(i, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Vec<InterfaceInfo> {
        let a = |ip: &str, global, permanent| IfAddr {
            ip: ip.parse().unwrap(),
            prefix: 24,
            global,
            permanent,
        };
        vec![
            InterfaceInfo {
                index: 1,
                name: "lo".into(),
                mtu: 65536,
                addrs: vec![a("127.0.0.1", false, true)],
            },
            InterfaceInfo {
                index: 2,
                name: "eth0".into(),
                mtu: 1500,
                addrs: vec![a("198.18.0.9", true, false), a("198.18.0.2", true, true)],
            },
            InterfaceInfo {
                index: 3,
                name: "eth1".into(),
                mtu: 9000,
                addrs: vec![a("198.19.0.2", true, true)],
            },
            InterfaceInfo {
                index: 4,
                name: "bare".into(),
                mtu: 1500,
                addrs: vec![],
            },
        ]
    }

    #[test]
    fn default_route_interface_prefers_permanent_address() {
        let e = choose_interface(&host(), &[], &[], Some(2)).unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr.to_string().as_str(), e.mtu),
            ("eth0", "198.18.0.2", 1500)
        );
        assert_eq!(
            choose_interface(&host(), &[], &[], None),
            Err(IfaceError::NoDefaultRoute)
        );
    }

    #[test]
    fn iface_by_name_or_ip_first_match_wins() {
        let e = choose_interface(&host(), &["nope".into(), "eth1".into()], &[], Some(2)).unwrap();
        assert_eq!(e.name, "eth1");
        let e = choose_interface(&host(), &["198.18.0.9".into()], &[], Some(3)).unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr.to_string().as_str()),
            ("eth0", "198.18.0.9")
        );
        let err = choose_interface(&host(), &["bare".into()], &[], None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--iface bare: the interface has no global IPv4 address"
        );
        let err = choose_interface(&host(), &["wlan9".into()], &[], None).unwrap_err();
        assert!(err.to_string().contains("wlan9"));
    }

    #[test]
    fn regex_matches_addresses_then_names() {
        let e = choose_interface(&host(), &[], &["^198\\.19\\.".into()], None).unwrap();
        assert_eq!(e.name, "eth1");
        let e = choose_interface(&host(), &[], &["^eth0$".into()], None).unwrap();
        assert_eq!(e.addr.to_string(), "198.18.0.2");
        assert!(matches!(
            choose_interface(&host(), &[], &["(".into()], None),
            Err(IfaceError::BadRegex(..))
        ));
        assert!(matches!(
            choose_interface(&host(), &[], &["^zz".into()], None),
            Err(IfaceError::NoRegexMatch(_))
        ));
    }
}
