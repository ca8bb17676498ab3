//! twilld as a user runs it: flags, config errors, waiting for config, subnet.env, lease
//! reuse across restarts, exhaustion. Each test builds its own namespaces and etcd.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use twill_e2e::{Cluster, PREFIX};
use twill_testutil::wait_until;

const CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

#[test]
fn subnet_env_and_lease_match_flannel_format() {
    let mut c = Cluster::new("d-env");
    c.put_config(CONF);
    let i = c.add_node(&["--ip-masq"]);
    c.nodes[i].wait_ready();
    let env = std::fs::read_to_string(c.nodes[i].subnet_env()).unwrap();
    let lease = c.nodes[i].lease();
    let first = lease.replace(".0/24", ".1/24");
    assert_eq!(
        env,
        format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={first}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    );
    let mode = std::fs::metadata(c.nodes[i].subnet_env())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644);
    let key = format!("{PREFIX}/subnets/{}", lease.replace('/', "-"));
    let value = c.etcd.ctl(&["get", "--print-value-only", &key]);
    let mac = c.nodes[i].vtep_mac();
    assert_eq!(
        value.trim(),
        format!(
            r#"{{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        )
    );
}

#[test]
fn missing_config_waits_with_a_clear_message_then_proceeds() {
    let mut c = Cluster::new("d-wait");
    let i = c.add_node(&[]);
    wait_until(15, "the missing-config message", || {
        let log = c.nodes[i].log();
        log.contains(&format!("{PREFIX}/config")) && log.contains("etcdctl put")
    });
    assert!(!c.nodes[i].subnet_env().exists());
    assert!(c.nodes[i].is_running());
    c.put_config(CONF);
    c.nodes[i].wait_ready();
}

