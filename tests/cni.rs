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
        self.pod_call(&plugin_bin(), cmd, id, pod, stdin)
    }

    /// flannel's real CNI plugin, called as [`Node::twill`] calls ours.
    fn flannel(&self, cmd: &str, id: &str, pod: &str, stdin: &str) -> (bool, Value) {
        self.pod_call(&twill_e2e::flannel_plugin_bin(), cmd, id, pod, stdin)
    }

    /// Runs a plugin in the node namespace; returns (success, stdout as it printed it).
    fn plugin(&self, bin: &Path, env: &[(&str, &str)], stdin: &str) -> (bool, String) {
        twill_e2e::run_plugin(&self.ns, bin, env, stdin)
    }

    fn pod_call(&self, bin: &Path, cmd: &str, id: &str, pod: &str, stdin: &str) -> (bool, Value) {
        let netns = format!("/run/netns/{pod}");
        self.call(
            bin,
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
        twill_e2e::host_local_reserved(&self.dir.path().join("ipam"))
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
    // A config refused for its content is answered in the version it names.
    let nameless = node.conf("0.3.1").replace(r#""name":"cbr0","#, "");
    let (ok, err) = node.call(&plugin_bin(), &full("ADD", "c1"), &nameless);
    assert!(!ok && err["code"] == 7, "{err}");
    assert_eq!(err["cniVersion"], "0.3.1", "{err}");
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
/// a pod added by either is deleted by either. flannel's plugin is the real one
/// (`scripts/setup.sh reference`), both delegating to Debian's bridge and host-local.
#[test]
fn pods_of_flannels_plugin_and_ours_are_deleted_by_either() {
    let node = Node::new("c-mig");
    let pod_f = Netns::new("c-mig-f");
    let pod_t = Netns::new("c-mig-t");
    // The newest version both plugins speak (flannel's pinned release stops at 0.4.0).
    let conf = node.conf("0.4.0");

    // flannel added it; twill deletes it.
    let (ok, res) = node.flannel("ADD", "by-flannel", &pod_f.name, &conf);
    assert!(ok, "{res}");
    assert_eq!(node.reserved_ips(), vec![ip_of(&res)]);
    let flannels: Value =
        serde_json::from_str(&std::fs::read_to_string(node.path("state/by-flannel")).unwrap())
            .unwrap();
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
    let ours: Value =
        serde_json::from_str(&std::fs::read_to_string(node.path("state/by-twill")).unwrap())
            .unwrap();
    assert_eq!(ours, flannels, "the state either plugin's DEL reads");
    let (ok, out) = node.flannel("DEL", "by-twill", &pod_t.name, &conf);
    assert!(ok, "{out}");
    assert!(
        node.reserved_ips().is_empty(),
        "flannel's DEL released twill's pod"
    );
    assert!(!pod_t.try_sh("ip link show eth0"));
    assert_eq!(node.state_files(), 0);
}

/// What the two plugins make of one input, where they are meant to differ.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Both succeed and hand the delegate the same config, or both refuse.
    Same,
    /// Ours succeeds where flannel's refuses.
    OnlyOursAccepts,
}

/// flannel's real plugin and ours given the same subnet.env and config, ADD by ADD: both
/// succeed or both refuse, and where they succeed the delegate gets the same config (as
/// JSON: flannel's is Go's map encoding) and the same is saved for DEL. The delegate is a
/// recorder: the config it is handed is what this compares, not what a bridge makes of it
/// (the migration test above runs the real one).
#[test]
fn flannels_plugin_and_ours_hand_the_delegate_the_same_config() {
    use Outcome::*;
    let node = Node::new("c-same");
    let delegates = node.dir.path().join("delegates");
    std::fs::create_dir_all(&delegates).unwrap();
    let got = node.path("got");
    for name in ["bridge", "ptp"] {
        let path = delegates.join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\ncat > {got}\necho '{{\"cniVersion\":\"0.3.1\",\"dns\":{{}}}}'\n"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let base = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    let v6 = "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n";
    let dual = format!("{base}{v6}");
    let v6_only = format!("{v6}FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n");
    let blank = format!("{base}\n\n");
    let crlf = base.replace('\n', "\r\n");
    let comment = format!("# written by hand\n{base}");
    let doubled = format!("{base}FLANNEL_SUBNET=10.244.9.1/24\n");
    let junk_line = format!("{base}GARBAGE\n");
    let no_masq = base.replace("IPMASQ=true", "IPMASQ=false");
    let odd_masq = base.replace("IPMASQ=true", "IPMASQ=yes");
    let no_mtu = base.replace("FLANNEL_MTU=1450\n", "");
    let bad_mtu = base.replace("MTU=1450", "MTU=abc");
    let exported = format!("export {base}");
    let spaced = base.replace("FLANNEL_NETWORK=", "FLANNEL_NETWORK = ");
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str, Outcome)] = &[
        ("flannel's own", base, "", Same),
        ("dual stack", &dual, "", Same),
        ("IPv6 only", &v6_only, "", Same),
        ("blank lines at the end", &blank, "", Same),
        ("CRLF line ends", &crlf, "", Same),
        ("a comment line", &comment, "", Same),
        ("a key twice: the last wins", &doubled, "", Same),
        ("a line without '='", &junk_line, "", Same),
        ("FLANNEL_IPMASQ=false", &no_masq, "", Same),
        ("FLANNEL_IPMASQ neither true nor false", &odd_masq, "", Same),
        ("no FLANNEL_MTU", &no_mtu, "", Same),
        ("FLANNEL_MTU not a number", &bad_mtu, "", Same),
        ("export in front", &exported, "", Same),
        ("ipam routes merged", base, r#","ipam":{"routes":[{"dst":"192.168.0.0/16","gw":"10.244.3.1"}],"dataDir":"/x"}"#, Same),
        ("ipam type kept", base, r#","ipam":{"type":"static"}"#, Same),
        ("ipam ranges replaced", base, r#","ipam":{"ranges":[[{"subnet":"1.2.3.0/24"}]]}"#, Same),
        ("ipam route not a CIDR", base, r#","ipam":{"routes":[{"dst":"nonsense"}]}"#, Same),
        ("ipam null", base, r#","ipam":null"#, Same),
        ("delegate type", base, r#","delegate":{"type":"ptp"}"#, Same),
        ("delegate type a number", base, r#","delegate":{"type":5}"#, Same),
        ("delegate with a name", base, r#","delegate":{"name":"x"}"#, Same),
        ("delegate with ipam", base, r#","delegate":{"ipam":{}}"#, Same),
        ("delegate's own mtu, ipMasq, isGateway", base, r#","delegate":{"mtu":1000,"ipMasq":true,"isGateway":false}"#, Same),
        ("delegate null", base, r#","delegate":null"#, Same),
        ("runtimeConfig passed on", base, r#","runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":2,"protocol":"tcp"}]}"#, Same),
        ("capabilities and unknown keys", base, r#","capabilities":{"portMappings":true},"foo":{"bar":1}"#, Same),
        // Go's scanner takes "FLANNEL_NETWORK " as another key; twilld never writes
        // spaces, and ours reads such a file as a shell would not but a person would.
        ("spaces around '='", &spaced, "", OnlyOursAccepts),
    ];
    let subnet_env = node.path("case.env");
    for version in ["0.3.1", "0.4.0"] {
        for (i, (what, env, extra, expected)) in cases.iter().enumerate() {
            std::fs::write(&subnet_env, env).unwrap();
            let conf = format!(
                r#"{{"cniVersion":"{version}","name":"cbr0","type":"flannel","subnetFile":"{subnet_env}","dataDir":"{}"{extra}}}"#,
                node.path("case-state")
            );
            let id = format!("case{i}");
            let mut seen = Vec::new();
            for bin in [twill_e2e::flannel_plugin_bin(), plugin_bin()] {
                let _ = std::fs::remove_file(&got);
                let (ok, out) = node.plugin(
                    &bin,
                    &[
                        ("CNI_COMMAND", "ADD"),
                        ("CNI_CONTAINERID", &id),
                        ("CNI_NETNS", "/run/netns/none"),
                        ("CNI_IFNAME", "eth0"),
                        ("CNI_PATH", &delegates.display().to_string()),
                    ],
                    &conf,
                );
                let handed = std::fs::read_to_string(&got).ok();
                let saved = node.path(&format!("case-state/{id}"));
                let kept = std::fs::read_to_string(&saved).ok();
                let _ = std::fs::remove_file(&saved);
                if ok {
                    let handed = handed.as_deref();
                    assert!(handed.is_some(), "{what} ({version}): no delegate ran");
                    assert_eq!(
                        kept.as_deref(),
                        handed,
                        "{what} ({version}): DEL's state is what the delegate got"
                    );
                }
                let parsed = handed.map(|h| serde_json::from_str::<Value>(&h).unwrap());
                seen.push((ok, parsed, out));
            }
            let (theirs, ours) = (&seen[0], &seen[1]);
            match expected {
                Same => {
                    assert_eq!(
                        theirs.0, ours.0,
                        "{what} ({version}): flannel's {} / ours {}",
                        theirs.2, ours.2
                    );
                    assert_eq!(
                        theirs.1, ours.1,
                        "{what} ({version}): the delegate's config"
                    );
                }
                OnlyOursAccepts => {
                    assert!(
                        !theirs.0 && ours.0,
                        "{what} ({version}): {theirs:?} {ours:?}"
                    );
                }
            }
        }
    }
}

/// DEL of a pod whose saved state is missing or unreadable, by flannel's real plugin and
/// ours. Missing: both succeed (the spec's "already gone"). Unreadable: the pinned release
/// of flannel's plugin fails and keeps the file, so every retry fails the same way; ours
/// succeeds and removes it, as flannel-io/cni-plugin's later releases do (their source
/// logs the parse error and returns success), since nothing could ever be deleted with it.
#[test]
fn del_without_usable_state_by_flannels_plugin_and_ours() {
    let node = Node::new("c-delst");
    let pod = Netns::new("c-delst-pod");
    let conf = node.conf("0.4.0");
    type Call = fn(&Node, &str, &str, &str, &str) -> (bool, Value);
    for (who, call, unreadable_ok) in [
        ("flannel's", Node::flannel as Call, false),
        ("ours", Node::twill as Call, true),
    ] {
        let (ok, out) = call(&node, "DEL", "never-added", &pod.name, &conf);
        assert!(ok, "{who}: DEL without state: {out}");
        std::fs::create_dir_all(node.path("state")).unwrap();
        std::fs::write(node.path("state/garbled"), "not json").unwrap();
        let (ok, out) = call(&node, "DEL", "garbled", &pod.name, &conf);
        assert_eq!(ok, unreadable_ok, "{who}: DEL with unreadable state: {out}");
        assert_eq!(
            std::path::Path::new(&node.path("state/garbled")).exists(),
            !unreadable_ok,
            "{who}: the unreadable state file"
        );
        let _ = std::fs::remove_file(node.path("state/garbled"));
    }
}

/// ADD before the daemon has written subnet.env: both plugins refuse it, flannel's with
/// code 999 (an internal error), ours with 11, the spec's "try again later", which is
/// what it is: the kubelet retries either way, and ours names twilld as the cause.
#[test]
fn add_before_subnet_env_by_flannels_plugin_and_ours() {
    let node = Node::new("c-nose");
    let pod = Netns::new("c-nose-pod");
    std::fs::remove_file(node.path("subnet.env")).unwrap();
    let conf = node.conf("0.4.0");
    let (ok, theirs) = node.flannel("ADD", "early", &pod.name, &conf);
    assert!(!ok && theirs["code"] == 999, "{theirs}");
    let (ok, ours) = node.twill("ADD", "early", &pod.name, &conf);
    assert!(!ok && ours["code"] == 11, "{ours}");
    assert!(ours["msg"].as_str().unwrap().contains("twilld"), "{ours}");
    assert_eq!(node.state_files(), 0);
    assert!(node.reserved_ips().is_empty());
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
