//! The `kubectl apply` path, run for real: the image scripts/image.sh built, imported into
//! Debian's containerd on each node namespace, and the DaemonSets of manifests/kube-twill.yml
//! and manifests/uninstall-twill.yml (read from the files users apply) run by a kubelet
//! STAND-IN (twill_e2e::kubelet, whose header lists where it differs from a kubelet),
//! against the FAKE Kubernetes API over HTTPS with flannel's RBAC enforced.

use std::time::{Duration, Instant};

use twill_e2e::kubelet::{image_archive, text, ApiServer, Kubelet, Manifest};
use twill_e2e::routers::{frr_router, kernel_bgp_routes, RouteWatch};
use twill_e2e::Cluster;
use twill_testutil::{require_root, wait_until, FakeKube, FLANNEL_CLUSTER_ROLE};

const NAMESPACE: &str = "kube-twill";

fn require_image() {
    let img = image_archive();
    assert!(
        img.exists(),
        "no image at {}: scripts/image.sh builds it (scripts/test.sh runs it before the tests)",
        img.display()
    );
}

/// One node of the cluster: namespace, kubelet stand-in, the DaemonSet's pod name.
struct KubeNode {
    kubelet: Kubelet,
    pod: String,
}

/// Nodes `names` (podCIDR 10.244.<i+1>.0/24) in the fake API, each with a kubelet
/// stand-in that has imported the image.
fn nodes(c: &mut Cluster, fake: &FakeKube, names: &[&str]) -> Vec<KubeNode> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            fake.add_node(name, Some(&format!("10.244.{}.0/24", i + 1)));
            let pod = format!("kube-twill-ds-{name}");
            fake.add_pod(NAMESPACE, &pod, name);
            let n = c.add_node_stopped(&[]);
            let node = &c.nodes[n];
            // A node has a default route, and twilld picks its underlay by it (no --iface
            // in the manifest). The gateway is a made-up address on the test's own switch.
            node.ns.sh("ip route add default via 198.18.0.254 dev eth0");
            let kubelet = Kubelet::start(name, &node.ns, &node.ip, &node.dir.join("kubelet"));
            KubeNode { kubelet, pod }
        })
        .collect()
}

/// Runs kube-twill-ds on each node in turn and waits until its readiness probe, as
/// declared, passes; returns each node's time from container start to Ready (probed every
/// 100 ms: the kubelet's declared initialDelaySeconds/periodSeconds would round it up).
fn install(nodes: &mut [KubeNode], manifest: &Manifest, fake: &FakeKube) -> Vec<Duration> {
    let api = ApiServer {
        fake,
        configmaps: manifest.configmaps(),
    };
    nodes
        .iter_mut()
        .map(|n| run_ready(n, manifest, &api))
        .collect()
}

/// Runs kube-twill-ds's pod on `n` and waits for Ready; returns the time it took.
fn run_ready(n: &mut KubeNode, manifest: &Manifest, api: &ApiServer) -> Duration {
    let ds = manifest.daemonset("kube-twill-ds");
    let main = ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .clone();
    n.kubelet.run_pod(&ds, &n.pod, api);
    let k = &n.kubelet;
    let mut last: String;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match k.probe(&main, "readiness") {
            Ok(_) => break k.started(&n.pod, &main.name).elapsed(),
            Err(e) => last = e,
        }
        assert!(
            Instant::now() < deadline && k.is_running(&n.pod, &main.name),
            "{}: never Ready ({last})\n{}",
            k.node,
            k.logs(&n.pod, &main.name)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A busybox pod on `k`, wired by whatever CNI config and plugins the node has (those the
/// DaemonSet installed), through containerd's own CNI support. Returns its IPv4 address.
fn start_pod(k: &Kubelet, id: &str, dir: &std::path::Path) -> String {
    let rootfs = dir.join(format!("rootfs-{id}"));
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "ip", "ping", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let out = dir.join(format!("{id}.out"));
    let mut run = k.ctr_cmd(&["run", "--rm", "--cni", "--rootfs"]);
    run.arg(&rootfs)
        .arg(id)
        .args(["/bin/sh", "-c", "ip -4 -o addr show eth0; exec sleep 600"])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::process::Stdio::null());
    // Reaped when the node namespace goes (the test's end kills everything in it).
    std::mem::forget(run.spawn().unwrap());
    let mut ip = String::new();
    wait_until(
        30,
        &format!("pod {id} on {} to get an address", k.node),
        || {
            let s = std::fs::read_to_string(&out).unwrap_or_default();
            match s.split_whitespace().skip_while(|w| *w != "inet").nth(1) {
                Some(a) => {
                    ip = a.split('/').next().unwrap().to_string();
                    true
                }
                None => false,
            }
        },
    );
    ip
}

/// Pod `id` on `k` pings `ip`: Ok, or what ping said.
fn pod_pings(k: &Kubelet, id: &str, ip: &str) -> Result<(), String> {
    let exec = format!("ping-{}", ip.replace('.', "-"));
    let out = k.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        &exec,
        id,
        "/bin/ping",
        "-c",
        "1",
        "-W",
        "2",
        ip,
    ]);
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out))
    }
}

