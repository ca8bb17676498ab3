//! The `twill` CNI plugin driven exactly as a container runtime drives it (CNI_* env,
//! config on stdin, result on stdout), delegating to Debian's real bridge, host-local,
//! loopback and portmap plugins, in namespaces the test creates. No twilld runs here:
//! the test writes subnet.env the way twilld does.

use std::path::{Path, PathBuf};

use serde_json::Value;
use twill_testutil::Netns;

fn plugin_bin() -> PathBuf {
    twill_e2e::twill_plugin_bin()
}

/// A node namespace with a subnet.env and temp dirs for our state and host-local's.
struct Node {
    ns: Netns,
    dir: tempfile::TempDir,
}

impl Node {
    fn new(tag: &str) -> Self {
        let ns = Netns::new(tag);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("subnet.env"),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        Node { ns, dir }
    }

    fn path(&self, p: &str) -> String {
        self.dir.path().join(p).display().to_string()
    }

    fn conf(&self, version: &str) -> String {
        format!(
            r#"{{"cniVersion":"{version}","name":"cbr0","type":"twill","subnetFile":"{}","dataDir":"{}","ipam":{{"dataDir":"{}"}},"delegate":{{"hairpinMode":true,"isDefaultGateway":true}}}}"#,
            self.path("subnet.env"),
            self.path("state"),
            self.path("ipam")
        )
    }

