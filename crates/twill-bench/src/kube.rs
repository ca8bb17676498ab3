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
use twill_testutil::FakeKube;

const PREFIX: &str = "flannel.alpha.coreos.com";

fn pod_cidr(i: u32) -> String {
    format!("{}/24", Ipv4Addr::from(0x0a01_0000 + (i << 8)))
}

fn images() -> Value {
    (0..40)
        .map(|k| {
            json!({
                "names": [
                    format!("registry.example.com/team-{k}/service-{k}@sha256:{:064x}", k * 7919),
                    format!("registry.example.com/team-{k}/service-{k}:v1.{k}.3"),
                ],
                "sizeBytes": 12_345_678 + k,
            })
        })
        .collect()
}

fn conditions(beat: u64) -> Value {
    let t = format!(
        "2026-11-23T{:02}:{:02}:{:02}Z",
        beat / 3600 % 24,
        beat / 60 % 60,
        beat % 60
    );
    [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
        ("Ready", "True", "KubeletReady"),
    ]
    .iter()
    .map(|(ty, st, reason)| {
        json!({"type": ty, "status": st, "reason": reason, "lastHeartbeatTime": t,
               "lastTransitionTime": "2026-11-01T00:00:00Z",
               "message": format!("kubelet reports {reason}")})
    })
    .collect()
}

/// A node as a kubeadm cluster's API server returns it.
fn node(name: &str, cidr: &str, annotations: Value, beat: u64) -> Value {
    let fields = |manager: &str| {
        json!({"manager": manager, "operation": "Update", "apiVersion": "v1",
               "time": "2026-11-01T00:00:00Z", "fieldsType": "FieldsV1",
               "fieldsV1": {"f:metadata": {"f:annotations": {".": {},
                   "f:node.alpha.kubernetes.io/ttl": {}, "f:volumes.kubernetes.io/controller-managed-attach-detach": {}},
                   "f:labels": {".": {}, "f:kubernetes.io/arch": {}, "f:kubernetes.io/hostname": {}, "f:kubernetes.io/os": {}}},
                   "f:spec": {"f:podCIDR": {}, "f:podCIDRs": {".": {}, "v:\"x\"": {}}, "f:providerID": {}},
                   "f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:lastHeartbeatTime": {}, "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {}}}}}})
    };
    let mut ann = json!({
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
    });
    if let (Some(a), Value::Object(extra)) = (ann.as_object_mut(), annotations) {
        a.extend(extra);
    }
    json!({
        "metadata": {
            "labels": {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "m5.xlarge", "topology.kubernetes.io/region": "eu-west-1",
                "topology.kubernetes.io/zone": "eu-west-1a"},
            "annotations": ann,
            "managedFields": [fields("kubelet"), fields("kube-controller-manager"), fields("kubeadm")],
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr], "providerID": format!("aws:///eu-west-1a/i-{name}")},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "198.19.0.1"}, {"type": "Hostname", "address": name},
                          {"type": "InternalDNS", "address": format!("{name}.eu-west-1.compute.internal")}],
            "allocatable": {"cpu": "4", "ephemeral-storage": "95551679124", "hugepages-2Mi": "0", "memory": "15896672Ki", "pods": "110"},
            "capacity": {"cpu": "4", "ephemeral-storage": "103679420Ki", "hugepages-2Mi": "0", "memory": "15999072Ki", "pods": "110"},
            "conditions": conditions(beat),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": images(),
            "nodeInfo": {"architecture": "amd64", "bootID": format!("boot-{name}"), "containerRuntimeVersion": "containerd://1.7.22",
                "kernelVersion": "6.1.0-27-cloud-amd64", "kubeProxyVersion": "v1.31.2", "kubeletVersion": "v1.31.2",
                "machineID": format!("machine-{name}"), "operatingSystem": "linux", "osImage": "Debian GNU/Linux 12 (bookworm)",
                "systemUUID": format!("uuid-{name}")},
        },
    })
}

fn peer(i: u32, beat: u64) -> (String, Value) {
    let name = format!("peer-{i:05}");
    let (ip, mac) = crate::fake_vtep(i, 2);
    let ann = json!({
        format!("{PREFIX}/backend-type"): "vxlan",
        format!("{PREFIX}/backend-data"): format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}"),
        format!("{PREFIX}/public-ip"): ip.to_string(),
        format!("{PREFIX}/kube-subnet-manager"): "true",
    });
    let n = node(&name, &pod_cidr(i), ann, beat);
    (name, n)
}

pub fn serve(addr: &str, count: u32) {
    let listener = std::net::TcpListener::bind(addr).expect("bind");
    let fake = FakeKube::start(listener);
    fake.put_node(
        "bench-self",
        node("bench-self", "10.255.255.0/24", json!({}), 0),
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
