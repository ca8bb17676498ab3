//! `twilld cleanup`: uninstall or migrate away. Lists everything twill (or flannel, whose
//! names we share) put on this node, and with --yes removes it. Each removal is attempted
//! even when another fails; the exit status says whether all of them worked.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use ipnetwork::IpNetwork;
use twill_config::SubnetEnv;
use twill_dataplane::{Firewall, Iptables, Netlink, RuleSet};
use twill_etcd::EtcdStore;
use twill_kube::KubeOptions;
use twill_store::{Family, LeaseKey};

use crate::options::{kube_with_ipv6, NodeOptions, StoreOptions};

#[derive(Debug, Clone, Args)]
pub struct Cleanup {
    /// Remove for real (without it, only print what would be removed).
    #[arg(long)]
    pub yes: bool,
    /// Also give this node's subnet lease back to etcd.
    #[arg(long)]
    pub release_lease: bool,
    /// Keep the conflist and the plugin binary (e.g. to reinstall right after).
    #[arg(long)]
    pub keep_cni_files: bool,
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    #[arg(long, default_value = "10-twill.conflist")]
    pub conflist_name: String,
    /// The plugin's per-container state directory (flannel's, which the plugin shares).
    #[arg(long, default_value = CNI_DATA_DIR)]
    pub cni_data_dir: PathBuf,
}

const CNI_DATA_DIR: &str = "/var/lib/cni/flannel";
/// Where earlier twill plugins kept their state.
const LEGACY_CNI_DATA_DIR: &str = "/var/lib/cni/twill";

struct Report {
    yes: bool,
    failed: usize,
    found: usize,
}

impl Report {
    /// Reports `what`, and with --yes removes it by running `remove` (a future does
    /// nothing until awaited, so a dry run never touches anything).
    async fn act(&mut self, what: &str, remove: impl std::future::Future<Output = Result<()>>) {
        self.found += 1;
        if !self.yes {
            println!("would remove: {what}");
            return;
        }
        match remove.await {
            Ok(()) => println!("removed: {what}"),
            Err(e) => {
                self.failed += 1;
                println!("FAILED to remove {what}: {e:#}");
            }
        }
    }
}

pub async fn run(node: &NodeOptions, args: &Cleanup) -> Result<bool> {
    // Another twilld here would recreate what we remove.
    if let Some(pid) = crate::procs::in_this_netns("twilld").first() {
        println!("warning: twilld (pid {pid}) is running in this network namespace and will recreate what it owns; stop it first");
    }
    let mut r = Report {
        yes: args.yes,
        failed: 0,
        found: 0,
    };
    let env = std::fs::read_to_string(&node.subnet_file)
        .ok()
        .and_then(|t| SubnetEnv::parse(&t, &node.subnet_file.display().to_string()).ok());
    let subnet = env.as_ref().and_then(|e| e.lease_subnet());

    // The lease first: it is named in subnet.env, which goes later.
    if args.release_lease {
        release(node, env.as_ref(), &mut r).await;
    }

    let nl = Netlink::connect()?;
    for l in nl.flannel_vxlan_devices().await? {
        let name = l.name.clone();
        r.act(
            &format!(
                "link {name} (VXLAN device, with its peer routes, neighbours and FDB entries)"
            ),
            async { Ok(nl.delete_link(&name).await.map(|_| ())?) },
        )
        .await;
    }
    if let Some(env) = &env {
        direct_routes(node, &nl, env, &mut r).await;
        blackhole_routes(&nl, env, &mut r).await;
    }
    cleanup_cni0(&nl, subnet, &mut r).await?;

    let fw = Iptables::new()?;
    for v6 in [false, true] {
        let rules = RuleSet::none_of(v6);
        let present = fw.present(&rules)?;
        if !present.is_empty() {
            let tool = if v6 { "ip6tables" } else { "iptables" };
            r.act(&format!("{tool} {}", present.join(", ")), async {
                Ok(fw.ensure(&rules).map(|_| ())?)
            })
            .await;
        }
    }
    for (family, table) in nft_tables() {
        r.act(&format!("nft table {family} {table}"), async {
            run_cmd("nft", &["delete", "table", &family, &table])
        })
        .await;
    }

    if !args.keep_cni_files {
        remove_file(
            &args.cni_conf_dir.join(&args.conflist_name),
            "CNI config",
            &mut r,
        )
        .await;
        remove_file(&args.cni_bin_dir.join("twill"), "CNI plugin", &mut r).await;
        // The state of running pods goes with the plugin that could delete them; kept
        // with the CNI files, it lets the plugin installed next (twill's or flannel's,
        // which read the same files) delete pods added before.
        // The old directory only goes with the default: a --cni-data-dir names the one.
        let legacy = (args.cni_data_dir == Path::new(CNI_DATA_DIR))
            .then(|| PathBuf::from(LEGACY_CNI_DATA_DIR));
        for d in std::iter::once(args.cni_data_dir.clone()).chain(legacy) {
            if d.exists() {
                r.act(&format!("{} (CNI plugin state)", d.display()), async {
                    Ok(std::fs::remove_dir_all(&d)?)
                })
                .await;
            }
        }
    }
    // The routers withdraw this node's pod subnets: BIRD keeps running (it is not ours),
    // with twilld's file announcing nothing.
    let bird = &node.bgp;
    if let Some(text) = std::fs::read_to_string(&bird.config_file)
        .ok()
        .as_deref()
        .and_then(twill_bgp::withdrawn)
    {
        r.act(
            &format!(
                "BGP announcements in {} (withdrawn)",
                bird.config_file.display()
            ),
            async { twill_bgp::apply(bird, &text).await.map(|_| ()) },
        )
        .await;
    }
    remove_file(&node.subnet_file, "subnet.env", &mut r).await;
    let conflicts = crate::repairs::conflicts_file(&node.subnet_file);
    remove_file(&conflicts, "twilld's repair conflicts", &mut r).await;

    if r.found == 0 {
        println!("nothing of twill's left on this node");
    } else if !args.yes {
        println!("dry run: nothing was removed; run again with --yes");
    }
    Ok(r.failed == 0)
}

