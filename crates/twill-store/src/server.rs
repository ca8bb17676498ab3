//! Where a store's connections go, and whether they must be made again because the node
//! now reaches a server from another address than the one they leave from.

use std::net::IpAddr;

/// `host:port` of a server URL (`https://10.96.0.1`, `http://[2001:2::1]:2379`, or a bare
/// `etcd.example:2379`), for name resolution: the port from the URL, else the scheme's,
/// else `default_port`. `None` for what no TCP connection goes to (a `unix:` socket) or
/// what has no host.
pub fn server_of(url: &str, default_port: u16) -> Option<String> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s.to_ascii_lowercase()), r),
        None => (None, url),
    };
    let port = match scheme.as_deref() {
        None => default_port,
        Some("http") => 80,
        Some("https") => 443,
        Some(_) => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // userinfo@ is not part of where the connection goes.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if authority.is_empty() {
        return None;
    }
    let has_port = match authority.rfind(']') {
        // [v6] or [v6]:port
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    Some(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{port}")
    })
}

/// Whether the store's connections must be made again: a server the node reached from
/// one address when they were made is now reached from another (a renumbered NIC; the
/// old address may be gone, and a connection from an address the node no longer holds
/// goes quiet rather than failing). A server with no route now, or none known before,
/// decides nothing: there is nothing better to connect from.
pub fn route_moved(before: &[Option<IpAddr>], now: &[Option<IpAddr>]) -> bool {
    before
        .iter()
        .zip(now)
        .any(|(b, n)| b.is_some() && n.is_some() && b != n)
}

/// What to keep as "before" for the next comparison: the source seen now, or the last one
/// known where there is no route now.
pub fn route_remembered(before: &[Option<IpAddr>], now: &[Option<IpAddr>]) -> Vec<Option<IpAddr>> {
    if before.len() != now.len() {
        return now.to_vec();
    }
    before.iter().zip(now).map(|(b, n)| n.or(*b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_host_and_port_with_the_schemes_default() {
        // (url, default port, server)
        let cases = [
            ("https://10.96.0.1", 2379, Some("10.96.0.1:443")),
            ("http://198.18.0.254:2379", 1, Some("198.18.0.254:2379")),
            ("http://etcd.local/", 1, Some("etcd.local:80")),
            ("etcd.local:2380", 2379, Some("etcd.local:2380")),
            ("etcd.local", 2379, Some("etcd.local:2379")),
            ("https://[2001:2::1]:6443/x", 1, Some("[2001:2::1]:6443")),
            ("https://[2001:2::1]", 1, Some("[2001:2::1]:443")),
            ("https://u:p@h:1", 1, Some("h:1")),
            ("unix:///run/etcd.sock", 1, None),
            ("https://", 1, None),
        ];
        for (url, port, want) in cases {
            assert_eq!(server_of(url, port).as_deref(), want, "{url}");
        }
    }

    #[test]
    fn only_a_route_from_another_known_address_moves() {
        let a: IpAddr = "198.19.250.1".parse().unwrap();
        let b: IpAddr = "198.19.250.2".parse().unwrap();
        assert!(route_moved(&[Some(a)], &[Some(b)]));
        assert!(!route_moved(&[Some(a)], &[Some(a)]));
        assert!(
            !route_moved(&[Some(a)], &[None]),
            "no route: nothing to gain"
        );
        assert!(!route_moved(&[None], &[Some(b)]), "nothing known before");
        assert!(route_moved(&[Some(a), Some(a)], &[Some(a), Some(b)]));
        // Gone and back from another address: compared with the last one known.
        let kept = route_remembered(&[Some(a)], &[None]);
        assert_eq!(kept, vec![Some(a)]);
        assert!(route_moved(&kept, &[Some(b)]));
        assert_eq!(
            route_remembered(&[Some(a)], &[Some(b), None]),
            vec![Some(b), None]
        );
    }
}
