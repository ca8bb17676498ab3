//! Benchmark helper (scripts/bench.sh runs it inside a throw-away namespace that has an
//! `eth0`): programs N peers through twilld's data-plane layer and prints, as one JSON
//! line, the time to program them from nothing, to run a no-op reconcile (everything in
//! place: read + diff), and to remove them all; `--nexthops` does it with routes by
//! nexthop id (`twilld --route-nexthops`), `--dual` on both families (each peer's IPv6
//! half on `flannel-v6.1`, which needs an IPv6 address 2001:2::1 on eth0). Given a
//! directory it writes the same entries as `ip -batch` / `bridge -batch` files for the
//! baseline instead: `ip.batch` in flanneld's form, `ip-nh.batch` with nexthop objects,
//! and with `--dual` `ip6.batch`, `ip-nh6.batch`, `bridge6.batch` for the IPv6 device;
//! `ip-more.batch` / `bridge-more.batch` hold the [`MORE`] peers after the first N.
//!
//! Beside the wall times it prints the kernel's CPU time (this process's system time: a
//! netlink request is carried out in the sender's `sendmsg`) for programming, and the
//! wall and kernel time of adding one peer at a time on top of N ([`MORE`] times, as a
//! node takes a new lease): what the kernel alone costs, which no program sending the
//! same requests can go below.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use twill_dataplane::{
    diff, nexthop_id, Actual, Family, Mac, Netlink, PeerEntry, RouteForm, VxlanSpec,
};

/// Peer `i`'s VTEP MAC; `family` (0 for IPv4, 6 for IPv6) keeps the two halves apart.
fn mac(i: u32, family: u8) -> Option<Mac> {
    Some(Mac([
        0x0a,
        family,
        (i >> 16) as u8,
        (i >> 8) as u8,
        i as u8,
        0x01,
    ]))
}

/// How many peers are added one at a time on top of N.
const MORE: u32 = 200;

/// This process's CPU time in the kernel so far.
fn system_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    Duration::from_secs(usage.ru_stime.tv_sec as u64)
        + Duration::from_micros(usage.ru_stime.tv_usec as u64)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn peers(n: u32) -> BTreeMap<IpNetwork, PeerEntry> {
    peers_from(0, n)
}

/// Peers `first..first + n`.
fn peers_from(first: u32, n: u32) -> BTreeMap<IpNetwork, PeerEntry> {
    (first..first + n)
        .map(|i| {
            // 10.0.0.0/8 in /24s, skipping ours; underlay 198.18.0.0/15 (nothing is sent).
            let subnet = IpNetwork::V4(
                Ipv4Network::new(Ipv4Addr::from(0x0a00_0000 + ((i + 1) << 8)), 24).unwrap(),
            );
            let ip = Ipv4Addr::from(0xc612_0000 + 256 + i);
            (subnet, PeerEntry::new(subnet, mac(i, 0x00), ip.into()))
        })
        .collect()
}

/// The IPv6 half of the same peers (`--dual`): fd00:0:0:<i+1>::/64 pod subnets, MACs of
/// their own, underlay addresses in 2001:2::/48 (nothing is sent).
fn peers6(n: u32) -> BTreeMap<IpNetwork, PeerEntry> {
    (0..n)
        .map(|i| {
            let net = (0xfd00u128 << 112) | (u128::from(i + 1) << 64);
            let subnet = IpNetwork::V6(Ipv6Network::new(Ipv6Addr::from(net), 64).unwrap());
            let ip = Ipv6Addr::from((0x2001_0002u128 << 96) | 0x1_0000 | u128::from(i));
            (subnet, PeerEntry::new(subnet, mac(i, 0x06), ip.into()))
        })
        .collect()
}

