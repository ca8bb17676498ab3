//! This node's BGP settings: net-conf.json's `BGP` section under the per-node overrides
//! (`--bgp-*` flags, or the node object's `twill.io/bgp-*` annotations in Kubernetes).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use twill_config::{BgpConf, BgpPeer, NetConf};

/// Where BIRD and its configuration are: `--bgp-*` flags.
#[derive(Debug, Clone)]
pub struct BgpOptions {
    pub config_file: PathBuf,
    pub control_socket: PathBuf,
    pub include_dir: PathBuf,
    pub asn: Option<u32>,
    pub peers: Option<Vec<BgpPeer>>,
}

/// The BGP settings for this node: net-conf.json's `BGP`, with `--bgp-asn` and
/// `--bgp-peers` (per-node: racks with different routers) taking precedence. `None` when
/// neither asks for BGP.
pub fn effective(conf: &NetConf, opts: &BgpOptions) -> Result<Option<BgpConf>> {
    let mut bgp = match (&conf.bgp, opts.asn) {
        (Some(b), _) => b.clone(),
        (None, Some(asn)) => BgpConf {
            asn,
            peers: Vec::new(),
            graceful_restart_time: twill_config::DEFAULT_GRACEFUL_RESTART_TIME,
        },
        (None, None) if opts.peers.is_some() => {
            bail!("--bgp-peers given, but no AS number: set BGP.ASN in net-conf.json or --bgp-asn")
        }
        (None, None) => return Ok(None),
    };
    if let Some(asn) = opts.asn {
        bgp.asn = asn;
    }
    if let Some(peers) = &opts.peers {
        bgp.peers = peers.clone();
    }
    Ok(Some(bgp))
}

/// Node annotations (Kubernetes) that set this node's AS and peers, as `--bgp-asn` and
/// `--bgp-peers` do (same value forms); the flags win when both are given.
pub const ASN_ANNOTATION: &str = "twill.io/bgp-asn";
pub const PEERS_ANNOTATION: &str = "twill.io/bgp-peers";

/// The overrides our node object carries: (AS, peers), each checked as its flag is. The
/// node object is store data: a bad value is refused, naming the annotation.
pub fn node_overrides(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<(Option<u32>, Option<Vec<BgpPeer>>)> {
    let field = |k: &str| format!("node annotation {k}");
    let asn = match annotations.get(ASN_ANNOTATION) {
        None => None,
        Some(v) => {
            let n: u64 = v
                .trim()
                .parse()
                .map_err(|_| anyhow!("{}={v:?}: not an AS number", field(ASN_ANNOTATION)))?;
            Some(twill_config::check_asn(&field(ASN_ANNOTATION), n)?)
        }
    };
    let peers = match annotations.get(PEERS_ANNOTATION) {
        None => None,
        Some(v) => Some(BgpPeer::parse_list(&field(PEERS_ANNOTATION), v)?),
    };
    Ok((asn, peers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_over_net_conf() {
        let (c, _) = NetConf::parse(
            r#"{"Network":"10.244.0.0/16","BGP":{"ASN":64512,"Peers":[{"Address":"198.18.0.5","ASN":64513}]}}"#,
        )
        .unwrap();
        let mut opts = BgpOptions {
            config_file: "/x".into(),
            control_socket: "/y".into(),
            include_dir: "/z".into(),
            asn: None,
            peers: None,
        };
        assert_eq!(effective(&c, &opts).unwrap().unwrap().peers.len(), 1);
        opts.peers = Some(BgpPeer::parse_list("f", "198.18.1.5:65001,198.18.1.6:65001").unwrap());
        opts.asn = Some(65010);
        let e = effective(&c, &opts).unwrap().unwrap();
        assert_eq!((e.asn, e.peers.len()), (65010, 2));
        let (plain, _) = NetConf::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert!(
            effective(&plain, &opts).unwrap().is_some(),
            "--bgp-asn alone enables BGP"
        );
        opts.asn = None;
        assert!(
            effective(&plain, &opts).is_err(),
            "peers without an AS number"
        );
        opts.peers = None;
        assert!(effective(&plain, &opts).unwrap().is_none());
    }

    #[test]
    fn node_annotations_are_checked_like_the_flags() {
        let ann =
            |k: &str, v: &str| std::collections::BTreeMap::from([(k.to_string(), v.to_string())]);
        let (asn, peers) = node_overrides(&ann(ASN_ANNOTATION, "65010")).unwrap();
        assert_eq!((asn, peers), (Some(65010), None));
        let (_, peers) = node_overrides(&ann(PEERS_ANNOTATION, "198.18.1.1:65001")).unwrap();
        assert_eq!(peers.unwrap()[0].to_string(), "198.18.1.1:65001");
        for (k, v) in [
            (ASN_ANNOTATION, "sixty"),
            (ASN_ANNOTATION, "0"),
            (PEERS_ANNOTATION, "198.18.1.1"),
            (PEERS_ANNOTATION, "127.0.0.1:65001"),
        ] {
            let e = format!("{:#}", node_overrides(&ann(k, v)).unwrap_err());
            assert!(e.contains(k), "{e}");
        }
    }
}
