//! A twill cluster in network namespaces for end-to-end tests: an underlay switch, a real
//! etcd in its own namespace, nodes running the real `twilld` binary, and pods wired by
//! Debian's CNI plugins. Underlay addresses are 198.18.0.0/15 only; nothing touches the
//! root namespace. Dropping the cluster kills every process and deletes every namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use twill_testutil::{sh, Etcd, FakeKube, Netns};

pub mod alerts;
pub mod control_plane;
pub mod kubelet;
pub mod netpol;
mod node;
pub mod routers;
pub mod traffic;
pub use node::{dies_with_the_test, Node};
pub use traffic::{ip6, loss_during, seen_source, tcp_from};

pub const ETCD_IP: &str = "198.18.0.100";
/// The etcd host's IPv6 underlay address in a dual-stack cluster: a host outside the pod
/// networks, to check masquerading against.
pub const ETCD_IP6: &str = "2001:2::100";
pub const PREFIX: &str = "/coreos.com/network";

/// The daemon binary built by `cargo build` (override with TWILLD_BIN).
pub fn twilld_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TWILLD_BIN") {
        return p.into();
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/twilld");
    assert!(
        p.exists(),
        "{} not built: run cargo build --workspace first",
        p.display()
    );
    p
}

/// Binary `bin` of reference program `name` as `scripts/setup.sh reference` builds it from
/// its Go module, at the version `scripts/reference-versions` pins (the cache:
/// TWILL_REFERENCE_CACHE, default /var/cache/twill/reference).
pub fn reference_bin(name: &str, bin: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let pins = std::fs::read_to_string(root.join("scripts/reference-versions"))
        .expect("scripts/reference-versions");
    let version = pins
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name)).then(|| w.next()).flatten()
        })
        .and_then(|m| m.rsplit_once('@'))
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| panic!("no {name} line in scripts/reference-versions"));
    let cache = std::env::var("TWILL_REFERENCE_CACHE")
        .unwrap_or_else(|_| "/var/cache/twill/reference".into());
    let p = Path::new(&cache).join(format!("{name}@{version}/{bin}"));
    assert!(
        p.exists(),
        "{} not built: run scripts/setup.sh reference",
        p.display()
    );
    p
}

/// Runs reference program `bin` of `name` (see [`reference_bin`]) with `args`: whether it
/// succeeded, and its stdout and stderr.
pub fn run_reference(name: &str, bin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(reference_bin(name, bin))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
    (out.status.success(), text(&out))
}

/// The real flanneld (see [`reference_bin`]).
pub fn flanneld_bin() -> PathBuf {
    reference_bin("flanneld", "flanneld")
}

/// The real flannel CNI plugin (see [`reference_bin`] and scripts/reference-versions for
/// which release): what wires pods on a node that runs flanneld.
pub fn flannel_plugin_bin() -> PathBuf {
    reference_bin("flannel-cni", "flannel")
}

/// The `twill` CNI plugin built beside twilld.
pub fn twill_plugin_bin() -> PathBuf {
    twilld_bin().with_file_name("twill")
}

