//! Kubernetes mode end to end: real twilld daemons in node namespaces with
//! `--kube-subnet-mgr`, against a FAKE nodes API (twill_testutil::FakeKube; no
//! kube-apiserver can be installed here) served from one namespace on the underlay.

use serde_json::json;
use twill_e2e::{Cluster, ETCD_IP};
use twill_testutil::{require_root, wait_until, FakeKube};

const ANN: &str = "flannel.alpha.coreos.com";

fn kube_args(c: &Cluster, fake: &FakeKube) -> Vec<String> {
    let conf = c.dir.path().join("net-conf.json");
    std::fs::write(
        &conf,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let port = fake.url().rsplit(':').next().unwrap().to_string();
    vec![
        "--kube-subnet-mgr".into(),
        format!("--kube-api-url=http://{ETCD_IP}:{port}"),
        format!("--net-config-path={}", conf.display()),
        "--ip-masq".into(),
        "--iptables-resync=1".into(),
    ]
}

fn add_kube_node(c: &mut Cluster, args: &[String], name: &str) -> usize {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let i = c.add_node_stopped(&a);
    c.nodes[i].env.push(("NODE_NAME".into(), name.into()));
    c.nodes[i].start();
    i
}

fn routes(c: &Cluster, i: usize) -> Vec<String> {
    c.nodes[i].vxlan_subnets()
}

fn annotation(fake: &FakeKube, node: &str, key: &str) -> String {
    fake.node(node).unwrap()["metadata"]["annotations"][format!("{ANN}/{key}")]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn three_nodes_in_kube_mode_against_the_fake_api() {
    require_root();
    let mut c = Cluster::new("kube");
    let fake = c.fake_kube();
    fake.add_node("kn1", Some("10.244.1.0/24"));
    fake.add_node("kn2", Some("10.244.2.0/24"));
    fake.add_node("kn3", None);
    let args = kube_args(&c, &fake);
    for (i, name) in ["kn1", "kn2", "kn3"].iter().enumerate() {
        assert_eq!(add_kube_node(&mut c, &args, name), i);
    }

    // kn3 has no podCIDR: it waits, says why, and writes nothing.
    c.nodes[0].wait_ready();
    c.nodes[1].wait_ready();
    wait_until(10, "kn3 to explain what it waits for", || {
        c.nodes[2].log().contains("--allocate-node-cidrs")
    });
    assert!(!c.nodes[2].subnet_env().exists());
    assert!(c.nodes[2].is_running());
    fake.set_pod_cidr("kn3", "10.244.3.0/24");
    c.nodes[2].wait_ready();

    for (i, cidr) in ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]
        .iter()
        .enumerate()
    {
        assert_eq!(&c.nodes[i].lease(), cidr, "the lease is the podCIDR");
        let name = format!("kn{}", i + 1);
        assert_eq!(annotation(&fake, &name, "kube-subnet-manager"), "true");
        assert_eq!(annotation(&fake, &name, "public-ip"), c.nodes[i].ip);
        let data: serde_json::Value =
            serde_json::from_str(&annotation(&fake, &name, "backend-data")).unwrap();
        assert_eq!(data["VtepMAC"], c.nodes[i].vtep_mac());
        let cond = &fake.node(&name).unwrap()["status"]["conditions"][0];
        assert_eq!(
            (cond["type"].as_str(), cond["reason"].as_str()),
            (Some("NetworkUnavailable"), Some("TwillIsUp"))
        );
    }
    for i in 0..3 {
        c.add_pod(i);
    }
    for i in 0..3 {
        wait_until(20, "full mesh of routes", || routes(&c, i).len() == 2);
    }
    c.assert_full_mesh();

    // A flanneld node joins (annotations only, as flanneld writes them): every twilld
    // node programs it like any peer.
    fake.put_flannel_node(
        "flannel-node",
        "10.244.77.0/24",
        "198.18.0.77",
        "0a:0f:0f:0f:0f:01",
    );
    for i in 0..3 {
        wait_until(20, "the flanneld node's route", || {
            routes(&c, i).contains(&"10.244.77.0/24".to_string())
        });
        let neigh = c.nodes[i].ns.sh("ip neigh show dev flannel.1 10.244.77.0");
        assert!(neigh.contains("0a:0f:0f:0f:0f:01"), "{neigh}");
        let fdb = c.nodes[i].ns.sh("bridge fdb show dev flannel.1");
        assert!(fdb.contains("0a:0f:0f:0f:0f:01 dst 198.18.0.77"), "{fdb}");
    }
    // ...and leaves.
    fake.delete_node("flannel-node");
    for i in 0..3 {
        wait_until(20, "the flanneld node's route removed", || {
            routes(&c, i).len() == 2
        });
    }

    // A restart keeps the MAC (from our annotation) and writes nothing new.
    let mac = c.nodes[0].vtep_mac();
    let patches = fake.patches_to("/api/v1/nodes/kn1/status");
    assert_eq!(patches, 2, "annotations and condition, each written once");
    c.nodes[0].stop(libc::SIGTERM);
    c.nodes[0].ns.sh("ip link del flannel.1");
    std::fs::remove_file(c.nodes[0].subnet_env()).unwrap();
    c.nodes[0].start();
    c.nodes[0].wait_ready();
    assert_eq!(
        c.nodes[0].vtep_mac(),
        mac,
        "MAC not reused after a reboot-like restart"
    );
    assert_eq!(fake.patches_to("/api/v1/nodes/kn1"), 0);
    assert_eq!(fake.patches_to("/api/v1/nodes/kn1/status"), 2);
    wait_until(20, "kn1 routes back", || routes(&c, 0).len() == 2);
    c.assert_full_mesh();

    // A node deleted while kn2's daemon is down is gone from kn2 after it restarts
    // (flannel #2554 leaves its route behind).
    c.nodes[1].stop(libc::SIGKILL);
    fake.delete_node("kn3");
    c.nodes[1].start();
    wait_until(20, "kn2 drops kn3", || routes(&c, 1) == ["10.244.1.0/24"]);
    wait_until(20, "kn1 drops kn3", || routes(&c, 0) == ["10.244.2.0/24"]);
}

#[test]
fn podcidr_outside_network_exits_naming_both_and_leaves_nothing() {
    require_root();
    let mut c = Cluster::new("kubebad");
    let fake = c.fake_kube();
    fake.add_node("kb1", Some("10.42.0.0/24"));
    let args = kube_args(&c, &fake);
    let i = add_kube_node(&mut c, &args, "kb1");
    let code = c.nodes[i].wait_exit(20);
    assert_eq!(code, 1);
    let log = c.nodes[i].log();
    assert!(
        log.contains("10.42.0.0/24") && log.contains("10.244.0.0/16"),
        "{log}"
    );
    assert!(
        !c.nodes[i].ns.try_sh("ip link show flannel.1"),
        "device left behind"
    );
    assert!(!c.nodes[i].subnet_env().exists());
    assert_eq!(
        fake.patches_to("/api/v1/nodes/kb1/status"),
        0,
        "annotations written for a refused podCIDR"
    );
}

/// Runs `twilld <args>` in node `i`'s namespace as NODE_NAME=`node`.
fn twilld_as(c: &Cluster, i: usize, node: &str, args: &[String]) -> (bool, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &c.nodes[i].ns.name])
        .arg(twill_e2e::twilld_bin())
        .args(args)
        .env("NODE_NAME", node)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn check<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {v}"))
}

