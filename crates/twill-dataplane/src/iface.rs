//! Choosing the underlay interface and address, flanneld's way: `--iface` (names or IPs,
//! first match wins), then `--iface-regex` (matched against addresses, then names), then
//! `--iface-can-reach` (the route to an address), each falling through to the next; with
//! none of them, the interface holding `--public-ip`, else the default route's. An
//! IPv6-only network (EnableIPv4=false) picks by IPv6 instead, as flanneld's ipv6 stack
//! does: the IPv6 default route's interface, its usable global IPv6 address, no IPv4.
//! Pure over a snapshot of the host's interfaces and the routes asked about (`underlay`
//! reads them from the kernel).

use std::net::{IpAddr, Ipv4Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    /// Scope global (not host/link).
    pub global: bool,
    /// Not a temporary or dynamic address.
    pub permanent: bool,
}

/// One IPv6 address of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr6 {
    pub ip: std::net::Ipv6Addr,
    /// Scope global (not link-local).
    pub global: bool,
    /// Neither deprecated, tentative nor failed duplicate address detection.
    pub usable: bool,
    /// Configured rather than autoconfigured-temporary.
    pub permanent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub addrs: Vec<IfAddr>,
    pub addrs6: Vec<IfAddr6>,
}

/// The chosen underlay: VXLAN packets leave through `name` from `addr` (and `addr6`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtIface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// `None` only on an IPv6-only network, which has no IPv4 underlay.
    pub addr: Option<Ipv4Addr>,
    /// The interface's IPv6 address, as flanneld picks it for an IPv6 network: global,
    /// usable (not deprecated or tentative), permanent ones first.
    pub addr6: Option<std::net::Ipv6Addr>,
}

impl ExtIface {
    /// The address the overlay is sourced from: the IPv4 one, or IPv6-only the IPv6 one.
    pub fn local(&self) -> Option<IpAddr> {
        self.addr.map(IpAddr::V4).or(self.addr6.map(IpAddr::V6))
    }
}

