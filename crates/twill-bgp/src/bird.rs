//! Per-node BGP: this node's pod subnets announced to the site's routers by BIRD 2, the
//! engine Calico runs. twill speaks no BGP itself: it writes BIRD's configuration (a file
//! it owns, which includes the operator's own files), asks BIRD to reload it through
//! `birdc configure`, and reads the sessions back from `birdc show protocols all`.
//!
//! BIRD runs beside twilld (its own systemd unit, or a container of the same pod), not as
//! twilld's child: a twilld restart leaves the sessions alone, so nothing is withdrawn
//! while it is down, and graceful restart (on by default) covers a restart of BIRD itself.
//! The routes are BIRD `static` blackholes that never reach the kernel (there is no
//! `protocol kernel`); they exist only to be exported, with this node as the next hop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::{Ipv4Network, Ipv6Network};
use tokio::sync::watch;
use tracing::{info, warn};
use twill_config::{write_atomic, BgpConf, BgpPeer};

use crate::settings::BgpOptions;

/// What this node announces, and from which addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    pub router_id: Ipv4Addr,
    pub local4: Option<Ipv4Addr>,
    pub local6: Option<Ipv6Addr>,
    pub v4: Option<Ipv4Network>,
    pub v6: Option<Ipv6Network>,
}

/// The BGP router ID for a node with these underlay addresses: its IPv4 address, or on an
/// IPv6-only node (BGP still wants 32 bits) the low 32 bits of its IPv6 address, which
/// differ between nodes on one segment as their addresses do.
pub fn router_id(local4: Option<Ipv4Addr>, local6: Option<Ipv6Addr>) -> Ipv4Addr {
    local4
        .or(local6.map(|a| Ipv4Addr::from((u128::from(a) & 0xffff_ffff) as u32)))
        .unwrap_or(Ipv4Addr::UNSPECIFIED)
}

/// BIRD's name for the session with `peer`.
pub fn protocol_name(peer: &IpAddr) -> String {
    let s = peer.to_string().replace(['.', ':'], "_");
    format!("twill_{s}")
}

/// The BIRD 2 configuration announcing `a` to `bgp`'s peers (pure). Peers of a family this
/// node has no local address in are left out, with `skipped` naming them.
pub fn render(bgp: &BgpConf, a: &Announce, include_dir: &Path) -> (String, Vec<BgpPeer>) {
    let mut c = String::new();
    c.push_str(&format!(
        "{OURS}, which owns this file and rewrites it on every lease or config\n\
         # change. Add your own protocols and filters in {}/*.conf.\n\
         router id {};\n\n\
         protocol device twill_device {{ }}\n\n",
        include_dir.display(),
        a.router_id
    ));
    c.push_str("protocol static twill_pods4 {\n  ipv4;\n");
    if let Some(n) = a.v4 {
        c.push_str(&format!("  route {n} blackhole;\n"));
    }
    c.push_str("}\n\nprotocol static twill_pods6 {\n  ipv6;\n");
    if let Some(n) = a.v6 {
        c.push_str(&format!("  route {n} blackhole;\n"));
    }
    c.push_str(
        "}\n\n\
         # Only our pod subnets leave this node, and routes of the operator's own protocols\n\
         # named twill_extra_* (service addresses, say); nothing is learned from the routers.\n\
         filter twill_export {\n  if proto = \"twill_pods4\" || proto = \"twill_pods6\" || proto ~ \"twill_extra_*\" then accept;\n  reject;\n}\n\n",
    );
    c.push_str(&format!(
        "template bgp twill_peer {{\n  local as {};\n",
        bgp.asn
    ));
    if bgp.graceful_restart_time > 0 {
        c.push_str(&format!(
            "  graceful restart on;\n  graceful restart time {};\n",
            bgp.graceful_restart_time
        ));
    } else {
        c.push_str("  graceful restart off;\n");
    }
    c.push_str("}\n");
    let mut skipped = Vec::new();
    for p in &bgp.peers {
        let (local, family) = match p.address {
            IpAddr::V4(_) => (a.local4.map(IpAddr::V4), "ipv4"),
            IpAddr::V6(_) => (a.local6.map(IpAddr::V6), "ipv6"),
        };
        let Some(local) = local else {
            skipped.push(*p);
            continue;
        };
        c.push_str(&format!(
            "\nprotocol bgp {} from twill_peer {{\n  local {local} as {};\n  neighbor {} as {};\n  {family} {{ import none; export filter twill_export; next hop self; }};\n}}\n",
            protocol_name(&p.address),
            bgp.asn,
            p.address,
            p.asn
        ));
    }
    c.push_str(&format!(
        "\ninclude \"{}/*.conf\";\n",
        include_dir.display()
    ));
    (c, skipped)
}