#[test]
fn config_errors_exit_non_zero_naming_field_and_value_and_leave_nothing() {
    let mut c = Cluster::new("d-bad");
    c.put_config(CONF);
    let cases = [
        (r#"{"Network":"10.244.0.0/33"}"#, "Network=10.244.0.0/33"),
        (
            r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#,
            "SubnetLen=31",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.3.0"}"#,
            "SubnetMin=10.244.9.0",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"bogus"}}"#,
            "Backend.Type=bogus",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"VNI":16777216}}"#,
            "Backend.VNI=16777216",
        ),
        ("{not json", "invalid JSON"),
    ];
    let i = c.add_node_stopped(&[]);
    for (n, (json, want)) in cases.iter().enumerate() {
        let path = c.dir.path().join(format!("bad{n}.json"));
        std::fs::write(&path, json).unwrap();
        let node = &mut c.nodes[i];
        node.args = vec![format!("--net-config-path={}", path.display())];
        node.start();
        let code = node.wait_exit(20);
        assert_ne!(code, 0, "{json}");
        let log = node.log();
        assert!(log.contains(want), "{json}: expected {want:?} in:\n{log}");
    }
    // Nothing half-done: no device, no lease, no subnet.env.
    assert!(!c.nodes[i].ns.try_sh("ip link show flannel.1"));
    assert!(c.leases().is_empty(), "{:?}", c.leases());
    assert!(!c.nodes[i].subnet_env().exists());
    // A bad etcd config is every node's: reported the same way, naming the field, and
    // read again every second (as flanneld does) until it is fixed; then the node starts.
    c.put_config(r#"{"Network":"10.244.0.0/16","SubnetLen":"24"}"#);
    let node = &mut c.nodes[i];
    node.args.clear();
    node.start();
    wait_until(20, "the bad etcd config reported", || {
        node.log().contains("SubnetLen=\"24\"")
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(node.is_running(), "waits for a fix:\n{}", node.log());
    assert!(!node.subnet_env().exists());
    assert_eq!(
        node.log().matches("SubnetLen=\"24\"").count(),
        1,
        "said once, not every second:\n{}",
        node.log()
    );
    assert!(c.leases().is_empty());
    c.put_config(CONF);
    c.nodes[i].wait_ready();
}

#[test]
fn restart_reuses_subnet_and_mac() {
    let mut c = Cluster::new("d-rst");
    c.put_config(CONF);
    let i = c.add_node(&[]);
    c.nodes[i].wait_ready();
    let (lease, mac) = (c.nodes[i].lease(), c.nodes[i].vtep_mac());
    assert_eq!(
        c.nodes[i].stop(libc::SIGTERM),
        Some(0),
        "SIGTERM is a clean stop"
    );
    // ...that leaves the data plane, the lease and subnet.env in place for the pods.
    let ns = &c.nodes[i].ns;
    assert!(ns.try_sh("ip link show flannel.1") && ns.try_sh("iptables -S FLANNEL-FWD"));
    assert!(c.nodes[i].subnet_env().exists());
    assert_eq!(c.leases().len(), 1);
    c.nodes[i].start();
    wait_until(20, "second start ready", || {
        c.nodes[i].log().matches("ready").count() >= 2
    });
    assert_eq!(c.nodes[i].lease(), lease);
    assert_eq!(c.nodes[i].vtep_mac(), mac);
    assert_eq!(c.leases().len(), 1);
    // Device gone (reboot): the MAC advertised in the lease is reused.
    c.nodes[i].stop(libc::SIGKILL);
    c.nodes[i].ns.sh("ip link del flannel.1");
    c.nodes[i].start();
    wait_until(20, "third start ready", || {
        c.nodes[i].log().matches("ready").count() >= 3
    });
    assert_eq!(c.nodes[i].lease(), lease);
    assert_eq!(c.nodes[i].vtep_mac(), mac);
}

#[test]
fn flags_come_from_flanneld_env_vars() {
    let mut c = Cluster::new("d-envv");
    c.put_config(CONF);
    let i = c.add_node_stopped(&[]);
    c.nodes[i].env = vec![
        ("FLANNELD_IP_MASQ".into(), "true".into()),
        ("FLANNELD_PUBLIC_IP".into(), "198.18.0.77".into()),
    ];
    c.nodes[i].start();
    c.nodes[i].wait_ready();
    let env = std::fs::read_to_string(c.nodes[i].subnet_env()).unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=true"), "{env}");
    let all = c.lease_values();
    assert!(all.contains(r#""PublicIP":"198.18.0.77""#), "{all}");
}

#[test]
fn iface_can_reach_picks_the_interface_of_the_route_to_it() {
    let mut c = Cluster::new("d-reach");
    c.put_config(CONF);
    let i = c.add_node_stopped(&["--iface-can-reach=198.18.0.100"]);
    let ns = c.nodes[i].ns.name.clone();
    let twilld = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(twill_e2e::twilld_bin())
            .arg(format!(
                "--etcd-endpoints=http://{}:2379",
                twill_e2e::ETCD_IP
            ))
            .arg(format!(
                "--subnet-file={}",
                c.nodes[i].subnet_env().display()
            ))
            .args(args)
            .output()
            .unwrap()
    };
    // No route to it: a clear error before anything is built.
    let out = twilld(&["--iface-can-reach=198.19.200.1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--iface-can-reach 198.19.200.1: no route to that address"),
        "{err}"
    );
    assert!(!c.nodes[i].ns.try_sh("ip link show flannel.1"));

    // A second link that holds the default route: what twilld would take without the flag.
    // Nothing is sent on it.
    c.nodes[i].ns.sh(
        "ip link add eth1 type veth peer name eth1p && ip link set eth1 up && ip link set eth1p up \
         && ip addr add 198.19.9.1/24 dev eth1 && ip route add default via 198.19.9.2 dev eth1",
    );
    let underlay = |reach: &str| {
        let out = twilld(&[
            "doctor",
            "--output=json",
            &format!("--iface-can-reach={reach}"),
        ]);
        let u = twill_e2e::doctor_check(&String::from_utf8_lossy(&out.stdout), "underlay");
        u["detail"].as_str().unwrap().to_string()
    };
    assert!(underlay("198.19.200.1").starts_with("eth1 198.19.9.1 "));
    assert!(underlay("198.18.0.100").starts_with("eth0 198.18.0.1 "));

    c.nodes[i].start();
    c.nodes[i].wait_ready();
    let all = c.lease_values();
    assert!(all.contains(r#""PublicIP":"198.18.0.1""#), "{all}");
    let link = c.nodes[i].ns.sh("ip -d link show flannel.1");
    assert!(link.contains("local 198.18.0.1 dev eth0"), "{link}");
}

/// flanneld's selection order, read through doctor's underlay check and a real start:
/// --public-ip picks the interface holding it; an --iface that matches nothing falls
/// through to --iface-regex; --iface-can-reach takes an IPv6 address.
#[test]
fn interface_selection_as_flanneld() {
    let mut c = Cluster::new("d-sel");
    c.put_config(CONF);
    let i = c.add_node_stopped(&[]);
    let ns = c.nodes[i].ns.name.clone();
    // A second link (nothing is sent on it) with an IPv4 address and a route to an IPv6
    // prefix (no IPv6 address: test underlays carry 198.18.0.0/15 only); the default route
    // stays on eth0.
    c.nodes[i].ns.sh(
        "ip link add eth1 type veth peer name eth1p && ip link set eth1 up && ip link set eth1p up \
         && ip addr add 198.19.9.1/24 dev eth1 && ip -6 route add 2001:2:9::/64 dev eth1 \
         && ip route replace default via 198.18.0.100 dev eth0",
    );
    let underlay = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(twill_e2e::twilld_bin())
            .arg(format!(
                "--etcd-endpoints=http://{}:2379",
                twill_e2e::ETCD_IP
            ))
            .arg("doctor")
            .arg("--output=json")
            .args(args)
            .output()
            .unwrap();
        let u = twill_e2e::doctor_check(&String::from_utf8_lossy(&out.stdout), "underlay");
        (
            u["status"].as_str().unwrap().to_string(),
            u["detail"].as_str().unwrap().to_string(),
        )
    };
    assert!(underlay(&[]).1.starts_with("eth0 198.18.0.1 "));
    assert!(underlay(&["--public-ip=198.19.9.1"])
        .1
        .starts_with("eth1 198.19.9.1 "));
    assert!(underlay(&["--iface=wlan9", "--iface-regex=^eth1$"])
        .1
        .starts_with("eth1 198.19.9.1 "));
    assert!(underlay(&["--iface-can-reach=2001:2:9::7"])
        .1
        .starts_with("eth1 198.19.9.1 "));
    let (status, detail) = underlay(&["--iface=wlan9", "--iface-regex=^zz"]);
    assert_eq!(status, "fail");
    assert!(
        detail.contains("--iface wlan9") && detail.contains("--iface-regex ^zz"),
        "{detail}"
    );

    c.nodes[i].args.push("--public-ip=198.19.9.1".into());
    c.nodes[i].start();
    c.nodes[i].wait_ready();
    let link = c.nodes[i].ns.sh("ip -d link show flannel.1");
    assert!(link.contains("local 198.19.9.1 dev eth1"), "{link}");
    assert!(c.lease_values().contains(r#""PublicIP":"198.19.9.1""#));
}

#[test]
fn json_logs_on_request() {
    let mut c = Cluster::new("d-json");
    c.put_config(CONF);
    let i = c.add_node(&["--log-format=json"]);
    c.nodes[i].wait_ready();
    let log = c.nodes[i].log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(
            v.get("level").is_some() && v.get("message").is_some(),
            "{l}"
        );
    }
}

#[test]
fn exhausted_range_is_a_clear_error() {
    let mut c = Cluster::new("d-full");
    c.put_config(r#"{"Network":"10.9.0.0/22"}"#);
    for (k, ip) in [
        ("10.9.1.0-24", "198.18.1.1"),
        ("10.9.2.0-24", "198.18.1.2"),
        ("10.9.3.0-24", "198.18.1.3"),
    ] {
        c.etcd.ctl(&[
            "put",
            &format!("{PREFIX}/subnets/{k}"),
            &format!(r#"{{"PublicIP":"{ip}"}}"#),
        ]);
    }
    let i = c.add_node(&[]);
    assert_ne!(c.nodes[i].wait_exit(30), 0);
    let log = c.nodes[i].log();
    for want in [
        "10.9.0.0/22",
        "SubnetMin 10.9.1.0",
        "SubnetMax 10.9.3.0",
        "3 leases",
    ] {
        assert!(log.contains(want), "{want:?} missing from:\n{log}");
    }
    assert_eq!(c.leases().len(), 3, "no lease was taken over");
    assert!(
        !c.nodes[i].ns.try_sh("ip link show flannel.1"),
        "the device of a failed start is removed"
    );
}

#[test]
fn lease_deleted_under_us_is_reacquired_with_the_same_subnet() {
    let mut c = Cluster::new("d-lost");
    c.put_config(CONF);
    let i = c.add_node(&[]);
    c.nodes[i].wait_ready();
    let lease = c.nodes[i].lease();
    let key = format!("{PREFIX}/subnets/{}", lease.replace('/', "-"));
    c.etcd.ctl(&["del", &key]);
    wait_until(20, "lease re-created", || c.leases() == vec![key.clone()]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        c.nodes[i].is_running(),
        "twilld must not exit when its lease vanishes"
    );
    assert_eq!(c.nodes[i].lease(), lease);
}

/// As flanneld: an empty FLANNELD_* variable is no value at all (the default stands), and
/// a bad one is reported naming the variable, with exit 2.
#[test]
fn empty_flanneld_env_vars_are_ignored_and_bad_ones_named() {
    let mut c = Cluster::new("d-envempty");
    c.put_config(CONF);
    let i = c.add_node_stopped(&[]);
    c.nodes[i].env = [
        "FLANNELD_IP_MASQ",
        "FLANNELD_PUBLIC_IP",
        "FLANNELD_PUBLIC_IPV6",
        "FLANNELD_IFACE",
        "FLANNELD_HEALTHZ_PORT",
        "FLANNELD_SUBNET_LEASE_RENEW_MARGIN",
        "FLANNELD_KUBE_ANNOTATION_PREFIX",
        "FLANNELD_IPTABLES_FORWARD_RULES",
        "FLANNELD_NET_CONFIG_PATH",
    ]
    .iter()
    .map(|k| (k.to_string(), String::new()))
    .collect();
    c.nodes[i].start();
    c.nodes[i].wait_ready();
    let env = std::fs::read_to_string(c.nodes[i].subnet_env()).unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=false"), "{env}");
    assert!(
        c.lease_values()
            .contains(&format!(r#""PublicIP":"{}""#, c.nodes[i].ip)),
        "the interface's address, not an empty override"
    );
    assert!(
        c.nodes[i]
            .ns
            .sh("iptables -S FORWARD")
            .contains("FLANNEL-FWD"),
        "--iptables-forward-rules kept its default"
    );

    let out = std::process::Command::new(twill_e2e::twilld_bin())
        .args(["install-cni", "--plugin=/nonexistent"])
        .env("FLANNELD_HEALTHZ_PORT", "eighty")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"invalid value "eighty" for FLANNELD_HEALTHZ_PORT"#),
        "{err}"
    );
}

/// `--public-ipv6` (FLANNELD_PUBLIC_IPV6) is the lease's PublicIPv6 when IPv6 is on.
#[test]
fn public_ipv6_is_published_with_ipv6_enabled() {
    let mut c = Cluster::new_dual("d-pub6");
    c.put_config(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#,
    );
    let i = c.add_node_stopped(&[]);
    c.nodes[i].env = vec![("FLANNELD_PUBLIC_IPV6".into(), "2001:2::77".into())];
    c.nodes[i].start();
    c.nodes[i].wait_ready();
    let all = c.lease_values();
    assert!(all.contains(r#""PublicIPv6":"2001:2::77""#), "{all}");
    let j = c.add_node(&["--public-ipv6=2001:2::88"]);
    c.nodes[j].wait_ready();
    assert!(c.lease_values().contains(r#""PublicIPv6":"2001:2::88""#));
    // Without the flag: the underlay interface's global IPv6 address.
    let k = c.add_node(&[]);
    c.nodes[k].wait_ready();
    assert!(c.lease_values().contains(r#""PublicIPv6":"2001:2::3""#));
}

/// Dual stack: flannel's IPv6 MASQUERADE/FORWARD rules (ip6tables, then the `ip6
/// flannel-ipv6` table in nftables mode), with the IPv6 NonMasqueradeCIDRs, kept in place
/// like the IPv4 ones and removed by cleanup.
#[test]
fn dual_stack_keeps_flannels_ipv6_rules() {
    let mut c = Cluster::new_dual("d-rules6");
    let conf = |nft: bool| {
        format!(
            r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","EnableNFTables":{nft},"NonMasqueradeCIDRs":["fd00:20::/56","172.20.0.0/16"]}}"#
        )
    };
    c.put_config(&conf(false));
    let i = c.add_node(&["--ip-masq"]);
    c.nodes[i].wait_ready();
    let env = std::fs::read_to_string(c.nodes[i].subnet_env()).unwrap();
    let own6 = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
        .unwrap()
        .replace("::1/64", "::/64");
    let ns = &c.nodes[i].ns;
    let cm = r#"-m comment --comment "flanneld masq""#;
    let nat6 = ns.sh("ip6tables -t nat -S");
    for want in [
        format!("-A POSTROUTING {cm} -j FLANNEL-POSTRTG"),
        format!("-A FLANNEL-POSTRTG -s {own6} -d fd00:10:244::/56 {cm} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s fd00:10:244::/56 -d fd00:20::/56 {cm} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8 {cm} -j MASQUERADE --random-fully"),
    ] {
        assert!(nat6.contains(&want), "{want}\n{nat6}");
    }
    assert!(
        !nat6.contains("172.20.0.0/16"),
        "IPv4 exemptions stay in iptables: {nat6}"
    );
    assert!(ns.sh("iptables -t nat -S").contains("-d 172.20.0.0/16"));
    let fwd6 = |ns: &twill_testutil::Netns| ns.sh("ip6tables -S FLANNEL-FWD 2>/dev/null || true");
    assert!(
        fwd6(ns).contains("-A FLANNEL-FWD -s fd00:10:244::/56"),
        "{}",
        fwd6(ns)
    );
    // Flushed: back (the nftables monitor sees ip6tables-nft too).
    ns.sh("ip6tables -F FLANNEL-FWD");
    wait_until(10, "the IPv6 FORWARD chain repaired", || {
        fwd6(&c.nodes[i].ns).contains("-A FLANNEL-FWD -d fd00:10:244::/56")
    });

    // nftables mode: the ip6 table instead.
    c.nodes[i].stop(libc::SIGTERM);
    c.put_config(&conf(true));
    c.nodes[i].start();
    wait_until(10, "the ip6 flannel-ipv6 table", || {
        c.nodes[i].ns.try_sh("nft list table ip6 flannel-ipv6 | grep -q 'ip6 saddr fd00:10:244::/56 ip6 daddr fd00:20::/56 return'")
    });
    assert!(
        !fwd6(&c.nodes[i].ns).contains("FLANNEL-FWD"),
        "the ip6tables chains gave way"
    );

    // cleanup takes both families away.
    c.nodes[i].stop(libc::SIGTERM);
    c.put_config(&conf(false));
    c.nodes[i].start();
    wait_until(10, "ip6tables again", || {
        fwd6(&c.nodes[i].ns).contains("ACCEPT")
    });
    c.nodes[i].stop(libc::SIGTERM);
    let (ok, out) = c.nodes[i].twilld(&[
        "cleanup",
        "--yes",
        &format!("--subnet-file={}", c.nodes[i].subnet_env().display()),
        &format!("--etcd-endpoints=http://{}:2379", twill_e2e::ETCD_IP),
        &format!("--cni-conf-dir={}", c.nodes[i].dir.join("net.d").display()),
        &format!("--cni-bin-dir={}", c.nodes[i].dir.join("bin").display()),
        &format!(
            "--cni-data-dir={}",
            c.nodes[i].dir.join("cni-state").display()
        ),
    ]);
    assert!(ok, "{out}");
    let ns = &c.nodes[i].ns;
    assert!(!ns.sh("ip6tables -t nat -S").contains("FLANNEL"), "{out}");
    assert!(!ns.sh("ip6tables -S").contains("FLANNEL"), "{out}");
}

#[test]
fn dual_stack_config_leases_both_families_and_writes_ipv6_lines() {
    let mut c = Cluster::new_dual("d-dual");
    c.put_config(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#,
    );
    let i = c.add_node(&[]);
    c.nodes[i].wait_ready();
    let env = std::fs::read_to_string(c.nodes[i].subnet_env()).unwrap();
    assert!(
        env.contains("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n"),
        "{env}"
    );
    let v6 = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
        .expect(&env);
    assert!(
        v6.starts_with("fd00:10:244:") && v6.ends_with("::1/64"),
        "{v6}"
    );
    let keys = c.leases();
    assert_eq!(keys.len(), 1);
    assert!(
        keys[0].contains("-24&fd00:10:244:") && keys[0].ends_with("::-64"),
        "{keys:?}"
    );
}

#[test]
fn sighup_reloads_the_config_file_and_refuses_a_bad_one() {
    let mut c = Cluster::new("d-hup");
    let path = c.dir.path().join("net-conf.json");
    std::fs::write(&path, CONF).unwrap();
    let arg = format!("--net-config-path={}", path.display());
    let i = c.add_node(&[&arg]);
    c.nodes[i].wait_ready();
    let lease = c.nodes[i].lease();
    let hup = |c: &Cluster| c.nodes[i].signal(libc::SIGHUP);

    // A bad file is refused and the node keeps running as it was.
    std::fs::write(&path, r#"{"Network":"10.244.0.0/16","Backend":{"MTU":12}}"#).unwrap();
    hup(&c);
    wait_until(10, "the refusal logged", || {
        c.nodes[i].log().contains("config reload refused")
    });
    assert!(
        c.nodes[i].log().contains("Backend.MTU=12"),
        "{}",
        c.nodes[i].log()
    );
    assert!(c.nodes[i].is_running());

    // A good one is applied: MTU on the device and in subnet.env, same lease.
    std::fs::write(
        &path,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":1400}}"#,
    )
    .unwrap();
    hup(&c);
    wait_until(10, "the new MTU applied", || {
        c.nodes[i]
            .ns
            .sh("ip link show flannel.1")
            .contains("mtu 1350")
            && std::fs::read_to_string(c.nodes[i].subnet_env())
                .unwrap()
                .contains("FLANNEL_MTU=1350")
    });
    assert_eq!(c.nodes[i].lease(), lease);
    assert!(c.nodes[i].is_running());
}
