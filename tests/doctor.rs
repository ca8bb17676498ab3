//! `twilld doctor` on a real node: a healthy one passes; each broken condition the test
//! creates is reported as warn/fail with a hint.

use serde_json::Value;
use twill_e2e::{twilld_bin, Cluster, ETCD_IP};

const CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn doctor(c: &Cluster, i: usize) -> (bool, Value) {
    let n = &c.nodes[i];
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &n.ns.name])
        .arg(twilld_bin())
        .arg("doctor")
        .arg("--output=json")
        .arg("--vxlan-notrack")
        .arg("--iface=eth0")
        .arg(format!("--etcd-endpoints=http://{ETCD_IP}:2379"))
        .arg(format!("--subnet-file={}", n.subnet_env().display()))
        .arg(format!("--cni-conf-dir={}", n.dir.join("net.d").display()))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        v["ok"].as_bool().unwrap(),
        out.status.success(),
        "exit status follows ok: {v}"
    );
    (out.status.success(), v)
}

fn check<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {v}"))
}

fn assert_status(v: &Value, name: &str, want: &str) {
    let c = check(v, name);
    assert_eq!(c["status"], want, "{name}: {c}");
    if want != "pass" {
        assert!(
            !c["hint"].as_str().unwrap().is_empty(),
            "{name} has a hint: {c}"
        );
    }
}

#[test]
fn healthy_node_passes_and_each_breakage_is_named() {
    // The flags doctor is given below, as it should be run.
    let mut c = Cluster::with_pods("x-doc", CONF, 2, &["--ip-masq", "--vxlan-notrack"]);
    let conf_dir = c.nodes[0].dir.join("net.d");
    let st = std::process::Command::new(twilld_bin())
        .args([
            "install-cni",
            &format!("--cni-conf-dir={}", conf_dir.display()),
            &format!("--cni-bin-dir={}", c.nodes[0].dir.join("bin").display()),
        ])
        .status()
        .unwrap();
    assert!(st.success());

    let (ok, v) = doctor(&c, 0);
    assert!(ok, "{v:#}");
    for name in [
        "privileges",
        "kernel",
        "ip_forward",
        "underlay",
        "etcd",
        "config",
        "subnet.env",
        "vxlan device",
        "mtu",
        "vxlan port",
        "vxlan firewall",
        "peers",
        "rules",
        "CNI conflicts",
        "other CNIs",
    ] {
        assert_status(&v, name, "pass");
    }
    assert_eq!(
        check(&v, "rules")["detail"],
        "iptables: masquerade, forward, vxlan notrack rules in place"
    );

    // A host firewall that lets VXLAN in only as NEW connections would drop the packets
    // twilld untracks: named, and no longer a concern once UNTRACKED is accepted too.
    let n0 = &c.nodes[0].ns;
    n0.sh("iptables -A INPUT -p udp --dport 8472 -m conntrack --ctstate NEW -j ACCEPT");
    let (ok, v) = doctor(&c, 0);
    assert!(ok, "a warning is not a failure: {v:#}");
    assert_status(&v, "vxlan firewall", "warn");
    assert!(check(&v, "vxlan firewall")["detail"]
        .as_str()
        .unwrap()
        .contains("--dport 8472 -m conntrack --ctstate NEW -j ACCEPT"));
    n0.sh("iptables -R INPUT 1 -p udp --dport 8472 -m conntrack --ctstate NEW,UNTRACKED -j ACCEPT");
    assert_status(&doctor(&c, 0).1, "vxlan firewall", "pass");

    // From here on nothing repairs what the test breaks.
    c.nodes[0].stop(libc::SIGTERM);
    let n0 = &c.nodes[0].ns;
    let stale = c.unleased_subnet();
    n0.sh(&format!(
        "ip route add {stale}/24 via {stale} dev flannel.1 onlink"
    ));
    n0.sh("ip link add cilium_host type veth peer name cilium_net");
    std::fs::write(conf_dir.join("05-cilium.conflist"), "{}").unwrap();
    n0.sh(r#"iptables -t nat -D FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#);
    n0.sh("iptables -I FORWARD -j DROP");
    let (_, v) = doctor(&c, 0);
    assert_status(&v, "rules", "fail");
    assert_eq!(
        check(&v, "rules")["detail"],
        "iptables: nat/FLANNEL-POSTRTG differs (1 rules missing, 0 extra); \
         jump filter/FORWARD -> FLANNEL-FWD comes after \"-j DROP\""
    );
    assert_status(&v, "peers", "warn");
    assert_status(&v, "other CNIs", "warn");
    let other = check(&v, "other CNIs")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        other.contains("cilium_host") && other.contains("ip link del cilium_host"),
        "{other}"
    );
    // A conflist ahead of ours, and another overlay on our UDP port: conflicts, failed.
    n0.sh("ip link add vxlan.calico type vxlan id 4096 dstport 8472 dev eth0");
    let (ok, v) = doctor(&c, 0);
    assert!(!ok);
    assert_status(&v, "CNI conflicts", "fail");
    let conflicts = check(&v, "CNI conflicts")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        conflicts.contains("05-cilium.conflist")
            && conflicts.contains("vxlan.calico is bound to UDP 8472"),
        "{conflicts}"
    );
    assert!(check(&v, "CNI conflicts")["hint"]
        .as_str()
        .unwrap()
        .contains("ip link del vxlan.calico"));
    n0.sh("ip link del vxlan.calico");

    n0.sh("sysctl -qw net.ipv4.ip_forward=0");
    n0.sh("ip link del flannel.1");
    let (ok, v) = doctor(&c, 0);
    assert!(!ok);
    assert_status(&v, "ip_forward", "fail");
    assert_status(&v, "vxlan device", "fail");

    std::fs::remove_file(c.nodes[0].subnet_env()).unwrap();
    let (ok, v) = doctor(&c, 0);
    assert!(!ok);
    assert_status(&v, "subnet.env", "fail");
    assert!(check(&v, "subnet.env")["hint"]
        .as_str()
        .unwrap()
        .contains("twilld"));
}

#[test]
fn text_output_has_a_line_per_check() {
    let mut c = Cluster::new("x-txt");
    c.put_config(CONF);
    let i = c.add_node(&[]);
    c.nodes[i].wait_ready();
    let n = &c.nodes[i];
    let out = n.ns.sh(&format!(
        "{} doctor --iface=eth0 --etcd-endpoints=http://{ETCD_IP}:2379 --subnet-file={} --cni-conf-dir={} || true",
        twilld_bin().display(),
        n.subnet_env().display(),
        n.dir.join("net.d").display()
    ));
    assert!(
        out.lines()
            .any(|l| l.starts_with("PASS vxlan device: flannel.1 up")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("PASS config: etcd key /coreos.com/network/config")),
        "{out}"
    );
}
