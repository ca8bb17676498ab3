//! A real Kubernetes control plane for the tests: kube-apiserver and
//! kube-controller-manager as `scripts/setup.sh reference` builds them from the
//! `k8s.io/kubernetes` module, on the cluster's etcd, in the etcd namespace at ETCD_IP. The
//! controller-manager allocates podCIDRs as in a kubeadm cluster. Certificates are made
//! here with openssl: a CA, the API server's serving pair for ETCD_IP, an admin client in
//! `system:masters`, and the service-account signing key. kubectl (built with them) is
//! the tests' client. Stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use twill_testutil::{require_root, wait_until};

use crate::{dies_with_the_test, reference_bin, Cluster, ETCD_IP};

/// The API server's port on ETCD_IP.
pub const API_PORT: u16 = 6443;
/// What the controller-manager allocates node podCIDRs from.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The IPv6 half on a dual-stack cluster (the tests' net-conf `IPv6Network`).
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/56";

pub struct ControlPlane {
    pub dir: PathBuf,
    /// A kubeconfig for the admin (system:masters), as the tests' client.
    pub admin: PathBuf,
    /// (program, arguments, process), in start order.
    procs: Vec<(String, Vec<String>, Child)>,
    netns: String,
}

impl ControlPlane {
    /// Starts both servers on `c`'s etcd and waits until the API server is healthy. On a
    /// dual-stack cluster every node gets a podCIDR of each family, as kubeadm's
    /// `podSubnet: 10.244.0.0/16,fd00:10:244::/56` gives them.
    pub fn start(c: &Cluster) -> ControlPlane {
        Self::start_with(c, &[])
    }

    /// [`ControlPlane::start`] with more kube-apiserver flags.
    pub fn start_with(c: &Cluster, apiserver_args: &[&str]) -> ControlPlane {
        let dir = c.dir.path().join("control-plane");
        std::fs::create_dir_all(&dir).unwrap();
        certs(&dir);
        let url = format!("https://{ETCD_IP}:{API_PORT}");
        let admin = dir.join("admin.kubeconfig");
        kubeconfig(&admin, &url, &dir, "admin");
        let mut cp = ControlPlane {
            admin,
            procs: Vec::new(),
            netns: c.etcd_netns().to_string(),
            dir: dir.clone(),
        };
        let d = |f: &str| dir.join(f).display().to_string();
        let mut args: Vec<String> = apiserver_args.iter().map(|a| a.to_string()).collect();
        args.extend([
            format!("--etcd-servers=http://{ETCD_IP}:2379"),
            format!("--bind-address={ETCD_IP}"),
            format!("--advertise-address={ETCD_IP}"),
            format!("--secure-port={API_PORT}"),
            format!("--tls-cert-file={}", d("apiserver.crt")),
            format!("--tls-private-key-file={}", d("apiserver.key")),
            format!("--client-ca-file={}", d("ca.crt")),
            "--authorization-mode=Node,RBAC".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            "--allow-privileged=true".into(),
            // Strict field validation of server-side applies is the default.
            "--enable-priority-and-fairness=false".into(),
        ]);
        cp.spawn("kube-apiserver", &args);
        wait_until(60, "kube-apiserver to be ready", || {
            cp.kubectl_ok(&["get", "--raw=/readyz"])
        });
        // The single-family mask flag is refused on a dual-stack cluster.
        let cidrs: &[String] = if c.dual {
            &[
                format!("--cluster-cidr={CLUSTER_CIDR},{CLUSTER_CIDR6}"),
                "--node-cidr-mask-size-ipv4=24".into(),
                "--node-cidr-mask-size-ipv6=64".into(),
            ]
        } else {
            &[
                format!("--cluster-cidr={CLUSTER_CIDR}"),
                "--node-cidr-mask-size=24".into(),
            ]
        };
        cp.spawn(
            "kube-controller-manager",
            &[
                &[
                    format!("--kubeconfig={}", cp.admin.display()),
                    "--allocate-node-cidrs=true".into(),
                ],
                cidrs,
                &[
                    "--service-cluster-ip-range=10.96.0.0/16".into(),
                    format!("--service-account-private-key-file={}", d("sa.key")),
                    format!("--root-ca-file={}", d("ca.crt")),
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                    "--controllers=*,tokencleaner".into(),
                ],
            ]
            .concat(),
        );
        cp
    }

