//! A STAND-IN for the kubelet, for tests only: no kubelet or kube-apiserver can run on the
//! machines these tests run on. It runs a DaemonSet's pod, read from the manifest a user
//! applies, on one node namespace with Debian's containerd, the way a kubelet would ask
//! containerd to: the init containers one after the other to completion, then the main
//! containers; each with the manifest's command and args, env (fieldRefs resolved), host
//! network, hostPath and ConfigMap volumes, capabilities and privileged flag, and the
//! service-account token and `KUBERNETES_SERVICE_*` a kubelet gives every pod. Probes are
//! HTTP GETs from the node's network namespace to the pod IP (the node's, with
//! hostNetwork), as the kubelet makes them. Deleting the pod is SIGTERM, then SIGKILL after
//! the grace period.
//!
//! Where it differs from a kubelet and containerd's CRI:
//! - containers are created by `ctr run` (containerd's own client), not through the CRI: no
//!   pause sandbox, and the containers get their own UTS and IPC namespaces where a CRI pod
//!   with hostNetwork shares the host's UTS;
//! - the capability set when a container adds some is ctr's default, which is the same list
//!   as the CRI's default (CHOWN, DAC_OVERRIDE, FSETID, FOWNER, MKNOD, NET_RAW, SETGID,
//!   SETUID, SETFCAP, SETPCAP, NET_BIND_SERVICE, SYS_CHROOT, KILL, AUDIT_WRITE) plus the adds;
//! - no AppArmor or SELinux profile, no seccomp (the kubelet's default is Unconfined too),
//!   no cgroup limits from `resources`;
//! - no /etc/hosts, /etc/resolv.conf or /dev/termination-log mounts; no restarts: a
//!   container that fails is a test failure, not a CrashLoopBackOff;
//! - probes are run when the test asks, not on the declared period; what the declared
//!   timings would make of a result is left to the test;
//! - only what twill's manifests use is supported (hostNetwork pods, command given,
//!   env value/fieldRef, hostPath and configMap volumes); anything else panics, naming it.
//!
//! The node's own filesystem is the host's with /etc, /opt and /var/lib overlaid and a
//! fresh /run, inside a private mount namespace that containerd runs in: whatever the pod
//! writes to its host paths lands under the test's temp dir, never on the real host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Volume};
use serde_json::Value;
use twill_testutil::{wait_until, FakeKube, Netns};

pub use crate::text;

/// Where scripts/image.sh leaves the image (`TWILL_IMAGE` overrides).
pub fn image_archive() -> PathBuf {
    std::env::var_os("TWILL_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/image/twilld.oci.tar")
        })
}

/// The objects of `manifests/<name>`, as a user applies them.
pub struct Manifest {
    docs: Vec<Value>,
}

impl Manifest {
    pub fn load(name: &str) -> Manifest {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../manifests")
            .join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("manifest is YAML");
        Manifest {
            docs: docs.into_iter().filter(|d| !d.is_null()).collect(),
        }
    }

    fn object<T: serde::de::DeserializeOwned>(&self, kind: &str, name: &str) -> Option<T> {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .map(|d| serde_json::from_value(d.clone()).expect("object parses into its type"))
    }

    pub fn daemonset(&self, name: &str) -> DaemonSet {
        self.object("DaemonSet", name)
            .unwrap_or_else(|| panic!("no DaemonSet {name} in the manifest"))
    }

    pub fn configmaps(&self) -> Vec<ConfigMap> {
        self.docs
            .iter()
            .filter(|d| d["kind"] == "ConfigMap")
            .map(|d| serde_json::from_value(d.clone()).expect("ConfigMap parses"))
            .collect()
    }

