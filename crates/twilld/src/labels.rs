//! Metric label sets, as every metric family of twilld keys them.

use std::fmt::Write;
use std::net::IpAddr;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

pub type Labels = Vec<(String, String)>;

/// One label.
pub fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

/// Which path of a peer a probe series is about.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ProbePath {
    Overlay,
    Underlay,
    Mtu,
    Inbound,
}

impl ProbePath {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overlay => "overlay",
            Self::Underlay => "underlay",
            Self::Mtu => "mtu",
            Self::Inbound => "inbound",
        }
    }
}

impl EncodeLabelValue for ProbePath {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        e.write_str(self.as_str())
    }
}

/// A peer, by its PublicIP, as a label value.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct PeerIp(pub IpAddr);

impl EncodeLabelValue for PeerIp {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        write!(e, "{}", self.0)
    }
}

/// `twill_peer_reachable`'s labels, as the scrape writes them (`probe_metrics.rs`): plain
/// data, so writing 30 000 series allocates no label strings.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerPath {
    pub peer: PeerIp,
    pub path: ProbePath,
}

/// `twill_peer_rtt_seconds`' key.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: ProbePath,
}