fn read(k: &Kubelet, path: &str) -> String {
    std::fs::read_to_string(k.host_path(path)).unwrap_or_default()
}

#[test]
fn kube_twill_yml_runs_under_containerd_as_the_kubelet_runs_it() {
    require_root();
    require_image();
    let manifest = Manifest::load("kube-twill.yml");
    let images = manifest.images();
    assert_eq!(images.len(), 1, "one image: {images:?}");
    let mut c = Cluster::new("ds");
    let fake = c.fake_kube_tls();
    fake.enforce_rbac(FLANNEL_CLUSTER_ROLE);
    let names = ["dsn1", "dsn2", "dsn3"];
    let mut nodes = nodes(&mut c, &fake, &names);
    // dsn3 is an iptables-legacy node (its kube-proxy writes legacy, docker left FORWARD
    // at DROP): the image must put twilld's rules there too, or pods are dropped.
    let legacy = "iptables-legacy -P FORWARD DROP && iptables-legacy -N KUBE-FORWARD && \
                  iptables-legacy -A FORWARD -j KUBE-FORWARD && \
                  iptables-legacy -t nat -N KUBE-POSTROUTING && \
                  iptables-legacy -t nat -A POSTROUTING -j KUBE-POSTROUTING";
    c.nodes[2].ns.sh(legacy);
    for n in &nodes {
        let listed = text(&n.kubelet.ctr(&["-n", "k8s.io", "images", "ls", "-q"]));
        assert!(
            listed.lines().any(|l| l == images[0]),
            "{images:?} imported: {listed}"
        );
    }
    let ready = install(&mut nodes, &manifest, &fake);

    let cm = manifest
        .configmaps()
        .into_iter()
        .find(|m| m.metadata.name.as_deref() == Some("kube-twill-cfg"))
        .unwrap();
    let cni_conf: serde_json::Value =
        serde_json::from_str(&cm.data.as_ref().unwrap()["cni-conf.json"]).unwrap();
    let ds = manifest.daemonset("kube-twill-ds");
    let main = ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .clone();
    for (i, n) in nodes.iter().enumerate() {
        let k = &n.kubelet;
        // The init container put the ConfigMap's conflist and the image's plugin on the
        // node's host paths.
        let conflist: serde_json::Value =
            serde_json::from_str(&read(k, "/etc/cni/net.d/10-twill.conflist"))
                .unwrap_or_else(|e| panic!("{}: conflist: {e}", k.node));
        assert_eq!(conflist, cni_conf, "{}: the ConfigMap's conflist", k.node);
        let plugin = std::fs::metadata(k.host_path("/opt/cni/bin/twill")).expect("plugin");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(plugin.permissions().mode() & 0o777, 0o755);
        let env = read(k, "/run/flannel/subnet.env");
        assert!(
            env.contains(&format!("FLANNEL_SUBNET=10.244.{}.1/24", i + 1)),
            "{}: subnet.env: {env}",
            k.node
        );
        assert!(k.probe(&main, "liveness").is_ok(), "{}: liveness", k.node);
        // It runs with what the manifest grants and no more: NET_ADMIN and NET_RAW on the
        // runtime's default set, never SYS_ADMIN.
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", k.pid(&n.pod, &main.name))).unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
            .unwrap();
        let (net_admin, net_raw, sys_admin) = (1u64 << 12, 1u64 << 13, 1u64 << 21);
        assert_eq!(
            eff & (net_admin | net_raw),
            net_admin | net_raw,
            "{}: CapEff {eff:#x}",
            k.node
        );
        assert_eq!(eff & sys_admin, 0, "{}: CapEff {eff:#x}", k.node);
    }
    // Each node's rules in the backend it uses.
    for (i, backend, other) in [(0, "nft", "legacy"), (2, "legacy", "nft")] {
        let save = |b: &str| c.nodes[i].ns.sh(&format!("iptables-{b}-save"));
        assert!(
            save(backend).contains("FLANNEL-POSTRTG"),
            "{}: {}",
            names[i],
            save(backend)
        );
        assert!(
            !save(other).contains("FLANNEL"),
            "{}: {}",
            names[i],
            save(other)
        );
    }

    // Every node routes to the other two over the overlay.
    for (i, n) in nodes.iter().enumerate() {
        let mut want: Vec<String> = (1..=3)
            .filter(|j| *j != i + 1)
            .map(|j| format!("10.244.{j}.0/24"))
            .collect();
        want.sort();
        wait_until(
            20,
            &format!("{} routes to its peers", n.kubelet.node),
            || c.nodes[i].vxlan_subnets() == want,
        );
    }
    // Pods wired by the plugin the DaemonSet installed reach each other across nodes.
    let dir = c.dir.path().to_path_buf();
    let pods: Vec<String> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| start_pod(&n.kubelet, &format!("web{}", i + 1), &dir))
        .collect();
    for (i, ip) in pods.iter().enumerate() {
        assert!(
            ip.starts_with(&format!("10.244.{}.", i + 1)),
            "pod {i}: {ip}"
        );
    }
    for (a, b) in [(0, 1), (0, 2), (1, 2), (2, 0)] {
        if let Err(e) = pod_pings(&nodes[a].kubelet, &format!("web{}", a + 1), &pods[b]) {
            panic!("pod on {} pings pod on {}: {e}", names[a], names[b]);
        }
    }
    // In-cluster client as a pod's: the mounted token on every request, nothing refused.
    let seen = fake.requests();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|r| r
            .authorization
            .starts_with("Bearer stand-in-token-for-kube-twill-")),
        "every request carries the service account token"
    );
    assert_eq!(
        fake.forbidden(),
        Vec::<(String, String)>::new(),
        "nothing refused"
    );

    // Pod deletion: SIGTERM; twilld exits 0 within the grace period and leaves the data
    // plane in place, so pods keep talking while it is replaced.
    let first = &mut nodes[0];
    let stopped = first.kubelet.delete_pod(&first.pod.clone());
    for (id, status, took) in &stopped {
        assert_eq!(*status, 0, "{id} exits 0 on SIGTERM");
        assert!(*took < Duration::from_secs(30), "{id} stopped in {took:?}");
    }
    assert!(
        c.nodes[0].ns.try_sh("ip link show flannel.1"),
        "flannel.1 stays"
    );
    assert_eq!(
        c.nodes[0].vxlan_subnets(),
        ["10.244.2.0/24", "10.244.3.0/24"]
    );
    assert!(!read(&nodes[0].kubelet, "/run/flannel/subnet.env").is_empty());
    if let Err(e) = pod_pings(&nodes[0].kubelet, "web1", &pods[1]) {
        panic!("pod on dsn1 pings pod on dsn2 after SIGTERM: {e}");
    }

    let shown: Vec<String> = ready
        .iter()
        .zip(names)
        .map(|(d, n)| format!("{n} {} ms", d.as_millis()))
        .collect();
    eprintln!(
        "figures: image {:.1} MB (archive); container start -> Ready: {}",
        std::fs::metadata(image_archive()).unwrap().len() as f64 / 1e6,
        shown.join(", ")
    );
}

