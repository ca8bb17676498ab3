//! Choosing the underlay interface and address, flanneld's way: `--iface` (names or IPs,
//! first match wins), then `--iface-regex` (matched against addresses, then names), then
//! `--iface-can-reach` (the route to an address), else the interface of the default route.
//! Pure over a snapshot of the host's interfaces and that one route.

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
    #[error("--iface-can-reach {0}: no route to that address on this host")]
    NoRouteTo(Ipv4Addr),
}

/// Where the interface comes from when neither `--iface` nor `--iface-regex` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The default route's interface index, if there is a default route.
    DefaultRoute(Option<u32>),
    /// `--iface-can-reach`: the route the kernel picks for `target` (`ip route get`):
    /// its interface index and preferred source address.
    CanReach {
        target: Ipv4Addr,
        route: Option<(u32, Option<Ipv4Addr>)>,
    },
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
    fallback: Fallback,
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
    let (idx, src, missing) = match fallback {
        Fallback::DefaultRoute(idx) => (idx, None, IfaceError::NoDefaultRoute),
        Fallback::CanReach { target, route } => (
            route.map(|r| r.0),
            route.and_then(|r| r.1),
            IfaceError::NoRouteTo(target),
        ),
    };
    let i = idx
        .and_then(|idx| ifaces.iter().find(|i| i.index == idx))
        .ok_or(missing)?;
    // The route's source address when it is one of the interface's own, as flannel does.
    let a = src
        .filter(|s| i.addrs.iter().any(|a| a.ip == *s))
        .or_else(|| best_addr(i))
        .ok_or_else(|| IfaceError::NoAddress(i.name.clone()))?;
    Ok(ext(i, a))
}

/// flanneld's interface selection flags: `--iface` (names or addresses, in order),
/// `--iface-regex`, `--iface-can-reach`; the default route's interface without any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceSelection {
    pub iface: Vec<String>,
    pub iface_regex: Vec<String>,
    pub can_reach: Option<Ipv4Addr>,
}

/// Why no underlay could be chosen: the flags matched nothing, or the kernel could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    Iface(#[from] IfaceError),
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
}

/// The underlay as the daemon, doctor and cleanup all choose it, read from the kernel now.
pub async fn select_underlay(
    nl: &crate::netlink::Netlink,
    sel: &IfaceSelection,
) -> Result<ExtIface, SelectError> {
    let ifaces = nl.interfaces().await?;
    let fallback = match sel.can_reach {
        Some(target) => Fallback::CanReach {
            target,
            route: nl.route_to(target).await?,
        },
        None => Fallback::DefaultRoute(nl.default_route_index().await?),
    };
    Ok(choose_interface(
        &ifaces,
        &sel.iface,
        &sel.iface_regex,
        fallback,
    )?)
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
        let e = choose_interface(&host(), &[], &[], Fallback::DefaultRoute(Some(2))).unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr.to_string().as_str(), e.mtu),
            ("eth0", "198.18.0.2", 1500)
        );
        assert_eq!(
            choose_interface(&host(), &[], &[], Fallback::DefaultRoute(None)),
            Err(IfaceError::NoDefaultRoute)
        );
    }

    #[test]
    fn iface_by_name_or_ip_first_match_wins() {
        let e = choose_interface(
            &host(),
            &["nope".into(), "eth1".into()],
            &[],
            Fallback::DefaultRoute(Some(2)),
        )
        .unwrap();
        assert_eq!(e.name, "eth1");
        let e = choose_interface(
            &host(),
            &["198.18.0.9".into()],
            &[],
            Fallback::DefaultRoute(Some(3)),
        )
        .unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr.to_string().as_str()),
            ("eth0", "198.18.0.9")
        );
        let err = choose_interface(&host(), &["bare".into()], &[], Fallback::DefaultRoute(None))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--iface bare: the interface has no global IPv4 address"
        );
        let err = choose_interface(
            &host(),
            &["wlan9".into()],
            &[],
            Fallback::DefaultRoute(None),
        )
        .unwrap_err();
        assert!(err.to_string().contains("wlan9"));
    }

    #[test]
    fn regex_matches_addresses_then_names() {
        let e = choose_interface(
            &host(),
            &[],
            &["^198\\.19\\.".into()],
            Fallback::DefaultRoute(None),
        )
        .unwrap();
        assert_eq!(e.name, "eth1");
        let e = choose_interface(
            &host(),
            &[],
            &["^eth0$".into()],
            Fallback::DefaultRoute(None),
        )
        .unwrap();
        assert_eq!(e.addr.to_string(), "198.18.0.2");
        assert!(matches!(
            choose_interface(&host(), &[], &["(".into()], Fallback::DefaultRoute(None)),
            Err(IfaceError::BadRegex(..))
        ));
        assert!(matches!(
            choose_interface(&host(), &[], &["^zz".into()], Fallback::DefaultRoute(None)),
            Err(IfaceError::NoRegexMatch(_))
        ));
    }

    #[test]
    fn can_reach_takes_the_routes_interface_and_source() {
        let reach = |route| Fallback::CanReach {
            target: "198.19.7.7".parse().unwrap(),
            route,
        };
        let e = choose_interface(
            &host(),
            &[],
            &[],
            reach(Some((3, Some("198.19.0.2".parse().unwrap())))),
        )
        .unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr.to_string()),
            ("eth1", "198.19.0.2".into())
        );
        // The route's source is preferred over the interface's first permanent address.
        let e = choose_interface(
            &host(),
            &[],
            &[],
            reach(Some((2, Some("198.18.0.9".parse().unwrap())))),
        )
        .unwrap();
        assert_eq!(e.addr.to_string(), "198.18.0.9");
        let e = choose_interface(&host(), &[], &[], reach(Some((2, None)))).unwrap();
        assert_eq!(e.addr.to_string(), "198.18.0.2");
        let err = choose_interface(&host(), &[], &[], reach(None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--iface-can-reach 198.19.7.7: no route to that address on this host"
        );
        // --iface still comes first.
        let e = choose_interface(&host(), &["eth0".into()], &[], reach(Some((3, None)))).unwrap();
        assert_eq!(e.name, "eth0");
    }
}
