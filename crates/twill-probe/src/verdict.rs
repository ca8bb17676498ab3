//! What a round of probes says about a peer (pure). The paths are probed independently
//! (over the overlay VTEP to VTEP, over the underlay to the peer's PublicIP, and over the
//! overlay at the full pod MTU with DF set); which of them answer tells the usual overlay
//! failures apart: a firewall dropping VXLAN's UDP port answers the underlay and not the
//! overlay; an MTU black hole answers small overlay probes and not full-size ones; a node
//! that is down answers nothing. One more thing is heard rather than probed: whether the
//! peer's own probes reach us over the same path, which tells a one-way drop from a
//! two-way one.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// One probe's outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Probe {
    /// Not sent: the path does not apply (host-gw has no overlay of its own), or an
    /// earlier probe already decided it (no full-size probe after a lost small one).
    #[default]
    NotSent,
    Lost,
    Answered(#[serde(with = "secs")] Duration),
}

impl Probe {
    pub fn answered(self) -> bool {
        matches!(self, Probe::Answered(_))
    }

    pub fn rtt(self) -> Option<Duration> {
        match self {
            Probe::Answered(d) => Some(d),
            _ => None,
        }
    }
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// What one round found for one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Round {
    /// Echo to the peer's PublicIP.
    pub underlay: Probe,
    /// Echo from our VTEP address to the peer's, small.
    pub overlay: Probe,
    /// The same at the full pod MTU (`size` bytes, IP header included) with DF set.
    pub full: Probe,
    /// The full size probed.
    pub size: u32,
    /// When `full` was lost: the largest size (IP header included) that crossed.
    pub passes: Option<u32>,
    /// Pod traffic's path did not answer, yet the peer's own probes over it reached us
    /// lately: that path works from the peer to us.
    pub heard: bool,
}

impl Round {
    /// The probe of the path pod traffic takes: the overlay, or without an overlay of its
    /// own (host-gw, where pods are routed to the node address) the underlay.
    pub fn pod_path(&self) -> Probe {
        match self.overlay {
            Probe::NotSent => self.underlay,
            o => o,
        }
    }
}

/// A peer's state, from its last round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Not probed yet.
    #[default]
    Unknown,
    Ok,
    /// The underlay answers, the overlay does not: VXLAN's UDP port is dropped on the way.
    VxlanBlocked,
    /// Small overlay probes cross, full-size ones do not.
    Mtu {
        size: u32,
        passes: Option<u32>,
    },
    /// Neither path answers.
    PeerDown,
    /// Our probes over pod traffic's path are lost, the peer's over it reach us: packets
    /// from this node to the peer are dropped, the other way they pass.
    Asymmetric,
}