/// Everything of twill the node `k` still has: devices, routes into the pod network,
/// iptables (either backend) and nftables rules, and files on its host paths.
fn twill_leftovers(k: &Kubelet) -> Vec<String> {
    let mut left = Vec::new();
    let on = |cmd: &str| text(&k.on_node(cmd));
    for l in on("ip -o link show").lines() {
        let name = l.split(':').nth(1).unwrap_or("").trim();
        if name.starts_with("flannel") || name == "cni0" {
            left.push(format!("link {name}"));
        }
    }
    for l in on("ip route show; ip -6 route show").lines() {
        if l.starts_with("10.244.") {
            left.push(format!("route {l}"));
        }
    }
    for save in [
        "iptables-nft-save",
        "iptables-legacy-save",
        "ip6tables-nft-save",
        "ip6tables-legacy-save",
    ] {
        for l in on(save).lines() {
            if l.contains("FLANNEL") || l.contains("10.244.") {
                left.push(format!("{save}: {l}"));
            }
        }
    }
    for l in on("nft list tables").lines() {
        if l.contains("flannel") {
            left.push(format!("nft: {l}"));
        }
    }
    for path in [
        "/etc/cni/net.d/10-twill.conflist",
        "/opt/cni/bin/twill",
        "/run/flannel/subnet.env",
        "/var/lib/cni/flannel",
        "/var/lib/cni/twill",
    ] {
        if k.host_path(path).exists() {
            left.push(format!("file {path}"));
        }
    }
    left
}