/// host-gw's and DirectRouting's routes (`<peer subnet> via <peer address>` on the
/// underlay device; the VXLAN ones went with the device): those inside the overlay
/// network of subnet.env.
async fn direct_routes(node: &NodeOptions, nl: &Netlink, env: &SubnetEnv, r: &mut Report) {
    let ipv6_only = env.networks.is_empty() && !env.ipv6_networks.is_empty();
    let Ok(ext) = twill_dataplane::select_underlay(nl, &node.iface, ipv6_only).await else {
        return;
    };
    for net in env.networks.iter().chain(&env.ipv6_networks).copied() {
        let Ok(u) = nl.read_underlay(ext.index, net).await else {
            continue;
        };
        if u.direct.is_empty() {
            continue;
        }
        let routes: Vec<_> = u.direct.into_iter().collect();
        let what = format!(
            "{} direct routes to {net} subnets on {} (host-gw or DirectRouting)",
            routes.len(),
            ext.name
        );
        r.act(&what, async {
            let rep = nl.del_direct_routes(ext.index, &routes).await;
            match rep.failed.first() {
                None => Ok(()),
                Some(f) => Err(anyhow::anyhow!("{} failed, first: {f}", rep.failed.len())),
            }
        })
        .await;
    }
}

/// `--ip-blackhole-route`'s routes for our subnets (ours, or flanneld's metric-0 form).
async fn blackhole_routes(nl: &Netlink, env: &SubnetEnv, r: &mut Report) {
    let families = [
        (Family::V4, env.lease_subnet(), &env.networks),
        (Family::V6, env.lease_subnet6(), &env.ipv6_networks),
    ];
    for (family, own, networks) in families {
        let Some(own) = own else { continue };
        let Ok(found) = nl.blackholes(family).await else {
            continue;
        };
        for net in networks {
            for b in twill_dataplane::blackhole::plan(&found, *net, own, false).del {
                r.act(&format!("route {b} (--ip-blackhole-route)"), async {
                    Ok(nl.del_blackhole(b).await?)
                })
                .await;
            }
        }
    }
}

