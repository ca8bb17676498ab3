//! twilld against a real Kubernetes control plane (kube-apiserver and
//! kube-controller-manager built from `k8s.io/kubernetes` by `scripts/setup.sh reference`):
//! the manifests accepted by the server with strict field validation, nodes registered as
//! a kubelet registers them with podCIDRs the controller-manager allocates, twilld on
//! three node namespaces with a token of the manifest's service account, under twill's
//! RBAC and under flannel's.

use twill_e2e::control_plane::ControlPlane;
use twill_e2e::Cluster;
use twill_testutil::wait_until;

const ANN: &str = "flannel.alpha.coreos.com";
const NET_CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn manifest(name: &str) -> String {
    twill_e2e::control_plane::manifest(name)
}

/// A cluster of `n` node namespaces registered with the real API server after `manifest`
/// was applied, each running twilld with a token of the manifest's service account `ns/sa`.
fn cluster(
    tag: &str,
    n: usize,
    manifest: &str,
    ns: &str,
    sa: &str,
) -> (Cluster, ControlPlane, Vec<String>) {
    mixed(tag, &vec![false; n], manifest, ns, sa, NET_CONF)
}

fn mixed(
    tag: &str,
    flanneld: &[bool],
    manifest: &str,
    ns: &str,
    sa: &str,
    net_conf: &str,
) -> (Cluster, ControlPlane, Vec<String>) {
    twill_e2e::control_plane::kube_cluster(tag, flanneld, manifest, ns, sa, net_conf, &[])
}

/// `manifest` accepted by the API server with strict validation, as a server-side dry
/// run (what `kubectl apply --server-side` would write, without writing it).
fn accepted(cp: &ControlPlane, manifest: &str) {
    cp.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=twill-test",
            "--validate=strict",
            "--dry-run=server",
            "-f",
            "-",
        ],
        Some(manifest),
    );
}

fn annotation(cp: &ControlPlane, node: &str, key: &str) -> String {
    let path = format!(
        "jsonpath={{.metadata.annotations.{}}}",
        format!("{ANN}/{key}").replace('.', "\\.")
    );
    cp.kubectl(&["get", "node", node, "-o", &path])
}

#[test]
fn three_nodes_under_twills_rbac_on_a_real_api_server() {
    let (c, cp, cidrs) = cluster("kr", 3, &manifest("kube-twill.yml"), "kube-twill", "twill");
    // The uninstall manifest is accepted too (a dry run: it would clean the nodes up).
    accepted(&cp, &manifest("uninstall-twill.yml"));
    // The chart rendered from flannel's own values.yaml (only the image changed), dual
    // stack and the dashboard's ConfigMap: accepted too (a dry run beside the objects the
    // default rendering made).
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/charts/twill");
    let values = twill_e2e::reference_bin("flanneld", "kube-flannel-values.yaml");
    let rendered = std::process::Command::new(twill_e2e::reference_bin("helm", "helm"))
        .args(["template", "twill"])
        .arg(&chart)
        .args(["--namespace", "kube-twill", "-f"])
        .arg(&values)
        .args([
            "--set",
            "flannel.image.repository=ghcr.io/twill-net/twilld",
            "--set",
            "flannel.image.tag=0.1.0",
            "--set",
            "podCidrv6=fd00:10:244::/56",
            "--set",
            "monitoring.grafanaDashboard.enabled=true",
        ])
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{rendered:?}");
    accepted(&cp, &String::from_utf8(rendered.stdout).unwrap());
    for i in 0..3 {
        let name = format!("kr-node{}", i + 1);
        assert_eq!(annotation(&cp, &name, "public-ip"), c.nodes[i].ip);
        assert_eq!(annotation(&cp, &name, "backend-type"), "vxlan");
        let cond = cp.kubectl(&[
            "get",
            "node",
            &name,
            "-o",
            "jsonpath={.status.conditions[?(@.type=='NetworkUnavailable')].status}",
        ]);
        assert_eq!(cond, "False", "NetworkUnavailable cleared on {name}");
    }
    // A node deleted: its routes go everywhere.
    cp.kubectl(&["delete", "node", "kr-node3"]);
    wait_until(20, "kr-node3's subnet gone from the other nodes", || {
        (0..2).all(|i| !c.nodes[i].vxlan_subnets().contains(&cidrs[2]))
    });
}

