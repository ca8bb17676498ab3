//! The NetworkPolicy lab, modelled on the upstream NetworkPolicy e2e suite: namespaces x, y
//! and z with pods a, b and c (labels `pod=<name>`) spread over three twilld nodes on a
//! real API server, each pod serving TCP and UDP on ports 80 and 81 (container ports named
//! `serve-<port>-<proto>` as upstream names them). A probe is one new connection from a
//! pod's own network namespace; [`PolicyLab::expect`] probes every (from, to, port,
//! protocol), on both families in a dual-stack lab, and compares the whole matrix with what
//! a case says it must be (the same for both families: a policy means the same for each).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use twill_testutil::{join_netns, wait_until, Netns};

use crate::control_plane::{kube_cluster, manifest, ControlPlane};
use crate::{cni, twill_plugin_bin, Cluster};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const PORTS: [u16; 2] = [80, 81];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

pub const PROTOS: [Proto; 2] = [Proto::Tcp, Proto::Udp];

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

pub struct LabPod {
    pub ns: String,
    pub name: String,
    /// Index into the cluster's nodes.
    pub node: usize,
    pub netns: Netns,
    pub ip: Ipv4Addr,
    /// In a dual-stack lab.
    pub ip6: Option<Ipv6Addr>,
}

impl LabPod {
    pub fn id(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }
}

/// One probe: (from, to) as indexes into the pods, port, protocol, whether over IPv6.
pub type Cell = (usize, usize, u16, Proto, bool);

/// A wanted matrix, as a case states it.
pub type Want<'a> = &'a dyn Fn(&LabPod, &LabPod, u16, Proto) -> bool;

pub struct PolicyLab {
    pub pods: Vec<LabPod>,
    rt: tokio::runtime::Runtime,
    /// Client source ports, never reused in a run: a reused (address, port) pair could
    /// ride a conntrack entry of an earlier case's allowed flow.
    next_port: AtomicU16,
    // Dropped after the pods: the nodes and the API server they hang off.
    pub cp: ControlPlane,
    pub c: Cluster,
}

impl PolicyLab {
    /// Three nodes with `--network-policy` (and `extra`), nine pods, their servers.
    pub fn start(tag: &str, extra: &[&str]) -> Self {
        Self::launch(tag, extra, false)
    }

    /// [`PolicyLab::start`] on a dual-stack cluster: every pod has an IPv4 and an IPv6
    /// address, and every cell of the matrix is probed over each.
    pub fn start_dual(tag: &str, extra: &[&str]) -> Self {
        Self::launch(tag, extra, true)
    }

