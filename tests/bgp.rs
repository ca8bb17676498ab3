//! Pod networks announced to a router over BGP, the central-feed shape: `twilld
//! exabgp-feed` is the `process` of a real ExaBGP speaker, which peers with a router running
//! a different implementation (BIRD 2); three twilld nodes hold leases in etcd. Everything
//! is in namespaces on the 198.18.0.0/15 underlay; both daemons are started by the test and
//! killed at the end.

use std::process::{Child, Command, Stdio};

use twill_e2e::{Cluster, ETCD_IP, PREFIX};
use twill_testutil::wait_until;

const CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// Kills the daemon when the test ends, however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn need(bin: &str) {
    assert!(
        std::path::Path::new(bin).exists(),
        "{bin} missing: scripts/setup.sh installs bird2 and exabgp"
    );
}

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

#[test]
fn exabgp_feed_announces_every_lease_to_a_bird_router() {
    for bin in ["/usr/sbin/bird", "/usr/sbin/birdc", "/usr/sbin/exabgp"] {
        need(bin);
    }
    let mut c = Cluster::new("bgpfeed");
    c.put_config(CONF);
    for _ in 0..3 {
        c.add_node(&[]);
    }
    for i in 0..3 {
        c.nodes[i].wait_ready();
    }
    // Two more hosts on the underlay, running no twilld: the speaker and the router.
    let speaker = c.add_node_stopped(&[]);
    let router = c.add_node_stopped(&[]);
    let (sip, rip) = (c.nodes[speaker].ip.clone(), c.nodes[router].ip.clone());
    let rdir = c.nodes[router].dir.clone();
    let sdir = c.nodes[speaker].dir.clone();

    let bird_conf = rdir.join("bird.conf");
    std::fs::write(
        &bird_conf,
        format!(
            "router id {rip};\nprotocol device {{ }}\nprotocol bgp feed {{\n  local {rip} as 64513;\n  neighbor {sip} as 64512;\n  ipv4 {{ import all; export none; }};\n}}\n"
        ),
    )
    .unwrap();
    let sock = rdir.join("bird.ctl").display().to_string();
    let _bird = Daemon(
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
            "process feed {{\n  run {twilld} exabgp-feed --etcd-endpoints=http://{ETCD_IP}:2379;\n  encoder text;\n}}\n\
             neighbor {rip} {{\n  router-id {sip};\n  local-address {sip};\n  local-as 64512;\n  peer-as 64513;\n  api {{\n    processes [ feed ];\n  }}\n}}\n",
            twilld = twill_e2e::twilld_bin().display()
        ),
    )
    .unwrap();
    let log = sdir.join("exabgp.log");
    let _exabgp = Daemon(
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

    // Every node's pod subnet on the router, with that node as the next hop.
    let want: Vec<(String, String)> = (0..3)
        .map(|i| (c.nodes[i].lease(), c.nodes[i].ip.clone()))
        .collect();
    let ns = c.nodes[router].ns.name.clone();
    wait_until(30, "the router learns every pod subnet", || {
        let got = router_routes(&ns, &sock);
        want.iter().all(|w| got.contains(w))
    });
    let got = router_routes(&ns, &sock);
    assert_eq!(got.len(), 3, "nothing else announced: {got:?}");

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