#[test]
fn doctor_and_cleanup_in_kube_mode() {
    require_root();
    let mut c = Cluster::new("kubeops");
    let fake = c.fake_kube();
    fake.add_node("kd1", Some("10.244.1.0/24"));
    fake.add_node("kd2", Some("10.244.2.0/24"));
    fake.add_node("kd3", Some("10.42.0.0/24"));
    // kd2 sits behind NAT: it publishes the overwrite, and doctor must take that as its own.
    fake.update_node("kd2", |n| {
        n["metadata"]["annotations"] = json!({ format!("{ANN}/public-ip-overwrite"): "198.19.0.2" })
    });
    let args = kube_args(&c, &fake);
    add_kube_node(&mut c, &args, "kd1");
    add_kube_node(&mut c, &args, "kd2");
    c.add_pod(0);
    c.add_pod(1);
    wait_until(20, "routes", || {
        routes(&c, 0).len() == 1 && routes(&c, 1).len() == 1
    });

    let n = &c.nodes[1];
    let mut common: Vec<String> = args[..3].to_vec();
    common.extend([
        "--iface=eth0".into(),
        format!("--subnet-file={}", n.subnet_env().display()),
        format!("--cni-conf-dir={}", n.dir.join("net.d").display()),
    ]);
    let mut doctor = vec!["doctor".to_string(), "--output=json".into()];
    doctor.extend(common.clone());
    let (ok, out) = twilld_as(&c, 1, "kd2", &doctor);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(annotation(&fake, "kd2", "public-ip"), "198.19.0.2");
    for name in ["kubernetes", "podCIDR", "subnet.env", "peers", "config"] {
        assert_eq!(check(&v, name)["status"], "pass", "{name}: {v:#}");
    }
    assert!(ok, "{v:#}");

    // The mismatch that leaves clusters NotReady: podCIDR outside Network.
    let (ok, out) = twilld_as(&c, 1, "kd3", &doctor);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let pc = check(&v, "podCIDR");
    assert_eq!(pc["status"], "fail");
    let detail = pc["detail"].as_str().unwrap();
    assert!(
        detail.contains("10.42.0.0/24") && detail.contains("10.244.0.0/16"),
        "{detail}"
    );
    assert!(pc["hint"].as_str().unwrap().contains("--cluster-cidr"));
    assert!(!ok);

    // Uninstall kd2: its annotations go, so kd1 drops it as a peer.
    c.nodes[1].stop(libc::SIGTERM);
    let mut cleanup = vec!["cleanup".to_string(), "--release-lease".into()];
    cleanup.extend(common.clone());
    let (ok, out) = twilld_as(&c, 1, "kd2", &cleanup);
    assert!(
        ok && out.contains("would remove: node kd2 annotations"),
        "{out}"
    );
    assert_eq!(
        annotation(&fake, "kd2", "kube-subnet-manager"),
        "true",
        "a dry run wrote"
    );
    cleanup.push("--yes".into());
    let (ok, out) = twilld_as(&c, 1, "kd2", &cleanup);
    assert!(ok, "{out}");
    let anns = fake.node("kd2").unwrap()["metadata"]["annotations"].clone();
    // Ours are gone; the operator's overwrite stays.
    let left: Vec<&String> = anns
        .as_object()
        .map(|a| a.keys().collect())
        .unwrap_or_default();
    assert_eq!(
        left,
        [&format!("{ANN}/public-ip-overwrite")],
        "annotations left: {anns}"
    );
    wait_until(20, "kd1 drops kd2", || routes(&c, 0).is_empty());
    let (ok, out) = twilld_as(&c, 1, "kd2", &cleanup);
    assert!(
        ok && out.contains("nothing of twill's left"),
        "not idempotent:\n{out}"
    );
}

