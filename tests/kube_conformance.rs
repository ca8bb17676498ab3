//! The fake API server (`twill_testutil::fake_kube`) stays for the faults a real one cannot
//! be made to produce; this checks that what it emulates is what the real kube-apiserver
//! does. The same requests, as twilld's client sends them, go to both, and what a client
//! can see of the answers must agree: list and watch (with resourceVersion, and 410 for a
//! version too old), status patches (conditions merged by type, the status subresource
//! keeping metadata and ignoring spec, the main resource ignoring status), and RBAC
//! refusals under flannel's ClusterRole, word for word.

use std::process::Command;

use serde_json::{json, Value};
use twill_e2e::control_plane::ControlPlane;
use twill_e2e::{reference_bin, Cluster, ETCD_IP};
use twill_testutil::{require_root, FakeKube, FLANNEL_CLUSTER_ROLE};

const NODE: &str = "conf-node";

/// One API server as a client reaches it from the etcd namespace: its URL and the curl
/// arguments that authenticate as the admin, or as flannel's service account.
struct Server<'a> {
    name: &'static str,
    netns: &'a str,
    url: String,
    admin: Vec<String>,
    flannel: Vec<String>,
}

impl Server<'_> {
    /// `(HTTP status, body)` of one request.
    fn call(
        &self,
        as_flannel: bool,
        method: &str,
        path: &str,
        body: Option<(&str, &Value)>,
    ) -> (u16, Value) {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            self.netns,
            "curl",
            "-s",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ])
        .args(if as_flannel {
            &self.flannel
        } else {
            &self.admin
        });
        if let Some((ctype, b)) = body {
            cmd.args([
                "-H",
                &format!("Content-Type: {ctype}"),
                "--data-binary",
                &b.to_string(),
            ]);
        }
        let out = cmd.arg(format!("{}{path}", self.url)).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text
            .trim_end()
            .rsplit_once('\n')
            .unwrap_or(("", text.trim()));
        let code: u16 = code
            .parse()
            .unwrap_or_else(|_| panic!("{}: no status in {text:?}", self.name));
        (code, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    fn ok(&self, method: &str, path: &str, body: Option<(&str, &Value)>) -> Value {
        let (code, v) = self.call(false, method, path, body);
        assert!(
            (200..300).contains(&code),
            "{}: {method} {path}: {code} {v}",
            self.name
        );
        v
    }

    /// The events a watch from `rv` delivers within `secs` seconds.
    fn watch(&self, rv: &str, secs: u32) -> Vec<Value> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.netns,
                "curl",
                "-s",
                "-N",
                "--max-time",
                &secs.to_string(),
            ])
            .args(&self.admin)
            .arg(format!(
                "{}/api/v1/nodes?watch=true&resourceVersion={rv}",
                self.url
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

const STRATEGIC: &str = "application/strategic-merge-patch+json";
const MERGE: &str = "application/merge-patch+json";

fn condition_types(node: &Value) -> Vec<String> {
    let mut t: Vec<String> = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["type"].as_str().map(String::from))
        .collect();
    t.sort();
    t
}

/// Everything a client sees that the fake emulates, as (case, observation) pairs.
fn observe(
    s: &Server,
    before_rbac: impl FnOnce(),
    rbac: impl FnOnce(),
) -> Vec<(&'static str, Value)> {
    let mut seen = Vec::new();
    let node_path = format!("/api/v1/nodes/{NODE}");
    let list = s.ok("GET", "/api/v1/nodes", None);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    seen.push(("list names the node", json!(names.contains(&NODE))));
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string();
    seen.push(("list has a resourceVersion", json!(!rv.is_empty())));

    // Conditions merge by type through the status subresource.
    let ready =
        json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Test"}]}});
    s.ok(
        "PATCH",
        &format!("{node_path}/status"),
        Some((STRATEGIC, &ready)),
    );
    let unavailable = json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False", "reason": "TwillIsUp"}]}});
    let n = s.ok(
        "PATCH",
        &format!("{node_path}/status"),
        Some((STRATEGIC, &unavailable)),
    );
    seen.push(("conditions merge by type", json!(condition_types(&n))));

    // The status subresource keeps metadata and ignores spec.
    let both = json!({"metadata": {"annotations": {"example.com/status": "kept"}}, "spec": {"unschedulable": true}});
    let n = s.ok(
        "PATCH",
        &format!("{node_path}/status"),
        Some((MERGE, &both)),
    );
    seen.push((
        "status patch keeps metadata",
        n["metadata"]["annotations"]["example.com/status"].clone(),
    ));
    seen.push((
        "status patch ignores spec",
        n["spec"]["unschedulable"].clone(),
    ));

    // The main resource ignores status.
    let status = json!({"metadata": {"annotations": {"example.com/main": "kept"}}, "status": {"conditions": []}});
    let n = s.ok("PATCH", &node_path, Some((MERGE, &status)));
    seen.push((
        "main patch keeps metadata",
        n["metadata"]["annotations"]["example.com/main"].clone(),
    ));
    seen.push(("main patch ignores status", json!(condition_types(&n))));

    // A watch from the list's version sees the changes since, as MODIFIED.
    let events = s.watch(&rv, 3);
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| *t != "BOOKMARK")
        .collect();
    seen.push((
        "watch from the list's version",
        json!(kinds.first().copied()),
    ));

    // A version older than the server keeps: 410 Expired in the stream.
    before_rbac();
    let gone = s.watch("1", 3);
    let first = gone.first().cloned().unwrap_or(Value::Null);
    seen.push((
        "too old a version",
        json!([
            first["type"],
            first["object"]["code"],
            first["object"]["reason"]
        ]),
    ));

    // flannel's ClusterRole: what it grants works, what it does not is refused in the
    // server's words.
    rbac();
    let (code, _) = s.call(true, "GET", &node_path, None);
    seen.push(("flannel's role may get a node", json!(code)));
    let (code, v) = s.call(
        true,
        "PATCH",
        &node_path,
        Some((MERGE, &json!({"metadata": {"labels": {"a": "b"}}}))),
    );
    seen.push((
        "flannel's role may not patch a node",
        json!([code, v["reason"], v["message"]]),
    ));
    let (code, _) = s.call(
        true,
        "PATCH",
        &format!("{node_path}/status"),
        Some((MERGE, &json!({"metadata": {"annotations": {"a": "b"}}}))),
    );
    seen.push(("flannel's role may patch a node's status", json!(code)));
    seen
}

