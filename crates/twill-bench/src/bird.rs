//! The per-node BGP shape, measured with twilld's own BIRD code (`twill-bgp`): the
//! configuration a node's twilld writes, and the write + `birdc configure` it does when
//! its subnet changes.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use twill_bgp::{apply, render, Announce, BgpOptions};
use twill_config::{BgpConf, BgpPeer};

fn conf(router: Ipv4Addr) -> BgpConf {
    BgpConf {
        asn: 64512,
        peers: vec![BgpPeer {
            address: router.into(),
            asn: 64513,
        }],
        graceful_restart_time: twill_config::DEFAULT_GRACEFUL_RESTART_TIME,
    }
}

fn announce(local: Ipv4Addr, subnet: &str) -> Announce {
    Announce {
        router_id: local,
        local4: Some(local),
        local6: None,
        v4: Some(subnet.parse().unwrap()),
        v6: None,
    }
}

/// What twilld writes for a node at `local` holding `subnet`, plus the one line the bench
/// adds: its nodes share a namespace, so each BIRD must listen on its own address only.
fn node_conf(bgp: &BgpConf, local: Ipv4Addr, subnet: &str, include: &std::path::Path) -> String {
    let (text, _) = render(bgp, &announce(local, subnet), include);
    text.replace(
        "  local as 64512;\n",
        "  local as 64512;\n  strict bind on;\n",
    )
}

/// `bird-conf ROUTER LOCAL SUBNET INCLUDE_DIR`: prints the config of a node at LOCAL
/// holding SUBNET, peered with ROUTER.
pub fn print_conf(args: &[String]) {
    let text = node_conf(
        &conf(args[0].parse().unwrap()),
        args[1].parse().unwrap(),
        &args[2],
        std::path::Path::new(&args[3]),
    );
    print!("{text}");
}

/// `bird-latency COUNT ROUTER_NS ROUTER LOCAL CONF CTL INCLUDE_DIR`: COUNT times, the node's
/// subnet changes as a lease change changes it and twilld's apply() rewrites the config
/// and reconfigures BIRD; each time, until the new subnet is in the router's table.
pub async fn latency(args: &[String]) {
    let count: u32 = args[0].parse().unwrap();
    let (router_ns, router, local) = (&args[1], args[2].parse().unwrap(), args[3].parse().unwrap());
    let opts = BgpOptions {
        config_file: PathBuf::from(&args[4]),
        control_socket: PathBuf::from(&args[5]),
        include_dir: PathBuf::from(&args[6]),
        asn: None,
        peers: None,
    };
    let (tx, rx) = mpsc::channel();
    crate::route_watcher(router_ns.clone(), tx, 0);
    std::thread::sleep(Duration::from_millis(300));
    let bgp = conf(router);
    let mut took = Vec::new();
    for i in 0..count {
        let subnet = format!("10.250.{}.0/24", i % 256);
        let text = node_conf(&bgp, local, &subnet, &opts.include_dir);
        let t0 = Instant::now();
        apply(&opts, &text).await.expect("twilld's apply");
        loop {
            let (_, dst, at) = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("route never appeared");
            if dst == subnet {
                took.push(at.duration_since(t0).as_secs_f64() * 1e3);
                break;
            }
        }
    }
    let took = crate::sorted(took);
    println!(
        "{{\"n\":{},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2}}}",
        took.len(),
        crate::pct(&took, 0.5),
        crate::pct(&took, 0.99),
        crate::pct(&took, 1.0)
    );
}
