//! Traffic between namespaces as the tests observe it: who a receiver saw as the sender,
//! what a ping stream lost, a TCP connection's peer.

use std::process::{Command, Stdio};

use twill_testutil::{wait_until, Netns};

use crate::{dies_with_the_test, Pod};

/// Sends pings from `from` to `to` while tcpdump on `at`'s `dev` captures ICMP echo
/// requests to `to`: the source address the receiver saw (empty if none arrived). `to`
/// may be of either family.
pub fn seen_source(from: &Netns, to: &str, at: &Netns, dev: &str) -> String {
    let filter = if to.contains(':') {
        // ICMPv6 echo request right after a plain IPv6 header.
        format!("icmp6 and ip6[40] == 128 and dst host {to}")
    } else {
        format!("icmp[icmptype] == icmp-echo and dst host {to}")
    };
    let cap = Command::new("ip")
        .args([
            "netns", "exec", &at.name, "timeout", "5", "tcpdump", "-ni", dev, "-c", "1", "-l",
        ])
        .arg(filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = from.try_sh(&format!("ping -c 3 -i 0.2 -W 1 -q {to}"));
    let out = cap.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    // "12:00:00.000000 IP 10.244.1.2 > 172.20.2.2: ICMP echo request, ..." (IP6 for v6)
    line.split_whitespace()
        .skip_while(|w| *w != "IP" && *w != "IP6")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

/// Pings `to` from `from` every 20 ms for `secs` seconds while `during` runs: the percentage
/// lost and ping's summary.
pub fn loss_during(from: &str, to: &str, secs: u32, during: impl FnOnce()) -> (f64, String) {
    let pinger = Command::new("ip")
        .args(["netns", "exec", from, "ping", "-i", "0.02", "-w"])
        .arg(secs.to_string())
        .args(["-q", to])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    during();
    let out = pinger.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    let lost = summary
        .split(", ")
        .find_map(|p| p.strip_suffix("% packet loss"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(100.0);
    (lost, summary)
}

/// A dual-stack pod's IPv6 address.
pub fn ip6(p: &Pod) -> &str {
    p.ip6.as_deref().expect("the pod has an IPv6 address")
}

/// A TCP connection from `from` to `addr` in `to` (iperf3 for a second): the peer address
/// the server accepted it from.
pub fn tcp_from(from: &Netns, to: &Netns, addr: &str) -> String {
    let mut server = Command::new("ip");
    server
        .args([
            "netns",
            "exec",
            &to.name,
            "timeout",
            "20",
            "iperf3",
            "-s",
            "-1",
            "--forceflush",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    dies_with_the_test(&mut server);
    let server = server.spawn().unwrap();
    let target = if addr.contains(':') {
        format!("-6 -c {addr}")
    } else {
        format!("-c {addr}")
    };
    wait_until(10, "the iperf3 server listening", || {
        from.try_sh(&format!("iperf3 {target} -t 1 2>&1 | grep -q receiver"))
    });
    let out = server.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "Accepted connection from 10.244.3.2, port 45678"
    text.lines()
        .find_map(|l| l.strip_prefix("Accepted connection from "))
        .and_then(|l| l.split(',').next())
        .unwrap_or_else(|| panic!("no connection accepted: {text}"))
        .to_string()
}
