//! Checks of what twilld programs: peer entries against the leases, the rules, the
//! blackhole route.

use std::net::Ipv4Addr;

use ipnetwork::{IpNetwork, Ipv4Network};
use twill_config::{NetConf, SubnetEnv};
use twill_dataplane::{
    desired_peers, plan_peers, plan_routed, Blackhole, Iptables, Netlink, Nftables, RouteForm,
    RuleSet, Underlay, VxlanFlows, BLACKHOLE_METRIC,
};
use twill_store::{Family, LeaseKey, PeerTable, StoredLease, WatchEvent};

use crate::policy::lease_policy;

use super::store::leases_refused;
use super::{Checks, Status};

/// Where one family's peers' entries are.
pub(super) enum PeerPath {
    /// On our VXLAN device (its ifindex), and per `mode` on the underlay.
    Vxlan { device: u32, mode: Underlay },
    /// host-gw: routes on the underlay device (its ifindex) into `network`.
    HostGw { underlay: u32, network: IpNetwork },
}

/// The leases judged as the daemon judges them, and per family (`paths`, IPv4's first)
/// the kernel's entries against them: a `peers` check, `peers (IPv6)` for the IPv6 half.
#[allow(clippy::too_many_arguments)]
pub(super) async fn peers(
    c: &mut Checks,
    nl: &Netlink,
    paths: &[(Family, PeerPath)],
    underlay: Option<u32>,
    conf: Option<&NetConf>,
    own: Option<&LeaseKey>,
    kube: bool,
    leases: &[StoredLease],
    store_name: &str,
) {
    // Judged as the daemon judges them, so doctor expects exactly what twilld programs.
    let ours: Vec<u32> = paths
        .iter()
        .filter_map(|(_, p)| match p {
            PeerPath::Vxlan { device, .. } => Some(*device),
            PeerPath::HostGw { .. } => None,
        })
        .collect();
    let mut table = match conf {
        Some(conf) => match lease_policy(nl, &ours, underlay, conf, own.filter(|_| kube)).await {
            Ok(p) => PeerTable::with_policy(p),
            Err(e) => {
                c.add(
                    "leases",
                    Status::Warn,
                    format!("could not judge the leases: {e:#}"),
                    "",
                );
                PeerTable::new()
            }
        },
        None => PeerTable::new(),
    };
    if let Some(own) = own {
        if let Some(mine) = leases
            .iter()
            .find(|l| l.key == *own)
            .and_then(|l| l.attrs.clone())
        {
            table.set_own(*own, mine);
        }
    }
    table.apply(WatchEvent::Snapshot(leases.to_vec()));
    leases_refused(c, &table, store_name);
    for (family, path) in paths {
        family_peers(c, nl, &table, *family, path, store_name).await;
    }
}

async fn family_peers(
    c: &mut Checks,
    nl: &Netlink,
    table: &PeerTable,
    family: Family,
    path: &PeerPath,
    store_name: &str,
) {
    let name = match family {
        Family::V4 => "peers",
        Family::V6 => "peers (IPv6)",
    };
    let desired = desired_peers(table.entries().filter(|e| e.family() == family));
    let plan = match path {
        PeerPath::Vxlan { device, mode } => {
            plan_peers(nl, *device, family, *mode, &desired, None).await
        }
        PeerPath::HostGw { underlay, network } => {
            plan_routed(nl, *underlay, *network, &desired).await
        }
    };
    let Ok(plan) = plan else {
        c.add(name, Status::Warn, "could not read kernel state", "");
        return;
    };
    let (ops, direct) = (&plan.ops, &plan.direct);
    let missing = ops.add_routes.len()
        + ops.add_nexthops.len()
        + ops.add_neighs.len()
        + ops.add_fdb.len()
        + direct.add.len();
    let extra = ops.del_routes.len()
        + ops.del_nexthops.len()
        + ops.del_neighs.len()
        + ops.del_fdb.len()
        + direct.del.len();
    let mut how = Vec::new();
    match path {
        PeerPath::Vxlan {
            mode: Underlay::Direct(..),
            ..
        } => how.push(format!("{} by direct route", plan.direct_peers)),
        PeerPath::HostGw { .. } => how.push("host-gw routes".to_string()),
        PeerPath::Vxlan { .. } => {}
    }
    if plan.form == RouteForm::Nexthop {
        how.push("routes by nexthop id".to_string());
    }
    let via = if how.is_empty() {
        String::new()
    } else {
        format!(" ({})", how.join(", "))
    };
    let detail = format!(
        "{} peers in {store_name}{via}; {missing} entries missing, {extra} extra",
        desired.len()
    );
    let hint = "twilld repairs these within --iptables-resync seconds; if they persist, it is not running or can't write (see its log)";
    match (missing, extra) {
        (0, 0) => c.pass(name, detail),
        (0, _) => c.add(name, Status::Warn, detail, hint),
        _ => c.add(name, Status::Fail, detail, hint),
    }
}

