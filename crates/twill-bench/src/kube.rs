//! `twill-bench fake-kube ADDR COUNT`: serves the FAKE nodes API of twill-testutil on ADDR
//! with COUNT flannel-annotated peer nodes plus our own node `bench-self` (podCIDR
//! 10.255.255.0/24, no annotations yet), each padded to the size of a real kubeadm node
//! (managed fields, labels, ~40 images, conditions: ~11 KB of JSON). Then reads commands
//! from stdin, one per line, and answers each with `done` once applied:
//! `add N` (N more peers), `churn N` (a status-only update to N peers, as kubelets'
//! heartbeats and image changes are), `quit`.

use std::io::BufRead;
use std::net::Ipv4Addr;

use serde_json::{json, Value};
use twill_testutil::kube_nodes::{conditions, flannel_peer, kubeadm_node};
use twill_testutil::FakeKube;

fn pod_cidr(i: u32) -> String {
    format!("{}/24", Ipv4Addr::from(0x0a01_0000 + (i << 8)))
}

fn peer(i: u32, beat: u64) -> (String, Value) {
    let name = format!("peer-{i:05}");
    let (ip, mac) = crate::fake_vtep(i, 2);
    let n = flannel_peer(&name, &pod_cidr(i), &ip.to_string(), &mac, beat);
    (name, n)
}

pub fn serve(addr: &str, count: u32) {
    let listener = std::net::TcpListener::bind(addr).expect("bind");
    let fake = FakeKube::start(listener);
    fake.put_node(
        "bench-self",
        kubeadm_node("bench-self", "10.255.255.0/24", json!({}), 0),
    );
    let mut peers = 0;
    let add = |n: u32, peers: &mut u32| {
        for i in *peers..*peers + n {
            let (name, node) = peer(i, 0);
            fake.put_node(&name, node);
        }
        *peers += n;
    };
    add(count, &mut peers);
    let size = serde_json::to_string(&peer(0, 0).1).map_or(0, |s| s.len());
    println!(
        "serving {} with {peers} peer nodes of {size} bytes each",
        fake.url()
    );
    let mut beat = 0;
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let mut words = line.split_whitespace();
        let n: u32 = words
            .clone()
            .nth(1)
            .and_then(|w| w.parse().ok())
            .unwrap_or(0);
        match words.next() {
            Some("add") => add(n, &mut peers),
            Some("churn") => {
                beat += 10;
                for i in 0..n.min(peers) {
                    let name = format!("peer-{i:05}");
                    fake.update_node(&name, |v| v["status"]["conditions"] = conditions(beat));
                }
            }
            Some("quit") | None => break,
            Some(other) => eprintln!("unknown command {other:?}"),
        }
        println!("done");
    }
}