/// The IPv4 pod addresses host-local holds for network `cbr0` under `ipam_dir` (its
/// `dataDir`): one file per address.
pub fn host_local_reserved(ipam_dir: &Path) -> Vec<String> {
    std::fs::read_dir(ipam_dir.join("cbr0"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default()
}

pub struct Pod {
    pub ns: Netns,
    pub ip: String,
    /// Its IPv6 address, in a dual-stack cluster.
    pub ip6: Option<String>,
}

pub struct Cluster {
    pub tag: String,
    pub etcd: Etcd,
    pub nodes: Vec<Node>,
    pub pods: Vec<Option<Pod>>,
    pub dir: tempfile::TempDir,
    /// Nodes get an IPv6 underlay address too (2001:2::<n>/64), as dual stack needs.
    pub dual: bool,
    /// The underlay is IPv6 alone: nodes get 2001:2::<n>/64 and no IPv4 address, and etcd
    /// listens at `[ETCD_IP6]`.
    pub v6_only: bool,
    // Dropped last: the switch every other namespace hangs off.
    etcd_ns: Netns,
    ul: Netns,
}

impl Cluster {
    /// Underlay and etcd; no nodes yet. `tag` keeps namespaces of parallel tests apart.
    pub fn new(tag: &str) -> Self {
        Self::build(tag, false)
    }

    /// An underlay with no IPv4 address anywhere (EnableIPv4=false's network): etcd's host
    /// at `ETCD_IP6` and each node at 2001:2::<n>/64, IPv6 alone.
    pub fn new_v6_only(tag: &str) -> Self {
        Self::build(tag, true)
    }

    fn build(tag: &str, v6_only: bool) -> Self {
        let ul = Netns::new(&format!("{tag}-ul"));
        ul.sh("ip link add br0 type bridge && ip link set br0 up");
        // A plain switch: no iptables on bridged underlay frames (br_netfilter may be loaded).
        ul.sh("sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true");
        let etcd_ns = Netns::new(&format!("{tag}-etcd"));
        let etcd = if v6_only {
            attach6(&ul, &etcd_ns, "ul-etcd", ETCD_IP6);
            Etcd::start_in_netns(&etcd_ns.name, &format!("[{ETCD_IP6}]"))
        } else {
            attach(&ul, &etcd_ns, "ul-etcd", ETCD_IP);
            Etcd::start_in_netns(&etcd_ns.name, ETCD_IP)
        };
        Cluster {
            tag: tag.to_string(),
            etcd,
            nodes: Vec::new(),
            pods: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            dual: false,
            v6_only,
            etcd_ns,
            ul,
        }
    }

    /// [`Cluster::new`] with an IPv6 underlay beside the IPv4 one: every node (and the
    /// etcd host, at `ETCD_IP6`) gets an address of 2001:2::/64 on its `eth0`, without
    /// duplicate address detection (a tentative address drops traffic for a second).
    pub fn new_dual(tag: &str) -> Self {
        let mut c = Cluster::new(tag);
        c.dual = true;
        c.etcd_ns
            .sh(&format!("ip addr add {ETCD_IP6}/64 dev eth0 nodad"));
        c
    }

    /// A cluster with `config` in etcd and `n` running nodes (each started with `args`),
    /// one pod per node, every pod reaching every other.
    pub fn with_pods(tag: &str, config: &str, n: usize, args: &[&str]) -> Self {
        let mut c = Cluster::new(tag);
        c.put_config(config);
        for _ in 0..n {
            c.add_node(args);
        }
        for i in 0..n {
            c.add_pod(i);
        }
        c.assert_full_mesh();
        c
    }

    /// A FAKE Kubernetes nodes API (see twill_testutil::fake_kube) served from the etcd
    /// namespace at ETCD_IP (ETCD_IP6 on an IPv6-only underlay), so every node reaches it
    /// over the underlay.
    pub fn fake_kube(&self) -> FakeKube {
        let ip: std::net::IpAddr = if self.v6_only { ETCD_IP6 } else { ETCD_IP }
            .parse()
            .unwrap();
        let listener = self.etcd_ns.run(move || {
            Box::pin(async move { std::net::TcpListener::bind((ip, 0)).expect("bind in netns") })
        });
        FakeKube::start(listener)
    }

    /// [`Cluster::fake_kube`] over HTTPS, as pods reach the real API server.
    pub fn fake_kube_tls(&self) -> FakeKube {
        let listener = self.etcd_ns.run(|| {
            Box::pin(async { std::net::TcpListener::bind((ETCD_IP, 0)).expect("bind in netns") })
        });
        FakeKube::start_tls(listener)
    }

    /// The etcd namespace's name: a host on the underlay outside the pod network.
    pub fn etcd_netns(&self) -> &str {
        &self.etcd_ns.name
    }

    /// Another interface `dev` on node `i`'s namespace, on the same switch, at `ip`.
    pub fn add_underlay(&self, i: usize, dev: &str, ip: &str) {
        let port = format!("ul-n{}-{dev}", i + 1);
        attach_as(&self.ul, &self.nodes[i].ns, &port, dev, ip);
    }

    /// The same with an IPv6 address (`ip`/64, no duplicate address detection).
    pub fn add_underlay6(&self, i: usize, dev: &str, ip: &str) {
        let port = format!("ul-n{}-{dev}", i + 1);
        attach6_as(&self.ul, &self.nodes[i].ns, &port, dev, ip);
    }

    /// The underlay switch's namespace (bridge `br0`, a port `ul-n<n>` per node).
    pub fn switch(&self) -> &Netns {
        &self.ul
    }

    /// The etcd namespace itself.
    pub fn etcd_host(&self) -> &Netns {
        &self.etcd_ns
    }

    pub fn put_config(&self, json: &str) {
        self.etcd.ctl(&["put", &format!("{PREFIX}/config"), json]);
    }

    /// A node namespace at 198.18.0.<n> (n = index + 1), not started.
    pub fn add_node_stopped(&mut self, args: &[&str]) -> usize {
        let i = self.nodes.len();
        let n = i + 1;
        let ns = Netns::new(&format!("{}-n{n}", self.tag));
        let (ip, etcd_url) = if self.v6_only {
            let ip = format!("2001:2::{n}");
            attach6(&self.ul, &ns, &format!("ul-n{n}"), &ip);
            ns.sh("sysctl -qw net.ipv6.conf.all.forwarding=1");
            (ip, format!("http://[{ETCD_IP6}]:2379"))
        } else {
            let ip = format!("198.18.0.{n}");
            attach(&self.ul, &ns, &format!("ul-n{n}"), &ip);
            (ip, format!("http://{ETCD_IP}:2379"))
        };
        ns.sh("sysctl -qw net.ipv4.ip_forward=1");
        if self.dual {
            ns.sh(&format!(
                "ip addr add 2001:2::{n}/64 dev eth0 nodad && sysctl -qw net.ipv6.conf.all.forwarding=1"
            ));
        }
        let dir = self.dir.path().join(format!("n{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        self.nodes.push(Node {
            ns,
            ip,
            etcd_url,
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            child: None,
            runs_flanneld: false,
        });
        self.pods.push(None);
        i
    }

    /// One node per entry, running the real flanneld where it is `true` and twilld
    /// elsewhere, each started with `args` (flanneld gets the same flags by its names).
    pub fn add_nodes(&mut self, flanneld: &[bool], args: &[&str]) {
        for &f in flanneld {
            let i = self.add_node_stopped(args);
            if f {
                self.nodes[i].start_flanneld();
            } else {
                self.nodes[i].start();
            }
        }
    }

    pub fn add_node(&mut self, args: &[&str]) -> usize {
        let i = self.add_node_stopped(args);
        self.nodes[i].start();
        i
    }

    /// The CNI config a pod on node `i` is added and deleted with.
    pub fn pod_conf(&self, i: usize) -> String {
        let node = &self.nodes[i];
        // kube-flannel.yml's conflist says 0.3.1; flannel's plugin of the pinned release
        // knows nothing newer than 0.4.0.
        let version = if node.runs_flanneld { "0.3.1" } else { "1.0.0" };
        format!(
            r#"{{"cniVersion":"{version}","name":"cbr0","type":"twill","subnetFile":"{}","dataDir":"{}","ipam":{{"dataDir":"{}"}},"delegate":{{"hairpinMode":true,"isDefaultGateway":true}}}}"#,
            node.subnet_env().display(),
            node.dir.join("cni-state").display(),
            node.dir.join("ipam").display()
        )
    }

    /// The CNI plugin that goes with node `i`'s daemon: flannel's own beside flanneld,
    /// twill's beside twilld. A pod keeps its plugin's state across a node's move, so the
    /// one that deletes it may not be the one that added it (as in an in-place migration).
    fn plugin(&self, i: usize) -> PathBuf {
        if self.nodes[i].runs_flanneld {
            flannel_plugin_bin()
        } else {
            twill_plugin_bin()
        }
    }

    /// Removes node `i`'s pod as a runtime would: CNI DEL, then its namespace.
    pub fn remove_pod(&mut self, i: usize) {
        let Some(pod) = self.pods[i].take() else {
            return;
        };
        let conf = self.pod_conf(i);
        cni(
            &self.nodes[i].ns,
            &self.plugin(i),
            "DEL",
            &pod.ns.name,
            &conf,
        );
    }

    /// One pod on node `i`, wired as a container runtime would by the node's CNI plugin
    /// (twill's, or flannel's beside flanneld), which reads the node's subnet.env and
    /// delegates to Debian's bridge + host-local.
    pub fn add_pod(&mut self, i: usize) -> String {
        let node = &self.nodes[i];
        node.wait_ready();
        let pod = Netns::new(&format!("{}-p{}", self.tag, i + 1));
        pod.sh("ip link set lo up");
        let conf = self.pod_conf(i);
        let out = cni(&node.ns, &self.plugin(i), "ADD", &pod.name, &conf);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        let addr = |k: usize| {
            v["ips"][k]["address"]
                .as_str()
                .map(|a| a.split('/').next().unwrap().to_string())
        };
        let ip = addr(0).unwrap_or_else(|| panic!("no ip in {out}"));
        // Dual stack lists the IPv6 address second; IPv6-only has only that one.
        let ip6 = addr(1).or_else(|| addr(0)).filter(|a| a.contains(':'));
        self.pods[i] = Some(Pod {
            ns: pod,
            ip: ip.clone(),
            ip6,
        });
        ip
    }

    pub fn pod(&self, i: usize) -> &Pod {
        self.pods[i].as_ref().expect("pod")
    }

    /// Whether pod `a` reaches pod `b` (two pings, 2 s deadline).
    pub fn pings(&self, a: usize, b: usize) -> bool {
        self.pod(a)
            .ns
            .try_sh(&format!("ping -c 2 -i 0.2 -W 2 -q {}", self.pod(b).ip))
    }

    pub fn assert_full_mesh(&self) {
        let with_pods: Vec<usize> = (0..self.pods.len())
            .filter(|i| self.pods[*i].is_some())
            .collect();
        for &a in &with_pods {
            for &b in &with_pods {
                if a != b {
                    assert!(
                        self.pings(a, b),
                        "pod {} cannot reach pod {}\n{}",
                        a + 1,
                        b + 1,
                        self.nodes[a].log()
                    );
                }
            }
        }
    }

    /// Every pod pings every other's address of both families (a dual-stack cluster).
    pub fn assert_mesh_both(&self) {
        self.assert_full_mesh();
        let n = self.pods.len();
        for a in 0..n {
            for b in 0..n {
                if a == b {
                    continue;
                }
                let to = ip6(self.pod(b));
                assert!(
                    self.pod(a)
                        .ns
                        .try_sh(&format!("ping -6 -c 2 -i 0.2 -W 2 -q {to}")),
                    "pod {} cannot reach pod {} at {to}\n{}",
                    a + 1,
                    b + 1,
                    self.nodes[a].log()
                );
            }
        }
    }

    /// A /24 network address in 10.244.240.0–10.244.254.0 that no node holds (leases are
    /// random, so a fixed "stale" subnet could be a live one).
    pub fn unleased_subnet(&self) -> String {
        let leased: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.subnet_env().exists())
            .map(|n| n.lease())
            .collect();
        (240..=254)
            .map(|x| format!("10.244.{x}.0"))
            .find(|s| !leased.contains(&format!("{s}/24")))
            .expect("a free subnet")
    }

    /// Lease keys currently in etcd.
    /// Every lease's JSON value, one per line.
    pub fn lease_values(&self) -> String {
        self.etcd.ctl(&[
            "get",
            "--prefix",
            "--print-value-only",
            &format!("{PREFIX}/subnets/"),
        ])
    }

    /// The lease JSON node `i` holds in etcd, as its subnet.env names it (`None` when the
    /// key is missing or not JSON). A dual-stack key goes on with `&<v6 subnet>`.
    pub fn lease_value(&self, i: usize) -> Option<serde_json::Value> {
        let key = format!(
            "{PREFIX}/subnets/{}",
            self.nodes[i].lease().replace('/', "-")
        );
        let out = self.etcd.ctl(&["get", "--prefix", &key]);
        let mut lines = out.lines();
        while let Some(k) = lines.next() {
            let v = lines.next().unwrap_or("");
            if k == key || k.starts_with(&format!("{key}&")) {
                return serde_json::from_str(v.trim()).ok();
            }
        }
        None
    }

    pub fn leases(&self) -> Vec<String> {
        self.etcd
            .ctl(&[
                "get",
                "--prefix",
                "--keys-only",
                &format!("{PREFIX}/subnets/"),
            ])
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.to_string())
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.stop(libc::SIGKILL);
        }
        // A test that failed on CI can't be rerun there: what each daemon said is all
        // there is to go on.
        if std::thread::panicking() {
            for (i, n) in self.nodes.iter().enumerate() {
                eprintln!(
                    "--- node {i} ({}), the last of its log:\n{}",
                    n.ns.name,
                    log_tail(&n.log(), LOG_TAIL_LINES)
                );
            }
        }
    }
}

