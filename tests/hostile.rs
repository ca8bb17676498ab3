//! The store is untrusted input: hostile keys written into etcd on a running 3-node
//! cluster are refused on every node — the underlay stays on the underlay, pods keep
//! pinging, nothing has to be deleted to recover — and a peer whose lease turns bad is
//! dropped, then taken back once it is fixed.
//!
//! The cluster's Network deliberately contains the underlay (198.18.0.0/15, leases from
//! 198.19.0.0): a misconfiguration real sites have, and the one where only the check
//! against the node's own prefixes stands between a key and a rerouted underlay.

use twill_e2e::{doctor_check, Cluster, ETCD_IP, PREFIX};
use twill_testutil::wait_until;

const CONF: &str =
    r#"{"Network":"198.18.0.0/15","SubnetMin":"198.19.0.0","Backend":{"Type":"vxlan"}}"#;

fn lease(public_ip: &str, vni: u32, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}}}}"#
    )
}

fn metrics(c: &Cluster, i: usize) -> String {
    c.nodes[i].ns.sh("curl -sf http://127.0.0.1:8471/metrics")
}

fn flannel_routes(c: &Cluster, i: usize) -> Vec<String> {
    c.nodes[i].vxlan_subnets()
}

#[test]
fn hostile_leases_never_reach_the_kernel() {
    let c = Cluster::with_pods(
        "hostile",
        CONF,
        3,
        &["--iptables-resync=1", "--metrics-port=8471"],
    );
    let key = |k: &str| format!("{PREFIX}/subnets/{k}");
    let hostile = [
        // The report: the underlay network itself, with a plausible value.
        (
            "198.18.0.0-24",
            lease("198.18.0.99", 1, "02:00:00:00:00:99"),
            "underlay-overlap",
        ),
        (
            "10.99.0.0-24",
            lease("198.18.0.98", 1, "02:00:00:00:00:98"),
            "outside-network",
        ),
        (
            "198.19.0.0-16",
            lease("198.18.0.97", 1, "02:00:00:00:00:97"),
            "subnet-length",
        ),
        (
            "198.19.250.0-24",
            lease("198.18.0.96", 1, "ff:ff:ff:ff:ff:ff"),
            "vtep-mac",
        ),
        (
            "198.19.251.0-24",
            lease("198.18.0.95", 9, "02:00:00:00:00:95"),
            "vni",
        ),
        (
            "198.19.252.0-24",
            lease("127.0.0.1", 1, "02:00:00:00:00:94"),
            "public-ip",
        ),
        ("198.19.253.0-24", "{not json".to_string(), "malformed"),
    ];
    for (k, v, _) in &hostile {
        c.etcd.ctl(&["put", &key(k), v]);
    }
    for i in 0..3 {
        wait_until(10, "every hostile lease counted", || {
            let m = metrics(&c, i);
            hostile.iter().all(|(_, _, reason)| {
                m.contains(&format!(
                    "twill_leases_rejected_total{{reason=\"{reason}\"}} 1"
                ))
            })
        });
    }
    // A few resyncs later nothing is programmed, and nothing was reported twice.
    std::thread::sleep(std::time::Duration::from_secs(3));
    for i in 0..3 {
        let n = &c.nodes[i];
        let via = n.ns.sh(&format!("ip route get {ETCD_IP}"));
        assert!(
            via.contains("dev eth0") && !via.contains("flannel"),
            "{via}"
        );
        let peer = c.nodes[(i + 1) % 3].ip.clone();
        let via = n.ns.sh(&format!("ip route get {peer}"));
        assert!(via.contains("dev eth0"), "{via}");
        let routes = flannel_routes(&c, i);
        assert_eq!(routes.len(), 2, "only the two real peers: {routes:?}");
        let all = n.ns.sh("ip -4 route show");
        for (k, _, _) in &hostile {
            let net = k.replacen('-', "/", 1);
            assert!(
                !all.contains(&format!("{net} via")),
                "{net} programmed:\n{all}"
            );
        }
        assert!(
            !all.contains("default"),
            "no default route appeared:\n{all}"
        );
        let log = n.log();
        for (k, _, reason) in &hostile {
            let lines = log
                .lines()
                .filter(|l| l.contains("peer lease refused") && l.contains(k))
                .count();
            assert_eq!(lines, 1, "{k} ({reason}) logged once:\n{log}");
        }
        let m = metrics(&c, i);
        assert!(m.contains("twill_leases_refused_current 7"), "{m}");
        assert!(m.contains("twill_peers 2"), "{m}");
    }
    c.assert_full_mesh();

    // doctor names them.
    let (_, out) = c.nodes[0].subcommand(&["doctor", "--output=json"]);
    let check = doctor_check(&out, "leases");
    assert_eq!(check["status"], "warn", "{check}");
    let detail = check["detail"].as_str().unwrap();
    for (k, _, reason) in &hostile {
        assert!(
            detail.contains(k) && detail.contains(reason),
            "{k}: {detail}"
        );
    }

    // A real peer whose lease turns bad is dropped on the others; fixed, it is back.
    let victim = c.nodes[2].lease();
    let vkey = key(&victim.replacen('/', "-", 1));
    let good = c
        .etcd
        .ctl(&["get", "--print-value-only", &vkey])
        .trim()
        .to_string();
    let bad = good.replace("\"VNI\":1", "\"VNI\":7");
    assert_ne!(good, bad);
    c.etcd.ctl(&["put", "--ignore-lease", &vkey, &bad]);
    for i in 0..2 {
        wait_until(10, "the peer with a bad lease removed", || {
            !flannel_routes(&c, i).contains(&victim)
        });
    }
    assert!(!c.pings(0, 2));
    c.etcd.ctl(&["put", "--ignore-lease", &vkey, &good]);
    for i in 0..2 {
        wait_until(10, "the fixed peer back", || {
            flannel_routes(&c, i).contains(&victim)
        });
    }
    c.assert_full_mesh();
    // The hostile keys are all still there: recovery never needed them gone.
    assert_eq!(c.leases().len(), 3 + hostile.len());
}