    /// The API server's URL as nodes reach it.
    pub fn url(&self) -> String {
        format!("https://{ETCD_IP}:{API_PORT}")
    }

    fn spawn(&mut self, program: &str, args: &[String]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{program}.log")))
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(reference_bin("kubernetes", program))
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        dies_with_the_test(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{program}: {e}"));
        self.procs.push((program.to_string(), args.to_vec(), child));
    }

    /// Kills the API server and starts it again with the same flags, waiting until it
    /// serves: every watch of every client is cut, and resumes against the new process.
    pub fn restart_apiserver(&mut self) {
        let i = self
            .procs
            .iter()
            .position(|(p, _, _)| p == "kube-apiserver")
            .expect("kube-apiserver running");
        let (program, args, mut child) = self.procs.remove(i);
        child.kill().unwrap();
        child.wait().unwrap();
        self.spawn(&program, &args);
        wait_until(60, "kube-apiserver to be ready again", || {
            self.kubectl_ok(&["get", "--raw=/readyz"])
        });
    }

    /// Runs `f` with a cluster-admin kube client (a service account's token: rustls
    /// refuses the admin's openssl-made v1 client certificate), on a thread in `c`'s etcd
    /// namespace, where the API server listens.
    pub fn with_client<T: Send + 'static>(
        &self,
        c: &Cluster,
        f: impl FnOnce(kube::Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>
            + Send
            + 'static,
    ) -> T {
        // The account is made once per control plane, even when two threads ask at once.
        static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let path = self.dir.join("client.kubeconfig");
        {
            let _one = MAKING.lock().unwrap_or_else(|e| e.into_inner());
            if !path.exists() {
                self.kubectl(&["create", "serviceaccount", "bench", "-n", "default"]);
                self.kubectl(&[
                    "create",
                    "clusterrolebinding",
                    "bench",
                    "--clusterrole=cluster-admin",
                    "--serviceaccount=default:bench",
                ]);
                self.service_account_kubeconfig("default", "bench", &path);
            }
        }
        c.etcd_host().run(move || {
            Box::pin(async move {
                let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
                let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .unwrap();
                f(kube::Client::try_from(cfg).unwrap()).await
            })
        })
    }

    /// A server's log, for failure messages.
    pub fn log(&self, program: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{program}.log"))).unwrap_or_default()
    }

    /// kubectl as the admin; panics with its output when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> bool {
        self.run_kubectl(args, None).0
    }

    /// kubectl with `stdin` (e.g. `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out) = self.run_kubectl(args, stdin);
        assert!(ok, "kubectl {}: {out}", args.join(" "));
        out
    }

    fn run_kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(reference_bin("kubernetes", "kubectl"))
            .arg(format!("--kubeconfig={}", self.admin.display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        (out.status.success(), crate::text(&out))
    }

    /// Registers node `name` at `ip` as a kubelet registers it (a Node object with its
    /// InternalIP and hostname), for the controller-manager to give a podCIDR.
    pub fn register_node(&self, name: &str, ip: &str) {
        let node = format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}","labels":{{"kubernetes.io/hostname":"{name}","kubernetes.io/os":"linux"}}}}}}"#
        );
        self.kubectl_stdin(&["create", "-f", "-"], Some(&node));
        let status = format!(
            r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{ip}"}},{{"type":"Hostname","address":"{name}"}}]}}}}"#
        );
        self.kubectl(&[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ]);
    }

    /// Node `name`'s podCIDR once the controller-manager has allocated it.
    pub fn pod_cidr(&self, name: &str) -> String {
        let mut cidr = String::new();
        wait_until(30, &format!("a podCIDR for {name}"), || {
            cidr = self.kubectl(&["get", "node", name, "-o", "jsonpath={.spec.podCIDR}"]);
            !cidr.trim().is_empty()
        });
        cidr.trim().to_string()
    }

    /// A kubeconfig for service account `ns/sa`, with a token the API server issues for it
    /// (TokenRequest), as a pod of that account would present.
    pub fn service_account_kubeconfig(&self, ns: &str, sa: &str, path: &Path) {
        let token = self.kubectl(&["create", "token", sa, "-n", ns, "--duration=1h"]);
        let ca = self.dir.join("ca.crt");
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
                self.url(),
                ca.display(),
                token.trim()
            ),
        )
        .unwrap();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for (_, _, p) in self.procs.iter_mut().rev() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CA, the API server's serving pair (for ETCD_IP and the in-cluster names), an admin