const OURS: &str = "# Written by twilld";

/// BIRD's configuration as twilld wrote it, without the routes it announces: what
/// `twilld cleanup` leaves, so the routers withdraw this node's subnets. `None` when the
/// file is not twilld's or announces nothing.
pub fn withdrawn(text: &str) -> Option<String> {
    if !text.starts_with(OURS) {
        return None;
    }
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            !(l.trim_start().starts_with("route ") && l.trim_end().ends_with(" blackhole;"))
        })
        .collect();
    let out = kept.join("\n") + "\n";
    (out != text).then_some(out)
}

/// One BGP session as BIRD reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub protocol: String,
    pub peer: String,
    /// BIRD's BGP state: Established, Active, Connect, ...
    pub state: String,
    /// When the protocol last changed state, as BIRD prints it.
    pub since: String,
    /// Routes exported to (announced to) the peer.
    pub exported: u64,
    /// Routes the peer sent us (we import none; non-zero only shows what it offers).
    pub received: u64,
    /// Last error BIRD gives for the session, if any.
    pub info: String,
}

impl Session {
    pub fn up(&self) -> bool {
        self.state == "Established"
    }
}

/// Sessions of twill's peers in `birdc show protocols all` output (pure).
pub fn parse_protocols(text: &str) -> Vec<Session> {
    let mut out: Vec<Session> = Vec::new();
    let mut current: Option<Session> = None;
    for line in text.lines() {
        let line = line.strip_prefix("1002-").unwrap_or(line);
        if !line.starts_with(' ') && !line.is_empty() {
            out.extend(current.take());
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.len() >= 5 && w[0].starts_with("twill_") && w[1] == "BGP" {
                // Since is one word ("16:20:01.520") or two ("2026-11-30 16:20:01"),
                // as BIRD's timeformat says; Info follows it.
                let two = w
                    .get(5)
                    .is_some_and(|x| x.contains(':') && w[4].contains('-'));
                let rest = if two { 6 } else { 5 };
                let since = if two {
                    format!("{} {}", w[4], w[5])
                } else {
                    w[4].to_string()
                };
                current = Some(Session {
                    protocol: w[0].to_string(),
                    peer: String::new(),
                    state: w.get(rest).copied().unwrap_or(w[3]).to_string(),
                    since,
                    exported: 0,
                    received: 0,
                    info: w.get(rest + 1..).map(|r| r.join(" ")).unwrap_or_default(),
                });
            }
            continue;
        }
        let Some(s) = current.as_mut() else {
            continue;
        };
        let t = line.trim();
        if let Some(v) = t.strip_prefix("BGP state:") {
            s.state = v.trim().to_string();
        } else if let Some(v) = t.strip_prefix("Neighbor address:") {
            s.peer = v.trim().to_string();
        } else if let Some(v) = t.strip_prefix("Last error:") {
            s.info = v.trim().to_string();
        } else if let Some(v) = t.strip_prefix("Routes:") {
            // "1 imported, 0 filtered, 1 exported, 0 preferred"
            for part in v.split(',') {
                let mut it = part.split_whitespace();
                if let (Some(n), Some(what)) = (it.next(), it.next()) {
                    let n: u64 = n.parse().unwrap_or(0);
                    match what {
                        "exported" => s.exported += n,
                        "imported" | "filtered" => s.received += n,
                        _ => {}
                    }
                }
            }
        }
    }
    out.extend(current);
    out
}