    /// Runs a plugin in the node namespace; returns (success, stdout as JSON or Null).
    fn call(&self, bin: &Path, env: &[(&str, &str)], stdin: &str) -> (bool, Value) {
        let (ok, text) = twill_e2e::run_plugin(&self.ns, bin, env, stdin);
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
        };
        (ok, v)
    }

    fn twill(&self, cmd: &str, id: &str, pod: &str, stdin: &str) -> (bool, Value) {
        let netns = format!("/run/netns/{pod}");
        self.call(
            &plugin_bin(),
            &[
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/usr/lib/cni"),
            ],
            stdin,
        )
    }

    fn reserved_ips(&self) -> Vec<String> {
        let dir = self.dir.path().join("ipam/cbr0");
        let Ok(rd) = std::fs::read_dir(dir) else {
            return vec![];
        };
        rd.filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("10."))
            .collect()
    }

    fn state_files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("state"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn ip_of(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("{result}"))
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn add_check_del_lifecycle() {
    let node = Node::new("c-life");
    let pod = Netns::new("c-life-pod");
    let (ok, res) = node.twill("ADD", "ctr1", &pod.name, &node.conf("1.0.0"));
    assert!(ok, "{res}");
    assert_eq!(res["cniVersion"], "1.0.0");
    let ip = ip_of(&res);
    assert!(ip.starts_with("10.244.3."), "{ip}");
    let routes = pod.sh("ip route");
    assert!(routes.contains("10.244.0.0/16 via 10.244.3.1"), "{routes}");
    assert!(
        routes.contains("default via 10.244.3.1"),
        "isDefaultGateway passed through: {routes}"
    );
    assert!(pod.sh("ip link show eth0").contains("mtu 1450"));
    assert!(node
        .ns
        .sh("ip -br addr show cni0")
        .contains("10.244.3.1/24"));
    let state = std::fs::read_to_string(node.path("state/ctr1")).unwrap();
    let saved: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(saved["type"], "bridge");
    assert_eq!(
        saved["ipMasq"], false,
        "FLANNEL_IPMASQ=true: the bridge must not masquerade too"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(node.path("state/ctr1"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(node.reserved_ips(), vec![ip.clone()]);

    // CHECK with the runtime's prevResult passes on a healthy pod...
    let mut check_conf: Value = serde_json::from_str(&node.conf("1.0.0")).unwrap();
    check_conf["prevResult"] = res.clone();
    let (ok, out) = node.twill("CHECK", "ctr1", &pod.name, &check_conf.to_string());
    assert!(ok, "{out}");
    // ...and fails with a CNI error once the pod's interface is gone.
    pod.sh("ip link del eth0");
    let (ok, err) = node.twill("CHECK", "ctr1", &pod.name, &check_conf.to_string());
    assert!(!ok);
    assert!(
        err["code"].as_u64().is_some() && err["msg"].is_string(),
        "{err}"
    );

    // DEL releases the address and the state; twice is fine; unknown containers too.
    let (ok, out) = node.twill("DEL", "ctr1", &pod.name, &node.conf("1.0.0"));
    assert!(ok, "{out}");
    assert!(node.reserved_ips().is_empty(), "{:?}", node.reserved_ips());
    assert_eq!(node.state_files(), 0);
    assert!(node.twill("DEL", "ctr1", &pod.name, &node.conf("1.0.0")).0);
    assert!(
        node.twill("DEL", "never-added", &pod.name, &node.conf("1.0.0"))
            .0
    );
}

#[test]
fn del_works_after_subnet_env_is_gone() {
    let node = Node::new("c-gone");
    let pod = Netns::new("c-gone-pod");
    assert!(node.twill("ADD", "c1", &pod.name, &node.conf("0.4.0")).0);
    std::fs::remove_file(node.path("subnet.env")).unwrap();
    let (ok, out) = node.twill("DEL", "c1", &pod.name, &node.conf("0.4.0"));
    assert!(ok, "{out}");
    assert!(node.reserved_ips().is_empty());
}

#[test]
fn twenty_parallel_adds_get_distinct_addresses() {
    let node = std::sync::Arc::new(Node::new("c-par"));
    let pods: Vec<Netns> = (0..20)
        .map(|i| Netns::new(&format!("c-par-p{i}")))
        .collect();
    let handles: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (node, name) = (node.clone(), p.name.clone());
            std::thread::spawn(move || {
                node.twill("ADD", &format!("ctr{i}"), &name, &node.conf("1.0.0"))
            })
        })
        .collect();
    let mut ips = std::collections::HashSet::new();
    for h in handles {
        let (ok, res) = h.join().unwrap();
        assert!(ok, "{res}");
        assert!(ips.insert(ip_of(&res)), "duplicate address");
    }
    assert_eq!(ips.len(), 20);
    assert_eq!(node.reserved_ips().len(), 20);
}

#[test]
fn bad_input_is_a_cni_error_and_leaks_nothing() {
    let node = Node::new("c-bad");
    let pod = Netns::new("c-bad-pod");
    let netns = format!("/run/netns/{}", pod.name);
    let good = node.conf("1.0.0");
    let full = |cmd: &'static str, id: &'static str| {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ]
    };
    // (environment, stdin, expected CNI error code, word the message must contain)
    type Case<'a> = (Vec<(&'a str, &'a str)>, String, u64, &'a str);
    let cases: Vec<Case> = vec![
        (full("ADD", "c1"), "this is not json".into(), 6, "decode"),
        (
            full("ADD", "c1"),
            good.replace("1.0.0", "9.9.9"),
            1,
            "cniVersion",
        ),
        (
            full("ADD", "../../etc/x"),
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            full("ADD", "c1")[1..].to_vec(),
            good.clone(),
            4,
            "CNI_COMMAND",
        ),
        (
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/usr/lib/cni"),
            ],
            good.clone(),
            4,
            "CNI_NETNS",
        ),
        (
            full("ADD", "c1"),
            good.replace(r#""hairpinMode":true"#, r#""name":"x""#),
            7,
            "name",
        ),
    ];
    for (env, stdin, code, word) in cases {
        let (ok, err) = node.call(&plugin_bin(), &env, &stdin);
        assert!(!ok, "{env:?}");
        assert_eq!(err["code"].as_u64(), Some(code), "{env:?}: {err}");
        assert!(err["msg"].as_str().unwrap().contains(word), "{word}: {err}");
        assert!(err["cniVersion"].is_string(), "{err}");
    }
    // subnet.env missing: the message says why (twilld not ready) and names the file.
    std::fs::remove_file(node.path("subnet.env")).unwrap();
    let (ok, err) = node.twill("ADD", "c1", &pod.name, &good);
    assert!(!ok);
    assert_eq!(err["code"], 11);
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains(&node.path("subnet.env")) && msg.contains("twilld"),
        "{msg}"
    );
    // The delegate failing (a bad MTU) is passed through, and ADD's partial work undone.
    std::fs::write(node.path("subnet.env"), "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=70000\nFLANNEL_IPMASQ=true\n").unwrap();
    let (ok, err) = node.twill("ADD", "c2", &pod.name, &good);
    assert!(!ok, "{err}");
    assert!(
        err["msg"].as_str().unwrap().starts_with("delegate bridge"),
        "{err}"
    );
    assert!(
        node.reserved_ips().is_empty(),
        "no leaked address: {:?}",
        node.reserved_ips()
    );
    assert_eq!(node.state_files(), 0);
    assert!(!pod.try_sh("ip link show eth0"));
}