/// A misplaced, doubled FORWARD jump under a DROP policy is repaired in one nftables
/// generation (one `iptables-restore --noflush` commit): the deletions and the new jump
/// land together, so forwarded pod traffic never meets the chain without its jump.
#[test]
fn a_misplaced_jump_is_repaired_without_a_gap() {
    let mut c = Cluster::new("gapless");
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let i = c.add_node(&["--iptables-resync=1"]);
    let n = &c.nodes[i];
    n.wait_ready();
    let jump = r#"-m comment --comment "flanneld forward" -j FLANNEL-FWD"#;
    wait_until(10, "the FORWARD jump in place", || {
        n.ns.sh("iptables -S FORWARD").contains(jump)
    });
    let mut monitor = std::process::Command::new("ip")
        .args(["netns", "exec", &n.ns.name, "nft", "monitor"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("nft monitor");
    std::thread::sleep(std::time::Duration::from_millis(300));
    n.ns.sh(&format!(
        "iptables -P FORWARD DROP && iptables -I FORWARD 1 -j DROP && iptables -A FORWARD {jump}"
    ));
    wait_until(10, "the jump first and single again", || {
        let rules = n.ns.sh("iptables -S FORWARD");
        let lines: Vec<&str> = rules.lines().filter(|l| l.starts_with("-A")).collect();
        lines.first().is_some_and(|l| l.contains("FLANNEL-FWD"))
            && lines.iter().filter(|l| l.contains("FLANNEL-FWD")).count() == 1
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = monitor.kill();
    let out = monitor.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Split the event stream into commits: each ends with "# new generation N by …".
    let mut commits: Vec<Vec<&str>> = vec![vec![]];
    for l in text.lines() {
        if l.starts_with("# new generation") {
            commits.push(vec![]);
        } else {
            commits.last_mut().unwrap().push(l);
        }
    }
    let repairs: Vec<&Vec<&str>> = commits
        .iter()
        .filter(|c| {
            c.iter()
                .any(|l| l.starts_with("delete rule ip filter FORWARD"))
        })
        .collect();
    assert_eq!(
        repairs.len(),
        1,
        "one commit deletes FORWARD rules:\n{text}"
    );
    let r = repairs[0];
    assert_eq!(
        r.iter()
            .filter(|l| l.starts_with("delete rule ip filter FORWARD"))
            .count(),
        2,
        "both old jumps removed in it:\n{text}"
    );
    assert!(
        r.iter()
            .any(|l| l.starts_with("insert rule ip filter FORWARD") && l.contains("FLANNEL-FWD")),
        "and the new jump inserted in the same commit:\n{text}"
    );
    n.ns.sh("iptables -P FORWARD ACCEPT");
}
