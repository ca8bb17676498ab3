//! `twill-bench inject ENDPOINT COUNT [FIRST]`: puts COUNT fake vxlan leases (subnets
//! 10.x.y.0/24 from index FIRST, underlay addresses in 198.19.0.0/16 that nothing sends
//! to) on one etcd lease, 64 at a time, and prints how long that took.
//!
//! `twill-bench latency ENDPOINT COUNT NETNS...`: for COUNT new leases, one at a time,
//! measures from the etcd put to the moment the route appears in each node namespace
//! (a netlink route monitor per namespace), and prints p50/p99 per node; and the same
//! split at etcd's answer to the put (`commit_*`: etcd's share, its WAL fsync included;
//! `after_commit_*`: from then to the route, the daemon's share).
//!
//! `twill-bench fake-kube ADDR COUNT`: see `kube.rs`.

use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};
use futures::StreamExt;
use twill_store::{LeaseAttrs, LeaseKey};

mod bird;
mod kube;

const PREFIX: &str = "/coreos.com/network/subnets/";

/// Fake peer `i`'s underlay address (in 198.19.0.0/16: nothing is ever sent to it) and
/// VTEP MAC; `tool` keeps the etcd injector's MACs apart from the fake API's.
fn fake_vtep(i: u32, tool: u8) -> (Ipv4Addr, String) {
    let ip = Ipv4Addr::from(0xc613_0000 + (i % 65000) + 1);
    let mac = format!(
        "0a:{tool:02x}:{:02x}:{:02x}:{:02x}:01",
        (i >> 16) as u8,
        (i >> 8) as u8,
        i as u8
    );
    (ip, mac)
}

fn lease(i: u32) -> (String, String) {
    let subnet = format!("{}/24", Ipv4Addr::from(0x0a00_0000 + ((i + 1) << 8)));
    let key = LeaseKey::v4(subnet.parse().unwrap());
    let (ip, mac) = fake_vtep(i, 1);
    (
        format!("{PREFIX}{key}"),
        LeaseAttrs::vxlan(ip, 1, &mac).to_json(),
    )
}

async fn inject(endpoint: &str, count: u32, first: u32) {
    let client = Client::connect([endpoint], None).await.unwrap();
    let id = client.clone().lease_grant(3600, None).await.unwrap().id();
    let t = Instant::now();
    futures::stream::iter(first..first + count)
        .map(|i| {
            let mut c = client.clone();
            async move {
                let (k, v) = lease(i);
                c.put(k, v, Some(PutOptions::new().with_lease(id)))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    println!(
        "{{\"injected\":{count},\"ms\":{:.0}}}",
        t.elapsed().as_secs_f64() * 1e3
    );
}

/// A thread in namespace `ns` reporting (destination, when) for every new route.
fn route_watcher(ns: String, tx: mpsc::Sender<(usize, String, Instant)>, idx: usize) {
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        // SAFETY: joins the namespace for this thread only.
        assert_eq!(
            unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) },
            0
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use rtnetlink::packet_core::NetlinkPayload;
            use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
            use rtnetlink::packet_route::RouteNetlinkMessage;
            use rtnetlink::sys::AsyncSocket;
            let (mut conn, _h, mut msgs) =
                rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Ipv4Route])
                    .unwrap();
            // A burst of route changes (a daemon's resync at 10 000 peers) overflows the
            // default 208 KB and the kernel drops what follows, the route we wait for
            // among them; SO_RCVBUFFORCE goes past rmem_max (we run as root).
            twill_dataplane::netlink::rcvbuf::grow(conn.socket_mut().socket_ref(), 64 << 20)
                .expect("SO_RCVBUFFORCE");
            tokio::spawn(conn);
            while let Some((m, _)) = msgs.next().await {
                if let NetlinkPayload::Overrun(_) = m.payload {
                    eprintln!("twill-bench: route events lost in {ns} (netlink overrun)");
                }
                if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) = m.payload {
                    let dst = r.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                        _ => None,
                    });
                    if let Some(d) = dst {
                        let s = format!("{d}/{}", r.header.destination_prefix_length);
                        if tx.send((idx, s, Instant::now())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    });
}

async fn latency(endpoint: &str, count: u32, namespaces: Vec<String>) {
    let (tx, rx) = mpsc::channel();
    for (i, ns) in namespaces.iter().enumerate() {
        route_watcher(ns.clone(), tx.clone(), i);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut client = Client::connect([endpoint], None).await.unwrap();
    let id = client.lease_grant(3600, None).await.unwrap().id();
    let mut per_node: Vec<Vec<f64>> = vec![Vec::new(); namespaces.len()];
    let mut after_commit: Vec<Vec<f64>> = vec![Vec::new(); namespaces.len()];
    let mut commit: Vec<f64> = Vec::new();
    // Indexes far above any injected set.
    for i in 60_000..60_000 + count {
        let (k, v) = lease(i);
        let subnet = format!("{}/24", Ipv4Addr::from(0x0a00_0000 + ((i + 1) << 8)));
        let t0 = Instant::now();
        client
            .put(k, v, Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();
        let t1 = Instant::now();
        commit.push(t1.duration_since(t0).as_secs_f64() * 1e3);
        let mut seen = vec![false; namespaces.len()];
        while seen.iter().any(|s| !s) {
            let (idx, dst, at) = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("route never appeared");
            if dst == subnet && !seen[idx] {
                seen[idx] = true;
                per_node[idx].push(at.duration_since(t0).as_secs_f64() * 1e3);
                // The watch event can reach a daemon before etcd's answer reaches us.
                let after = at.checked_duration_since(t1).unwrap_or_default();
                after_commit[idx].push(after.as_secs_f64() * 1e3);
            }
        }
    }
    // Leave the cluster as we found it.
    let _ = client.lease_revoke(id).await;
    let commit = sorted(commit);
    for ((ns, v), a) in namespaces.iter().zip(per_node).zip(after_commit) {
        let (v, a) = (sorted(v), sorted(a));
        println!(
            "{{\"node\":\"{ns}\",\"n\":{},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2},\"commit_p50_ms\":{:.2},\"commit_p99_ms\":{:.2},\"after_commit_p50_ms\":{:.2},\"after_commit_p99_ms\":{:.2}}}",
            v.len(),
            pct(&v, 0.5),
            pct(&v, 0.99),
            pct(&v, 1.0),
            pct(&commit, 0.5),
            pct(&commit, 0.99),
            pct(&a, 0.5),
            pct(&a, 0.99),
        );
    }
}

/// Figures in ascending order, for [`pct`].
fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

/// The `p` quantile (0 to 1) of sorted figures, the nearest rank.
fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("inject") => {
            inject(
                &args[1],
                args[2].parse().unwrap(),
                args.get(3).map_or(0, |s| s.parse().unwrap()),
            )
            .await
        }
        Some("latency") => latency(&args[1], args[2].parse().unwrap(), args[3..].to_vec()).await,
        Some("fake-kube") => kube::serve(&args[1], args[2].parse().unwrap()),
        Some("bird-conf") => bird::print_conf(&args[1..]),
        Some("bird-latency") => bird::latency(&args[1..]).await,
        _ => {
            eprintln!("usage: twill-bench inject ENDPOINT COUNT [FIRST] | latency ENDPOINT COUNT NETNS... | fake-kube ADDR COUNT | bird-conf ROUTER LOCAL SUBNET INCLUDE_DIR | bird-latency COUNT ROUTER_NS ROUTER LOCAL CONF CTL INCLUDE_DIR");
            std::process::exit(2);
        }
    }
}
