//! Node objects the size and shape a kubeadm cluster's API server holds (managed fields,
//! labels, ~40 images, conditions), for the benchmarks that feed Kubernetes mode many nodes
//! through the fake API server or the real one.

use serde_json::{json, Value};

const PREFIX: &str = "flannel.alpha.coreos.com";

/// A peer as a flannel (or twill) node in Kubernetes mode announces itself: a kubeadm-sized
/// node with podCIDR `cidr` and the vxlan backend's annotations.
pub fn flannel_peer(name: &str, cidr: &str, public_ip: &str, vtep_mac: &str, beat: u64) -> Value {
    let ann = json!({
        format!("{PREFIX}/backend-type"): "vxlan",
        format!("{PREFIX}/backend-data"): format!("{{\"VNI\":1,\"VtepMAC\":\"{vtep_mac}\"}}"),
        format!("{PREFIX}/public-ip"): public_ip,
        format!("{PREFIX}/kube-subnet-manager"): "true",
    });
    kubeadm_node(name, cidr, ann, beat)
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

/// A node's four kubelet conditions, all well, with heartbeat `beat` (seconds).
pub fn conditions(beat: u64) -> Value {
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

/// A node as a kubeadm cluster's API server returns it (~11 KB of JSON), with
/// `annotations` added to the kubelet's.
pub fn kubeadm_node(name: &str, cidr: &str, annotations: Value, beat: u64) -> Value {
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
            "name": name,
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