    fn launch(tag: &str, extra: &[&str], dual: bool) -> Self {
        let mut args = vec!["--network-policy"];
        args.extend(extra);
        let net_conf = if dual {
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#
        } else {
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#
        };
        let (c, cp, _) = kube_cluster(
            tag,
            &[false; 3],
            &manifest("kube-twill.yml"),
            "kube-twill",
            "twill",
            net_conf,
            &args,
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut pods = Vec::new();
        for (n, ns) in NAMESPACES.iter().enumerate() {
            cp.kubectl(&["create", "namespace", ns]);
            wait_until(
                30,
                &format!("namespace {ns}'s default service account"),
                || cp.kubectl_ok(&["get", "serviceaccount", "default", "-n", ns]),
            );
            for (p, name) in PODS.iter().enumerate() {
                let node = (n + p) % 3;
                pods.push(add_pod(&c, &cp, tag, ns, name, node));
            }
        }
        for pod in &pods {
            serve(&rt, pod);
        }
        let lab = PolicyLab {
            pods,
            rt,
            next_port: AtomicU16::new(20000),
            cp,
            c,
        };
        lab.expect("no policy: everything reaches everything", &|_, _, _, _| {
            true
        });
        lab
    }

    pub fn pod(&self, id: &str) -> &LabPod {
        self.pods
            .iter()
            .find(|p| p.id() == id)
            .unwrap_or_else(|| panic!("no pod {id}"))
    }

    /// `kubectl apply` of a manifest (YAML or JSON).
    pub fn apply(&self, doc: &str) {
        self.cp.kubectl_stdin(&["apply", "-f", "-"], Some(doc));
    }

    pub fn delete_policies(&self) {
        for ns in NAMESPACES {
            self.cp
                .kubectl(&["delete", "networkpolicy", "--all", "-n", ns]);
        }
    }

    /// Probes the whole matrix until it is `want` (policy takes a moment to reach every
    /// node), at most 20 s; then fails with every cell that differs.
    pub fn expect(&self, case: &str, want: Want) {
        // Every case starts with empty neighbour caches, so pods on one bridge find each
        // other again under the case's policies: IPv6 neighbour discovery crosses the
        // forward hooks there (ARP does not), and a cached entry would hide a table that
        // drops it.
        for pod in &self.pods {
            pod.netns.sh("ip neigh flush all");
        }
        let started = Instant::now();
        loop {
            let got = self.probe_all();
            let wrong: Vec<String> = got
                .iter()
                .filter(|((f, t, port, proto, _), ok)| {
                    want(&self.pods[*f], &self.pods[*t], *port, *proto) != **ok
                })
                .map(|((f, t, port, proto, v6), ok)| {
                    format!(
                        "  {} -> {} {port}/{}{}: {}",
                        self.pods[*f].id(),
                        self.pods[*t].id(),
                        proto.name(),
                        if *v6 { " over IPv6" } else { "" },
                        if *ok {
                            "connected, want denied"
                        } else {
                            "denied, want connected"
                        }
                    )
                })
                .collect();
            if wrong.is_empty() {
                eprintln!(
                    "{case}: the matrix is as wanted after {:?}",
                    started.elapsed()
                );
                return;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let logs: String = self
                    .c
                    .nodes
                    .iter()
                    .map(|n| n.log())
                    .collect::<Vec<_>>()
                    .join("\n----\n");
                let tables: Vec<String> = self
                    .c
                    .nodes
                    .iter()
                    .map(|n| n.ns.sh("nft list table inet twill-policy 2>&1 || true"))
                    .collect();
                panic!(
                    "{case}: {} of {} cells wrong:\n{}\ntables:\n{}\nlogs:\n{logs}",
                    wrong.len(),
                    got.len(),
                    wrong.join("\n"),
                    tables.join("\n----\n")
                );
            }
        }
    }

    /// Every (from, to, port, protocol, over IPv6) with from != to: whether a new
    /// connection made it.
    pub fn probe_all(&self) -> BTreeMap<Cell, bool> {
        let mut jobs = Vec::new();
        for (f, from) in self.pods.iter().enumerate() {
            // Sockets are made in the client pod's namespace, on a thread that joined it,
            // and used from the runtime: a socket stays in the namespace it was made in.
            let mut wanted = Vec::new();
            for (t, to) in self.pods.iter().enumerate() {
                if f == t {
                    continue;
                }
                let dsts = std::iter::once(IpAddr::from(to.ip)).chain(to.ip6.map(IpAddr::from));
                for dst in dsts {
                    for port in PORTS {
                        for proto in PROTOS {
                            let src = self.next_port.fetch_add(1, Ordering::Relaxed);
                            assert!(src < 65000, "out of client ports");
                            let key = (f, t, port, proto, dst.is_ipv6());
                            wanted.push((key, src, SocketAddr::new(dst, port)));
                        }
                    }
                }
            }
            let made = in_netns(&from.netns, move || {
                wanted
                    .into_iter()
                    .map(|(key, src, dst)| (key, Client::new(key.3, src, key.4), dst))
                    .collect::<Vec<_>>()
            });
            jobs.extend(made);
        }
        self.rt.block_on(async {
            let probes = jobs.into_iter().map(|(key, client, dst)| {
                tokio::spawn(async move { (key, client.probe(dst).await) })
            });
            futures::future::join_all(probes)
                .await
                .into_iter()
                .map(|r| r.expect("probe task"))
                .collect()
        })
    }
}

fn add_pod(c: &Cluster, cp: &ControlPlane, tag: &str, ns: &str, name: &str, node: usize) -> LabPod {
    let netns = Netns::new(&format!("{tag}-{ns}{name}"));
    let out = cni(
        &c.nodes[node].ns,
        &twill_plugin_bin(),
        "ADD",
        &netns.name,
        &c.pod_conf(node),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let addr = |k: usize| -> Option<IpAddr> {
        v["ips"][k]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
    };
    let ip = match addr(0) {
        Some(IpAddr::V4(ip)) => ip,
        _ => panic!("no IPv4 address in {out}"),
    };
    // A dual-stack network lists the IPv6 address second.
    let ip6 = match addr(1) {
        Some(IpAddr::V6(ip)) => Some(ip),
        _ => None,
    };
    let ports: Vec<serde_json::Value> = PORTS
        .iter()
        .flat_map(|port| {
            PROTOS.iter().map(move |p| {
                serde_json::json!({
                    "name": format!("serve-{port}-{}", p.name().to_lowercase()),
                    "containerPort": port,
                    "protocol": p.name(),
                })
            })
        })
        .collect();
    let node_name = format!("{tag}-node{}", node + 1);
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
        "spec": {
            "nodeName": node_name,
            "automountServiceAccountToken": false,
            // No kubelet reports these nodes Ready: never evicted for it.
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "serve", "image": "agnhost", "ports": ports}],
        },
    });
    cp.kubectl_stdin(&["create", "-f", "-"], Some(&pod.to_string()));
    // What the kubelet would report once the sandbox has its addresses.
    let ips: Vec<serde_json::Value> = std::iter::once(IpAddr::from(ip))
        .chain(ip6.map(IpAddr::from))
        .map(|ip| serde_json::json!({"ip": ip.to_string()}))
        .collect();
    let status = serde_json::json!({"status": {
        "phase": "Running", "podIP": ip.to_string(), "podIPs": ips,
    }});
    cp.kubectl(&[
        "patch",
        "pod",
        name,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    LabPod {
        ns: ns.into(),
        name: name.into(),
        node,
        netns,
        ip,
        ip6,
    }
}

/// Runs `f` on a thread that joined `ns`.
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.path();
    std::thread::spawn(move || {
        join_netns(&path);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// TCP: accept and close; UDP: echo. Both ports, on each family the pod has, in its
/// namespace.
fn serve(rt: &tokio::runtime::Runtime, pod: &LabPod) {
    let mut addrs = vec![IpAddr::from(Ipv4Addr::UNSPECIFIED)];
    if pod.ip6.is_some() {
        addrs.push(Ipv6Addr::UNSPECIFIED.into());
    }
    let socks = in_netns(&pod.netns, move || {
        addrs
            .iter()
            .flat_map(|ip| PORTS.iter().map(move |p| SocketAddr::new(*ip, *p)))
            .map(|addr| {
                let tcp = bound(addr, socket2::Type::STREAM);
                tcp.listen(1024).unwrap();
                let udp = bound(addr, socket2::Type::DGRAM);
                (
                    std::net::TcpListener::from(tcp),
                    std::net::UdpSocket::from(udp),
                )
            })
            .collect::<Vec<_>>()
    });
    let _guard = rt.enter();
    for (tcp, udp) in socks {
        let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
        let udp = tokio::net::UdpSocket::from_std(udp).unwrap();
        rt.spawn(async move {
            while let Ok((conn, _)) = tcp.accept().await {
                drop(conn);
            }
        });
        rt.spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(&buf[..n], from).await;
            }
        });
    }
}

