//! Bringing a node up, in flannel's order: underlay → device → lease → rules → peers.
//! Nothing half-done: a device this run created goes again when no lease can be had.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use twill_config::SubnetEnv;
use twill_dataplane::{
    select_underlay, Dataplane, Family, Firewall, Iptables, Mac, Netlink, Nftables, RuleSet,
    NFT_TABLE, NFT_TABLE6,
};
use twill_store::{AcquireRequest, LeaseKey, PeerTable, SubnetManager};

use super::state::State;
use super::{acquire, Node};
use crate::options::DaemonOptions;
use crate::policy::lease_policy;
use crate::settings::{derive, Facts, Pinned};
use crate::startup::{Opened, Patience};
use crate::telemetry::Telemetry;

/// Brings the node up on any store and runs it until cancelled.
pub async fn start<S: SubnetManager>(
    opened: Opened<S>,
    opts: DaemonOptions,
    cancel: CancellationToken,
    tel: Arc<Telemetry>,
    reloads: mpsc::UnboundedReceiver<()>,
) -> Result<()> {
    let Opened {
        store,
        conf,
        source,
        hints,
        bgp,
    } = opened;
    tel.update_ready(|r| r.config = true);
    let nl = Netlink::connect().context("opening a netlink socket")?;
    let ipv6_only = conf.ipv4.is_none();
    let ext = select_underlay(&nl, &opts.node.iface, ipv6_only).await?;
    let pinned = Pinned {
        v4: opts.node.public_ip.or(hints.v4),
        v6: opts.public_ipv6.or(hints.v6),
    };
    let driver = twill_dataplane::offload::driver(&ext.name).ok();
    let mut facts = Facts::new(ext, pinned, ipv6_only);
    // After a reboot the devices are gone but our lease still advertises their MACs:
    // reuse them, so peers need no FDB update.
    let (mac, mac6) = store.advertised_macs(facts.node_ip()).await;
    let parse = |m: Option<String>| m.and_then(|m| m.parse::<Mac>().ok());
    facts.mac = parse(mac);
    facts.mac6 = parse(mac6);
    facts.kernel = twill_dataplane::offload::kernel_version();
    facts.driver = driver;
    // Settled before anything is created: a config this node cannot use (BGP settings,
    // IPv6-only, an MTU with no room for VXLAN) leaves nothing behind.
    let settings = derive(&conf, &opts, &bgp, &facts)?;
    for w in &settings.warnings {
        warn!("{w}");
    }
    let ext = &facts.underlay;
    info!(underlay = %ext, node = %facts.node_ip(), mtu = settings.mtu, "underlay selected");

    let previous = read_previous(&opts.node.subnet_file);
    let fw = firewall(conf.enable_nftables)?;
    let mut dp = Dataplane::new(nl, settings.dataplane.clone(), fw);
    if settings.dataplane.is_host_gw() {
        remove_vxlan_devices(dp.netlink()).await;
    }
    let devices = dp
        .ensure_devices()
        .await
        .context("creating the VXLAN devices")?;
    tel.update_ready(|r| r.device = true);
    let mac = |f: Family| devices.iter().find(|(g, _)| *g == f).map(|(_, d)| d.mac);

    let req = AcquireRequest {
        conf,
        attrs: settings.attrs(mac(Family::V4), mac(Family::V6)),
        previous,
        ttl: opts.lease_ttl,
    };
    let beat = || tel.beat();
    let patience = Patience {
        cancel: &cancel,
        beat: &beat,
    };
    let held = match acquire(&store, &req, &patience).await {
        Ok(h) => h,
        Err(e) => {
            // Nothing half-done: a device this run created is of no use without a lease.
            dp.remove_created(&devices).await;
            return Err(e);
        }
    };
    tel.update_ready(|r| r.lease = true);
    dp.set_lease(&held.key)
        .await
        .context("addressing the VXLAN devices")?;
    match dp.ensure_rules().await {
        Ok(_) => tel.update_ready(|r| r.rules = true),
        Err(e) => warn!("rules not in place yet, will retry every resync: {e}"),
    }
    let kube = opts.kube_subnet_mgr().then_some(&held.key);
    let underlay = Some(facts.underlay.index);
    let policy = lease_policy(
        dp.netlink(),
        &dp.device_indices(),
        underlay,
        &req.conf,
        kube,
    )
    .await?;
    let mut table = PeerTable::with_policy(policy);
    table.set_own(held.key, held.attrs.clone());
    let state = State::new(std::time::Instant::now(), opts.resync);
    let mut node = Node {
        store,
        dp,
        table,
        held,
        req,
        settings,
        facts,
        bgp,
        opts,
        config: source,
        state,
        notified: false,
        tel,
        store_errors_seen: 0,
        reloads,
        // Started by the first announce when BGP is configured.
        announce: None,
        pending: Vec::new(),
        next: None,
        pinned,
        moved_to: None,
        store_sources: Vec::new(),
        probe_targets: None,
        targets_at: None,
        dirty: true,
    };
    node.probe_targets = crate::probes::start(
        node.opts.probes,
        node.tel.clone(),
        node.req.conf.backend.port,
    );
    node.announce();
    node.store_sources = node.store_sources().await;
    node.run_loop(cancel).await
}