#[test]
fn version_lists_supported_versions() {
    let node = Node::new("c-ver");
    let (ok, v) = node.call(
        &plugin_bin(),
        &[("CNI_COMMAND", "VERSION")],
        r#"{"cniVersion":"0.4.0"}"#,
    );
    assert!(ok);
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

/// The addresses of an ADD result in any spec version (0.1.0/0.2.0: ip4/ip6; later: ips).
fn result_ips(res: &Value) -> Vec<String> {
    if let Some(ips) = res["ips"].as_array() {
        return ips
            .iter()
            .map(|i| i["address"].as_str().unwrap().to_string())
            .collect();
    }
    ["ip4", "ip6"]
        .iter()
        .filter_map(|k| res[k]["ip"].as_str().map(String::from))
        .collect()
}

/// Every spec version flannel's plugin accepts, through Debian's real bridge and
/// host-local (which stop at 1.0.0: a 1.1.0 call reaches them as 1.0.0).
#[test]
fn every_cni_version_flannel_accepts_adds_checks_and_deletes() {
    let node = Node::new("c-vers");
    let pod = Netns::new("c-vers-pod");
    for v in [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ] {
        let id = format!("ctr-{}", v.replace('.', "-"));
        let (ok, res) = node.twill("ADD", &id, &pod.name, &node.conf(v));
        assert!(ok, "{v}: {res}");
        assert_eq!(res["cniVersion"], v, "{res}");
        let ips = result_ips(&res);
        assert_eq!(ips.len(), 1, "{v}: {res}");
        assert!(ips[0].starts_with("10.244.3."), "{v}: {res}");
        let saved: Value = serde_json::from_str(
            &std::fs::read_to_string(node.path(&format!("state/{id}"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            saved["cniVersion"], v,
            "the delegate config keeps the asked version"
        );
        let mut check: Value = serde_json::from_str(&node.conf(v)).unwrap();
        check["prevResult"] = res.clone();
        let (ok, out) = node.twill("CHECK", &id, &pod.name, &check.to_string());
        if !["0.1.0", "0.2.0", "0.3.0", "0.3.1"].contains(&v) {
            assert!(ok, "{v}: CHECK: {out}");
        } else {
            assert!(
                !ok && out["code"] == 1,
                "{v}: CHECK before 0.4.0 is refused: {out}"
            );
        }
        let (ok, out) = node.twill("DEL", &id, &pod.name, &node.conf(v));
        assert!(ok, "{v}: {out}");
        assert!(
            node.reserved_ips().is_empty(),
            "{v}: {:?}",
            node.reserved_ips()
        );
        assert_eq!(node.state_files(), 0, "{v}");
        assert!(!pod.try_sh("ip link show eth0"), "{v}: eth0 removed");
    }
}

/// flannel's "CNI lifecycle" cases (flannel_linux_test.go): ADD with flannel's input (no
/// cniVersion) saves exactly flannel's delegate config in dataDir and returns one address
/// per family; DEL removes the state, and DEL again succeeds. (host-local's dataDir is the
/// test's own, so parallel runs don't share /var/lib/cni/networks.)
#[test]
fn flannels_lifecycle_cases() {
    let node = Node::new("c-flc");
    let pod = Netns::new("c-flc-pod");
    let v4 = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    let two = "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    let v6 = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    let dual = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    let saved = |routes: &str, ranges: &str| {
        format!(
            r#"{{"ipMasq":false,"ipam":{{"dataDir":"{}","routes":[{routes}],"ranges":[{ranges}],"type":"host-local"}},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}}"#,
            node.path("ipam")
        )
    };
    let cases = [
        (
            "ipv4",
            v4,
            saved(r#"{"dst":"10.1.0.0/16"}"#, r#"[{"subnet":"10.1.17.0/24"}]"#),
            1,
        ),
        (
            "ipv4-multiple",
            two,
            saved(
                r#"{"dst":"10.1.0.0/16"},{"dst":"192.168.0.0/16"}"#,
                r#"[{"subnet":"10.1.17.0/24"}]"#,
            ),
            1,
        ),
        (
            "ipv6",
            v6,
            saved(r#"{"dst":"fc00::/48"}"#, r#"[{"subnet":"fc00::/64"}]"#),
            1,
        ),
        (
            "dual-stack",
            dual,
            saved(
                r#"{"dst":"10.1.0.0/16"},{"dst":"fc00::/48"}"#,
                r#"[{"subnet":"10.1.17.0/24"}],[{"subnet":"fc00::/64"}]"#,
            ),
            2,
        ),
    ];
    for (case, env, want, n_ips) in cases {
        let env_file = node.path(&format!("{case}.env"));
        std::fs::write(&env_file, env).unwrap();
        let input = format!(
            r#"{{"name": "cni-flannel", "type": "flannel", "subnetFile": "{env_file}", "dataDir": "{}", "ipam": {{"dataDir": "{}"}}}}"#,
            node.path("state"),
            node.path("ipam")
        );
        let id = format!("some-container-id-{case}");
        let (ok, res) = node.twill("ADD", &id, &pod.name, &input);
        assert!(ok, "{case}: {res}");
        let path = node.path(&format!("state/{id}"));
        let got: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(got, serde_json::from_str::<Value>(&want).unwrap(), "{case}");
        assert_eq!(result_ips(&res).len(), n_ips, "{case}: {res}");
        let (ok, out) = node.twill("DEL", &id, &pod.name, &input);
        assert!(ok, "{case}: {out}");
        assert!(!Path::new(&path).exists(), "{case}: state removed");
        assert!(
            node.twill("DEL", &id, &pod.name, &input).0,
            "{case}: DEL again"
        );
        // host-local's range dir is per network name; nothing may stay reserved.
        let left = std::fs::read_dir(node.path("ipam/cni-flannel"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .parse::<std::net::IpAddr>()
                            .is_ok()
                    })
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(left, 0, "{case}: host-local released the addresses");
    }
}

/// CNI 1.1.0's STATUS: ready once subnet.env is complete, code 50 before; refused for
/// configs older than 1.1.0.
#[test]
fn status_follows_subnet_env() {
    let node = Node::new("c-status");
    let status = |conf: &str| {
        node.call(
            &plugin_bin(),
            &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/usr/lib/cni")],
            conf,
        )
    };
    let (ok, out) = status(&node.conf("1.1.0"));
    assert!(ok && out.is_null(), "{out}");
    std::fs::write(node.path("subnet.env"), "FLANNEL_NETWORK=10.244.0.0/16\n").unwrap();
    let (ok, out) = status(&node.conf("1.1.0"));
    assert!(!ok);
    assert_eq!(out["code"], 50, "{out}");
    assert!(
        out["msg"].as_str().unwrap().contains("FLANNEL_MTU"),
        "{out}"
    );
    std::fs::remove_file(node.path("subnet.env")).unwrap();
    let (ok, out) = status(&node.conf("1.1.0"));
    assert!(!ok && out["code"] == 50, "{out}");
    assert!(out["msg"].as_str().unwrap().contains("twilld"), "{out}");
    let (ok, out) = status(&node.conf("1.0.0"));
    assert!(!ok && out["code"] == 1, "STATUS needs 1.1.0: {out}");
}

/// CNI 1.1.0's GC: attachments missing from cni.dev/valid-attachments are deleted through
/// the delegate (their addresses return to host-local) and their state goes; valid ones
/// stay untouched.
#[test]
fn gc_releases_only_stale_attachments() {
    let node = Node::new("c-gc");
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("c-gc-p{i}"))).collect();
    let mut ips = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let (ok, res) = node.twill("ADD", &format!("gc{i}"), &p.name, &node.conf("1.1.0"));
        assert!(ok, "{res}");
        ips.push(ip_of(&res));
    }
    let mut gc: Value = serde_json::from_str(&node.conf("1.1.0")).unwrap();
    gc["cni.dev/valid-attachments"] = serde_json::json!([{"containerID": "gc1", "ifname": "eth0"}]);
    let (ok, out) = node.call(
        &plugin_bin(),
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &gc.to_string(),
    );
    assert!(ok, "{out}");
    assert_eq!(node.reserved_ips(), vec![ips[1].clone()]);
    assert_eq!(node.state_files(), 1);
    assert!(Path::new(&node.path("state/gc1")).exists());
    assert!(
        pods[1].try_sh("ip link show eth0"),
        "the valid pod keeps its interface"
    );
    // Without the list, GC refuses rather than treat everything as stale.
    let (ok, out) = node.call(
        &plugin_bin(),
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &node.conf("1.1.0"),
    );
    assert!(
        !ok && out["msg"].as_str().unwrap().contains("valid-attachments"),
        "{out}"
    );
    assert_eq!(node.state_files(), 1);
}

/// In-place migration: flannel's plugin and ours share the state format and directory, so
/// a pod added by either is deleted by either. flannel's plugin can't be installed here
/// (it is not in Debian); `flannel_add` / `flannel_del` are stand-ins that do exactly what
/// its ADD and DEL do to the node: save the rendered delegate config as `<dataDir>/<id>`
/// (0600) and hand those bytes to the delegate; read the file, hand it to the delegate
/// named by its `type`, remove it.
#[test]
fn pods_of_flannels_plugin_and_ours_are_deleted_by_either() {
    let node = Node::new("c-mig");
    let pod_f = Netns::new("c-mig-f");
    let pod_t = Netns::new("c-mig-t");
    let conf = node.conf("0.3.1");
    let netns = |p: &Netns| format!("/run/netns/{}", p.name);
    let env = |cmd: &'static str, id: &'static str, ns: &str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.into()),
            ("CNI_CONTAINERID", id.into()),
            ("CNI_NETNS", ns.into()),
            ("CNI_IFNAME", "eth0".into()),
            ("CNI_PATH", "/usr/lib/cni".into()),
        ]
    };
    let run = |plugin: &str, env: &[(&'static str, String)], stdin: &str| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        node.call(Path::new(&format!("/usr/lib/cni/{plugin}")), &env, stdin)
    };
    // flannel's delegate config for this conf and subnet.env (its golden form).
    let flannel_conf = r#"{"cniVersion":"0.3.1","hairpinMode":true,"isDefaultGateway":true,"ipMasq":false,"ipam":{"dataDir":"IPAM","routes":[{"dst":"10.244.0.0/16"}],"ranges":[[{"subnet":"10.244.3.0/24"}]],"type":"host-local"},"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#
        .replace("IPAM", &node.path("ipam"));
    let flannel_add = |id: &'static str, ns: &str| {
        std::fs::create_dir_all(node.path("state")).unwrap();
        let path = node.path(&format!("state/{id}"));
        std::fs::write(&path, &flannel_conf).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        run("bridge", &env("ADD", id, ns), &flannel_conf)
    };
    let flannel_del = |id: &'static str, ns: &str| {
        let path = node.path(&format!("state/{id}"));
        let bytes = std::fs::read_to_string(&path).unwrap();
        let ty = serde_json::from_str::<Value>(&bytes).unwrap()["type"]
            .as_str()
            .unwrap()
            .to_string();
        let r = run(&ty, &env("DEL", id, ns), &bytes);
        std::fs::remove_file(&path).unwrap();
        r
    };

    // flannel added it; twill deletes it.
    let (ok, res) = flannel_add("by-flannel", &netns(&pod_f));
    assert!(ok, "{res}");
    assert_eq!(node.reserved_ips(), vec![ip_of(&res)]);
    let (ok, out) = node.twill("DEL", "by-flannel", &pod_f.name, &conf);
    assert!(ok, "{out}");
    assert!(
        node.reserved_ips().is_empty(),
        "twill's DEL released flannel's pod"
    );
    assert!(!pod_f.try_sh("ip link show eth0"));
    assert_eq!(node.state_files(), 0);

    // twill added it; flannel deletes it.
    let (ok, res) = node.twill("ADD", "by-twill", &pod_t.name, &conf);
    assert!(ok, "{res}");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(node.path("state/by-twill")).unwrap())
            .unwrap();
    assert_eq!(
        saved,
        serde_json::from_str::<Value>(&flannel_conf).unwrap(),
        "the state flannel's DEL reads"
    );
    let (ok, out) = flannel_del("by-twill", &netns(&pod_t));
    assert!(ok, "{out}");
    assert!(
        node.reserved_ips().is_empty(),
        "flannel's DEL released twill's pod"
    );
    assert!(!pod_t.try_sh("ip link show eth0"));
}

