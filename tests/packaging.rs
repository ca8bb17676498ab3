//! What users install: manifests/kube-twill.yml (parsed object by object into the
//! k8s-openapi types, with no field the types don't know), its RBAC against the calls the
//! code makes, its flags against twilld's parser; the systemd unit (systemd-analyze
//! verify), scripts/install.sh, and READY=1 over NOTIFY_SOCKET.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::Value;
use twill_e2e::{twilld_bin, Cluster};
use twill_testutil::require_root;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifest() -> Vec<Value> {
    manifest_file("kube-twill.yml")
}

fn manifest_file(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join("manifests").join(name)).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("manifest is YAML");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// The uninstall DaemonSet parses into its type, runs in kube-twill.yml's namespace with
/// its ServiceAccount, mounts every host path cleanup removes from, and its command
/// parses. (tests/kube.rs runs that command on a node.)
#[test]
fn uninstall_daemonset_parses_and_uses_the_main_manifests_account() {
    let docs = manifest_file("uninstall-twill.yml");
    assert_eq!(docs.len(), 1);
    let ds: k8s_openapi::api::apps::v1::DaemonSet = typed(&docs[0]);
    let main = manifest();
    assert_eq!(
        ds.metadata.namespace,
        find(&main, "Namespace")["metadata"]["name"]
            .as_str()
            .map(String::from)
    );
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.service_account_name.as_deref(),
        find(&main, "ServiceAccount")["metadata"]["name"].as_str()
    );
    let init = &pod.init_containers.unwrap()[0];
    let cmd = init.command.clone().unwrap();
    assert_eq!(
        cmd[1..],
        ["cleanup", "--yes", "--release-lease", "--kube-subnet-mgr"]
    );
    let mounts: BTreeSet<String> = init
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .map(|m| m.mount_path)
        .collect();
    for path in [
        "/run/flannel",
        "/etc/cni/net.d",
        "/opt/cni/bin",
        "/var/lib/cni",
    ] {
        assert!(mounts.contains(path), "{path} not mounted: {mounts:?}");
    }
    let out = Command::new(twilld_bin())
        .args(&cmd[1..])
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Parses `doc` as `T` and checks nothing was lost on the way: a misspelt or misplaced
/// field would be dropped by the typed round trip and show up here.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", doc["kind"]));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        &back, doc,
        "{} has fields its type does not know",
        doc["kind"]
    );
    t
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in kube-twill.yml"))
}

#[test]
fn every_object_parses_into_its_kubernetes_type() {
    let docs = manifest();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    // Helm's install order (the file is the chart rendered): the Namespace before what
    // lives in it, the DaemonSet after what it mounts and runs as.
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "DaemonSet"
        ]
    );
    let ns: Namespace = typed(find(&docs, "Namespace"));
    assert_eq!(ns.metadata.name.as_deref(), Some("kube-twill"));
    assert_eq!(
        ns.metadata.labels.unwrap()["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    let _: ServiceAccount = typed(find(&docs, "ServiceAccount"));
    let _: ClusterRole = typed(find(&docs, "ClusterRole"));
    let binding: ClusterRoleBinding = typed(find(&docs, "ClusterRoleBinding"));
    assert_eq!(binding.role_ref.name, "twill");
    let sa = &binding.subjects.unwrap()[0];
    assert_eq!(
        (sa.name.as_str(), sa.namespace.as_deref()),
        ("twill", Some("kube-twill"))
    );
    let _: ConfigMap = typed(find(&docs, "ConfigMap"));
    let _: DaemonSet = typed(find(&docs, "DaemonSet"));
}

#[test]
fn rbac_grants_exactly_what_the_code_calls() {
    let docs = manifest();
    let role: ClusterRole = typed(find(&docs, "ClusterRole"));
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap() {
        let groups = rule.api_groups.clone().unwrap_or_default();
        assert_eq!(groups.len(), 1, "one group per rule: {groups:?}");
        for r in rule.resources.unwrap() {
            // NetworkPolicy is the one object outside the core group.
            let group = if r == "networkpolicies" {
                "networking.k8s.io"
            } else {
                ""
            };
            assert_eq!(groups[0], group, "{r}");
            for v in &rule.verbs {
                granted.insert((r.clone(), v.clone()));
            }
        }
    }
    // The manifest runs --network-policy, so it grants its reads too.
    let used: BTreeSet<(String, String)> = twill_kube::API_ACCESS
        .iter()
        .chain(twill_kube::POLICY_ACCESS)
        .map(|(r, v)| (r.to_string(), v.to_string()))
        .collect();
    assert_eq!(granted, used);
    // The one namespaced read: a Role in its namespace, for that one name, bound to our
    // ServiceAccount.
    let role: k8s_openapi::api::rbac::v1::Role = typed(find(&docs, "Role"));
    let (ns, resource, name, verb) = twill_kube::KUBEADM_CONFIG_ACCESS;
    assert_eq!(role.metadata.namespace.as_deref(), Some(ns));
    let rules = role.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&[resource.to_string()][..])
    );
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&[name.to_string()][..])
    );
    assert_eq!(rules[0].verbs, [verb]);
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = typed(find(&docs, "RoleBinding"));
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    let sa = &binding.subjects.unwrap()[0];
    assert_eq!(
        (sa.name.as_str(), sa.namespace.as_deref()),
        ("twill", Some("kube-twill"))
    );
}