async fn birdc(socket: &Path, args: &[&str]) -> Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("birdc")
            .arg("-s")
            .arg(socket)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("birdc {}: no answer in 10 s", args.join(" ")))?
    .with_context(|| format!("running birdc (BIRD 2's client) for {}", args.join(" ")))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "birdc -s {} {}: {}{}",
            socket.display(),
            args.join(" "),
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(text)
}

/// BIRD's sessions for twill's peers, read through its control socket.
pub async fn sessions(socket: &Path) -> Result<Vec<Session>> {
    Ok(parse_protocols(
        &birdc(socket, &["show", "protocols", "all"]).await?,
    ))
}

/// Writes `text` as BIRD's configuration when it differs from the file, and has a running
/// BIRD reload it. Returns whether the file changed. A BIRD not running yet reads the file
/// when it starts; a configuration BIRD refuses is an error naming BIRD's words.
pub async fn apply(opts: &BgpOptions, text: &str) -> Result<bool> {
    let current = std::fs::read_to_string(&opts.config_file).unwrap_or_default();
    let changed = current != text;
    if changed {
        if let Some(dir) = opts.config_file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // BIRD refuses a config whose include names a directory that is not there; an
        // empty one includes nothing. (Best effort: a read-only path shows in BIRD's answer.)
        std::fs::create_dir_all(&opts.include_dir).ok();
        write_atomic(&opts.config_file, text.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", opts.config_file.display()))?;
    }
    if !opts.control_socket.exists() {
        if changed {
            info!(socket = %opts.control_socket.display(), "BIRD not running yet; it reads {} when it starts", opts.config_file.display());
        }
        return Ok(changed);
    }
    if changed {
        let said = birdc(&opts.control_socket, &["configure"]).await?;
        if !said.contains("Reconfigured") && !said.contains("Reconfiguration in progress") {
            bail!(
                "BIRD refused {}: {}",
                opts.config_file.display(),
                said.trim()
            );
        }
        info!(config = %opts.config_file.display(), "BIRD reconfigured");
    }
    Ok(changed)
}

/// Where the sessions BIRD reports go (the daemon's metrics); kept apart so this crate
/// knows nothing of how they are exported.
pub trait SessionSink: Send + Sync + 'static {
    fn sessions(&self, sessions: &[Session]);
}

impl<T: SessionSink> SessionSink for std::sync::Arc<T> {
    fn sessions(&self, sessions: &[Session]) {
        (**self).sessions(sessions)
    }
}