/// Without a dataDir in the config, state goes to flannel's directory, and DEL still finds
/// a pod that an earlier twill (state in /var/lib/cni/twill) added.
#[test]
fn default_state_dir_is_flannels_and_the_old_one_is_still_read() {
    let node = Node::new("c-dd");
    let pod = Netns::new("c-dd-pod");
    let id = format!("dd-{}", pod.name);
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"cbr0","type":"twill","subnetFile":"{}","ipam":{{"dataDir":"{}"}}}}"#,
        node.path("subnet.env"),
        node.path("ipam")
    );
    struct Cleanup(Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let flannel_state = format!("/var/lib/cni/flannel/{id}");
    let legacy_state = format!("/var/lib/cni/twill/{id}");
    let _guard = Cleanup(vec![flannel_state.clone(), legacy_state.clone()]);
    let (ok, res) = node.twill("ADD", &id, &pod.name, &conf);
    assert!(ok, "{res}");
    assert!(
        Path::new(&flannel_state).exists(),
        "state in flannel's dataDir"
    );
    // Move it where an earlier twill kept it: DEL must find it there.
    std::fs::create_dir_all("/var/lib/cni/twill").unwrap();
    std::fs::rename(&flannel_state, &legacy_state).unwrap();
    let (ok, out) = node.twill("DEL", &id, &pod.name, &conf);
    assert!(ok, "{out}");
    assert!(!Path::new(&legacy_state).exists());
    assert!(node.reserved_ips().is_empty(), "{:?}", node.reserved_ips());
}