const LOG_TAIL_LINES: usize = 60;

/// The last `lines` lines of `log`.
pub fn log_tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn attach(ul: &Netns, ns: &Netns, port: &str, ip: &str) {
    attach_as(ul, ns, port, "eth0", ip);
}

/// A veth from the switch into `ns`, named `eth0` there, addressed `ip`/64 alone (no
/// duplicate address detection: a tentative address drops traffic for a second).
fn attach6(ul: &Netns, ns: &Netns, port: &str, ip: &str) {
    attach6_as(ul, ns, port, "eth0", ip);
}

/// The same, named `dev` in `ns`.
fn attach6_as(ul: &Netns, ns: &Netns, port: &str, dev: &str, ip: &str) {
    sh(&format!(
        "ip -n {ul} link add {port} type veth peer name {dev} netns {ns} && ip -n {ul} link set {port} master br0 up && ip -n {ns} addr add {ip}/64 dev {dev} nodad && ip -n {ns} link set {dev} up",
        ul = ul.name,
        ns = ns.name
    ));
}

/// A veth from the switch into `ns`, named `dev` there, addressed `ip`/24.
fn attach_as(ul: &Netns, ns: &Netns, port: &str, dev: &str, ip: &str) {
    sh(&format!(
        "ip -n {ul} link add {port} type veth peer name {dev} netns {ns} && ip -n {ul} link set {port} master br0 up && ip -n {ns} addr add {ip}/24 dev {dev} && ip -n {ns} link set {dev} up",
        ul = ul.name,
        ns = ns.name
    ));
}