impl Verdict {
    /// The label in logs, metrics and `doctor`.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Unknown => "unknown",
            Verdict::Ok => "ok",
            Verdict::VxlanBlocked => "vxlan-blocked",
            Verdict::Mtu { .. } => "mtu",
            Verdict::PeerDown => "peer-down",
            Verdict::Asymmetric => "asymmetric",
        }
    }

    pub fn is_ok(&self) -> bool {
        *self == Verdict::Ok
    }

    /// What is wrong and what fixes it, for a person: `port` is VXLAN's UDP port.
    pub fn explain(&self, peer: &str, port: u16) -> String {
        match self {
            Verdict::Unknown => format!("{peer} has not been probed yet"),
            Verdict::Ok => format!("{peer} answers over the overlay"),
            Verdict::VxlanBlocked => format!(
                "UDP {port} is dropped between this node and {peer}: open it in the firewall/security group (the node's address answers, the overlay does not)"
            ),
            Verdict::Mtu { size, passes } => {
                let pass = match passes {
                    Some(p) => format!("{p}-byte packets pass"),
                    None => "no size tried passed".to_string(),
                };
                format!(
                    "{size}-byte packets to {peer} are lost over the overlay, {pass}: the underlay path carries less than the pod MTU needs; set Backend.MTU to the path's MTU (twill subtracts VXLAN's overhead) or fix the path"
                )
            }
            Verdict::PeerDown => format!(
                "{peer} answers neither over the overlay nor at its node address: is the node up and reachable?"
            ),
            Verdict::Asymmetric => format!(
                "{peer}'s overlay packets reach this node, ours to it are lost: UDP {port} is dropped one way only, from this node to {peer} (this node's egress or {peer}'s ingress filter)"
            ),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The verdict a round gives. The overlay decides: a peer whose overlay answers is not
/// down even if ICMP to its node address is filtered. Without an overlay path (host-gw,
/// where pod traffic is routed to the node address) the underlay probe is the overlay's.
/// A path that does not answer while the peer's probes over it reach us is dropped one
/// way, whatever the underlay says.
pub fn judge(r: &Round) -> Verdict {
    match (r.pod_path(), r.underlay, r.full) {
        (Probe::Answered(_), _, Probe::Lost) => Verdict::Mtu {
            size: r.size,
            passes: r.passes,
        },
        (Probe::Answered(_), ..) => Verdict::Ok,
        _ if r.heard => Verdict::Asymmetric,
        (_, Probe::Answered(_), _) => Verdict::VxlanBlocked,
        _ => Verdict::PeerDown,
    }
}

/// The sizes a search for the largest that crosses tries next: halving the gap between
/// `passes` (known to cross) and `fails` (known not to) until it is under 8 bytes (IPv4
/// fragments are 8-byte units; finer says nothing more). `None` when done.
pub fn next_size(passes: u32, fails: u32) -> Option<u32> {
    (fails > passes + 8).then(|| passes + (fails - passes) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Probe = Probe::Answered(Duration::from_millis(1));

    fn round(underlay: Probe, overlay: Probe, full: Probe) -> Round {
        Round {
            underlay,
            overlay,
            full,
            size: 1450,
            passes: None,
            heard: false,
        }
    }

    #[test]
    fn each_failure_has_its_verdict() {
        use Probe::{Lost, NotSent};
        let cases = [
            (round(MS, MS, MS), "ok"),
            // ICMP to the node filtered, the overlay fine: ok.
            (round(Lost, MS, MS), "ok"),
            (round(MS, Lost, NotSent), "vxlan-blocked"),
            (round(MS, MS, Lost), "mtu"),
            (round(Lost, Lost, NotSent), "peer-down"),
            // host-gw: the underlay is the overlay.
            (round(MS, NotSent, NotSent), "ok"),
            (round(Lost, NotSent, NotSent), "peer-down"),
            (round(MS, NotSent, Lost), "mtu"),
        ];
        for (r, want) in cases {
            assert_eq!(judge(&r).label(), want, "{r:?}");
        }
    }

    #[test]
    fn a_peer_heard_over_a_lost_path_is_asymmetric() {
        use Probe::{Lost, NotSent};
        let heard = |r: Round| Round { heard: true, ..r };
        for r in [
            round(MS, Lost, NotSent),
            round(Lost, Lost, NotSent),
            round(Lost, NotSent, NotSent),
        ] {
            assert_eq!(judge(&heard(r)), Verdict::Asymmetric, "{r:?}");
        }
        // An answering path is judged by what it answers, heard or not.
        assert_eq!(judge(&heard(round(MS, MS, MS))), Verdict::Ok);
        let text = Verdict::Asymmetric.explain("198.18.0.2", 8472);
        assert!(
            text.contains("UDP 8472") && text.contains("from this node to 198.18.0.2"),
            "{text}"
        );
    }

    #[test]
    fn an_mtu_verdict_names_the_sizes() {
        let r = Round {
            passes: Some(1400),
            ..round(MS, MS, Probe::Lost)
        };
        let v = judge(&r);
        assert_eq!(
            v,
            Verdict::Mtu {
                size: 1450,
                passes: Some(1400)
            }
        );
        let text = v.explain("198.18.0.2", 8472);
        assert!(
            text.contains("1450-byte") && text.contains("1400-byte"),
            "{text}"
        );
        let blocked = Verdict::VxlanBlocked.explain("198.18.0.2", 8472);
        assert!(blocked.contains("UDP 8472") && blocked.contains("198.18.0.2"));
    }

    #[test]
    fn the_size_search_halves_down_to_eight_bytes() {
        // A path carrying 1400 bytes, pods at 1450: the search ends within 8 bytes below.
        let crosses = |s: u32| s <= 1400;
        let (mut lo, mut hi) = (84, 1450);
        let mut steps = 0;
        while let Some(s) = next_size(lo, hi) {
            steps += 1;
            if crosses(s) {
                lo = s
            } else {
                hi = s
            }
        }
        assert!((1393..=1400).contains(&lo), "{lo}");
        assert!(steps <= 8, "{steps} probes");
        assert_eq!(next_size(1400, 1404), None);
    }
}