/// Writes `peers` as `ip -batch` (flanneld's form, and with nexthop objects) and
/// `bridge -batch` lines for device `dev`.
fn write_batches(dir: &str, suffix: &str, dev: &str, peers: &BTreeMap<IpNetwork, PeerEntry>) {
    let file = |name: &str| std::fs::File::create(format!("{dir}/{name}{suffix}.batch")).unwrap();
    let (mut ip, mut nh, mut br) = (file("ip"), file("ip-nh"), file("bridge"));
    for p in peers.values() {
        let mac = p.mac.expect("vxlan peers");
        let neigh = format!(
            "neigh replace {} lladdr {mac} dev {dev} nud permanent",
            p.vtep_ip
        );
        writeln!(ip, "{neigh}").unwrap();
        writeln!(nh, "{neigh}").unwrap();
        writeln!(
            br,
            "fdb replace {mac} dev {dev} dst {} self permanent",
            p.public_ip
        )
        .unwrap();
    }
    for p in peers.values() {
        let id = nexthop_id(p.subnet);
        writeln!(
            ip,
            "route replace {} via {} dev {dev} onlink",
            p.subnet, p.vtep_ip
        )
        .unwrap();
        writeln!(
            nh,
            "nexthop replace id {id} via {} dev {dev} onlink",
            p.vtep_ip
        )
        .unwrap();
    }
    for p in peers.values() {
        writeln!(
            nh,
            "route replace {} nhid {}",
            p.subnet,
            nexthop_id(p.subnet)
        )
        .unwrap();
    }
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
        .expect("usage: program_peers N [batch-dir] [--nexthops] [--dual]");
    let want = peers(n);
    let dual = flags.iter().any(|f| f == "--dual");
    let want6 = if dual { peers6(n) } else { BTreeMap::new() };
    if let Some(dir) = args.get(1) {
        write_batches(dir, "", "flannel.1", &want);
        write_batches(dir, "-more", "flannel.1", &peers_from(n, MORE));
        if dual {
            write_batches(dir, "6", "flannel-v6.1", &want6);
        }
        return;
    }
    let nl = Netlink::connect().unwrap();
    let index: u32 = std::fs::read_to_string("/sys/class/net/eth0/ifindex")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // (device, VXLAN source, its own address, the pod network, the peers), per family.
    let mut families = vec![(
        "flannel.1",
        "198.18.0.1",
        "10.0.0.0",
        "10.0.0.0/8",
        Family::V4,
        &want,
    )];
    if dual {
        families.push((
            "flannel-v6.1",
            "2001:2::1",
            "fd00::",
            "fd00::/16",
            Family::V6,
            &want6,
        ));
    }
    let mut devices = Vec::new();
    for (name, local, own, network, family, peers) in &families {
        let spec = VxlanSpec {
            tx_checksum: None,
            name: name.to_string(),
            vni: 1,
            local: local.parse().unwrap(),
            dev_index: index,
            port: 8472,
            gbp: false,
            learning: false,
            mtu: 1430,
            mac: None,
        };
        let dev = nl.ensure_vxlan(&spec).await.unwrap();
        // As twilld's device has its lease's address: the kernel validates an onlink
        // nexthop's gateway against the local table, which an address-less namespace lacks.
        nl.ensure_address(dev.index, own.parse().unwrap(), network.parse().unwrap())
            .await
            .unwrap();
        devices.push((dev.index, *family, *peers));
    }

    let (t, sys) = (Instant::now(), system_time());
    for (index, family, peers) in &devices {
        let ops = diff(peers, &nl.read_actual(*index, *family).await.unwrap(), form);
        let r = nl.apply(*index, &ops).await;
        assert!(
            r.failed.is_empty(),
            "{:?}",
            &r.failed[..r.failed.len().min(3)]
        );
    }
    let (program, program_sys) = (t.elapsed(), system_time() - sys);

    let t = Instant::now();
    let mut actual = Vec::new();
    for (index, family, peers) in &devices {
        let a = nl.read_actual(*index, *family).await.unwrap();
        assert!(diff(peers, &a, form).is_empty(), "not converged");
        actual.push(a);
    }
    let noop_time = t.elapsed();

    // One peer at a time on top of N, each its own apply (neighbour, forwarding entry,
    // route in one pipeline), as the node does with a lease that arrives alone. Removing
    // below takes out the N it read before; the extra ones go with the device.
    let index = devices[0].0;
    let mut one_more = Vec::new();
    let sys = system_time();
    for (subnet, entry) in peers_from(n, MORE) {
        let ops = diff(&BTreeMap::from([(subnet, entry)]), &Actual::default(), form);
        let t = Instant::now();
        let r = nl.apply(index, &ops).await;
        one_more.push(t.elapsed());
        assert!(r.failed.is_empty(), "{:?}", r.failed);
    }
    let one_more_sys = (system_time() - sys) / MORE;
    one_more.sort();
    let t = Instant::now();
    for ((index, _, _), a) in devices.iter().zip(&actual) {
        let r = nl.apply(*index, &diff(&BTreeMap::new(), a, form)).await;
        assert!(r.failed.is_empty());
    }
    let remove = t.elapsed();

    for (name, ..) in &families {
        nl.delete_link(name).await.unwrap();
    }
    println!(
        "{{\"n\":{n},\"program_ms\":{:.1},\"program_sys_ms\":{:.1},\"noop_ms\":{:.1},\"remove_ms\":{:.1},\
         \"one_more_p50_ms\":{:.3},\"one_more_max_ms\":{:.3},\"one_more_sys_ms\":{:.3}}}",
        ms(program),
        ms(program_sys),
        ms(noop_time),
        ms(remove),
        ms(one_more[one_more.len() / 2]),
        ms(one_more[one_more.len() - 1]),
        ms(one_more_sys),
    );
}