#[test]
fn uninstall_twill_yml_leaves_nothing_of_twill_on_the_node() {
    require_root();
    require_image();
    let manifest = Manifest::load("kube-twill.yml");
    let uninstall = Manifest::load("uninstall-twill.yml");
    assert_eq!(
        uninstall.images(),
        manifest.images(),
        "both run the one image"
    );
    let mut c = Cluster::new("dsu");
    let fake = c.fake_kube_tls();
    fake.enforce_rbac(FLANNEL_CLUSTER_ROLE);
    let mut nodes = nodes(&mut c, &fake, &["dsu1", "dsu2"]);
    // dsu1 uses iptables-legacy: twill's rules land there, and must go from there.
    c.nodes[0]
        .ns
        .sh("iptables-legacy -N KUBE-FORWARD && iptables-legacy -A FORWARD -j KUBE-FORWARD");
    install(&mut nodes, &manifest, &fake);
    assert!(c.nodes[0]
        .ns
        .sh("iptables-legacy-save")
        .contains("FLANNEL-FWD"));
    wait_until(20, "dsu2 routes to dsu1", || {
        c.nodes[1].vxlan_subnets() == ["10.244.1.0/24"]
    });
    // A workload still running on the node when it is uninstalled, as there will be.
    let dir = c.dir.path().to_path_buf();
    start_pod(&nodes[0].kubelet, "busy", &dir);
    assert!(nodes[0].kubelet.host_path("/var/lib/cni/flannel").exists());
    assert!(!twill_leftovers(&nodes[0].kubelet).is_empty());

    // The documented order: the DaemonSet goes first, then uninstall-twill.yml runs.
    let pod = nodes[0].pod.clone();
    let k = &mut nodes[0].kubelet;
    for (id, status, _) in k.delete_pod(&pod) {
        assert_eq!(status, 0, "{id} exits 0 on SIGTERM");
    }
    let ds = uninstall.daemonset("twill-uninstall");
    let api = ApiServer {
        fake: &fake,
        configmaps: Vec::new(),
    };
    k.run_pod(&ds, "twill-uninstall-dsu1", &api);
    wait_until(5, "the uninstall pod's idle container to run", || {
        k.is_running("twill-uninstall-dsu1", "done")
    });
    let left = twill_leftovers(k);
    assert!(left.is_empty(), "left on the node: {left:#?}");
    // Only our plugin went: the node's own plugins stay.
    assert!(k.host_path("/opt/cni/bin/bridge").exists());
    // The lease is released: the annotations go, and the other node drops the peer.
    let node = fake.node("dsu1").unwrap();
    let ann = node["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(
        !ann.keys()
            .any(|k| k.starts_with("flannel.alpha.coreos.com/")),
        "annotations left: {ann:?}"
    );
    wait_until(5, "dsu2 to drop its route to dsu1", || {
        c.nodes[1].vxlan_subnets().is_empty()
    });
    assert_eq!(
        fake.forbidden(),
        Vec::<(String, String)>::new(),
        "nothing refused"
    );
}