/// A finished command's stdout then stderr, as one text for an assertion's message.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The sum of metric `name`'s samples (those with `label`, if given) in a /metrics body.
pub fn metric_in(body: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("metrics parse as Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// A `/proc/<pid>/status` figure in kB (`VmHWM`, `RssAnon`, ...); 0 when unreadable.
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Where a process's resident set sits, MB by kind of mapping (from `/proc/<pid>/smaps`):
/// its own program (text and data of the executable), shared libraries, heap, the main
/// stack, and the rest (threads' stacks, allocator arenas, vDSO), plus its threads.
pub fn rss_breakdown(pid: u32) -> Vec<(&'static str, f64)> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    rss_by_mapping(
        &smaps,
        &exe.to_string_lossy(),
        proc_status_kb(pid, "Threads"),
    )
}

fn rss_by_mapping(smaps: &str, exe: &str, threads: u64) -> Vec<(&'static str, f64)> {
    const KINDS: [&str; 5] = ["program", "libraries", "heap", "stack", "other maps"];
    let mut kb = [0u64; 5];
    let mut kind = 0;
    for line in smaps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // A mapping's header: "start-end perms offset dev inode [path]".
        if f.first().is_some_and(|a| a.contains('-')) && f.len() >= 5 {
            let path = f.get(5).copied().unwrap_or("");
            kind = match path {
                p if p == exe => 0,
                p if p.contains(".so") => 1,
                "[heap]" => 2,
                p if p.starts_with("[stack") => 3,
                _ => 4,
            };
        } else if f.first() == Some(&"Rss:") {
            kb[kind] += f.get(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    let mut out: Vec<(&str, f64)> = KINDS
        .iter()
        .zip(kb)
        .map(|(k, v)| (*k, v as f64 / 1024.0))
        .collect();
    out.push(("threads", threads as f64));
    out
}

/// The check called `name` in the output of `twilld doctor --output=json` (its JSON report
/// on stdout, possibly followed by log lines from stderr).
pub fn doctor_check(out: &str, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::Deserializer::from_str(out)
        .into_iter()
        .next()
        .and_then(|r| r.ok())
        .unwrap_or_else(|| panic!("no JSON report: {out}"));
    v["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name))
        .unwrap_or_else(|| panic!("no {name} check: {v:#}"))
        .clone()
}

/// Runs a CNI plugin exactly as a runtime does: `env` (CNI_*), config on stdin, inside the
/// node namespace (where cni0 lives). Returns whether it succeeded and its stdout.
pub fn run_plugin(
    node: &Netns,
    plugin: &Path,
    env: &[(&str, &str)],
    stdin: &str,
) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.name])
        .arg(plugin)
        .env_remove("CNI_COMMAND")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the CNI plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// [`run_plugin`] for pod `pod_ns` with interface eth0 and Debian's plugin dir; panics on
/// failure.
pub fn cni(node: &Netns, plugin: &Path, cmd: &str, pod_ns: &str, conf: &str) -> String {
    let netns = format!("/run/netns/{pod_ns}");
    let env = [
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", pod_ns),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    let (ok, out) = run_plugin(node, plugin, &env, conf);
    assert!(ok, "CNI {cmd} failed: {out}");
    out
}

#[cfg(test)]
mod tests {
    use super::{log_tail, rss_by_mapping};

    #[test]
    fn a_log_tail_is_its_last_lines_or_all_of_a_short_one() {
        assert_eq!(log_tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(log_tail("a\nb", 5), "a\nb");
        assert_eq!(log_tail("", 3), "");
    }

    #[test]
    fn resident_set_is_summed_by_the_mapping_it_sits_in() {
        let smaps = "\
55d0c0000000-55d0c0400000 r-xp 00000000 fd:00 1234 /usr/bin/twilld
Rss:                1024 kB
Pss:                1024 kB
55d0c0400000-55d0c0500000 r--p 00400000 fd:00 1234 /usr/bin/twilld
Rss:                 512 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
Rss:                 256 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Rss:                 128 kB
7f0000200000-7f0000300000 r-xp 00000000 fd:00 99 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                2048 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Rss:                  64 kB
VmFlags: rd wr mr mw me gd ac
";
        let got = rss_by_mapping(smaps, "/usr/bin/twilld", 5);
        assert_eq!(
            got,
            vec![
                ("program", 1.5),
                ("libraries", 2.0),
                ("heap", 0.25),
                ("stack", 0.0625),
                ("other maps", 0.125),
                ("threads", 5.0),
            ]
        );
    }
}