/// Node objects are store input too: a hostile node's podCIDR and annotations are judged
/// like an etcd lease — refused, logged, never programmed — and the real peers stay.
#[test]
fn hostile_node_objects_are_refused() {
    require_root();
    let mut c = Cluster::new("kubehostile");
    let fake = c.fake_kube();
    fake.add_node("kh1", Some("10.244.1.0/24"));
    fake.add_node("kh2", Some("10.244.2.0/24"));
    // The underlay's own network as a pod network, and a broadcast VTEP MAC.
    fake.put_flannel_node("kx1", "198.18.0.0/24", "198.18.0.99", "02:00:00:00:00:99");
    fake.put_flannel_node("kx2", "10.244.9.0/24", "198.18.0.98", "ff:ff:ff:ff:ff:ff");
    let args = kube_args(&c, &fake);
    add_kube_node(&mut c, &args, "kh1");
    add_kube_node(&mut c, &args, "kh2");
    c.add_pod(0);
    c.add_pod(1);
    wait_until(20, "the real peers routed", || {
        routes(&c, 0) == ["10.244.2.0/24"] && routes(&c, 1) == ["10.244.1.0/24"]
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    for i in 0..2 {
        let n = &c.nodes[i];
        assert_eq!(routes(&c, i).len(), 1, "{:?}", routes(&c, i));
        let via = n.ns.sh(&format!("ip route get {ETCD_IP}"));
        assert!(via.contains("dev eth0"), "{via}");
        let log = n.log();
        for (key, reason) in [
            ("198.18.0.0-24", "outside-network"),
            ("10.244.9.0-24", "vtep-mac"),
        ] {
            let hits = log
                .lines()
                .filter(|l| {
                    l.contains("peer lease refused") && l.contains(key) && l.contains(reason)
                })
                .count();
            assert_eq!(hits, 1, "{key} refused once as {reason}:\n{log}");
        }
    }
    c.assert_full_mesh();
}

/// The container of flannel's own DaemonSet (kube-flannel.yml) with only the image
/// swapped: `--ip-masq --kube-subnet-mgr --healthz-port=8081`, the node found through
/// POD_NAME/POD_NAMESPACE (flannel's manifest sets no NODE_NAME), under flannel's
/// ClusterRole, which the fake enforces (403 to anything else). The API URL and the
/// config path stand in for the in-cluster config and the ConfigMap mount.
#[test]
fn flannels_daemonset_and_rbac_work_unchanged() {
    require_root();
    let mut c = Cluster::new("kflan");
    let fake = c.fake_kube();
    fake.enforce_rbac(twill_testutil::FLANNEL_CLUSTER_ROLE);
    fake.add_node("fn1", Some("10.244.1.0/24"));
    fake.add_node("fn2", Some("10.244.2.0/24"));
    let base = kube_args(&c, &fake);
    let mut args: Vec<String> = base
        .iter()
        .filter(|a| a.starts_with("--kube-api-url") || a.starts_with("--net-config-path"))
        .cloned()
        .collect();
    args.extend(["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"].map(String::from));
    for (i, node) in ["fn1", "fn2"].iter().enumerate() {
        let pod = format!("kube-flannel-ds-{i}");
        fake.add_pod("kube-flannel", &pod, node);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let n = c.add_node_stopped(&a);
        c.nodes[n].env.push(("POD_NAME".into(), pod));
        c.nodes[n]
            .env
            .push(("POD_NAMESPACE".into(), "kube-flannel".into()));
        c.nodes[n].start();
    }
    for i in 0..2 {
        c.nodes[i].wait_ready();
        // flannel's probes name no host: the kubelet probes the node IP.
        for path in ["/healthz", "/readyz"] {
            let url = format!("http://{}:8081{path}", c.nodes[i].ip);
            assert!(
                c.nodes[i].ns.try_sh(&format!("curl -sf -m 2 {url}")),
                "{url} failed"
            );
        }
    }
    assert_eq!(annotation(&fake, "fn1", "public-ip"), c.nodes[0].ip);
    assert_eq!(annotation(&fake, "fn2", "public-ip"), c.nodes[1].ip);
    wait_until(20, "both routes", || {
        routes(&c, 0).len() == 1 && routes(&c, 1).len() == 1
    });
    c.assert_full_mesh();
    assert!(
        fake.forbidden().is_empty(),
        "requests flannel's role refuses: {:?}",
        fake.forbidden()
    );
    assert_eq!(fake.patches_to("/api/v1/nodes/fn1"), 0);
}

/// manifests/uninstall-twill.yml's cleanup container, its command read from the manifest,
/// run on a node as a kubelet would run it: in the node's network namespace, with the host
/// paths it mounts bind-mounted from this node's files in a private mount namespace (so
/// the test machine's own /etc, /opt, /run and /var/lib are never touched). Where this
/// differs from a kubelet: the binary is the built twilld (the image's
/// /usr/local/bin/twilld), and --kube-api-url stands in for the in-cluster config (the fake
/// API speaks plain HTTP).
#[test]
fn uninstall_manifest_leaves_nothing_of_twill() {
    require_root();
    let mut c = Cluster::new("kuninst");
    let fake = c.fake_kube();
    fake.add_node("ku1", Some("10.244.1.0/24"));
    fake.add_node("ku2", Some("10.244.2.0/24"));
    let args = kube_args(&c, &fake);
    add_kube_node(&mut c, &args, "ku1");
    add_kube_node(&mut c, &args, "ku2");
    c.add_pod(0);
    c.add_pod(1);
    wait_until(20, "routes", || {
        routes(&c, 0).len() == 1 && routes(&c, 1).len() == 1
    });
    // The main DaemonSet is deleted first: twilld stops, leaving everything in place.
    c.nodes[1].stop(libc::SIGTERM);

    // What the host paths hold on this node (twilld here writes subnet.env in its dir).
    let host = c.nodes[1].dir.join("host");
    let (run, netd, bin, lib) = (
        host.join("run"),
        host.join("netd"),
        host.join("bin"),
        host.join("lib"),
    );
    for d in [&run, &netd, &bin, &lib.join("flannel")] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::copy(c.nodes[1].subnet_env(), run.join("subnet.env")).unwrap();
    std::fs::write(netd.join("10-twill.conflist"), "{}").unwrap();
    std::fs::copy(twill_e2e::twill_plugin_bin(), bin.join("twill")).unwrap();
    std::fs::write(lib.join("flannel/some-container"), "{}").unwrap();

    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/uninstall-twill.yml"),
    )
    .unwrap();
    let ds: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let cmd: Vec<String> = ds["spec"]["template"]["spec"]["initContainers"][0]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(cmd[0], "/usr/local/bin/twilld");
    let api = args
        .iter()
        .find(|a| a.starts_with("--kube-api-url"))
        .unwrap();
    let up = host.join("etc-up");
    let work = host.join("etc-work");
    std::fs::create_dir_all(&up).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let script = format!(
        "set -e; mount --make-rprivate /
         for d in /run /opt /var/lib; do mount -t tmpfs none $d; done
         mount -t overlay overlay -o lowerdir=/etc,upperdir={up},workdir={work} /etc
         mkdir -p /run/flannel /etc/cni/net.d /opt/cni/bin /var/lib/cni
         mount --bind {run} /run/flannel; mount --bind {netd} /etc/cni/net.d
         mount --bind {bin} /opt/cni/bin; mount --bind {lib} /var/lib/cni
         exec {twilld} {args} {api}",
        up = up.display(),
        work = work.display(),
        run = run.display(),
        netd = netd.display(),
        bin = bin.display(),
        lib = lib.display(),
        twilld = twill_e2e::twilld_bin().display(),
        args = cmd[1..].join(" "),
    );
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.nodes[1].ns.name,
            "unshare",
            "-m",
            "sh",
            "-c",
            &script,
        ])
        .env("NODE_NAME", "ku2")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");

    // Nothing of twill's on the node: files, devices, rules, annotations.
    for gone in [
        run.join("subnet.env"),
        netd.join("10-twill.conflist"),
        bin.join("twill"),
        lib.join("flannel"),
    ] {
        assert!(!gone.exists(), "{} left\n{text}", gone.display());
    }
    let ns = &c.nodes[1].ns;
    assert!(!ns.try_sh("ip link show flannel.1"), "{text}");
    assert!(!ns.try_sh("ip link show cni0"), "{text}");
    for table in ["nat", "filter"] {
        let rules = ns.sh(&format!("iptables -t {table} -S"));
        assert!(!rules.contains("FLANNEL"), "{table}: {rules}");
    }
    let anns = fake.node("ku2").unwrap()["metadata"]["annotations"].clone();
    assert!(
        anns.as_object()
            .is_none_or(|a| a.keys().all(|k| !k.starts_with(ANN))),
        "{anns}"
    );
    wait_until(20, "ku1 drops ku2", || routes(&c, 0).is_empty());
}