#[test]
fn configmap_holds_a_valid_net_conf_and_the_shipped_conflist() {
    let docs = manifest();
    let cm: ConfigMap = typed(find(&docs, "ConfigMap"));
    let data = cm.data.unwrap();
    let (conf, warnings) = twill_config::NetConf::parse(&data["net-conf.json"]).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(conf.ipv4.unwrap().network.to_string(), "10.244.0.0/16");
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("manifests/10-twill.conflist")).unwrap(),
    )
    .unwrap();
    let in_map: Value = serde_json::from_str(&data["cni-conf.json"]).unwrap();
    assert_eq!(
        in_map, shipped,
        "the ConfigMap's conflist drifted from 10-twill.conflist"
    );
}

fn env_of(c: &k8s_openapi::api::core::v1::Container, name: &str) -> Option<String> {
    let e = c.env.as_ref()?.iter().find(|e| e.name == name)?;
    Some(
        e.value_from
            .as_ref()?
            .field_ref
            .as_ref()?
            .field_path
            .clone(),
    )
}

#[test]
fn daemonset_runs_twilld_as_the_issue_says_and_its_flags_parse() {
    let docs = manifest();
    let ds: DaemonSet = typed(find(&docs, "DaemonSet"));
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("twill"));
    let tol = pod.tolerations.unwrap();
    for effect in ["NoSchedule", "NoExecute"] {
        assert!(
            tol.iter().any(|t| t.operator.as_deref() == Some("Exists")
                && t.effect.as_deref() == Some(effect)
                && t.key.is_none()),
            "no blanket toleration for {effect}"
        );
    }

    let init = &pod.init_containers.unwrap()[0];
    let init_cmd = init.command.clone().unwrap();
    assert_eq!(init_cmd[1], "install-cni");
    let main = &pod.containers[0];
    let cmd = main.command.clone().unwrap();
    assert_eq!(
        cmd[1..],
        [
            "--ip-masq",
            "--kube-subnet-mgr",
            "--network-policy",
            "--healthz-port=8081",
            "--metrics-port=9464"
        ]
    );
    // Both command lines are accepted by the real binary's parser.
    for argv in [&init_cmd, &cmd] {
        let out = Command::new(twilld_bin())
            .args(&argv[1..])
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let sc = main.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    let caps: BTreeSet<String> = sc
        .capabilities
        .as_ref()
        .unwrap()
        .add
        .clone()
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(caps, BTreeSet::from(["NET_ADMIN".into(), "NET_RAW".into()]));
    let http = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let g = p.as_ref().unwrap().http_get.clone().unwrap();
        (g.path.unwrap(), g.host)
    };
    // As flannel's probes: no host, so the kubelet probes the node IP, where twilld's
    // health endpoints listen by default.
    assert_eq!(http(&main.liveness_probe), ("/healthz".into(), None));
    assert_eq!(http(&main.readiness_probe), ("/readyz".into(), None));
    let req = main.resources.as_ref().unwrap().requests.clone().unwrap();
    assert_eq!(req["cpu"].0, "50m");
    assert_eq!(req["memory"].0, "32Mi");
    assert_eq!(env_of(main, "NODE_NAME").as_deref(), Some("spec.nodeName"));

    let mounts: Vec<(String, bool)> = main
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .map(|m| (m.mount_path, m.read_only.unwrap_or(false)))
        .collect();
    for (path, ro) in [
        ("/run/flannel", false),
        ("/etc/cni/net.d", false),
        ("/opt/cni/bin", false),
        ("/run/xtables.lock", false),
        ("/etc/kube-flannel/", false),
    ] {
        assert!(
            mounts.contains(&(path.to_string(), ro)),
            "{path} (ro={ro}) not mounted: {mounts:?}"
        );
    }
    // The image has no modprobe (the kernel loads vxlan itself, with the node's), and a
    // typeless hostPath that is missing on the node fails the pod: no /lib/modules.
    assert!(
        !mounts.iter().any(|(p, _)| p == "/lib/modules"),
        "{mounts:?}"
    );
    let volumes = pod.volumes.unwrap();
    let xt = volumes.iter().find(|v| v.name == "xtables-lock").unwrap();
    assert_eq!(
        xt.host_path.as_ref().unwrap().type_.as_deref(),
        Some("FileOrCreate")
    );
}