/// The API server restarted under running nodes: their watches resume on the new server
/// and miss nothing that happens after (a node deleted, a node added).
/// Registers `name` with the API server, as its kubelet would, and starts twilld for it on
/// a new node namespace: its index and podCIDR.
fn join(c: &mut Cluster, cp: &ControlPlane, name: &str) -> (usize, String) {
    let kubeconfig = c.dir.path().join("sa.kubeconfig");
    let conf = c.dir.path().join("net-conf.json");
    let idx = c.add_node_stopped(&[
        "--kube-subnet-mgr",
        &format!("--kubeconfig-file={}", kubeconfig.display()),
        &format!("--net-config-path={}", conf.display()),
        "--ip-masq",
    ]);
    cp.register_node(name, &c.nodes[idx].ip);
    let cidr = cp.pod_cidr(name);
    c.nodes[idx].env.push(("NODE_NAME".into(), name.into()));
    c.nodes[idx].start();
    (idx, cidr)
}

#[test]
fn watches_resume_after_the_api_server_restarts() {
    let (mut c, mut cp, cidrs) =
        cluster("krr", 2, &manifest("kube-twill.yml"), "kube-twill", "twill");
    cp.restart_apiserver();
    // A node that joins after the restart is learned by the running ones...
    let (idx, third) = join(&mut c, &cp, "krr-node3");
    c.add_pod(idx);
    wait_until(20, "the new node's subnet on the others", || {
        (0..2).all(|i| c.nodes[i].vxlan_subnets().contains(&third))
    });
    c.assert_full_mesh();
    // ...and one deleted after a second restart is dropped by them.
    cp.restart_apiserver();
    cp.kubectl(&["delete", "node", "krr-node2"]);
    wait_until(20, "krr-node2's subnet gone from the others", || {
        [0, 2]
            .iter()
            .all(|&i| !c.nodes[i].vxlan_subnets().contains(&cidrs[1]))
    });
}

/// A node renumbered under a running twilld: its public-ip annotation follows, the peer
/// moves its entry, and the moved node, whose connections to the API server started from
/// the old address, still learns of a node that joins (its client and watch made again).
#[test]
fn a_renumbered_node_follows_on_a_real_api_server() {
    let (mut c, cp, _) = cluster("krn", 2, &manifest("kube-twill.yml"), "kube-twill", "twill");
    let mac = c.nodes[0].vtep_mac();
    c.nodes[0]
        .ns
        .sh("ip addr del 198.18.0.1/24 dev eth0 && ip addr add 198.18.0.11/24 dev eth0");
    wait_until(10, "the public-ip annotation follows", || {
        annotation(&cp, "krn-node1", "public-ip") == "198.18.0.11"
    });
    wait_until(10, "the peer's FDB entry points at the new address", || {
        c.nodes[1]
            .ns
            .sh("bridge fdb show dev flannel.1")
            .lines()
            .any(|l| l.starts_with(&mac) && l.contains("dst 198.18.0.11"))
    });
    let (_, third) = join(&mut c, &cp, "krn-node3");
    wait_until(20, "the new node's subnet on the moved node", || {
        c.nodes[0].vxlan_subnets().contains(&third)
    });
}

/// flannel's own kube-flannel.yml (from the pinned flannel module) as the server takes it,
/// and twilld running under the service account and ClusterRole it creates.
#[test]
fn under_flannels_own_manifest_and_rbac() {
    let flannel =
        std::fs::read_to_string(twill_e2e::reference_bin("flanneld", "kube-flannel.yml")).unwrap();
    let (c, _cp, _) = cluster("krf", 2, &flannel, "kube-flannel", "flannel");
    c.assert_full_mesh();
}

