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

use std::net::{IpAddr, SocketAddr};

use std::collections::{BTreeMap, HashSet};

use twill_probe::{judge, Probe, Round, Target, Verdict};

use crate::options::NodeOptions;

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

/// How `status` and `doctor` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Asks the running daemon for its status: over its control socket (beside subnet.env),
/// else, when given the daemon's listener flags, from its /readyz and /metrics (less: no
/// lease, repairs or refused leases there).
pub async fn fetch(node: &NodeOptions) -> Result<Status> {
    let path = control_socket(&node.subnet_file);
    let socket = async {
        let s = tokio::net::UnixStream::connect(&path).await?;
        let (code, body) = get(s, "/status").await?;
        if code != "200" {
            return Err(anyhow!("/status: HTTP {code}"));
        }
        serde_json::from_str(&body).context("the daemon's status is not the JSON this twilld reads")
    };
    let socket_err = match socket.await {
        Ok(st) => return Ok(st),
        Err(e) => format!(
            "no twilld answering at {} ({e:#}; is twilld running, with --subnet-file {}?)",
            path.display(),
            node.subnet_file.display()
        ),
    };
    if node.healthz.is_none() && node.metrics.is_none() {
        return Err(anyhow!(
            "{socket_err}; give the daemon's --healthz-port or --metrics-port to ask its listeners"
        ));
    }
    from_listeners(node.healthz, node.metrics)
        .await
        .map_err(|e| anyhow!("{socket_err}; nor at its listeners: {e:#}"))
}

/// The daemon's listeners, reached on loopback when they listen on every address.
async fn from_listeners(
    healthz: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
) -> Result<Status> {
    let local = |mut a: SocketAddr| {
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        a
    };
    let mut st = Status {
        node: NodeStatus::default(),
        not_ready: None,
        rules_in_place: true,
        bgp: Vec::new(),
        probes: None,
    };
    if let Some(a) = healthz.map(local) {
        let (code, body) = get(tokio::net::TcpStream::connect(a).await?, "/readyz").await?;
        if code != "200" {
            let why = body.trim().trim_start_matches("not ready: ").to_string();
            st.rules_in_place = !why.contains("rules");
            st.not_ready = Some(why);
        }
    }
    if let Some(a) = metrics.map(local) {
        let (_, body) = get(tokio::net::TcpStream::connect(a).await?, "/metrics").await?;
        st.node.peers = sample(&body, "twill_peers", &[]).unwrap_or(0.0) as usize;
        st.probes = probes_from_metrics(&body);
    }
    Ok(st)
}

/// One sample's value: the first line of metric `name` carrying every `labels` pair.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Verdicts as far as `twill_peer_reachable` tells them (pure): the overlay and underlay
/// paths, the full-size one and the peer's probes heard inbound, per peer; `None` when the
/// daemon does not probe.
pub fn probes_from_metrics(body: &str) -> Option<Vec<PeerProbe>> {
    let mut peers: Vec<String> = body
        .lines()
        .filter(|l| l.starts_with("twill_peer_reachable{"))
        .filter_map(|l| {
            l.split("peer=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_string)
        })
        .collect();
    peers.sort();
    peers.dedup();
    let probing = body
        .lines()
        .any(|l| l.starts_with("twill_peers_unreachable "));
    if !probing {
        return None;
    }
    // Each path's last probe as the gauge says it went (the gauge keeps no RTT or size),
    // judged as the daemon judges a round.
    let probe = |p: &str, path: &str| match sample(
        body,
        "twill_peer_reachable",
        &[("peer", p), ("path", path)],
    ) {
        Some(1.0) => Probe::Answered(std::time::Duration::ZERO),
        Some(_) => Probe::Lost,
        None => Probe::NotSent,
    };
    Some(
        peers
            .iter()
            .map(|p| {
                let r = Round {
                    overlay: probe(p, "overlay"),
                    underlay: probe(p, "underlay"),
                    full: probe(p, "mtu"),
                    heard: probe(p, "inbound").answered(),
                    ..Round::default()
                };
                PeerProbe::of(p, &judge(&r), twill_config::DEFAULT_VXLAN_PORT)
            })
            .collect(),
    )
}

/// A plain HTTP/1.0 GET: the status code and the body. Written by hand: an HTTP client
/// crate with Unix-socket support is a large dependency for one GET.
async fn get(
    mut s: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    path: &str,
) -> Result<(String, String)> {
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: twilld\r\n\r\n").as_bytes())
        .await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("a reply without headers"))?;
    let code = head.split_whitespace().nth(1).unwrap_or("?").to_string();
    Ok((code, body.to_string()))
}

