//! The one start-up path every entry point shares (the daemon, `exabgp-feed`, `doctor`'s
//! view of the node): where net-conf.json comes from and how it is read, connecting to the
//! store with the same backoff, the cluster's pod network for a file without `Network`,
//! and what our node object says about this node. Each entry point used to do these by
//! hand and they drifted (the feed refused a file the daemon accepted; doctor ignored the
//! BGP annotations the daemon honoured).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::IpNetwork;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use twill_bgp::BgpOptions;
use twill_config::NetConf;
use twill_etcd::{EtcdOptions, EtcdStore};
use twill_kube::{KubeOptions, KubeStore};
use twill_store::StoreError;

use crate::options::kube_with_ipv6;
use crate::settings::Pinned;

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);
const WAITING_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long start-up keeps trying: until cancelled, beating the liveness heartbeat while
/// it waits (the daemon's /healthz stays green through a long wait for the store).
pub struct Patience<'a> {
    pub cancel: &'a CancellationToken,
    pub beat: &'a (dyn Fn() + Sync),
}

impl Patience<'_> {
    async fn sleep(&self, d: Duration) -> Result<()> {
        (self.beat)();
        tokio::select! {
            _ = self.cancel.cancelled() => bail!("interrupted during start-up"),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    /// Runs a store call until it succeeds or fails in a way retrying won't fix, backing
    /// off from RETRY_MIN to RETRY_MAX between attempts.
    pub async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut delay = RETRY_MIN;
        let mut said = Waiting::default();
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_permanent() => return Err(e.into()),
                // Waiting on an operator: check every second.
                Err(StoreError::Waiting(why)) => {
                    said.say(format!("{what}: waiting: {why}"));
                    self.sleep(Duration::from_secs(1)).await?;
                    continue;
                }
                Err(e) => warn!("{what}: {e}; retrying"),
            }
            self.sleep(delay).await?;
            delay = (delay * 2).min(RETRY_MAX);
        }
    }
}

/// What start-up waits on, said when it changes and again every WAITING_LOG_EVERY while it
/// stays, not on every one-second check.
#[derive(Default)]
struct Waiting(Option<(String, Instant)>);

impl Waiting {
    fn say(&mut self, why: String) {
        let repeat = self
            .0
            .as_ref()
            .is_some_and(|(s, at)| *s == why && at.elapsed() < WAITING_LOG_EVERY);
        if !repeat {
            warn!("{why}");
            self.0 = Some((why, Instant::now()));
        }
    }
}

/// Where net-conf.json comes from: a file (always in Kubernetes mode), or etcd's
/// `<prefix>/config`. SIGHUP re-reads it from the same place.
pub enum ConfigSource {
    /// A file, with the pod network(s) detected from the cluster for a file without
    /// `Network` (Kubernetes mode), filled in on every read.
    File(PathBuf, Vec<IpNetwork>),
    Etcd(Box<EtcdStore>),
}

impl ConfigSource {
    pub async fn load(&self) -> Result<NetConf> {
        match self {
            ConfigSource::File(p, detected) => load_file_config(p, detected),
            ConfigSource::Etcd(store) => match store.get_config().await? {
                Some(text) => parse_conf(&text, &format!("etcd key {}", store.config_key())),
                None => Err(anyhow!("etcd key {} is missing", store.config_key())),
            },
        }
    }
}

/// A store opened and its config read: what every entry point starts from.
pub struct Opened<S> {
    pub store: S,
    pub conf: NetConf,
    pub source: ConfigSource,
    /// Our node's `node-public-ip` and `node-public-ipv6` annotations (Kubernetes),
    /// standing in for --public-ip and --public-ipv6.
    pub hints: Pinned,
    /// The BGP options with our node object's overrides under the flags.
    pub bgp: BgpOptions,
}

/// Who is starting: a node (leases for itself, reads its node object) or an observer of
/// every lease (the ExaBGP feed: no node of its own, never writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Node,
    Observer,
}

/// etcd: a bad config file fails before the store is touched; without a file the config
/// is waited for in etcd.
pub async fn open_etcd(
    opts: &EtcdOptions,
    config_file: Option<&Path>,
    bgp: &BgpOptions,
    p: &Patience<'_>,
) -> Result<Opened<EtcdStore>> {
    let file_conf = match config_file {
        Some(path) => Some((load_file_config(path, &[])?, path.to_path_buf())),
        None => None,
    };
    let what = format!("connecting to etcd {}", opts.endpoints.join(","));
    let store = p.retry(&what, || EtcdStore::connect(opts)).await?;
    let (conf, source) = match file_conf {
        Some((c, path)) => (c, ConfigSource::File(path, Vec::new())),
        None => (
            wait_for_etcd_config(&store, p).await?,
            ConfigSource::Etcd(Box::new(store.clone())),
        ),
    };
    Ok(Opened {
        store,
        conf,
        source,
        hints: Pinned::default(),
        bgp: bgp.clone(),
    })
}