#[test]
fn the_fake_api_answers_as_the_real_one() {
    require_root();
    let c = Cluster::new("kconf");
    // The real server, with flannel's manifest (its ClusterRole and service account). Its
    // watch cache would serve an old version from memory as long as it holds that part of
    // history (a fresh server holds all of it); without the cache, a watch is etcd's, and a
    // version etcd compacted away is the 410 a client gets once the cache has moved on.
    let cp = ControlPlane::start_with(&c, &["--watch-cache=false"]);
    let flannel = std::fs::read_to_string(reference_bin("flanneld", "kube-flannel.yml")).unwrap();
    cp.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&flannel));
    cp.register_node(NODE, "198.18.0.1");
    let token = cp.kubectl(&["create", "token", "flannel", "-n", "kube-flannel"]);
    let d = |f: &str| cp.dir.join(f).display().to_string();
    let real = Server {
        name: "kube-apiserver",
        netns: c.etcd_netns(),
        url: format!("https://{ETCD_IP}:{}", twill_e2e::control_plane::API_PORT),
        admin: vec![
            "--cacert".into(),
            d("ca.crt"),
            "--cert".into(),
            d("admin.crt"),
            "--key".into(),
            d("admin.key"),
        ],
        flannel: vec![
            "--cacert".into(),
            d("ca.crt"),
            "-H".into(),
            format!("Authorization: Bearer {}", token.trim()),
        ],
    };
    let fake: FakeKube = c.fake_kube();
    fake.add_node(NODE, None);
    let fake_server = Server {
        name: "fake",
        netns: c.etcd_netns(),
        url: fake.url(),
        admin: vec![],
        flannel: vec![],
    };
    // A version too old is one etcd compacted away (the fake's compact() stands for it).
    let compact = || {
        let status = c.etcd.ctl(&["endpoint", "status", "-w", "json"]);
        let v: Value = serde_json::from_str(&status).unwrap();
        let rev = v[0]["Status"]["header"]["revision"].as_u64().unwrap();
        c.etcd.ctl(&["compact", &rev.to_string()]);
    };
    let want = observe(&real, compact, || {});
    let got = observe(
        &fake_server,
        || fake.compact(),
        || fake.enforce_rbac(FLANNEL_CLUSTER_ROLE),
    );
    for ((case, w), (_, g)) in want.iter().zip(&got) {
        assert_eq!(g, w, "{case}: the fake says {g}, kube-apiserver says {w}");
    }
    assert_eq!(want.len(), got.len());
}