/// Releases the lease named in subnet.env or, without it, the ones carrying our public IP.
async fn release(node: &NodeOptions, env: Option<&SubnetEnv>, r: &mut Report) {
    let opts = match &node.store {
        StoreOptions::Kube(kube) => return release_kube(kube, env, r).await,
        StoreOptions::Etcd(opts) => opts,
    };
    let result = async {
        let store = EtcdStore::connect(opts).await?;
        let held = env.map(|e| LeaseKey { v4: e.lease_subnet(), v6: e.lease_subnet6() });
        let keys: Vec<LeaseKey> = match held.filter(|k| k.v4.is_some() || k.v6.is_some()) {
            Some(key) => vec![key],
            None => {
                let Some(ip) = public_ip(node).await else {
                    println!("no lease to release: {} is missing and this node's public IP is unknown (pass --public-ip or --iface)", node.subnet_file.display());
                    return Ok(());
                };
                let (leases, _) = store.list().await?;
                leases
                    .into_iter()
                    .filter(|l| !l.is_reservation() && l.attrs.as_ref().is_some_and(|a| a.node_ip() == ip))
                    .map(|l| l.key)
                    .collect()
            }
        };
        for key in keys {
            r.found += 1;
            if !r.yes {
                println!("would remove: lease {key} from etcd");
                continue;
            }
            println!("lease {key}: {}", store.release_key(&key).await?);
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        r.failed += 1;
        println!("FAILED to release the lease: {e:#}");
    }
}

/// In Kubernetes the podCIDR is not ours to give back: releasing means removing our
/// annotations, so other nodes drop this one as a peer.
async fn release_kube(opts: &KubeOptions, env: Option<&SubnetEnv>, r: &mut Report) {
    let result = async {
        let ipv6 = env.is_some_and(|e| e.lease_subnet6().is_some());
        let store = twill_kube::KubeStore::connect(&kube_with_ipv6(opts, ipv6)).await?;
        if !store.published().await? {
            return Ok(());
        }
        r.found += 1;
        if !r.yes {
            println!(
                "would remove: node {} annotations ({})",
                store.node_name(),
                opts.annotation_prefix
            );
            return Ok(());
        }
        println!("node {}: {}", store.node_name(), store.release().await?);
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        r.failed += 1;
        println!("FAILED to remove our node annotations: {e:#}");
    }
}

/// What our leases are known by (`LeaseAttrs::node_ip`) when subnet.env is gone: the
/// PublicIP given or the underlay's, else (an IPv6-only node) its IPv6 address.
async fn public_ip(node: &NodeOptions) -> Option<std::net::IpAddr> {
    if let Some(ip) = node.public_ip {
        return Some(ip.into());
    }
    let nl = Netlink::connect().ok()?;
    let sel = &node.iface;
    if let Some(ip) = twill_dataplane::select_underlay(&nl, sel, false)
        .await
        .ok()
        .and_then(|e| e.addr)
    {
        return Some(ip.into());
    }
    let e = twill_dataplane::select_underlay(&nl, sel, true)
        .await
        .ok()?;
    e.addr6.map(Into::into)
}

/// cni0 goes only if it is ours: its address lies in our subnet. Another CNI's bridge of
/// the same name stays.
async fn cleanup_cni0(nl: &Netlink, subnet: Option<IpNetwork>, r: &mut Report) -> Result<()> {
    let Some(cni0) = nl
        .interfaces()
        .await?
        .into_iter()
        .find(|i| i.name == "cni0")
    else {
        return Ok(());
    };
    let addrs: Vec<String> = cni0
        .addrs
        .iter()
        .map(|a| format!("{}/{}", a.ip, a.prefix))
        .collect();
    match subnet {
        Some(s) if cni0.addrs.iter().any(|a| s.contains(IpAddr::V4(a.ip))) => {
            r.act(
                &format!("link cni0 (bridge {}, in our subnet {s})", addrs.join(",")),
                async { Ok(nl.delete_link("cni0").await.map(|_| ())?) },
            )
            .await;
        }
        Some(s) => println!(
            "kept cni0: its addresses [{}] are not in our subnet {s}",
            addrs.join(",")
        ),
        None => println!(
            "kept cni0: without subnet.env it can't be told apart from another CNI's bridge"
        ),
    }
    Ok(())
}

/// flannel's nftables-mode tables and twill's NetworkPolicy table, if the nft tool is there.
fn nft_tables() -> Vec<(String, String)> {
    let Ok(out) = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("table"), Some(fam), Some(name))
                    if name == "flannel-ipv4"
                        || name == "flannel-ipv6"
                        || (fam == twill_policy::FAMILY && name == twill_policy::TABLE) =>
                {
                    Some((fam.to_string(), name.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

fn run_cmd(cmd: &str, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new(cmd).args(args).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn remove_file(path: &Path, what: &str, r: &mut Report) {
    if path.exists() {
        r.act(&format!("{} ({what})", path.display()), async {
            Ok(std::fs::remove_file(path)?)
        })
        .await;
    }
}