#[test]
fn chained_with_loopback_and_portmap_like_the_conflist() {
    let node = Node::new("c-chain");
    let pod = Netns::new("c-chain-pod");
    let netns = format!("/run/netns/{}", pod.name);
    let env = |cmd: &'static str| {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "chain1"),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ]
    };
    let (ok, lo) = node.call(
        Path::new("/usr/lib/cni/loopback"),
        &env("ADD"),
        r#"{"cniVersion":"1.0.0","name":"lo","type":"loopback"}"#,
    );
    assert!(ok, "{lo}");
    let mut conf: Value = serde_json::from_str(&node.conf("1.0.0")).unwrap();
    conf["runtimeConfig"] = serde_json::json!({"portMappings":[{"hostPort":18080,"containerPort":80,"protocol":"tcp"}]});
    let (ok, res) = node.call(&plugin_bin(), &env("ADD"), &conf.to_string());
    assert!(ok, "{res}");
    let pm = serde_json::json!({"cniVersion":"1.0.0","name":"cbr0","type":"portmap","capabilities":{"portMappings":true},
        "runtimeConfig":{"portMappings":[{"hostPort":18080,"containerPort":80,"protocol":"tcp"}]},"prevResult":res});
    let (ok, out) = node.call(
        Path::new("/usr/lib/cni/portmap"),
        &env("ADD"),
        &pm.to_string(),
    );
    assert!(ok, "{out}");
    let nat = node.ns.sh("iptables -t nat -S");
    assert!(
        nat.contains("--dport 18080") && nat.contains(&ip_of(&res)),
        "{nat}"
    );
    assert!(
        pod.sh("ip -br addr show lo").contains("UP")
            || pod.sh("ip -br addr show lo").contains("UNKNOWN")
    );
    // Teardown in reverse, as a runtime does.
    assert!(
        node.call(
            Path::new("/usr/lib/cni/portmap"),
            &env("DEL"),
            &pm.to_string()
        )
        .0
    );
    assert!(node.call(&plugin_bin(), &env("DEL"), &conf.to_string()).0);
    assert!(node.reserved_ips().is_empty());
}