/// client certificate and the service-account key pair.
fn certs(dir: &Path) {
    let ext = dir.join("san.ext");
    std::fs::write(
        &ext,
        format!("subjectAltName=IP:{ETCD_IP},DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=twill-test-ca",
        ],
    );
    for (name, subj, extfile) in [
        ("apiserver", "/CN=kube-apiserver", Some("san.ext")),
        ("admin", "/O=system:masters/CN=twill-test-admin", None),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                subj,
            ],
        );
        let (csr, crt) = (format!("{name}.csr"), format!("{name}.crt"));
        let mut sign = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &crt,
        ];
        if let Some(e) = extfile {
            sign.extend(["-extfile", e]);
        }
        openssl(dir, &sign);
    }
    openssl(dir, &["genrsa", "-out", "sa.key", "2048"]);
    openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
}

/// A kubeconfig for `user` with the client certificate `<user>.crt`.
fn kubeconfig(path: &Path, url: &str, dir: &Path, user: &str) {
    let d = |f: &str| dir.join(f).display().to_string();
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {url}\n    certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: {user}\ncurrent-context: c\n",
            d("ca.crt"),
            d(&format!("{user}.crt")),
            d(&format!("{user}.key"))
        ),
    )
    .unwrap();
}

/// A manifest of `manifests/`, as text.
pub fn manifest(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Node namespaces registered with the real API server after `manifest` was applied
/// (server-side, strict validation), each running twilld in Kubernetes mode with a token of
/// the manifest's service account `ns/sa` and `extra` flags (the real flanneld where
/// `flanneld[i]`), all on `net_conf`; one pod per node, full mesh checked. A net-conf with
/// `EnableIPv6` makes the cluster dual-stack: IPv6 underlay and IPv6 podCIDRs too.
#[allow(clippy::too_many_arguments)]
pub fn kube_cluster(
    tag: &str,
    flanneld: &[bool],
    manifest: &str,
    ns: &str,
    sa: &str,
    net_conf: &str,
    extra: &[&str],
) -> (Cluster, ControlPlane, Vec<String>) {
    require_root();
    let conf: serde_json::Value = serde_json::from_str(net_conf).expect("net-conf is JSON");
    let mut c = if conf["EnableIPv6"] == true {
        Cluster::new_dual(tag)
    } else {
        Cluster::new(tag)
    };
    let cp = ControlPlane::start(&c);
    cp.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=twill-test",
            "--validate=strict",
            "-f",
            "-",
        ],
        Some(manifest),
    );
    let conf = c.dir.path().join("net-conf.json");
    std::fs::write(&conf, net_conf).unwrap();
    let kubeconfig = c.dir.path().join("sa.kubeconfig");
    cp.service_account_kubeconfig(ns, sa, &kubeconfig);
    let mut cidrs = Vec::new();
    for (i, &runs_flanneld) in flanneld.iter().enumerate() {
        let name = format!("{tag}-node{}", i + 1);
        let kc = format!("--kubeconfig-file={}", kubeconfig.display());
        let nc = format!("--net-config-path={}", conf.display());
        let mut args = vec!["--kube-subnet-mgr", &kc, &nc, "--ip-masq"];
        if !runs_flanneld {
            args.extend(extra);
        }
        let idx = c.add_node_stopped(&args);
        cp.register_node(&name, &c.nodes[idx].ip);
        cidrs.push(cp.pod_cidr(&name));
        c.nodes[idx].env.push(("NODE_NAME".into(), name));
        if runs_flanneld {
            c.nodes[idx].start_flanneld();
        } else {
            c.nodes[idx].start();
        }
    }
    for (i, cidr) in cidrs.iter().enumerate() {
        c.add_pod(i);
        assert_eq!(
            &c.nodes[i].lease(),
            cidr,
            "subnet.env holds the node's podCIDR"
        );
    }
    c.assert_full_mesh();
    (c, cp, cidrs)
}
