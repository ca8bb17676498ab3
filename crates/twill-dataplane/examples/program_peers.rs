//! Benchmark helper (scripts/bench.sh runs it inside a throw-away namespace that has an
//! `eth0`): programs N peers through twilld's data-plane layer and prints, as one JSON
//! line, the time to program them from nothing, to run a no-op reconcile (everything in
//! place: read + diff), and to remove them all; `--nexthops` does it with routes by
//! nexthop id (`twilld --route-nexthops`). Given a directory it writes the same entries as
//! `ip -batch` / `bridge -batch` files for the baseline instead: `ip.batch` in flanneld's
//! form, `ip-nh.batch` with nexthop objects.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::time::Instant;

use ipnetwork::{IpNetwork, Ipv4Network};
use twill_dataplane::{diff, nexthop_id, Family, Mac, Netlink, PeerEntry, RouteForm, VxlanSpec};

fn peers(n: u32) -> BTreeMap<IpNetwork, PeerEntry> {
    (0..n)
        .map(|i| {
            // 10.0.0.0/8 in /24s, skipping ours; underlay 198.18.0.0/15 (nothing is sent).
            let subnet = IpNetwork::V4(
                Ipv4Network::new(Ipv4Addr::from(0x0a00_0000 + ((i + 1) << 8)), 24).unwrap(),
            );
            let mac = Some(Mac([
                0x0a,
                0x00,
                (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
                0x01,
            ]));
            let public_ip = Ipv4Addr::from(0xc612_0000 + 256 + i).into();
            (
                subnet,
                PeerEntry {
                    subnet,
                    vtep_ip: subnet.network(),
                    mac,
                    public_ip,
                },
            )
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (flags, args): (Vec<String>, Vec<String>) =
        std::env::args().skip(1).partition(|a| a.starts_with("--"));
    let form = if flags.iter().any(|f| f == "--nexthops") {
        RouteForm::Nexthop
    } else {
        RouteForm::Plain
    };
    let n: u32 = args
        .first()
        .and_then(|a| a.parse().ok())
        .expect("usage: program_peers N [batch-dir] [--nexthops]");
    let want = peers(n);
    if let Some(dir) = args.get(1) {
        let mut ip = std::fs::File::create(format!("{dir}/ip.batch")).unwrap();
        let mut nh = std::fs::File::create(format!("{dir}/ip-nh.batch")).unwrap();
        let mut br = std::fs::File::create(format!("{dir}/bridge.batch")).unwrap();
        for p in want.values() {
            let mac = p.mac.expect("vxlan peers");
            let neigh = format!(
                "neigh replace {} lladdr {} dev flannel.1 nud permanent",
                p.vtep_ip, mac
            );
            writeln!(ip, "{neigh}").unwrap();
            writeln!(nh, "{neigh}").unwrap();
            writeln!(
                br,
                "fdb replace {} dev flannel.1 dst {} self permanent",
                mac, p.public_ip
            )
            .unwrap();
        }
        for p in want.values() {
            writeln!(
                ip,
                "route replace {} via {} dev flannel.1 onlink",
                p.subnet, p.vtep_ip
            )
            .unwrap();
            let id = nexthop_id(p.subnet);
            writeln!(
                nh,
                "nexthop replace id {id} via {} dev flannel.1 onlink",
                p.vtep_ip
            )
            .unwrap();
        }
        for p in want.values() {
            writeln!(
                nh,
                "route replace {} nhid {}",
                p.subnet,
                nexthop_id(p.subnet)
            )
            .unwrap();
        }
        return;
    }
    let nl = Netlink::connect().unwrap();
    let index: u32 = std::fs::read_to_string("/sys/class/net/eth0/ifindex")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let spec = VxlanSpec {
        tx_checksum: None,
        name: "flannel.1".into(),
        vni: 1,
        local: "198.18.0.1".parse().unwrap(),
        dev_index: index,
        port: 8472,
        gbp: false,
        learning: false,
        mtu: 1450,
        mac: None,
    };
    let dev = nl.ensure_vxlan(&spec).await.unwrap();
    // As twilld's device has its lease's address: the kernel validates an onlink
    // nexthop's gateway against the local table, which an address-less namespace lacks.
    nl.ensure_address(
        dev.index,
        "10.0.0.0".parse().unwrap(),
        "10.0.0.0/8".parse().unwrap(),
    )
    .await
    .unwrap();

    let t = Instant::now();
    let ops = diff(
        &want,
        &nl.read_actual(dev.index, Family::V4).await.unwrap(),
        form,
    );
    let r = nl.apply(dev.index, &ops).await;
    let program = t.elapsed();
    assert!(
        r.failed.is_empty(),
        "{:?}",
        &r.failed[..r.failed.len().min(3)]
    );

    let t = Instant::now();
    let actual = nl.read_actual(dev.index, Family::V4).await.unwrap();
    let noop = diff(&want, &actual, form);
    let noop_time = t.elapsed();
    assert!(noop.is_empty(), "not converged");

    let t = Instant::now();
    let r = nl
        .apply(dev.index, &diff(&BTreeMap::new(), &actual, form))
        .await;
    let remove = t.elapsed();
    assert!(r.failed.is_empty());
    nl.delete_link("flannel.1").await.unwrap();
    println!(
        "{{\"n\":{n},\"program_ms\":{:.1},\"noop_ms\":{:.1},\"remove_ms\":{:.1}}}",
        program.as_secs_f64() * 1e3,
        noop_time.as_secs_f64() * 1e3,
        remove.as_secs_f64() * 1e3
    );
}