/// BGP the Kubernetes way: a BGP section added to the manifest's ConfigMap, and the
/// DaemonSet's own `bird` container announcing each node's podCIDR to an FRR router. A pod
/// update (deleted, run again) withdraws nothing: BIRD stops with graceful restart and
/// the next one starts in recovery.
#[test]
fn the_daemonsets_bird_announces_each_node_and_a_pod_update_withdraws_nothing() {
    require_root();
    require_image();
    let manifest = Manifest::load("kube-twill.yml");
    let mut c = Cluster::new("dsb");
    let fake = c.fake_kube_tls();
    fake.enforce_rbac(FLANNEL_CLUSTER_ROLE);
    let mut nodes = nodes(&mut c, &fake, &["dsb1", "dsb2"]);
    let router = c.add_node_stopped(&[]);
    let rip = c.nodes[router].ip.clone();
    let rns = c.nodes[router].ns.name.clone();
    // The operator's edit: net-conf.json gains a BGP section naming the router.
    let mut configmaps = manifest.configmaps();
    for cm in configmaps.iter_mut() {
        if let Some(conf) = cm.data.as_mut().and_then(|d| d.get_mut("net-conf.json")) {
            let mut v: serde_json::Value = serde_json::from_str(conf).unwrap();
            v["BGP"] = serde_json::json!({"ASN": 64512, "Peers": [{"Address": rip, "ASN": 64513}]});
            *conf = v.to_string();
        }
    }
    let api = ApiServer {
        fake: &fake,
        configmaps,
    };
    for n in nodes.iter_mut() {
        run_ready(n, &manifest, &api);
    }
    let rdir = c.nodes[router].dir.clone();
    let _frr = frr_router(
        &rns,
        &rdir,
        &rip,
        &["198.18.0.1".into(), "198.18.0.2".into()],
    );
    let want = [
        ("10.244.1.0/24".to_string(), "198.18.0.1".to_string()),
        ("10.244.2.0/24".to_string(), "198.18.0.2".to_string()),
    ];
    wait_until(
        30,
        "the router learns both podCIDRs from the bird containers",
        || {
            let got = kernel_bgp_routes(&rns);
            want.iter().all(|w| got.contains(w))
        },
    );

    // An update of the pod on dsb1: deleted (SIGTERM to both containers), then run again.
    let watch = RouteWatch::start(&rns);
    let pod = nodes[0].pod.clone();
    for (id, status, took) in nodes[0].kubelet.delete_pod(&pod) {
        assert_eq!(status, 0, "{id} exits 0 on SIGTERM");
        assert!(took < Duration::from_secs(10), "{id} took {took:?}");
    }
    run_ready(&mut nodes[0], &manifest, &api);
    let k = &nodes[0].kubelet;
    // Asked on the node through the socket on its /run/flannel (the host's birdc): the
    // same answer `kubectl exec` into the bird container would give.
    let protocols = || text(&k.on_node("birdc -s /run/flannel/bird/bird.ctl show protocols all"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !protocols().contains("Established") {
        assert!(
            Instant::now() < deadline,
            "dsb1's new bird never re-established its session:\n{}\nbird container:\n{}",
            protocols(),
            k.logs(&pod, "bird")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let gone = watch.deleted("10.244.1.0/24");
    assert!(gone.is_empty(), "withdrawn during the update: {gone:?}");
    assert!(kernel_bgp_routes(&rns).contains(&want[0]));
}