/// The real flanneld in Kubernetes mode beside twilld on one real API server, both under
/// flannel's own manifest and RBAC: each programs the other's node, pods reach each other.
#[test]
fn twilld_and_flanneld_nodes_on_one_real_api_server() {
    let flannel =
        std::fs::read_to_string(twill_e2e::reference_bin("flanneld", "kube-flannel.yml")).unwrap();
    let (c, _cp, cidrs) = mixed(
        "krm",
        &[false, false, true],
        &flannel,
        "kube-flannel",
        "flannel",
        NET_CONF,
    );
    wait_until(20, "every node routes to every other", || {
        (0..3).all(|i| c.nodes[i].vxlan_subnets().len() == 2)
    });
    assert!(
        c.nodes[2].log().contains("flannel"),
        "flanneld ran on node 3"
    );
    assert!(c.nodes[0].vxlan_subnets().contains(&cidrs[2]));
    c.assert_full_mesh();
}

/// host-gw in Kubernetes mode: twilld publishes the annotations flanneld publishes
/// (`backend-type: host-gw`, `backend-data: null`), and each routes the other's podCIDR via
/// its node address.
#[test]
fn host_gw_twilld_and_flanneld_nodes_on_one_real_api_server() {
    let flannel =
        std::fs::read_to_string(twill_e2e::reference_bin("flanneld", "kube-flannel.yml")).unwrap();
    let (c, cp, cidrs) = mixed(
        "krh",
        &[false, false, true],
        &flannel,
        "kube-flannel",
        "flannel",
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
    for i in 0..3 {
        for k in (0..3).filter(|k| *k != i) {
            let want = format!("{} via {}", cidrs[k], c.nodes[k].ip);
            let routes = c.nodes[i].ns.sh("ip -4 route show dev eth0");
            assert!(routes.contains(&want), "node {}: {routes}", i + 1);
        }
        assert_eq!(c.nodes[i].ns.sh("ip -br link show type vxlan"), "");
    }
    for node in ["krh-node1", "krh-node3"] {
        assert_eq!(annotation(&cp, node, "backend-type"), "host-gw", "{node}");
        assert_eq!(annotation(&cp, node, "backend-data"), "null", "{node}");
    }
}

/// One twilld node among two flanneld nodes in Kubernetes mode, and a flanneld node moved
/// to twilld and back in place while its pod is pinged from another node.
#[test]
fn a_flanneld_node_moves_to_twilld_and_back_on_a_real_api_server() {
    let flannel =
        std::fs::read_to_string(twill_e2e::reference_bin("flanneld", "kube-flannel.yml")).unwrap();
    let (mut c, cp, cidrs) = mixed(
        "krv",
        &[true, false, true],
        &flannel,
        "kube-flannel",
        "flannel",
        NET_CONF,
    );
    let mac = c.nodes[2].vtep_mac();
    let pinger = c.pod(1).ns.name.clone();
    let target = c.pod(2).ip.clone();
    for to_twilld in [true, false] {
        c.nodes[2].stop(libc::SIGTERM);
        let (lost, summary) = twill_e2e::loss_during(&pinger, &target, 6, || {
            if to_twilld {
                c.nodes[2].start();
                c.nodes[2].wait_ready();
            } else {
                c.nodes[2].start_flanneld();
                std::thread::sleep(std::time::Duration::from_secs(2));
            }
        });
        let way = if to_twilld {
            "flanneld -> twilld"
        } else {
            "twilld -> flanneld"
        };
        eprintln!("{way}: {lost}% lost");
        assert!(lost <= 2.0, "{way}: {summary}");
        assert_eq!(c.nodes[2].lease(), cidrs[2], "{way}: the podCIDR stays");
        assert_eq!(c.nodes[2].vtep_mac(), mac, "{way}: the MAC stays");
        assert_eq!(annotation(&cp, "krv-node3", "public-ip"), c.nodes[2].ip);
        c.assert_full_mesh();
    }
}