/// Kubernetes: the config is a file; one without `Network` takes the cluster's (for a
/// node and an observer alike). A node also reads its node object: `node-public-ip`
/// (unless `--public-ip` is given) and the BGP annotations.
pub async fn open_kube(
    opts: &KubeOptions,
    path: &Path,
    role: Role,
    public_ip: Option<Ipv4Addr>,
    bgp: &BgpOptions,
    p: &Patience<'_>,
) -> Result<Opened<KubeStore>> {
    // A bad file fails before anything touches the store or the kernel; one that leaves
    // Network to the cluster is checked once it is filled in.
    let doc = read_config_doc(path)?;
    let detect = twill_config::needs_detection(&doc);
    if !detect {
        load_file_config(path, &[])?;
    }
    let opts = kube_with_ipv6(opts, twill_config::enables_ipv6(&doc));
    let store = p
        .retry("connecting to the Kubernetes API", || async {
            match role {
                Role::Node => KubeStore::connect(&opts).await,
                Role::Observer => KubeStore::connect_observer(&opts).await,
            }
        })
        .await?;
    if role == Role::Node {
        info!(node = store.node_name(), "Kubernetes subnet manager");
    }
    let detected = if detect {
        let (nets, from) = p
            .retry("detecting the cluster's pod network", || {
                store.detect_pod_networks()
            })
            .await?;
        let shown: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        info!(networks = %shown.join(","), %from, "{} has no Network: taken from the cluster", path.display());
        nets
    } else {
        Vec::new()
    };
    let conf = load_file_config(path, &detected)?;
    let (hints, bgp) = match role {
        Role::Observer => (Pinned::default(), bgp.clone()),
        Role::Node => {
            let node = p.retry("reading our node", || store.node()).await?;
            // The flags win over the annotations; both are read as flanneld reads them,
            // and node-public-ipv6 is honoured where flanneld ignores it (flannel #2045).
            let hints = Pinned {
                v4: store.public_ip_of(&node).filter(|_| public_ip.is_none()),
                v6: store.public_ipv6_of(&node),
            };
            let annotations = node.metadata.annotations.unwrap_or_default();
            (hints, node_bgp_options(bgp, &annotations)?)
        }
    };
    Ok(Opened {
        store,
        conf,
        source: ConfigSource::File(path.to_path_buf(), detected),
        hints,
        bgp,
    })
}

/// The BGP options for a node whose object carries `annotations`: its `twill.io/bgp-*`
/// values under the flags' (a bad one is refused, naming it).
pub fn node_bgp_options(
    flags: &BgpOptions,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<BgpOptions> {
    let (asn, peers) = twill_bgp::node_overrides(annotations)?;
    Ok(BgpOptions {
        asn: flags.asn.or(asn),
        peers: flags.peers.clone().or(peers),
        ..flags.clone()
    })
}

/// etcd's network config, waited for: a missing key, or one that does not parse or check,
/// is reported (naming the field) and read again every second until an operator fixes it,
/// as flanneld does; the node starts once it is right. It is every node's config, so a
/// node that exited would only crash-loop until the same fix.
pub async fn wait_for_etcd_config(store: &EtcdStore, p: &Patience<'_>) -> Result<NetConf> {
    let key = store.config_key();
    let mut said = Waiting::default();
    loop {
        let problem = match store.get_config().await {
            Ok(Some(text)) => match parse_conf(&text, &format!("etcd key {key}")) {
                Ok(conf) => return Ok(conf),
                Err(e) => format!("{e:#}; fix it with: etcdctl put {key} '<net-conf.json>'"),
            },
            Ok(None) => format!(
                "network config not found: etcd key {key} is missing. Create it with: etcdctl put {key} '{{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'"
            ),
            Err(e) => format!("reading {key} from etcd: {e}"),
        };
        said.say(format!("{problem}; waiting"));
        p.sleep(Duration::from_secs(1)).await?;
    }
}

fn read_config_doc(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--net-config-path {}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "config from {}: (document)=line {} column {}: invalid JSON: {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

/// net-conf.json from a file; `detected` fills a missing `Network`/`IPv6Network`.
pub fn load_file_config(path: &Path, detected: &[IpNetwork]) -> Result<NetConf> {
    if detected.is_empty() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--net-config-path {}", path.display()))?;
        return parse_conf(&text, &path.display().to_string());
    }
    let mut doc = read_config_doc(path)?;
    twill_config::fill_networks(&mut doc, detected);
    let source = path.display().to_string();
    let (conf, warnings) =
        NetConf::from_value(doc).with_context(|| format!("config from {source}"))?;
    for w in warnings {
        warn!("net-conf.json ({source}): {w}");
    }
    Ok(conf)
}

fn parse_conf(text: &str, source: &str) -> Result<NetConf> {
    let (conf, warnings) = NetConf::parse(text).with_context(|| format!("config from {source}"))?;
    for w in warnings {
        warn!("net-conf.json ({source}): {w}");
    }
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_annotations_sit_under_the_flags() {
        let flags = BgpOptions {
            config_file: "/x".into(),
            control_socket: "/y".into(),
            include_dir: "/z".into(),
            asn: None,
            peers: None,
        };
        let ann = std::collections::BTreeMap::from([
            (twill_bgp::ASN_ANNOTATION.to_string(), "65010".to_string()),
            (
                twill_bgp::PEERS_ANNOTATION.to_string(),
                "198.18.1.1:65001".to_string(),
            ),
        ]);
        let o = node_bgp_options(&flags, &ann).unwrap();
        assert_eq!(o.asn, Some(65010));
        assert_eq!(o.peers.unwrap()[0].to_string(), "198.18.1.1:65001");
        let given = BgpOptions {
            asn: Some(64999),
            ..flags.clone()
        };
        let o = node_bgp_options(&given, &ann).unwrap();
        assert_eq!(o.asn, Some(64999), "the flag wins");
        assert!(
            o.peers.is_some(),
            "what the flags leave comes from the node"
        );
        let bad = std::collections::BTreeMap::from([(
            twill_bgp::ASN_ANNOTATION.to_string(),
            "x".to_string(),
        )]);
        let e = format!("{:#}", node_bgp_options(&flags, &bad).unwrap_err());
        assert!(e.contains(twill_bgp::ASN_ANNOTATION), "{e}");
    }
}