pub async fn run(node: &NodeOptions, args: &StatusArgs) -> Result<bool> {
    let st = fetch(node).await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&st)?),
        Output::Text => print!("{}", render(&st, SystemTime::now())),
    }
    let unreachable = st.probes.iter().flatten().any(PeerProbe::failing);
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
            None if n.backend.is_empty() => {
                "not known (asked the daemon's listeners: no control socket)".into()
            }
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

/// One peer as `status` and `doctor` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerProbe {
    pub peer: String,
    pub verdict: String,
    /// What is wrong and the fix; empty when ok.
    pub fix: String,
    pub overlay_rtt_ms: Option<f64>,
    pub underlay_rtt_ms: Option<f64>,
}

impl PeerProbe {
    /// Peer `peer` with verdict `v`, its fix worded for VXLAN port `port`; no RTTs.
    fn of(peer: &str, v: &Verdict, port: u16) -> Self {
        PeerProbe {
            peer: peer.to_string(),
            verdict: v.label().to_string(),
            fix: if v.is_ok() {
                String::new()
            } else {
                v.explain(peer, port)
            },
            overlay_rtt_ms: None,
            underlay_rtt_ms: None,
        }
    }

    /// Probed and found wanting (not `ok`, and not waiting for its first round).
    pub fn failing(&self) -> bool {
        self.verdict != "ok" && self.verdict != "unknown"
    }

    #[cfg(test)]
    pub fn example(peer: &str, verdict: &str, fix: &str) -> Self {
        PeerProbe {
            peer: peer.into(),
            verdict: verdict.into(),
            fix: fix.into(),
            overlay_rtt_ms: None,
            underlay_rtt_ms: None,
        }
    }
}

/// Every probed peer's last round and verdict.
#[derive(Debug, Default)]
pub struct Board {
    /// Probing is on.
    pub on: bool,
    /// VXLAN's UDP port, for the fixes' wording.
    pub port: u16,
    peers: BTreeMap<IpAddr, (Verdict, Round)>,
    /// Peers whose verdict is ok, and failing ones, kept as verdicts change: every round
    /// asks for them, and counting 10 000 peers per round made probing quadratic.
    ok: usize,
    failing: usize,
}

/// (is ok, is failing): a verdict's part in the counts.
fn tally(v: &Verdict) -> (usize, usize) {
    (
        usize::from(v.is_ok()),
        usize::from(!v.is_ok() && *v != Verdict::Unknown),
    )
}

impl Board {
    /// Records a round: (the verdict before, the verdict now).
    pub(crate) fn record(&mut self, peer: IpAddr, round: Round) -> (Verdict, Verdict) {
        let verdict = judge(&round);
        let old = match self.peers.get_mut(&peer) {
            Some(e) => std::mem::replace(e, (verdict, round)).0,
            None => {
                self.peers.insert(peer, (verdict, round));
                Verdict::Unknown
            }
        };
        let ((o_ok, o_fail), (n_ok, n_fail)) = (tally(&old), tally(&verdict));
        self.ok = self.ok + n_ok - o_ok;
        self.failing = self.failing + n_fail - o_fail;
        (old, verdict)
    }

    /// Keeps only the peers in `targets` (unprobed ones as unknown).
    pub(crate) fn retain(&mut self, targets: &[Target]) {
        let want: HashSet<IpAddr> = targets.iter().map(|t| t.public_ip).collect();
        self.peers.retain(|p, _| want.contains(p));
        for t in targets {
            self.peers
                .entry(t.public_ip)
                .or_insert((Verdict::Unknown, Round::default()));
        }
        (self.ok, self.failing) = self.peers.values().fold((0, 0), |(ok, f), (v, _)| {
            let (a, b) = tally(v);
            (ok + a, f + b)
        });
    }