/// subnet.env's IPv4 lease and the network it is in.
pub(super) fn v4_lease(env: &SubnetEnv) -> Option<(Ipv4Network, Ipv4Network)> {
    match (env.lease_subnet()?, *env.networks.first()?) {
        (IpNetwork::V4(own), IpNetwork::V4(network)) => Some((own, network)),
        _ => None,
    }
}

/// The MASQUERADE/FORWARD (and notrack) rules as the running twilld keeps them: masquerade
/// as subnet.env says it does, the rest from the flags doctor is given.
pub(super) async fn rules(
    c: &mut Checks,
    mut flags: twill_dataplane::RuleFlags,
    no_masq_cidr: &[ipnetwork::IpNetwork],
    conf: Option<&NetConf>,
    env: &SubnetEnv,
    local: Option<Ipv4Addr>,
    local6: Option<std::net::Ipv6Addr>,
) {
    let (Some((own, network)), Some(conf)) = (v4_lease(env), conf) else {
        return;
    };
    // Masquerade as the running twilld recorded it; the rest from the flags.
    flags.ip_masq = env.ipmasq.unwrap_or(flags.ip_masq);
    let exempt = conf.exempt_from_masquerade(no_masq_cidr);
    // Each family's set with its own VTEP's flows (the IPv6 device sends from the
    // underlay's IPv6 address); host-gw has none.
    let opts = |local: Option<std::net::IpAddr>| {
        let flows = local
            .filter(|_| conf.backend.kind.is_vxlan())
            .map(|local| VxlanFlows {
                local,
                port: conf.backend.port,
            });
        flags.options(flows, &exempt)
    };
    let opts4 = opts(local.map(std::net::IpAddr::V4));
    let mut want = vec![RuleSet::new(
        ipnetwork::IpNetwork::V4(network),
        ipnetwork::IpNetwork::V4(own),
        &opts4,
    )];
    // Dual stack: the IPv6 chains (or ip6 table) as well.
    if let (Some(r6), Some(own6)) = (conf.ipv6.as_ref(), env.lease_subnet6()) {
        want.push(RuleSet::new(
            r6.network,
            own6,
            &opts(local6.map(std::net::IpAddr::V6)),
        ));
    }
    let opts = opts4;
    let nftables = conf.enable_nftables;
    let found = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        for w in &want {
            all.extend(if nftables {
                Nftables::drift(w)?
            } else {
                Iptables::new().and_then(|fw| fw.drift(w))?
            });
        }
        Ok::<_, twill_dataplane::FirewallError>(all)
    })
    .await;
    let tool = if nftables { "nftables" } else { "iptables" };
    let wanted: Vec<&str> = [
        (opts.ip_masq, "masquerade"),
        (opts.forward, "forward"),
        (opts.notrack.is_some(), "vxlan notrack"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect();
    let unchecked = if flags.notrack && local.is_none() {
        " (vxlan notrack not checked: no underlay address)"
    } else {
        ""
    };
    match found {
        Ok(Ok(d)) if d.is_empty() => c.pass(
            "rules",
            format!("{tool}: {} rules in place{unchecked}", if wanted.is_empty() { "no".to_string() } else { wanted.join(", ") }),
        ),
        Ok(Ok(d)) => c.add("rules", Status::Fail, format!("{tool}: {}", d.join("; ")),
            "twilld rewrites its rules within --iptables-resync seconds; if this persists it is not running, runs with other flags than doctor was given, or something rewrites the rules after it"),
        Ok(Err(e)) => c.add("rules", Status::Warn, format!("could not read the {tool} rules: {e}"), "run doctor as root"),
        Err(e) => c.add("rules", Status::Warn, format!("rules check: {e}"), ""),
    }
}

/// Our subnets' blackhole routes: present with --ip-blackhole-route, and never in
/// flanneld's form, which shadows cni0's route to the local pods. A check per family.
pub(super) async fn blackhole(c: &mut Checks, nl: &Netlink, env: &SubnetEnv, want: bool) {
    let families = [
        (
            Family::V4,
            "blackhole route",
            env.lease_subnet(),
            env.networks.first(),
        ),
        (
            Family::V6,
            "blackhole route (IPv6)",
            env.lease_subnet6(),
            env.ipv6_networks.first(),
        ),
    ];
    for (family, name, own, network) in families {
        let (Some(own), Some(network)) = (own, network) else {
            continue;
        };
        let Ok(found) = nl.blackholes(family).await else {
            c.add(name, Status::Warn, "could not read routes", "");
            continue;
        };
        family_blackhole(c, name, &found, *network, own, want);
    }
}

fn family_blackhole(
    c: &mut Checks,
    name: &'static str,
    found: &[Blackhole],
    network: IpNetwork,
    own: IpNetwork,
    want: bool,
) {
    let plan = twill_dataplane::blackhole::plan(found, network, own, want);
    // The kernel refuses a same-metric route while cni0's is there, so one that exists was
    // added first and sits in front of cni0's.
    let flanneld = Blackhole {
        net: own,
        metric: 0,
    };
    let ours = Blackhole {
        net: own,
        metric: BLACKHOLE_METRIC,
    };
    if plan.del.contains(&flanneld) {
        c.add(name, Status::Fail, format!("route {flanneld} (flanneld's --ip-blackhole-route) shadows cni0's route: local pods are unreachable"),
            format!("twilld replaces it at start; by hand: ip route del blackhole {own} metric 0"));
    } else if plan.add.is_some() {
        c.add(name, Status::Fail, format!("no blackhole route for {own}"),
            "twilld --ip-blackhole-route adds it within --iptables-resync seconds; is it running with the flag?");
    } else if want {
        c.pass(name, format!("route {ours}"));
    } else if !plan.del.is_empty() {
        let stale: Vec<String> = plan.del.iter().map(|b| b.to_string()).collect();
        c.add(
            name,
            Status::Warn,
            format!(
                "left by an earlier --ip-blackhole-route: {}",
                stale.join(", ")
            ),
            "twilld removes them at start; pass --ip-blackhole-route if it should be kept",
        );
    }
}

/// What the running twilld had to put back again and again (something else on the node
/// keeps removing it), from the list it keeps beside subnet.env.
pub(super) fn repair_conflicts(c: &mut Checks, subnet_file: &std::path::Path) {
    let path = crate::repairs::conflicts_file(subnet_file);
    let conflicts: Vec<crate::repairs::Conflict> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(crate::repairs::Conflict::from_json)
                    .collect()
            })
        })
        .unwrap_or_default();
    if conflicts.is_empty() {
        c.pass(
            "repairs",
            "nothing of twill's is being removed over and over",
        );
        return;
    }
    let named: Vec<String> = conflicts
        .iter()
        .take(5)
        .map(|x| format!("{} {} put back {} times", x.kind, x.object, x.repairs + 1))
        .collect();
    c.add(
        "repairs",
        Status::Warn,
        named.join("; "),
        "another agent on this node removes what twilld keeps (a second CNI, a cleanup script, a flanneld?): find it and stop it; twilld backs off while it fights",
    );
}