/// host-gw after vxlan (an earlier run's, or flanneld's): the vxlan backend's devices go,
/// and their peer routes, neighbours and FDB entries with them, so the two backends never
/// both route a peer. A failure is logged; the node still comes up.
async fn remove_vxlan_devices(nl: &Netlink) {
    let devices = match nl.flannel_vxlan_devices().await {
        Ok(d) => d,
        Err(e) => return warn!("looking for the vxlan backend's devices: {e}"),
    };
    for d in devices {
        match nl.delete_link(&d.name).await {
            Ok(_) => {
                info!(device = %d.name, "removed: host-gw has no use for the vxlan backend's device")
            }
            Err(e) => warn!("removing {}: {e}", d.name),
        }
    }
}

/// The rules driver net-conf.json asks for. What the other one left (an earlier run in the
/// other mode, or flanneld's) is removed first, as flanneld does, so the two never both
/// masquerade.
fn firewall(nftables: bool) -> Result<Arc<dyn Firewall>> {
    if nftables {
        for v6 in [false, true] {
            let tool = if v6 { "ip6tables" } else { "iptables" };
            match Iptables::new().and_then(|ipt| {
                // Only where the tool's table can be read: a host without ip6tables has
                // no IPv6 chains of ours either.
                if ipt.present(&RuleSet::none_of(v6))?.is_empty() {
                    return Ok(Default::default());
                }
                ipt.ensure(&RuleSet::none_of(v6))
            }) {
                Ok(r) if r.repairs > 0 => {
                    info!(removed = ?r.changes, "{tool} rules of the other mode removed")
                }
                Ok(_) => {}
                Err(e) => {
                    warn!("EnableNFTables: could not check for {tool} rules to remove: {e}")
                }
            }
        }
        return Ok(Arc::new(Nftables::new()?));
    }
    match twill_dataplane::firewall::remove_table() {
        Ok(true) => info!("nft tables ip {NFT_TABLE} / ip6 {NFT_TABLE6} of the other mode removed"),
        Ok(false) => {}
        // No nft binary is fine in iptables mode: then there is no table either.
        Err(e) => debug!("nft tables of the other mode not checked: {e}"),
    }
    Ok(Arc::new(Iptables::new().context("iptables")?))
}

fn read_previous(path: &Path) -> LeaseKey {
    let none = LeaseKey { v4: None, v6: None };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(_) => return none,
    };
    match SubnetEnv::parse(&text, &path.display().to_string()) {
        Ok(env) => LeaseKey {
            v4: env.lease_subnet(),
            v6: env.lease_subnet6(),
        },
        Err(e) => {
            warn!("ignoring the previous subnet file: {e}");
            none
        }
    }
}