/// Keeps BIRD's configuration equal to what `announce` says (the BGP settings, which a
/// config reload may change, and our subnets; the file is rewritten if someone else
/// changed it) and the BGP metrics current, until `announce` closes.
pub fn spawn(
    opts: BgpOptions,
    mut announce: watch::Receiver<Option<(BgpConf, Announce)>>,
    sink: impl SessionSink,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut last_error = String::new();
        loop {
            // Cloned out first: the borrow must not live across the awaits below.
            let current = announce.borrow_and_update().clone();
            if let Some((bgp, a)) = current {
                let (text, skipped) = render(&bgp, &a, &opts.include_dir);
                for p in skipped {
                    warn!(peer = %p, "BGP peer skipped: this node has no address of its family");
                }
                match apply(&opts, &text).await {
                    Ok(_) => last_error.clear(),
                    Err(e) => {
                        let e = format!("{e:#}");
                        if e != last_error {
                            warn!("BGP: {e}");
                            last_error = e;
                        }
                    }
                }
            }
            if opts.control_socket.exists() {
                match sessions(&opts.control_socket).await {
                    Ok(s) => sink.sessions(&s),
                    Err(e) => warn!("BGP: reading BIRD's sessions: {e:#}"),
                }
            } else {
                sink.sessions(&[]);
            }
            tokio::select! {
                r = announce.changed() => if r.is_err() { return },
                _ = tick.tick() => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_config::NetConf;

    fn conf(peers: &str) -> BgpConf {
        let text =
            format!(r#"{{"Network":"10.244.0.0/16","BGP":{{"ASN":64512,"Peers":{peers}}}}}"#);
        NetConf::parse(&text).unwrap().0.bgp.unwrap()
    }

    #[test]
    fn an_ipv6_only_node_s_router_id_is_its_address_low_32_bits() {
        assert_eq!(
            router_id(None, Some("2001:2::c612:7".parse().unwrap())).to_string(),
            "198.18.0.7"
        );
        let v4: Ipv4Addr = "198.18.0.1".parse().unwrap();
        assert_eq!(router_id(Some(v4), Some("2001:2::9".parse().unwrap())), v4);
    }

    fn announce() -> Announce {
        Announce {
            router_id: "198.18.0.1".parse().unwrap(),
            local4: Some("198.18.0.1".parse().unwrap()),
            local6: None,
            v4: Some("10.244.1.0/24".parse().unwrap()),
            v6: None,
        }
    }

    #[test]
    fn renders_one_session_per_peer_announcing_only_our_subnet() {
        let bgp =
            conf(r#"[{"Address":"198.18.0.5","ASN":64513},{"Address":"2001:db8::5","ASN":64513}]"#);
        let (text, skipped) = render(&bgp, &announce(), Path::new("/etc/bird/twill.d"));
        assert!(text.contains("router id 198.18.0.1;"));
        assert!(text.contains("route 10.244.1.0/24 blackhole;"));
        assert!(text.contains(
            "protocol bgp twill_198_18_0_5 from twill_peer {\n  local 198.18.0.1 as 64512;\n  neighbor 198.18.0.5 as 64513;\n  ipv4 { import none; export filter twill_export; next hop self; };"
        ));
        assert!(text.contains("graceful restart time 120;"));
        assert!(text.ends_with("include \"/etc/bird/twill.d/*.conf\";\n"));
        assert!(
            !text.contains("protocol kernel"),
            "never touches the kernel table"
        );
        // No IPv6 address on this node: the IPv6 peer is left out, and said so.
        assert_eq!(skipped.len(), 1);
        assert!(!text.contains("2001:db8::5"));

        let mut none = announce();
        none.v4 = None;
        let (text, _) = render(&bgp, &none, Path::new("/x"));
        assert!(!text.contains("blackhole"), "a released lease is withdrawn");

        // cleanup's rewrite of the first file: the routes go, the sessions stay.
        let (full, _) = render(&bgp, &announce(), Path::new("/x"));
        let w = withdrawn(&full).unwrap();
        assert!(!w.contains("blackhole") && w.contains("protocol bgp twill_198_18_0_5"));
        assert_eq!(withdrawn(&w), None, "nothing more to withdraw");
        assert_eq!(
            withdrawn("router id 1.2.3.4;\n  route 10.0.0.0/8 blackhole;\n"),
            None,
            "not ours"
        );
    }

    #[test]
    fn reads_sessions_from_show_protocols_all() {
        let out = "BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
twill_device Device     ---        up     16:20:00.000  
twill_pods4 Static     master4    up     16:20:00.000  
twill_198_18_0_5 BGP        ---        up     16:20:01.520  Established   
  BGP state:          Established
    Neighbor address: 198.18.0.5
    Neighbor AS:      64513
    Local AS:         64512
  Channel ipv4
    State:          UP
    Routes:         0 imported, 1 exported, 0 preferred
twill_198_18_0_6 BGP        ---        start  16:20:00.000  Active        Socket: Connection refused
  BGP state:          Active
    Neighbor address: 198.18.0.6
    Last error:       Socket: Connection refused
  Channel ipv4
    State:          DOWN
mine       BGP        ---        up     16:20:01.520  Established
";
        let s = parse_protocols(out);
        assert_eq!(s.len(), 2, "twill's sessions only: {s:?}");
        assert_eq!(s[0].peer, "198.18.0.5");
        assert!(s[0].up());
        assert_eq!(s[0].exported, 1);
        assert_eq!(s[0].since, "16:20:01.520");
        assert_eq!(s[1].peer, "198.18.0.6");
        assert!(!s[1].up());
        assert_eq!(s[1].state, "Active");
        assert_eq!(s[1].info, "Socket: Connection refused");
    }
}