/// `eth0 198.18.0.1 (index 2)`, as logs and `doctor` name the underlay.
impl std::fmt::Display for ExtIface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.local() {
            Some(ip) => write!(f, "{} {ip} (index {})", self.name, self.index),
            None => write!(f, "{} (index {})", self.name, self.index),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfaceError {
    #[error("--iface {0}: no such interface or address on this host")]
    NotFound(String),
    #[error("--iface {0}: the interface has no {1}")]
    NoAddress(String, &'static str),
    #[error("--iface-regex {0}: invalid regular expression: {1}")]
    BadRegex(String, String),
    #[error("--iface-regex {0}: no interface name or address matches")]
    NoRegexMatch(String),
    #[error(
        "no {0}default route to pick the underlay interface from; pass --iface NAME or --iface IP"
    )]
    NoDefaultRoute(&'static str),
    #[error("--iface-can-reach {0}: no route to that address on this host")]
    NoRouteTo(IpAddr),
    #[error("--iface-can-reach {0}: {1}, the interface of the route to it, has no {2}")]
    RouteIfaceNoAddress(IpAddr, String, &'static str),
    /// Every selection flag given was tried, in flanneld's order, and none matched.
    #[error("{}", tried(.0))]
    NoneMatched(Vec<IfaceError>),
}

fn tried(errs: &[IfaceError]) -> String {
    match errs {
        [one] => one.to_string(),
        all => format!(
            "no interface matches the --iface/--iface-regex/--iface-can-reach given: {}",
            all.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// What the kernel says about routes, read once for a selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routes {
    /// The default route's interface index, if there is a default route.
    pub default: Option<u32>,
    /// The same for the IPv6 default route (`::/0`), which an IPv6-only network picks by.
    pub default6: Option<u32>,
    /// `--iface-can-reach`: the route the kernel picks for it (`ip route get`): its
    /// interface index and, for an IPv4 target, its preferred source address.
    pub can_reach: Option<(u32, Option<Ipv4Addr>)>,
}

/// The interface's first global IPv4 address, permanent ones first.
fn best_addr(i: &InterfaceInfo) -> Option<Ipv4Addr> {
    let mut global: Vec<&IfAddr> = i.addrs.iter().filter(|a| a.global).collect();
    global.sort_by_key(|a| !a.permanent);
    global.first().map(|a| a.ip)
}

fn best_addr6(i: &InterfaceInfo) -> Option<std::net::Ipv6Addr> {
    let mut ok: Vec<&IfAddr6> = i.addrs6.iter().filter(|a| a.global && a.usable).collect();
    ok.sort_by_key(|a| !a.permanent);
    ok.first().map(|a| a.ip)
}

/// Which address family the underlay is chosen by: IPv4 (with the interface's IPv6
/// address alongside, for a dual-stack network), or IPv6 alone.
#[derive(Debug, Clone, Copy)]
struct Stack {
    v6_only: bool,
}

impl Stack {
    fn missing(self) -> &'static str {
        if self.v6_only {
            "usable global IPv6 address"
        } else {
            "global IPv4 address"
        }
    }

    /// The underlay on `i` with its best address of the stack's family.
    fn best(self, i: &InterfaceInfo) -> Option<ExtIface> {
        if self.v6_only {
            best_addr6(i).and_then(|a| self.with(i, IpAddr::V6(a)))
        } else {
            best_addr(i).and_then(|a| self.with(i, IpAddr::V4(a)))
        }
    }

    /// The underlay on `i` from `addr`, one of its own: an IPv4 one is the tunnel's source
    /// (the IPv6 one then the interface's best), an IPv6 one the IPv6 tunnel's (the IPv4
    /// one then the interface's best, none on an IPv6-only network). `None` when the
    /// stack's family has no address there.
    fn with(self, i: &InterfaceInfo, addr: IpAddr) -> Option<ExtIface> {
        let (addr, addr6) = match addr {
            IpAddr::V4(_) if self.v6_only => return None,
            IpAddr::V4(a) => (Some(a), best_addr6(i)),
            IpAddr::V6(a) if self.v6_only => (None, Some(a)),
            IpAddr::V6(a) => (Some(best_addr(i)?), Some(a)),
        };
        Some(ExtIface {
            index: i.index,
            name: i.name.clone(),
            mtu: i.mtu,
            addr,
            addr6,
        })
    }

    fn holds(i: &InterfaceInfo, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => i.addrs.iter().any(|a| a.ip == ip),
            IpAddr::V6(ip) => i.addrs6.iter().any(|a| a.ip == ip),
        }
    }

    /// The global addresses a `--iface-regex` is matched against, the stack's family first.
    fn globals(self, i: &InterfaceInfo) -> Vec<IpAddr> {
        let v4 = i
            .addrs
            .iter()
            .filter(|a| a.global)
            .map(|a| IpAddr::V4(a.ip));
        let v6 = i
            .addrs6
            .iter()
            .filter(|a| a.global && a.usable)
            .map(|a| IpAddr::V6(a.ip));
        if self.v6_only {
            v6.collect()
        } else {
            v4.collect()
        }
    }
}

/// One `--iface` value: an address on this host (that address is used) or an interface
/// name (its best address).
fn by_name_or_ip(
    ifaces: &[InterfaceInfo],
    want: &str,
    stack: Stack,
) -> Result<ExtIface, IfaceError> {
    if let Ok(ip) = want.parse::<IpAddr>() {
        let i = ifaces
            .iter()
            .find(|i| Stack::holds(i, ip))
            .ok_or_else(|| IfaceError::NotFound(want.into()))?;
        return stack
            .with(i, ip)
            .ok_or_else(|| IfaceError::NoAddress(want.into(), stack.missing()));
    }
    let i = ifaces
        .iter()
        .find(|i| i.name == want)
        .ok_or_else(|| IfaceError::NotFound(want.into()))?;
    stack
        .best(i)
        .ok_or_else(|| IfaceError::NoAddress(want.into(), stack.missing()))
}

/// One `--iface-regex`: matched against every interface's global addresses first, then
/// against the names.
fn by_regex(ifaces: &[InterfaceInfo], pat: &str, stack: Stack) -> Result<ExtIface, IfaceError> {
    let re = regex::Regex::new(pat).map_err(|e| IfaceError::BadRegex(pat.into(), e.to_string()))?;
    for i in ifaces {
        if let Some(e) = stack
            .globals(i)
            .into_iter()
            .filter(|a| re.is_match(&a.to_string()))
            .find_map(|a| stack.with(i, a))
        {
            return Ok(e);
        }
    }
    ifaces
        .iter()
        .filter(|i| re.is_match(&i.name))
        .find_map(|i| stack.best(i))
        .ok_or_else(|| IfaceError::NoRegexMatch(pat.into()))
}

fn by_route(
    ifaces: &[InterfaceInfo],
    target: IpAddr,
    route: Option<(u32, Option<Ipv4Addr>)>,
    stack: Stack,
) -> Result<ExtIface, IfaceError> {
    let (idx, src) = route.ok_or(IfaceError::NoRouteTo(target))?;
    let i = ifaces
        .iter()
        .find(|i| i.index == idx)
        .ok_or(IfaceError::NoRouteTo(target))?;
    // The route's source when it is ours; for an IPv6 target, the interface's IPv4 address.
    src.filter(|s| !stack.v6_only && i.addrs.iter().any(|a| a.ip == *s))
        .and_then(|s| stack.with(i, IpAddr::V4(s)))
        .or_else(|| stack.best(i))
        .ok_or_else(|| IfaceError::RouteIfaceNoAddress(target, i.name.clone(), stack.missing()))
}

/// flanneld's order: each `--iface`, then each `--iface-regex`, then `--iface-can-reach`,
/// the first match winning; one that matches nothing falls through to the next, and only
/// when all given fail is it an error (naming each). With none given, the interface that
/// holds `--public-ip` (which is then also the VXLAN source), else the default route's.
/// `ipv6_only`: the network has no IPv4 (EnableIPv4=false), so the underlay is chosen by
/// its IPv6 address and the IPv6 default route, and has no IPv4 address.
pub fn choose_interface(
    ifaces: &[InterfaceInfo],
    sel: &IfaceSelection,
    routes: Routes,
    ipv6_only: bool,
) -> Result<ExtIface, IfaceError> {
    let stack = Stack { v6_only: ipv6_only };
    let explicit = !sel.iface.is_empty() || !sel.iface_regex.is_empty() || sel.can_reach.is_some();
    if !explicit {
        let pinned = match (ipv6_only, sel.public_ip, sel.public_ipv6) {
            (false, Some(ip), _) => Some(IpAddr::V4(ip)),
            (true, _, Some(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = pinned {
            if let Some(e) = ifaces
                .iter()
                .find(|i| Stack::holds(i, ip))
                .and_then(|i| stack.with(i, ip))
            {
                return Ok(e);
            }
        }
        let (default, which) = if ipv6_only {
            (routes.default6, "IPv6 ")
        } else {
            (routes.default, "")
        };
        let i = default
            .and_then(|idx| ifaces.iter().find(|i| i.index == idx))
            .ok_or(IfaceError::NoDefaultRoute(which))?;
        return stack
            .best(i)
            .ok_or_else(|| IfaceError::NoAddress(i.name.clone(), stack.missing()));
    }
    let mut failed = Vec::new();
    for want in &sel.iface {
        match by_name_or_ip(ifaces, want, stack) {
            Ok(e) => return Ok(e),
            Err(e) => failed.push(e),
        }
    }
    for pat in &sel.iface_regex {
        match by_regex(ifaces, pat, stack) {
            Ok(e) => return Ok(e),
            // A pattern that can't compile is a mistake to fix, not a miss to skip.
            Err(e @ IfaceError::BadRegex(..)) => return Err(e),
            Err(e) => failed.push(e),
        }
    }
    if let Some(target) = sel.can_reach {
        match by_route(ifaces, target, routes.can_reach, stack) {
            Ok(e) => return Ok(e),
            Err(e) => failed.push(e),
        }
    }
    Err(IfaceError::NoneMatched(failed))
}

/// flanneld's interface selection flags: `--iface` (names or addresses, in order),
/// `--iface-regex`, `--iface-can-reach`; without any, the interface holding `--public-ip`,
/// else the default route's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceSelection {
    pub iface: Vec<String>,
    pub iface_regex: Vec<String>,
    pub can_reach: Option<IpAddr>,
    pub public_ip: Option<Ipv4Addr>,
    /// `--public-ipv6`: on an IPv6-only network, the interface holding it.
    pub public_ipv6: Option<std::net::Ipv6Addr>,
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
                addrs6: vec![],
            },
            InterfaceInfo {
                index: 2,
                name: "eth0".into(),
                mtu: 1500,
                addrs: vec![a("198.18.0.9", true, false), a("198.18.0.2", true, true)],
                addrs6: vec![
                    a6("fe80::1", false, true, true),
                    a6("2001:db8::9", true, false, true),
                    a6("2001:db8::dead", true, true, false),
                    a6("2001:db8::2", true, true, true),
                ],
            },
            InterfaceInfo {
                index: 3,
                name: "eth1".into(),
                mtu: 9000,
                addrs: vec![a("198.19.0.2", true, true)],
                addrs6: vec![],
            },
            InterfaceInfo {
                index: 4,
                name: "bare".into(),
                mtu: 1500,
                addrs: vec![],
                addrs6: vec![],
            },
        ]
    }

    fn a6(ip: &str, global: bool, usable: bool, permanent: bool) -> IfAddr6 {
        IfAddr6 {
            ip: ip.parse().unwrap(),
            global,
            usable,
            permanent,
        }
    }

    /// flanneld's IPv6 address of the interface: global, not deprecated or tentative,
    /// permanent (not temporary) first.
    #[test]
    fn the_interfaces_ipv6_address_is_global_usable_and_permanent_first() {
        let e = choose(&host(), &sel(&[], &[]), default_route(Some(2))).unwrap();
        assert_eq!(e.addr6, Some("2001:db8::2".parse().unwrap()));
        let e = choose(&host(), &sel(&["eth1"], &[]), default_route(Some(2))).unwrap();
        assert_eq!(e.addr6, None);
    }

    fn choose(
        ifaces: &[InterfaceInfo],
        sel: &IfaceSelection,
        routes: Routes,
    ) -> Result<ExtIface, IfaceError> {
        choose_interface(ifaces, sel, routes, false)
    }

    /// IPv6-only (EnableIPv4=false), as flanneld's ipv6 stack: the IPv6 default route's
    /// interface and its usable global IPv6 address, and no IPv4 address at all.
    #[test]
    fn ipv6_only_chooses_by_ipv6_and_takes_no_ipv4() {
        let routes = Routes {
            default: Some(3),
            default6: Some(2),
            ..Default::default()
        };
        let v6 = |s: &str| Some(s.parse::<std::net::Ipv6Addr>().unwrap());
        let e = choose_interface(&host(), &sel(&[], &[]), routes, true).unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr, e.addr6),
            ("eth0", None, v6("2001:db8::2"))
        );
        let no_default6 = Routes {
            default: Some(2),
            ..Default::default()
        };
        assert_eq!(
            choose_interface(&host(), &sel(&[], &[]), no_default6, true)
                .unwrap_err()
                .to_string(),
            "no IPv6 default route to pick the underlay interface from; pass --iface NAME or --iface IP"
        );
        assert_eq!(
            choose_interface(&host(), &sel(&["eth1"], &[]), routes, true)
                .unwrap_err()
                .to_string(),
            "--iface eth1: the interface has no usable global IPv6 address"
        );
        let e = choose_interface(&host(), &sel(&["2001:db8::9"], &[]), routes, true).unwrap();
        assert_eq!((e.name.as_str(), e.addr6), ("eth0", v6("2001:db8::9")));
        assert!(
            choose_interface(&host(), &sel(&["198.18.0.2"], &[]), routes, true).is_err(),
            "an IPv4 address cannot carry an IPv6-only overlay"
        );
        let e = choose_interface(&host(), &sel(&[], &["::2$"]), routes, true).unwrap();
        assert_eq!(e.addr6, v6("2001:db8::2"));
        let mut pinned = sel(&[], &[]);
        pinned.public_ipv6 = v6("2001:db8::9");
        pinned.public_ip = Some("198.19.0.2".parse().unwrap());
        let e = choose_interface(&host(), &pinned, routes, true).unwrap();
        assert_eq!((e.name.as_str(), e.addr6), ("eth0", v6("2001:db8::9")));
        // Dual-stack: an IPv6 --iface picks its interface, whose IPv4 address leads.
        let e = choose(&host(), &sel(&["2001:db8::2"], &[]), routes).unwrap();
        assert_eq!(
            (e.addr.unwrap().to_string(), e.addr6),
            ("198.18.0.2".to_string(), v6("2001:db8::2"))
        );
    }

    fn sel(iface: &[&str], regex: &[&str]) -> IfaceSelection {
        IfaceSelection {
            iface: iface.iter().map(|s| s.to_string()).collect(),
            iface_regex: regex.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn default_route(idx: Option<u32>) -> Routes {
        Routes {
            default: idx,
            can_reach: None,
            ..Default::default()
        }
    }

    #[test]
    fn default_route_interface_prefers_permanent_address() {
        let e = choose(&host(), &sel(&[], &[]), default_route(Some(2))).unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr.unwrap().to_string().as_str(), e.mtu),
            ("eth0", "198.18.0.2", 1500)
        );
        assert_eq!(
            choose(&host(), &sel(&[], &[]), default_route(None)),
            Err(IfaceError::NoDefaultRoute(""))
        );
    }

    #[test]
    fn iface_by_name_or_ip_first_match_wins() {
        let e = choose(
            &host(),
            &sel(&["nope", "eth1"], &[]),
            default_route(Some(2)),
        )
        .unwrap();
        assert_eq!(e.name, "eth1");
        let e = choose(&host(), &sel(&["198.18.0.9"], &[]), default_route(Some(3))).unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr.unwrap().to_string().as_str()),
            ("eth0", "198.18.0.9")
        );
        let err = choose(&host(), &sel(&["bare"], &[]), default_route(None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--iface bare: the interface has no global IPv4 address"
        );
        let err = choose(&host(), &sel(&["wlan9"], &[]), default_route(Some(2))).unwrap_err();
        assert!(err.to_string().contains("wlan9"), "{err}");
    }

    #[test]
    fn regex_matches_addresses_then_names() {
        let e = choose(&host(), &sel(&[], &["^198\\.19\\."]), default_route(None)).unwrap();
        assert_eq!(e.name, "eth1");
        let e = choose(&host(), &sel(&[], &["^eth0$"]), default_route(None)).unwrap();
        assert_eq!(e.addr.unwrap().to_string(), "198.18.0.2");
        assert!(matches!(
            choose(&host(), &sel(&[], &["("]), default_route(None)),
            Err(IfaceError::BadRegex(..))
        ));
        assert!(matches!(
            choose(&host(), &sel(&[], &["^zz"]), default_route(Some(2))),
            Err(IfaceError::NoneMatched(_))
        ));
    }

    /// flanneld: an --iface that matches nothing falls through to --iface-regex, then to
    /// --iface-can-reach; the error names everything tried.
    #[test]
    fn unmatched_iface_falls_through_to_regex_then_can_reach() {
        let e = choose(
            &host(),
            &sel(&["wlan9"], &["^eth1$"]),
            default_route(Some(2)),
        )
        .unwrap();
        assert_eq!(e.name, "eth1");
        let mut s = sel(&["wlan9"], &["^zz"]);
        s.can_reach = Some("198.19.7.7".parse().unwrap());
        let routes = Routes {
            default: Some(2),
            can_reach: Some((3, None)),
            ..Default::default()
        };
        assert_eq!(choose(&host(), &s, routes).unwrap().name, "eth1");
        let err = choose(&host(), &s, default_route(Some(2))).unwrap_err();
        let msg = err.to_string();
        for part in [
            "--iface wlan9",
            "--iface-regex ^zz",
            "--iface-can-reach 198.19.7.7",
        ] {
            assert!(msg.contains(part), "{msg}");
        }
    }

    /// flanneld: without selection flags, --public-ip picks the interface that holds it,
    /// and that address is the VXLAN source.
    #[test]
    fn public_ip_picks_its_interface_without_selection_flags() {
        let mut s = sel(&[], &[]);
        s.public_ip = Some("198.19.0.2".parse().unwrap());
        let e = choose(&host(), &s, default_route(Some(2))).unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr.unwrap().to_string().as_str()),
            ("eth1", "198.19.0.2")
        );
        s.public_ip = Some("198.18.0.9".parse().unwrap());
        let e = choose(&host(), &s, default_route(Some(3))).unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr.unwrap().to_string().as_str()),
            ("eth0", "198.18.0.9")
        );
        // An address no interface holds (NAT): the default route's interface.
        s.public_ip = Some("203.0.113.9".parse().unwrap());
        let e = choose(&host(), &s, default_route(Some(2))).unwrap();
        assert_eq!(e.addr.unwrap().to_string(), "198.18.0.2");
        // --iface wins over --public-ip.
        let mut s = sel(&["eth0"], &[]);
        s.public_ip = Some("198.19.0.2".parse().unwrap());
        assert_eq!(
            choose(&host(), &s, default_route(Some(2))).unwrap().name,
            "eth0"
        );
    }

    #[test]
    fn can_reach_takes_the_routes_interface_and_source() {
        let reach = |target: &str, route| {
            let mut s = sel(&[], &[]);
            s.can_reach = Some(target.parse().unwrap());
            choose(
                &host(),
                &s,
                Routes {
                    default: Some(2),
                    can_reach: route,
                    ..Default::default()
                },
            )
        };
        let e = reach("198.19.7.7", Some((3, Some("198.19.0.2".parse().unwrap())))).unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr.unwrap().to_string()),
            ("eth1", "198.19.0.2".into())
        );
        // The route's source is preferred over the interface's first permanent address.
        let e = reach("198.19.7.7", Some((2, Some("198.18.0.9".parse().unwrap())))).unwrap();
        assert_eq!(e.addr.unwrap().to_string(), "198.18.0.9");
        let e = reach("198.19.7.7", Some((2, None))).unwrap();
        assert_eq!(e.addr.unwrap().to_string(), "198.18.0.2");
        let err = reach("198.19.7.7", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--iface-can-reach 198.19.7.7: no route to that address on this host"
        );
        // An IPv6 target: the route's interface, with its IPv4 address.
        let e = reach("2001:db8::1", Some((3, None))).unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr.unwrap().to_string()),
            ("eth1", "198.19.0.2".into())
        );
        let err = reach("2001:db8::1", Some((4, None))).unwrap_err();
        assert!(err.to_string().contains("bare"), "{err}");
        // --iface still comes first.
        let mut s = sel(&["eth0"], &[]);
        s.can_reach = Some("198.19.7.7".parse().unwrap());
        let routes = Routes {
            default: Some(2),
            can_reach: Some((3, None)),
            ..Default::default()
        };
        assert_eq!(choose(&host(), &s, routes).unwrap().name, "eth0");
    }
}