fn systemd_verify(unit: &Path) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze is missing: scripts/setup.sh installs the systemd package");
    let err = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on many problems and only prints them: any output is a finding.
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify:\n{err}"
    );
}

/// The unit as shipped, with ExecStart pointing at the binary this build made (verify
/// checks that the executable exists).
fn unit_for_this_build(dir: &Path, unit: &str) -> PathBuf {
    let text = unit.replace("/usr/local/bin/twilld", &twilld_bin().display().to_string());
    let p = dir.join("twilld.service");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn systemd_unit_verifies_and_says_what_the_issue_asks() {
    let unit = std::fs::read_to_string(repo().join("manifests/twilld.service")).unwrap();
    for want in [
        "Type=notify",
        "EnvironmentFile=-/etc/twill/twilld.env",
        "Restart=always",
        "After=network-online.target",
        "ProtectSystem=",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
    ] {
        assert!(unit.contains(want), "twilld.service lacks {want}");
    }
    let dir = tempfile::tempdir().unwrap();
    systemd_verify(&unit_for_this_build(dir.path(), &unit));

    // The check catches a broken unit.
    let broken = unit.replace("Type=notify", "Type=notifyy");
    let bad = unit_for_this_build(dir.path(), &broken);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).trim().is_empty());

    // The shipped env file only sets variables twilld reads (flag wins over env).
    let env = std::fs::read_to_string(repo().join("manifests/twilld.env")).unwrap();
    let mut cmd = Command::new(twilld_bin());
    for line in env
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
    {
        let (k, v) = line.split_once('=').unwrap();
        assert!(
            k.starts_with("FLANNELD_") || k.starts_with("TWILLD_"),
            "{k}"
        );
        cmd.env(k, v);
    }
    let out = cmd.arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn install_script_puts_everything_in_place_and_keeps_the_env_file() {
    let root = tempfile::tempdir().unwrap();
    let bin_dir = twilld_bin().parent().unwrap().to_path_buf();
    let run = || {
        let out = Command::new("bash")
            .arg(repo().join("scripts/install.sh"))
            .args(["--root", root.path().to_str().unwrap()])
            .args(["--bin-dir", bin_dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run();
    let r = root.path();
    for f in [
        "usr/local/bin/twilld",
        "usr/local/bin/twill",
        "opt/cni/bin/twill",
        "etc/cni/net.d/10-twill.conflist",
        "etc/systemd/system/twilld.service",
        "etc/twill/twilld.env",
        "etc/systemd/system/containerd.service.d/10-twill.conf",
        "etc/systemd/system/docker.service.d/10-twill.conf",
    ] {
        assert!(r.join(f).exists(), "{f} not installed");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &str| std::fs::metadata(r.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("opt/cni/bin/twill"), 0o755);
    assert_eq!(
        mode("etc/twill/twilld.env"),
        0o600,
        "may hold etcd credentials"
    );
    let dropin =
        std::fs::read_to_string(r.join("etc/systemd/system/containerd.service.d/10-twill.conf"))
            .unwrap();
    assert!(dropin.contains("After=twilld.service"));

    std::fs::write(r.join("etc/twill/twilld.env"), "FLANNELD_IFACE=eth9\n").unwrap();
    let out = run();
    assert!(out.contains("kept"), "{out}");
    assert_eq!(
        std::fs::read_to_string(r.join("etc/twill/twilld.env")).unwrap(),
        "FLANNELD_IFACE=eth9\n"
    );
    let unit = std::fs::read_to_string(r.join("etc/systemd/system/twilld.service")).unwrap();
    systemd_verify(&unit_for_this_build(r, &unit));
}

#[test]
fn ready_is_sent_to_systemd_after_subnet_env_and_stopping_on_sigterm() {
    require_root();
    let mut c = Cluster::new("notify");
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let sock_path = c.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let i = c.add_node_stopped(&["--ip-masq"]);
    c.nodes[i]
        .env
        .push(("NOTIFY_SOCKET".into(), sock_path.display().to_string()));
    c.nodes[i].start();

    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("no notification from twilld");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    // By the time systemd hears READY, what units ordered after twilld need is there.
    assert!(
        c.nodes[i].subnet_env().exists(),
        "READY=1 before subnet.env"
    );
    let rules = c.nodes[i].ns.sh("iptables -t nat -S FLANNEL-POSTRTG");
    assert!(
        rules.contains("MASQUERADE"),
        "READY=1 before the rules:\n{rules}"
    );
    assert!(msg.contains("STATUS="), "{msg:?}");

    c.nodes[i].signal(libc::SIGTERM);
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no STOPPING=1 ({e})\n{}", c.nodes[i].log()));
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert_eq!(c.nodes[i].wait_exit(10), 0);
}

/// scripts/image.sh builds what manifests/Containerfile describes (the same root script,
/// binaries and entrypoint), and refuses to build when the two have drifted apart.
#[test]
fn image_script_and_containerfile_agree() {
    let check = |root: &Path| {
        Command::new("bash")
            .arg(root.join("scripts/image.sh"))
            .arg("--check")
            .output()
            .unwrap()
    };
    let out = check(&repo());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let containerfile = std::fs::read_to_string(repo().join("manifests/Containerfile")).unwrap();
    for (from, to, named) in [
        (
            r#"ENTRYPOINT ["/usr/local/bin/twilld"]"#,
            r#"ENTRYPOINT ["/opt/bin/flanneld"]"#,
            "ENTRYPOINT",
        ),
        ("FROM scratch", "FROM debian:bookworm-slim", "final stage"),
        (
            "scripts/image-root.sh /rootfs",
            "scripts/root.sh /rootfs",
            "image-root.sh",
        ),
        ("-p twill-cni", "", "twill-cni"),
    ] {
        assert!(containerfile.contains(from), "{from}");
        let t = tempfile::tempdir().unwrap();
        for f in [
            "scripts/image.sh",
            "scripts/image-root.sh",
            "manifests/kube-twill.yml",
            "manifests/uninstall-twill.yml",
        ] {
            std::fs::create_dir_all(t.path().join(f).parent().unwrap()).unwrap();
            std::fs::copy(repo().join(f), t.path().join(f)).unwrap();
        }
        std::fs::write(
            t.path().join("manifests/Containerfile"),
            containerfile.replace(from, to),
        )
        .unwrap();
        let out = check(t.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(named),
            "{from} -> {to}: {err}"
        );
    }
}