/// kubeadm's pod network, not a copy in net-conf.json: a ConfigMap net-conf.json without
/// `Network` takes the cluster's (here from kube-system/kubeadm-config), logs where from,
/// and writes it to subnet.env as usual; doctor reads the same.
#[test]
fn network_is_taken_from_the_cluster_when_net_conf_has_none() {
    require_root();
    let mut c = Cluster::new("knet");
    let fake = c.fake_kube();
    fake.add_node("kn1", Some("10.244.1.0/24"));
    fake.put_configmap(
        "kube-system",
        "kubeadm-config",
        json!({"ClusterConfiguration": "kind: ClusterConfiguration\nnetworking:\n  podSubnet: 10.244.0.0/16\n"}),
    );
    let mut args = kube_args(&c, &fake);
    let conf = c.dir.path().join("net-conf-auto.json");
    std::fs::write(&conf, r#"{"Backend":{"Type":"vxlan"}}"#).unwrap();
    for a in args.iter_mut() {
        if a.starts_with("--net-config-path") {
            *a = format!("--net-config-path={}", conf.display());
        }
    }
    let i = add_kube_node(&mut c, &args, "kn1");
    c.nodes[i].wait_ready();
    let env = std::fs::read_to_string(c.nodes[i].subnet_env()).unwrap();
    assert!(env.contains("FLANNEL_NETWORK=10.244.0.0/16\n"), "{env}");
    assert!(env.contains("FLANNEL_SUBNET=10.244.1.1/24\n"), "{env}");
    let log = c.nodes[i].log();
    assert!(
        log.contains("kubeadm-config") && log.contains("has no Network"),
        "{log}"
    );

    let mut doctor = vec!["doctor".to_string(), "--output=json".into()];
    doctor.extend(args[..3].to_vec());
    doctor.push(format!(
        "--subnet-file={}",
        c.nodes[i].subnet_env().display()
    ));
    let (_, out) = twilld_as(&c, i, "kn1", &doctor);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(check(&v, "config")["status"], "pass", "{v:#}");
    assert!(check(&v, "config")["detail"]
        .as_str()
        .unwrap()
        .contains("10.244.0.0/16"));
}

/// Per-node BGP settings from the node object (a rack with other routers): the
/// annotations set the AS and peers of the BIRD config twilld writes; a bad one is refused
/// at start, naming it, before anything is created.
#[test]
fn bgp_peers_from_node_annotations() {
    require_root();
    let mut c = Cluster::new("kbgp");
    let fake = c.fake_kube();
    fake.add_node("kb1", Some("10.244.1.0/24"));
    fake.add_node("kb2", Some("10.244.2.0/24"));
    for (node, peers) in [("kb1", "198.18.0.9:65001"), ("kb2", "198.18.0.9")] {
        fake.update_node(node, |n| {
            n["metadata"]["annotations"] = json!({
                "twill.io/bgp-asn": "65010",
                "twill.io/bgp-peers": peers,
            });
        });
    }
    let args = kube_args(&c, &fake);
    for (i, name) in ["kb1", "kb2"].iter().enumerate() {
        let dir = c.dir.path().join(format!("n{}", i + 1));
        let mut a = args.clone();
        a.push(format!("--bgp-config-file={}/bird.conf", dir.display()));
        a.push(format!("--bgp-control-socket={}/bird.ctl", dir.display()));
        a.push(format!("--bgp-include-dir={}/bird.d", dir.display()));
        add_kube_node(&mut c, &a, name);
    }
    let conf = c.nodes[0].dir.join("bird.conf");
    wait_until(20, "kb1's BIRD config", || conf.exists());
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("local as 65010;"), "{text}");
    assert!(text.contains("neighbor 198.18.0.9 as 65001;"), "{text}");
    assert!(text.contains("route 10.244.1.0/24 blackhole;"), "{text}");

    // doctor takes the node's BGP settings as twilld does: from its annotations. No BIRD
    // runs here, so the check fails naming BIRD's socket (it used to pass, saying BGP was
    // not configured at all).
    let mut doctor = vec!["doctor".to_string(), "--output=json".into()];
    doctor.extend(args[..3].to_vec());
    doctor.extend(
        [
            "--bgp-config-file",
            "--bgp-control-socket",
            "--bgp-include-dir",
        ]
        .iter()
        .zip(["bird.conf", "bird.ctl", "bird.d"])
        .map(|(flag, f)| format!("{flag}={}", c.nodes[0].dir.join(f).display())),
    );
    doctor.push(format!(
        "--subnet-file={}",
        c.nodes[0].subnet_env().display()
    ));
    let bgp_check = |i: usize, node: &str| {
        let (_, out) = twilld_as(&c, i, node, &doctor);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        let bgp = check(&v, "bgp").clone();
        assert_eq!(bgp["status"], "fail", "{bgp}");
        bgp["detail"].as_str().unwrap().to_string()
    };
    let detail = bgp_check(0, "kb1");
    assert!(detail.contains("BIRD not reachable"), "{detail}");
    // A bad annotation is named by doctor as twilld names it.
    let detail = bgp_check(1, "kb2");
    assert!(
        detail.contains("node annotation twill.io/bgp-peers"),
        "{detail}"
    );

    let code = c.nodes[1].wait_exit(20);
    assert_ne!(code, 0);
    let log = c.nodes[1].log();
    assert!(
        log.contains("node annotation twill.io/bgp-peers") && log.contains("198.18.0.9"),
        "{log}"
    );
    assert!(
        !c.nodes[1].ns.try_sh("ip link show flannel.1"),
        "nothing created"
    );
    assert!(!c.nodes[1].dir.join("bird.conf").exists());
}