    /// Every peer's last round (a default one before its first).
    pub(crate) fn rounds(&self) -> impl Iterator<Item = (IpAddr, Round)> + '_ {
        self.peers.iter().map(|(p, (_, r))| (*p, *r))
    }

    pub fn snapshot(&self) -> Option<Vec<PeerProbe>> {
        self.on.then(|| {
            self.peers
                .iter()
                .map(|(peer, (v, r))| {
                    let ms = |p: Probe| p.rtt().map(|d| d.as_secs_f64() * 1000.0);
                    PeerProbe {
                        overlay_rtt_ms: ms(r.overlay),
                        underlay_rtt_ms: ms(r.underlay),
                        ..PeerProbe::of(&peer.to_string(), v, self.port)
                    }
                })
                .collect()
        })
    }

    /// (peers whose verdict is ok, peers probed or to be).
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.ok, self.peers.len())
    }

    pub(crate) fn failing(&self) -> usize {
        self.failing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn verdicts_come_back_from_the_metrics() {
        let body = r#"# HELP twill_peers_unreachable Probed peers whose verdict is not ok.
# TYPE twill_peers_unreachable gauge
twill_peers_unreachable 2
twill_peer_reachable{peer="198.18.0.2",path="overlay"} 0
twill_peer_reachable{peer="198.18.0.2",path="underlay"} 1
twill_peer_reachable{peer="198.18.0.3",path="overlay"} 1
twill_peer_reachable{peer="198.18.0.3",path="underlay"} 1
twill_peer_reachable{peer="198.18.0.3",path="mtu"} 1
twill_peer_reachable{peer="198.18.0.4",path="overlay"} 1
twill_peer_reachable{peer="198.18.0.4",path="mtu"} 0
twill_peer_reachable{peer="198.18.0.5",path="overlay"} 0
twill_peer_reachable{peer="198.18.0.5",path="underlay"} 0
twill_peer_reachable{peer="198.18.0.6",path="overlay"} 0
twill_peer_reachable{peer="198.18.0.6",path="underlay"} 1
twill_peer_reachable{peer="198.18.0.6",path="inbound"} 1
twill_peers 4
"#;
        let p = probes_from_metrics(body).unwrap();
        let v: Vec<(&str, &str)> = p
            .iter()
            .map(|x| (x.peer.as_str(), x.verdict.as_str()))
            .collect();
        assert_eq!(
            v,
            [
                ("198.18.0.2", "vxlan-blocked"),
                ("198.18.0.3", "ok"),
                ("198.18.0.4", "mtu"),
                ("198.18.0.5", "peer-down"),
                ("198.18.0.6", "asymmetric")
            ]
        );
        assert!(p[0].fix.contains("UDP 8472"));
        assert_eq!(sample(body, "twill_peers", &[]), Some(4.0));
        assert!(
            probes_from_metrics("twill_peers 4\n").is_none(),
            "not probing"
        );
    }

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

    fn round(underlay: Probe, overlay: Probe) -> Round {
        Round {
            underlay,
            overlay,
            full: if overlay.answered() {
                underlay
            } else {
                Probe::NotSent
            },
            size: 1450,
            ..Round::default()
        }
    }

    const UP: Probe = Probe::Answered(Duration::from_millis(1));

    #[test]
    fn the_board_reports_each_change_of_verdict_once() {
        let mut b = Board {
            on: true,
            port: 8472,
            ..Default::default()
        };
        let t = |p: &str| Target {
            public_ip: p.parse().unwrap(),
            vtep: None,
            mtu: 1450,
        };
        b.retain(&[t("198.18.0.2"), t("198.18.0.3")]);
        assert_eq!(b.counts(), (0, 2), "unprobed peers count as not reachable");
        assert_eq!(b.failing(), 0, "but not as failing");
        assert_eq!(
            b.record("198.18.0.2".parse().unwrap(), round(UP, UP)),
            (Verdict::Unknown, Verdict::Ok)
        );
        assert_eq!(
            b.record("198.18.0.2".parse().unwrap(), round(UP, UP)),
            (Verdict::Ok, Verdict::Ok),
            "no change"
        );
        assert_eq!(
            b.record("198.18.0.3".parse().unwrap(), round(UP, Probe::Lost)),
            (Verdict::Unknown, Verdict::VxlanBlocked)
        );
        assert_eq!((b.counts(), b.failing()), ((1, 2), 1));
        let snap = b.snapshot().unwrap();
        assert_eq!(snap[1].verdict, "vxlan-blocked");
        assert!(snap[1].fix.contains("UDP 8472"), "{}", snap[1].fix);
        b.retain(&[t("198.18.0.2")]);
        let left: Vec<IpAddr> = b.rounds().map(|(p, _)| p).collect();
        assert_eq!(left, ["198.18.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!((b.counts(), b.failing()), ((1, 1), 0));
        assert_eq!(
            b.record(
                "198.18.0.2".parse().unwrap(),
                round(Probe::Lost, Probe::Lost)
            ),
            (Verdict::Ok, Verdict::PeerDown)
        );
        assert_eq!((b.counts(), b.failing()), ((0, 1), 1));
    }
}
