//! Pod networks announced to routers over BGP, both shapes. Central feed: `twilld
//! exabgp-feed` is the `process` of a real ExaBGP speaker, which peers with a router running
//! a different implementation (BIRD 2), fed from etcd or the (FAKE) Kubernetes API. Per
//! node: each twilld drives its own BIRD, peered with an FRR router. Everything is in
//! namespaces on the 198.18.0.0/15 underlay; every daemon is started by the test and killed
//! at the end.

use std::process::{Command, Stdio};

use twill_e2e::routers::{frr_router, kernel_bgp_routes, need, node_bird, Daemon, RouteWatch};
use twill_e2e::{Cluster, ETCD_IP, PREFIX};
use twill_testutil::wait_until;

const CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// The router's BGP routes as (prefix, next hop), from `birdc show route`.
fn router_routes(ns: &str, sock: &str) -> Vec<(String, String)> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "birdc", "-s", sock, "show", "route"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut routes = Vec::new();
    let mut prefix = String::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(p) = words.first().filter(|w| w.contains('/')) {
            prefix = p.to_string();
        }
        if let Some(i) = words.iter().position(|w| *w == "via") {
            routes.push((prefix.clone(), words[i + 1].to_string()));
        }
    }
    routes
}

/// A central speaker and its router: ExaBGP (AS 64512) running `feed` as its process, on
/// a new underlay host, peered with a BIRD 2 router (AS 64513) on another. Returns the
/// router's namespace and control socket, and the daemons (killed when dropped). The
/// router installs what it learns in its kernel table, to route to the pods.
fn exabgp_and_bird_router(c: &mut Cluster, feed: &str) -> (String, String, [Daemon; 2]) {
    for bin in ["/usr/sbin/bird", "/usr/sbin/birdc", "/usr/sbin/exabgp"] {
        need(bin);
    }
    let speaker = c.add_node_stopped(&[]);
    let router = c.add_node_stopped(&[]);
    let (sip, rip) = (c.nodes[speaker].ip.clone(), c.nodes[router].ip.clone());
    let rdir = c.nodes[router].dir.clone();
    let sdir = c.nodes[speaker].dir.clone();

    let bird_conf = rdir.join("bird.conf");
    std::fs::write(
        &bird_conf,
        format!(
            "router id {rip};\nprotocol device {{ }}\nprotocol kernel {{ ipv4 {{ export all; }}; }}\nprotocol bgp feed {{\n  local {rip} as 64513;\n  neighbor {sip} as 64512;\n  ipv4 {{ import all; export none; }};\n}}\n"
        ),
    )
    .unwrap();
    let sock = rdir.join("bird.ctl").display().to_string();
    let bird = Daemon(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &c.nodes[router].ns.name,
                "bird",
                "-f",
                "-c",
            ])
            .arg(&bird_conf)
            .args(["-s", &sock, "-P"])
            .arg(rdir.join("bird.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let exa_conf = sdir.join("exabgp.conf");
    std::fs::write(
        &exa_conf,
        format!(
            "process feed {{\n  run {feed};\n  encoder text;\n}}\n\
             neighbor {rip} {{\n  router-id {sip};\n  local-address {sip};\n  local-as 64512;\n  peer-as 64513;\n  api {{\n    processes [ feed ];\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let log = sdir.join("exabgp.log");
    let exabgp = Daemon(
        Command::new("ip")
            .args(["netns", "exec", &c.nodes[speaker].ns.name, "exabgp"])
            .arg(&exa_conf)
            .current_dir(&sdir)
            .env("exabgp.daemon.user", "root")
            .env("exabgp.daemon.daemonize", "false")
            .env("exabgp.log.destination", &log)
            .env("exabgp.api.ack", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    (c.nodes[router].ns.name.clone(), sock, [bird, exabgp])
}

#[test]
fn exabgp_feed_announces_every_lease_to_a_bird_router() {
    let mut c = Cluster::new("bgpfeed");
    c.put_config(CONF);
    for _ in 0..3 {
        c.add_node(&[]);
    }
    for i in 0..3 {
        c.nodes[i].wait_ready();
    }
    let feed = format!(
        "{} exabgp-feed --etcd-endpoints=http://{ETCD_IP}:2379",
        twill_e2e::twilld_bin().display()
    );
    let (ns, sock, _daemons) = exabgp_and_bird_router(&mut c, &feed);

    // Every node's pod subnet on the router, with that node as the next hop.
    let want: Vec<(String, String)> = (0..3)
        .map(|i| (c.nodes[i].lease(), c.nodes[i].ip.clone()))
        .collect();
    wait_until(30, "the router learns every pod subnet", || {
        let got = router_routes(&ns, &sock);
        want.iter().all(|w| got.contains(w))
    });
    let got = router_routes(&ns, &sock);
    assert_eq!(got.len(), 3, "nothing else announced: {got:?}");

    // A client behind the router reaches a pod on every node, and is seen as itself. The
    // router (198.18.0.5) is the nodes' way back to it.
    let client = client_behind(&ns, "bgpfeed-client");
    for i in 0..3 {
        c.nodes[i].ns.sh("ip route add default via 198.18.0.5");
        client_reaches_a_pod(&mut c, i, &client.name);
    }

    // The feed process SIGKILLed: ExaBGP starts it again, and the router sees nothing
    // withdrawn (the speaker keeps its routes; the new feed announces the same set).
    let speaker = c.nodes[3].ns.name.clone();
    let feed_pid = || {
        let pids = twill_testutil::sh(&format!("ip netns pids {speaker}"));
        pids.split_whitespace()
            .find(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains("exabgp-feed"))
                    .unwrap_or(false)
            })
            .map(str::to_string)
    };
    let before = feed_pid().expect("the feed runs under ExaBGP");
    let watch = RouteWatch::start(&ns);
    twill_testutil::sh(&format!("kill -9 {before}"));
    wait_until(15, "ExaBGP to start the feed again", || {
        feed_pid().is_some_and(|p| p != before)
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let gone = watch.deleted("10.244.");
    assert!(
        gone.is_empty(),
        "withdrawn while the feed restarted: {gone:?}"
    );
    assert_eq!(router_routes(&ns, &sock).len(), 3);

    // A lease released: withdrawn from the router within 5 s.
    c.nodes[2].stop(libc::SIGTERM);
    let key = c.nodes[2].lease().replace('/', "-");
    c.etcd.ctl(&["del", &format!("{PREFIX}/subnets/{key}")]);
    wait_until(5, "the released subnet withdrawn", || {
        !router_routes(&ns, &sock)
            .iter()
            .any(|(p, _)| *p == want[2].0)
    });
    assert_eq!(router_routes(&ns, &sock).len(), 2);
    // A bad record in the store is refused, never announced.
    c.etcd.ctl(&[
        "put",
        &format!("{PREFIX}/subnets/10.99.0.0-24"),
        r#"{"PublicIP":"198.18.0.77","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:77"}}"#,
    ]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        !router_routes(&ns, &sock)
            .iter()
            .any(|(p, _)| p.starts_with("10.99.")),
        "a lease outside Network was announced"
    );
}

/// The feed from the Kubernetes store (the FAKE nodes API): every node's podCIDR with its
/// public-ip as next hop; a node deleted is withdrawn within 5 s, a node with a podCIDR
/// outside Network is never announced.
#[test]
fn exabgp_feed_from_the_kubernetes_nodes() {
    let mut c = Cluster::new("bgpkube");
    let fake = c.fake_kube();
    for n in 1..=3 {
        fake.put_flannel_node(
            &format!("fn{n}"),
            &format!("10.244.{n}.0/24"),
            &format!("198.18.0.{n}"),
            &format!("0a:00:00:00:00:0{n}"),
        );
    }
    fake.put_flannel_node("stray", "10.99.0.0/24", "198.18.0.77", "0a:00:00:00:00:77");
    let conf = c.dir.path().join("net-conf.json");
    std::fs::write(&conf, CONF).unwrap();
    let port = fake.url().rsplit(':').next().unwrap().to_string();
    let feed = format!(
        "{} exabgp-feed --kube-subnet-mgr --kube-api-url=http://{ETCD_IP}:{port} --net-config-path={}",
        twill_e2e::twilld_bin().display(),
        conf.display()
    );
    // Three hosts standing for the nodes (their addresses are the next hops), then the
    // speaker and the router.
    for _ in 0..3 {
        c.add_node_stopped(&[]);
    }
    let (ns, sock, _daemons) = exabgp_and_bird_router(&mut c, &feed);
    let want: Vec<(String, String)> = (1..=3)
        .map(|n| (format!("10.244.{n}.0/24"), format!("198.18.0.{n}")))
        .collect();
    wait_until(30, "the router learns every node's podCIDR", || {
        let got = router_routes(&ns, &sock);
        want.iter().all(|w| got.contains(w))
    });
    assert_eq!(
        router_routes(&ns, &sock).len(),
        3,
        "the stray node is not announced"
    );
    assert!(fake.delete_node("fn3"));
    wait_until(5, "the deleted node's podCIDR withdrawn", || {
        !router_routes(&ns, &sock)
            .iter()
            .any(|(p, _)| *p == want[2].0)
    });
    // The feed only reads: nothing was written to the API.
    assert!(
        fake.requests().iter().all(|r| r.method == "GET"),
        "{:?}",
        fake.requests()
    );
}

/// In Kubernetes mode the feed takes a net-conf.json without Network, as the daemon and
/// doctor do: the cluster's network comes from the nodes (it used to refuse the file).
#[test]
fn exabgp_feed_takes_the_cluster_network_when_the_file_names_none() {
    let mut c = Cluster::new("bgpnonet");
    let fake = c.fake_kube();
    for n in 1..=2 {
        fake.put_flannel_node(
            &format!("fn{n}"),
            &format!("10.244.{n}.0/24"),
            &format!("198.18.0.{n}"),
            &format!("0a:00:00:00:00:0{n}"),
        );
    }
    let conf = c.dir.path().join("net-conf.json");
    std::fs::write(&conf, r#"{"Backend":{"Type":"vxlan"}}"#).unwrap();
    let port = fake.url().rsplit(':').next().unwrap().to_string();
    let i = c.add_node_stopped(&[]);
    let mut feed = Command::new("ip")
        .args(["netns", "exec", &c.nodes[i].ns.name])
        .arg(twill_e2e::twilld_bin())
        .args([
            "exabgp-feed".to_string(),
            "--kube-subnet-mgr".into(),
            format!("--kube-api-url=http://{ETCD_IP}:{port}"),
            format!("--net-config-path={}", conf.display()),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = feed.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while lines.len() < 2 && std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    // Closing stdin is ExaBGP going away: the feed ends.
    drop(feed.stdin.take());
    let out = feed.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    lines.sort();
    assert_eq!(
        lines,
        [
            "announce route 10.244.1.0/24 next-hop 198.18.0.1",
            "announce route 10.244.2.0/24 next-hop 198.18.0.2"
        ],
        "{err}"
    );
    assert!(err.contains("has no Network"), "{err}");
}

/// A client host on its own network behind the router (198.19.0.2, outside the pod
/// network and the underlay), routed through it.
fn client_behind(rns: &str, tag: &str) -> twill_testutil::Netns {
    let client = twill_testutil::Netns::new(tag);
    twill_testutil::sh(&format!(
        "ip -n {rns} link add r-client type veth peer name eth0 netns {cl} && \
         ip -n {rns} addr add 198.19.0.1/24 dev r-client && ip -n {rns} link set r-client up && \
         ip -n {cl} addr add 198.19.0.2/24 dev eth0 && ip -n {cl} link set eth0 up && \
         ip -n {cl} route add default via 198.19.0.1",
        cl = client.name
    ));
    client
}

/// A new pod on node `i`: the client pings it and opens TCP to it, and the pod sees the
/// client's own address.
fn client_reaches_a_pod(c: &mut Cluster, i: usize, client: &str) {
    let pod = c.add_pod(i);
    let out = sh_in(client, &format!("ping -c 1 -W 2 {pod}"));
    assert!(
        out.status.success(),
        "client pings the pod on node {}: {:?}",
        i + 1,
        out
    );
    let seen = c.dir.path().join(format!("seen-{i}"));
    let pns = c.pod(i).ns.name.clone();
    let server = Command::new("ip")
            .args(["netns", "exec", &pns, "python3", "-c"])
            .arg(format!(
                "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',8080))\ns.listen(1)\nc,a=s.accept()\nopen('{}','w').write(a[0])\nc.sendall(b'pod')\nc.close()",
                seen.display()
            ))
            .spawn()
            .unwrap();
    let _server = Daemon(server);
    let mut reply = String::new();
    wait_until(5, "the client's TCP connection to the pod", || {
        let out = sh_in(
                client,
                &format!("python3 -c \"import socket;print(socket.create_connection(('{pod}',8080),timeout=2).recv(3).decode())\""),
            );
        reply = String::from_utf8_lossy(&out.stdout).trim().to_string();
        out.status.success()
    });
    assert_eq!(reply, "pod");
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "198.19.0.2",
        "no NAT"
    );
}

/// The node's --bgp-* flags, for a subcommand to find the same BIRD files.
fn bgp_flags(n: &twill_e2e::Node) -> impl Iterator<Item = &str> {
    n.args
        .iter()
        .map(String::as_str)
        .filter(|a| a.starts_with("--bgp-"))
}

fn sh_in(ns: &str, cmd: &str) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", cmd])
        .output()
        .unwrap()
}

/// The per-node shape: every node's twilld drives its own BIRD, which announces the node's
/// pod subnet (next hop: the node) to an FRR router; a client behind the router reaches
/// pods on every node, and the pods see its own address.
#[test]
fn each_node_announces_its_subnet_through_bird_to_an_frr_router() {
    for bin in ["/usr/sbin/bird", "/usr/sbin/birdc"] {
        need(bin);
    }
    let mut c = Cluster::new("bgpn");
    c.put_config(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"},"BGP":{"ASN":64512,"Peers":[{"Address":"198.18.0.4","ASN":64513}]}}"#,
    );
    let mut birds = Vec::new();
    let metrics = "--metrics-port=9464";
    for n in 1..=3 {
        let dir = c.dir.path().join(format!("n{n}"));
        let args = [
            format!("--bgp-config-file={}/bird.conf", dir.display()),
            format!("--bgp-control-socket={}/bird.ctl", dir.display()),
            format!("--bgp-include-dir={}/bird.d", dir.display()),
            "--ip-masq".to_string(),
            metrics.to_string(),
        ];
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let i = c.add_node_stopped(&a);
        // The site's router is the nodes' way out (and back to the client).
        c.nodes[i].ns.sh("ip route add default via 198.18.0.4");
        c.nodes[i].start();
    }
    let router = c.add_node_stopped(&[]);
    assert_eq!(c.nodes[router].ip, "198.18.0.4");
    let rns = c.nodes[router].ns.name.clone();
    let client = client_behind(&rns, "bgpn-client");
    let rdir = c.nodes[router].dir.clone();
    let _frr = frr_router(
        &rns,
        &rdir,
        "198.18.0.4",
        &(1..=3).map(|n| format!("198.18.0.{n}")).collect::<Vec<_>>(),
    );
    for i in 0..3 {
        c.nodes[i].wait_ready();
        birds.push(node_bird(&c.nodes[i].ns.name, &c.nodes[i].dir));
    }

    // The router's own table: each node's pod subnet, with that node as next hop.
    let want: Vec<(String, String)> = (0..3)
        .map(|i| (c.nodes[i].lease(), c.nodes[i].ip.clone()))
        .collect();
    wait_until(30, "the router learns every node's pod subnet", || {
        let got = kernel_bgp_routes(&rns);
        want.iter().all(|w| got.contains(w))
    });
    assert_eq!(kernel_bgp_routes(&rns).len(), 3, "nothing else announced");

    // From outside: ping and TCP to a pod on every node, and the pod sees the client's
    // own address (no NAT on the way in, nor on the way back).
    for i in 0..3 {
        client_reaches_a_pod(&mut c, i, &client.name);
    }

    // "Is BGP working?": /metrics and doctor say so.
    // (twilld reads BIRD's sessions every 5 s.)
    let metric = |name: &str, label: Option<(&str, &str)>| {
        let body = c.nodes[0].ns.sh("curl -s http://127.0.0.1:9464/metrics");
        twill_e2e::metric_in(&body, name, label)
    };
    wait_until(12, "twill_bgp_session_up{peer=198.18.0.4} = 1", || {
        metric("twill_bgp_session_up", Some(("peer", "198.18.0.4"))) == 1.0
    });
    assert_eq!(metric("twill_bgp_prefixes_announced", None), 1.0);
    let n1 = &c.nodes[0];
    let mut doctor = vec!["doctor", "--output=json"];
    doctor.extend(bgp_flags(n1));
    let (_, out) = n1.subcommand(&doctor);
    let check = twill_e2e::doctor_check(&out, "bgp");
    assert_eq!(check["status"], "pass", "{check}");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("198.18.0.4 AS 64513: Established") && detail.contains(&n1.lease()),
        "{detail}"
    );

    // The operator's own file in the include dir: a twill_extra_* protocol is announced too.
    let extra = c.nodes[0].dir.join("bird.d/services.conf");
    std::fs::write(
        &extra,
        "protocol static twill_extra_services { ipv4; route 198.19.200.0/24 blackhole; }\n",
    )
    .unwrap();
    let ctl = c.nodes[0].dir.join("bird.ctl");
    let out = sh_in(
        &c.nodes[0].ns.name,
        &format!("birdc -s {} configure", ctl.display()),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Reconfigured"),
        "{out:?}"
    );
    let service = ("198.19.200.0/24".to_string(), c.nodes[0].ip.clone());
    wait_until(10, "the operator's extra route on the router", || {
        kernel_bgp_routes(&rns).contains(&service)
    });

    // twilld SIGKILLed and restarted: BIRD keeps the session, the router withdraws nothing.
    let watch = RouteWatch::start(&rns);
    c.nodes[0].stop(libc::SIGKILL);
    c.nodes[0].start();
    c.nodes[0].wait_ready();
    std::thread::sleep(std::time::Duration::from_secs(6));
    let gone = watch.deleted(&want[0].0);
    assert!(gone.is_empty(), "withdrawn during the restart: {gone:?}");
    assert!(kernel_bgp_routes(&rns).contains(&want[0]));

    // A config change (a second router) reaches BIRD on SIGHUP, the first session untouched.
    c.put_config(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"},"BGP":{"ASN":64512,"Peers":[{"Address":"198.18.0.4","ASN":64513},{"Address":"198.18.0.9","ASN":64514}]}}"#,
    );
    c.nodes[1].signal(libc::SIGHUP);
    let ctl2 = c.nodes[1].dir.join("bird.ctl");
    wait_until(10, "node 2's BIRD to run the new peer", || {
        let out = sh_in(
            &c.nodes[1].ns.name,
            &format!("birdc -s {} show protocols", ctl2.display()),
        );
        String::from_utf8_lossy(&out.stdout).contains("twill_198_18_0_9")
    });
    assert!(kernel_bgp_routes(&rns).contains(&want[1]));

    // Node 3 uninstalled (cleanup releases its lease): withdrawn from the router in 5 s.
    c.nodes[2].stop(libc::SIGTERM);
    let n3 = &c.nodes[2];
    let mut cleanup = vec!["cleanup", "--yes", "--release-lease"];
    cleanup.extend(bgp_flags(n3));
    let (ok, out) = n3.subcommand(&cleanup);
    assert!(ok && out.contains("BGP announcements"), "{out}");
    wait_until(5, "node 3's subnet withdrawn", || {
        !kernel_bgp_routes(&rns).iter().any(|(p, _)| *p == want[2].0)
    });
    assert_eq!(
        kernel_bgp_routes(&rns).len(),
        3,
        "two nodes' subnets and the extra route"
    );
    drop(birds);
}