    /// Every image the manifest's DaemonSets run.
    pub fn images(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .docs
            .iter()
            .filter(|d| d["kind"] == "DaemonSet")
            .flat_map(|d| {
                let spec = &d["spec"]["template"]["spec"];
                let mut all = Vec::new();
                for list in ["initContainers", "containers"] {
                    for c in spec[list].as_array().into_iter().flatten() {
                        all.push(c["image"].as_str().unwrap_or_default().to_string());
                    }
                }
                all
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The API server as pods see it: KUBERNETES_SERVICE_HOST/PORT and the CA that signed it.
pub struct ApiServer<'a> {
    pub fake: &'a FakeKube,
    /// ConfigMaps the pod's volumes may name (as the API server would serve them).
    pub configmaps: Vec<ConfigMap>,
}

/// One node as the kubelet sees it: its network namespace, a private mount namespace
/// with containerd running in it, and the node's filesystem under `dir`.
pub struct Kubelet {
    pub node: String,
    pub netns: String,
    pub ip: String,
    dir: PathBuf,
    containerd: Child,
    running: BTreeMap<String, Started>,
}

struct Started {
    at: Instant,
    grace: Duration,
}

impl Kubelet {
    /// Starts containerd for node `node` in namespace `netns` (whose address is `ip`), its
    /// state and the node's writable filesystem under `dir`, and imports the image archive
    /// into the `k8s.io` namespace, as images pulled for the kubelet are.
    pub fn start(node: &str, netns: &Netns, ip: &str, dir: &Path) -> Kubelet {
        let d = dir.display();
        for sub in [
            "cd-root",
            "cd-state",
            "etc-up",
            "etc-w",
            "opt-up",
            "opt-w",
            "varlib-up",
            "varlib-w",
            "run",
            "logs",
            "pods",
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(
            dir.join("containerd.toml"),
            format!(
                "version = 2\nroot = \"{d}/cd-root\"\nstate = \"{d}/cd-state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n\
                 [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n"
            ),
        )
        .unwrap();
        // The node's CNI plugin dir holds Debian's plugins, as a node with
        // containernetworking-plugins in /opt/cni/bin would; /usr/lib/cni (Debian ctr's
        // default) shows the same directory.
        let script = format!(
            r#"set -e
mount --make-rprivate /
mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc-up,workdir={d}/etc-w /etc
mount -t overlay overlay -o lowerdir=/opt,upperdir={d}/opt-up,workdir={d}/opt-w /opt
mount -t overlay overlay -o lowerdir=/var/lib,upperdir={d}/varlib-up,workdir={d}/varlib-w /var/lib
mount --bind {d}/run /run
mkdir -p /opt/cni/bin /etc/cni/net.d /var/lib/cni
cp -a /usr/lib/cni/. /opt/cni/bin/
mount --bind /opt/cni/bin /usr/lib/cni
exec containerd --config {d}/containerd.toml > {d}/containerd.log 2>&1"#
        );
        let containerd = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", netns.name))
            .args(["unshare", "-m", "sh", "-c", &script])
            .spawn()
            .expect("start containerd");
        let k = Kubelet {
            node: node.to_string(),
            netns: netns.name.clone(),
            ip: ip.to_string(),
            dir: dir.to_path_buf(),
            containerd,
            running: BTreeMap::new(),
        };
        let sock = dir.join("containerd.sock");
        wait_until(10, "containerd's socket", || sock.exists());
        let out = k.ctr(&[
            "-n",
            "k8s.io",
            "images",
            "import",
            &image_archive().display().to_string(),
        ]);
        assert!(out.status.success(), "image import: {}", text(&out));
        k
    }

    /// A path of the node's filesystem, as the pod's hostPath volumes see it.
    pub fn host_path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.containerd.id()))
    }

    /// Runs a command in the node's mount and network namespaces (a shell on the node).
    pub fn on_node(&self, cmd: &str) -> Output {
        self.nsenter().args(["sh", "-c", cmd]).output().unwrap()
    }

    /// `ctr` against this node's containerd.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args).output().unwrap()
    }

    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = self.nsenter();
        c.args(["ctr", "--address"])
            .arg(self.dir.join("containerd.sock"))
            .args(args);
        c
    }

    /// A command to run in the node's mount and network namespaces. (`-r`: entering a
    /// mount namespace moves to its real root, and the test may itself run chrooted, as on
    /// a fresh-machine check.)
    fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.containerd.id().to_string(), "-m", "-n", "-r"]);
        c
    }

    /// Runs pod `pod` of `ds` on this node: every init container to completion (a failure
    /// panics with its output), then the main containers, detached. Returns when the main
    /// containers have started.
    pub fn run_pod(&mut self, ds: &DaemonSet, pod: &str, api: &ApiServer) {
        let spec = ds
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .expect("pod spec");
        assert_eq!(
            spec.host_network,
            Some(true),
            "the stand-in runs hostNetwork pods only"
        );
        let namespace = ds.metadata.namespace.clone().unwrap_or("default".into());
        let sa = self.service_account(pod, &namespace, api);
        for c in spec.init_containers.iter().flatten() {
            let id = format!("{pod}-{}", c.name);
            let args = self.container_args(&spec, c, pod, &namespace, &sa, api);
            let mut cmd = self.ctr_cmd(&["-n", "k8s.io", "run", "--rm"]);
            cmd.args(&args.0).arg(image(c)).arg(&id).args(&args.1);
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "init container {} on {}: {}",
                c.name,
                self.node,
                text(&out)
            );
        }
        let grace = Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30) as u64);
        for c in &spec.containers {
            let id = format!("{pod}-{}", c.name);
            let args = self.container_args(&spec, c, pod, &namespace, &sa, api);
            let log = format!("file://{}/logs/{id}.log", self.dir.display());
            let mut cmd = self.ctr_cmd(&["-n", "k8s.io", "run", "-d", "--log-uri", &log]);
            cmd.args(&args.0).arg(image(c)).arg(&id).args(&args.1);
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "container {} on {}: {}",
                c.name,
                self.node,
                text(&out)
            );
            self.running.insert(
                id,
                Started {
                    at: Instant::now(),
                    grace,
                },
            );
        }
    }

    /// When container `name` of `pod` was started.
    pub fn started(&self, pod: &str, name: &str) -> Instant {
        self.running[&format!("{pod}-{name}")].at
    }

    /// What container `name` of `pod` has written to stdout and stderr.
    pub fn logs(&self, pod: &str, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("logs/{pod}-{name}.log"))).unwrap_or_default()
    }

    /// The host PID of the container's main process.
    pub fn pid(&self, pod: &str, name: &str) -> u32 {
        let id = format!("{pod}-{name}");
        self.task(&id).unwrap_or_else(|| panic!("no task {id}")).0
    }

    /// Whether the container's task is running.
    pub fn is_running(&self, pod: &str, name: &str) -> bool {
        self.task(&format!("{pod}-{name}"))
            .is_some_and(|(_, status)| status == "RUNNING")
    }

    /// Task `id` as `ctr tasks ls` shows it: (host PID, status).
    fn task(&self, id: &str) -> Option<(u32, String)> {
        let out = self.ctr(&["-n", "k8s.io", "tasks", "ls"]);
        let listing = text(&out);
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))?;
        let mut w = line.split_whitespace().skip(1);
        Some((w.next()?.parse().ok()?, w.next()?.to_string()))
    }

    /// The container's probe `which` ("liveness" or "readiness"), as declared: an HTTP GET
    /// from the node to the declared host (default: the pod IP, the node's with
    /// hostNetwork), port and path. Ok(status) for 200..=399, as the kubelet counts success.
    pub fn probe(&self, c: &Container, which: &str) -> Result<u16, String> {
        let probe = match which {
            "liveness" => c.liveness_probe.as_ref(),
            "readiness" => c.readiness_probe.as_ref(),
            _ => panic!("probe {which}?"),
        }
        .unwrap_or_else(|| panic!("container {} declares no {which} probe", c.name));
        let get = probe
            .http_get
            .as_ref()
            .expect("the stand-in runs httpGet probes only");
        let host = get.host.clone().unwrap_or_else(|| self.ip.clone());
        let port = match &get.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p,
            other => panic!("named probe ports are not supported: {other:?}"),
        };
        let scheme = get.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
        let url = format!(
            "{scheme}://{host}:{port}{}",
            get.path.as_deref().unwrap_or("/")
        );
        let timeout = probe.timeout_seconds.unwrap_or(1);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "curl",
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(["-m", &timeout.to_string(), &url])
            .output()
            .unwrap();
        let code: u16 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if (200..400).contains(&code) {
            Ok(code)
        } else {
            Err(format!(
                "GET {url}: {code} {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Deletes the pod's main containers as the kubelet does: SIGTERM, then SIGKILL if
    /// the grace period runs out. Returns each container's exit status and how long it
    /// took to stop.
    pub fn delete_pod(&mut self, pod: &str) -> Vec<(String, i32, Duration)> {
        let ids: Vec<String> = self
            .running
            .keys()
            .filter(|k| k.starts_with(&format!("{pod}-")))
            .cloned()
            .collect();
        let mut done = Vec::new();
        for id in ids {
            let grace = self.running.remove(&id).unwrap().grace;
            let t = Instant::now();
            self.ctr(&["-n", "k8s.io", "tasks", "kill", "--signal", "SIGTERM", &id]);
            while t.elapsed() < grace && !self.stopped(&id) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if !self.stopped(&id) {
                self.ctr(&["-n", "k8s.io", "tasks", "kill", "--signal", "SIGKILL", &id]);
                wait_until(10, "the killed container to stop", || self.stopped(&id));
            }
            let took = t.elapsed();
            // ctr shows no exit status anywhere but here: `tasks delete` exits with it.
            let out = self.ctr(&["-n", "k8s.io", "tasks", "delete", &id]);
            let status = out.status.code().unwrap_or(-1);
            self.ctr(&["-n", "k8s.io", "containers", "delete", &id]);
            done.push((id, status, took));
        }
        done
    }

    fn stopped(&self, id: &str) -> bool {
        self.task(id).is_some_and(|(_, status)| status == "STOPPED")
    }

    fn service_account(&self, pod: &str, namespace: &str, api: &ApiServer) -> PathBuf {
        let sa = self.dir.join("pods").join(pod).join("serviceaccount");
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::write(
            sa.join("token"),
            format!("stand-in-token-for-{namespace}-{pod}"),
        )
        .unwrap();
        std::fs::write(
            sa.join("ca.crt"),
            api.fake.ca_pem().expect("a TLS API server"),
        )
        .unwrap();
        std::fs::write(sa.join("namespace"), namespace).unwrap();
        sa
    }

    /// ctr flags for container `c`, and its argv.
    fn container_args(
        &self,
        spec: &PodSpec,
        c: &Container,
        pod: &str,
        namespace: &str,
        sa: &Path,
        api: &ApiServer,
    ) -> (Vec<String>, Vec<String>) {
        let mut flags = vec!["--net-host".to_string()];
        let addr = api.fake.addr();
        flags.push(format!("--env=KUBERNETES_SERVICE_HOST={}", addr.ip()));
        flags.push(format!("--env=KUBERNETES_SERVICE_PORT={}", addr.port()));
        for e in c.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), None) => v.clone(),
                (None, Some(from)) => {
                    let path = &from
                        .field_ref
                        .as_ref()
                        .expect("env valueFrom: fieldRef only")
                        .field_path;
                    match path.as_str() {
                        "spec.nodeName" => self.node.clone(),
                        "metadata.name" => pod.to_string(),
                        "metadata.namespace" => namespace.to_string(),
                        "status.podIP" | "status.hostIP" => self.ip.clone(),
                        other => panic!("env {}: fieldRef {other} is not supported", e.name),
                    }
                }
                _ => String::new(),
            };
            flags.push(format!("--env={}={value}", e.name));
        }
        flags.push(format!(
            "--mount=type=bind,src={},dst=/var/run/secrets/kubernetes.io/serviceaccount,options=rbind:ro",
            sa.display()
        ));
        for m in c.volume_mounts.iter().flatten() {
            assert!(
                m.sub_path.is_none(),
                "volumeMount {}: subPath is not supported",
                m.name
            );
            let v = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .unwrap_or_else(|| panic!("volumeMount {} names no volume", m.name));
            let (src, ro) = self.volume_source(v, pod, api);
            let ro = ro || m.read_only == Some(true);
            flags.push(format!(
                "--mount=type=bind,src={src},dst={},options=rbind:{}",
                m.mount_path.trim_end_matches('/'),
                if ro { "ro" } else { "rw" }
            ));
        }
        if let Some(sc) = &c.security_context {
            if sc.privileged == Some(true) {
                flags.push("--privileged".into());
            }
            if let Some(caps) = &sc.capabilities {
                for cap in caps.add.iter().flatten() {
                    flags.push(format!("--cap-add=CAP_{cap}"));
                }
                for cap in caps.drop.iter().flatten() {
                    flags.push(format!("--cap-drop=CAP_{cap}"));
                }
            }
            assert!(
                sc.run_as_user.is_none() && sc.run_as_group.is_none(),
                "runAsUser/Group are not supported"
            );
        }
        let command = c.command.clone().unwrap_or_else(|| {
            panic!(
                "container {}: the stand-in runs containers with a command only",
                c.name
            )
        });
        let argv = command
            .into_iter()
            .chain(c.args.clone().unwrap_or_default())
            .collect();
        (flags, argv)
    }

    /// The source path of volume `v` in the node's mount namespace, and whether the
    /// kubelet mounts it read-only whatever the volumeMount says.
    fn volume_source(&self, v: &Volume, pod: &str, api: &ApiServer) -> (String, bool) {
        if let Some(h) = &v.host_path {
            let kind = h.type_.as_deref().unwrap_or("");
            let p = shell_quote(&h.path);
            let prepare = match kind {
                "DirectoryOrCreate" => format!("mkdir -p {p}"),
                "FileOrCreate" => {
                    format!("[ -e {p} ] || {{ mkdir -p \"$(dirname {p})\" && touch {p}; }}")
                }
                // No type: the kubelet checks nothing and leaves it to the runtime's mount.
                "" => "true".to_string(),
                "Directory" => format!("[ -d {p} ]"),
                "File" => format!("[ -f {p} ]"),
                other => panic!("hostPath type {other} is not supported"),
            };
            let out = self.on_node(&prepare);
            assert!(out.status.success(), "volume {}: {}", v.name, text(&out));
            (h.path.clone(), false)
        } else if let Some(cm) = &v.config_map {
            let name = cm.name.as_str();
            let map = api
                .configmaps
                .iter()
                .find(|m| m.metadata.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("volume {}: no ConfigMap {name}", v.name));
            let dir = self
                .dir
                .join("pods")
                .join(pod)
                .join("volumes")
                .join(&v.name);
            std::fs::create_dir_all(&dir).unwrap();
            for (k, val) in map.data.iter().flatten() {
                std::fs::write(dir.join(k), val).unwrap();
            }
            (dir.display().to_string(), true)
        } else {
            panic!(
                "volume {}: only hostPath and configMap are supported",
                v.name
            )
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        // Containers and shims live in the node's network namespace and go with it; the
        // daemon itself goes first so nothing restarts them.
        let _ = self.containerd.kill();
        let _ = self.containerd.wait();
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.netns])
            .stdout(Stdio::piped())
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill")
                        .args(["-9", pid])
                        .stderr(Stdio::null())
                        .status();
                }
            });
    }
}

fn image(c: &Container) -> &str {
    c.image.as_deref().expect("container image")
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
