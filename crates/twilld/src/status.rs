//! `twilld status`: one screen a person reads first. It asks the running daemon over its
//! control socket (beside subnet.env) rather than redoing the daemon's work: the lease,
//! the peers and whether each answers over the overlay, the rules, BGP sessions, the last
//! repairs and the refused leases. The daemon serves the same document as JSON.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::probes::PeerProbe;

/// Where the daemon listens for `twilld status` and `doctor`: beside subnet.env, so a
/// second daemon with its own --subnet-file has its own.
pub fn control_socket(subnet_file: &Path) -> PathBuf {
    subnet_file.with_file_name("twilld.sock")
}

/// The last repairs kept for `status`.
const REPAIRS_KEPT: usize = 10;

/// The main loop's part of the status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// Our lease's key, once held.
    pub lease: Option<String>,
    pub backend: String,
    pub public_ip: Option<String>,
    pub mtu: u32,
    /// Peers in the lease table.
    pub peers: usize,
    pub refused: Vec<Refused>,
    /// The last objects put back, newest last.
    pub repairs: VecDeque<Repair>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Refused {
    pub lease: String,
    pub reason: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Repair {
    /// Seconds since the epoch.
    pub at: u64,
    pub kind: String,
    pub object: String,
}

impl NodeStatus {
    pub fn note_repairs(&mut self, restored: &[(&'static str, String)]) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for (kind, object) in restored {
            self.repairs.push_back(Repair {
                at,
                kind: kind.to_string(),
                object: object.clone(),
            });
        }
        while self.repairs.len() > REPAIRS_KEPT {
            self.repairs.pop_front();
        }
    }
}

/// Everything `GET /status` on the control socket answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub node: NodeStatus,
    /// Why /readyz says 503; `None` when ready.
    pub not_ready: Option<String>,
    pub rules_in_place: bool,
    pub bgp: Vec<BgpSession>,
    /// `None` when probing is off (--peer-probe-interval=0).
    pub probes: Option<Vec<PeerProbe>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BgpSession {
    pub peer: String,
    pub established: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[arg(long, value_enum, default_value = "text")]
    pub output: crate::doctor::Output,
}

/// Asks the daemon behind `subnet_file`'s control socket for its status.
pub async fn fetch(subnet_file: &Path) -> Result<Status> {
    let path = control_socket(subnet_file);
    let body = get(&path, "/status").await.with_context(|| {
        format!(
            "no twilld answering at {} (is twilld running, with --subnet-file {}?)",
            path.display(),
            subnet_file.display()
        )
    })?;
    serde_json::from_str(&body).context("the daemon's status is not the JSON this twilld reads")
}

/// A plain HTTP/1.0 GET over a Unix socket: one request, the body back. Written by hand:
/// an HTTP client crate with Unix-socket support is a large dependency for one GET.
async fn get(socket: &Path, path: &str) -> Result<String> {
    let mut s = tokio::net::UnixStream::connect(socket).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: twilld\r\n\r\n").as_bytes())
        .await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("a reply without headers"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        return Err(anyhow!("{path}: HTTP {status}"));
    }
    Ok(body.to_string())
}

pub async fn run(subnet_file: &Path, args: &StatusArgs) -> Result<bool> {
    let st = fetch(subnet_file).await?;
    match args.output {
        crate::doctor::Output::Json => println!("{}", serde_json::to_string_pretty(&st)?),
        crate::doctor::Output::Text => print!("{}", render(&st, SystemTime::now())),
    }
    let unreachable = st
        .probes
        .iter()
        .flatten()
        .any(|p| p.verdict != "ok" && p.verdict != "unknown");
    Ok(st.not_ready.is_none() && !unreachable)
}

/// The text screen (pure: `now` dates the repairs).
pub fn render(st: &Status, now: SystemTime) -> String {
    let n = &st.node;
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<9} {v}\n"));
    line(
        "lease",
        match &n.lease {
            Some(l) => format!(
                "{l} ({}, public IP {}, MTU {})",
                n.backend,
                n.public_ip.as_deref().unwrap_or("?"),
                n.mtu
            ),
            None => "none held yet".into(),
        },
    );
    line(
        "ready",
        match &st.not_ready {
            None => "yes".into(),
            Some(why) => format!("no: {why}"),
        },
    );
    let mut details = Vec::new();
    let peers = match &st.probes {
        None => format!("{} (probes off: --peer-probe-interval=0)", n.peers),
        Some(p) => {
            let ok = p.iter().filter(|x| x.verdict == "ok").count();
            for x in p.iter().filter(|x| x.verdict != "ok") {
                details.push(format!("  {} {}: {}", x.peer, x.verdict, x.fix));
            }
            format!("{}; {ok}/{} reachable over the overlay", n.peers, p.len())
        }
    };
    line("peers", peers);
    for d in details {
        out.push_str(&d);
        out.push('\n');
    }
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<9} {v}\n"));
    line(
        "rules",
        if st.rules_in_place {
            "in place".into()
        } else {
            "NOT in place (see the log)".into()
        },
    );
    line(
        "bgp",
        if st.bgp.is_empty() {
            "no sessions".into()
        } else {
            st.bgp
                .iter()
                .map(|b| {
                    let s = if b.established { "established" } else { "down" };
                    format!("{} {s}", b.peer)
                })
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    line(
        "repairs",
        if n.repairs.is_empty() {
            "none since start".into()
        } else {
            n.repairs
                .iter()
                .rev()
                .take(3)
                .map(|r| format!("{} {} {} s ago", r.kind, r.object, now.saturating_sub(r.at)))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    line(
        "refused",
        if n.refused.is_empty() {
            "none".into()
        } else {
            let shown: Vec<String> = n
                .refused
                .iter()
                .take(3)
                .map(|r| format!("{} ({})", r.lease, r.reason))
                .collect();
            format!("{}: {}", n.refused.len(), shown.join(", "))
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_screen_names_what_is_wrong() {
        let at = UNIX_EPOCH + Duration::from_secs(1_000);
        let st = Status {
            node: NodeStatus {
                lease: Some("10.244.1.0-24".into()),
                backend: "vxlan".into(),
                public_ip: Some("198.18.0.1".into()),
                mtu: 1450,
                peers: 2,
                refused: vec![Refused {
                    lease: "10.244.200.0-24".into(),
                    reason: "not-on-link".into(),
                    detail: "…".into(),
                }],
                repairs: VecDeque::from([Repair {
                    at: 990,
                    kind: "route".into(),
                    object: "10.244.2.0/24".into(),
                }]),
            },
            not_ready: None,
            rules_in_place: true,
            bgp: vec![],
            probes: Some(vec![
                PeerProbe::example("198.18.0.2", "ok", ""),
                PeerProbe::example("198.18.0.3", "vxlan-blocked", "open UDP 8472"),
            ]),
        };
        let text = render(&st, at);
        for want in [
            "lease     10.244.1.0-24 (vxlan, public IP 198.18.0.1, MTU 1450)",
            "ready     yes",
            "peers     2; 1/2 reachable over the overlay",
            "  198.18.0.3 vxlan-blocked: open UDP 8472",
            "repairs   route 10.244.2.0/24 10 s ago",
            "refused   1: 10.244.200.0-24 (not-on-link)",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
    }
}