/// A non-blocking socket bound to `addr`; an IPv6 one takes IPv6 alone, beside the IPv4
/// one on the same port.
fn bound(addr: SocketAddr, ty: socket2::Type) -> socket2::Socket {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), ty, None).unwrap();
    if addr.is_ipv6() {
        s.set_only_v6(true).unwrap();
    }
    s.set_nonblocking(true).unwrap();
    s.bind(&addr.into())
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    s
}

/// A client socket made in the client pod's namespace, bound to its own source port.
enum Client {
    Tcp(tokio::net::TcpSocket),
    Udp(std::net::UdpSocket),
}

/// How long a probe waits: an allowed connection answers in milliseconds here.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

impl Client {
    fn new(proto: Proto, port: u16, v6: bool) -> Self {
        let ip = if v6 {
            IpAddr::from(Ipv6Addr::UNSPECIFIED)
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let addr = SocketAddr::new(ip, port);
        match proto {
            Proto::Tcp => {
                let s = bound(addr, socket2::Type::STREAM);
                Client::Tcp(tokio::net::TcpSocket::from_std_stream(s.into()))
            }
            Proto::Udp => Client::Udp(bound(addr, socket2::Type::DGRAM).into()),
        }
    }

    async fn probe(self, dst: SocketAddr) -> bool {
        match self {
            Client::Tcp(s) => matches!(
                tokio::time::timeout(PROBE_TIMEOUT, s.connect(dst)).await,
                Ok(Ok(_))
            ),
            Client::Udp(s) => {
                let s = tokio::net::UdpSocket::from_std(s).unwrap();
                let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
                let mut buf = [0u8; 64];
                // Sent again every 300 ms: a lost datagram is not a denial.
                while tokio::time::Instant::now() < deadline {
                    if s.send_to(b"probe", dst).await.is_err() {
                        return false;
                    }
                    let wait =
                        tokio::time::timeout(Duration::from_millis(300), s.recv_from(&mut buf));
                    if let Ok(Ok((n, from))) = wait.await {
                        return from == dst && &buf[..n] == b"probe";
                    }
                }
                false
            }
        }
    }
}
