//! The `twill` CNI plugin driven exactly as a container runtime drives it (CNI_* env,
//! config on stdin, result on stdout), delegating to Debian's real bridge, host-local,
//! loopback and portmap plugins, in namespaces the test creates. No twilld runs here:
//! the test writes subnet.env the way twilld does.

use std::path::{Path, PathBuf};

use serde_json::Value;
use twill_testutil::Netns;

fn plugin_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/twill");
    assert!(
        p.exists(),
        "{} not built: run cargo build --workspace first",
        p.display()
    );
    p
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
        serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
    );
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
