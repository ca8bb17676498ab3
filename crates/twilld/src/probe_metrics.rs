//! `twill_peer_reachable`: each peer's paths as its last probe round found them, read off
//! the probe board at each scrape.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use twill_probe::{Probe, Round};

use crate::labels::{PeerIp, PeerPath, ProbePath};
use crate::status::Board;

/// The `twill_peer_reachable` series of a peer's last round: (path, 1 or 0) for each path
/// probed. The peer's own probes reaching us tell only while ours are lost (asymmetric),
/// so the inbound series exists only then: a flanneld peer, which never probes, has no 0
/// to alert on.
pub fn reachable(round: &Round) -> impl Iterator<Item = (ProbePath, i64)> {
    [
        (ProbePath::Overlay, round.pod_path()),
        (ProbePath::Underlay, round.underlay),
        (ProbePath::Mtu, round.full),
    ]
    .into_iter()
    .filter(|(_, p)| *p != Probe::NotSent)
    .map(|(path, p)| (path, i64::from(p.answered())))
    .chain(round.heard.then_some((ProbePath::Inbound, 1)))
}

/// `twill_peer_reachable`, read off the board at each scrape. Series of their own (a
/// gauge per peer and path) were 20 000 small allocations made one by one as peers were
/// first probed, each pinning a page of heap among the probe rounds' garbage: 10 MB of
/// anonymous memory at 10 000 peers that glibc could not give back.
#[derive(Debug)]
pub struct ReachableCollector(pub Arc<Mutex<Board>>);

impl Collector for ReachableCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A copy, so the probes do not wait for the text to be written.
        let rounds: Vec<(IpAddr, Round)> = self.0.lock().expect("not poisoned").rounds().collect();
        let mut series = rounds
            .iter()
            .flat_map(|(peer, round)| reachable(round).map(move |(path, v)| (*peer, path, v)))
            .peekable();
        if series.peek().is_none() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "peer_reachable",
            "1 when the peer answered the last probe on the path (overlay: VTEP to VTEP; underlay: its PublicIP; mtu: the overlay at the full pod MTU with DF), else 0",
            None,
            MetricType::Gauge,
        )?;
        for (peer, path, v) in series {
            let labels = PeerPath {
                peer: PeerIp(peer),
                path,
            };
            ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_probe::Target;

    #[test]
    fn reachable_is_read_off_the_board_at_each_scrape() {
        let board = Arc::new(Mutex::new(Board::default()));
        let mut registry = prometheus_client::registry::Registry::with_prefix("twill");
        registry.register_collector(Box::new(ReachableCollector(board.clone())));
        let scrape = || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        let t = |ip: &str, vtep: Option<&str>| Target {
            public_ip: ip.parse().unwrap(),
            vtep: vtep.map(|v| v.parse().unwrap()),
            mtu: 1450,
        };
        let (a, b) = (t("198.18.0.2", Some("10.244.2.0")), t("198.18.0.3", None));
        board.lock().unwrap().retain(&[a, b]);
        assert!(
            !scrape().contains("peer_reachable"),
            "unprobed peers have no series: {}",
            scrape()
        );
        let up = Probe::Answered(std::time::Duration::from_millis(1));
        let blocked = Round {
            underlay: up,
            overlay: Probe::Lost,
            heard: true,
            ..Default::default()
        };
        let hostgw = Round {
            underlay: up,
            full: Probe::Lost,
            ..Default::default()
        };
        board.lock().unwrap().record(a.public_ip, blocked);
        board.lock().unwrap().record(b.public_ip, hostgw);
        let text = scrape();
        let mut got: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("twill_peer_reachable{"))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                r#"twill_peer_reachable{peer="198.18.0.2",path="inbound"} 1"#,
                r#"twill_peer_reachable{peer="198.18.0.2",path="overlay"} 0"#,
                r#"twill_peer_reachable{peer="198.18.0.2",path="underlay"} 1"#,
                r#"twill_peer_reachable{peer="198.18.0.3",path="mtu"} 0"#,
                r#"twill_peer_reachable{peer="198.18.0.3",path="overlay"} 1"#,
                r#"twill_peer_reachable{peer="198.18.0.3",path="underlay"} 1"#,
            ]
        );
        assert!(text.contains("# TYPE twill_peer_reachable gauge"), "{text}");
        // A peer gone takes its series with it.
        board.lock().unwrap().retain(&[b]);
        assert!(!scrape().contains("198.18.0.2"));
    }
}
