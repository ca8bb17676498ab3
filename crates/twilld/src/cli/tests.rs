use super::*;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    let v = normalize_args(
        std::iter::once("twilld")
            .chain(args.iter().copied())
            .map(String::from),
    );
    Cli::try_parse_from(v)
}

#[test]
fn defaults_match_flanneld() {
    let c = parse(&[]).unwrap();
    assert_eq!(
        c.etcd_endpoints,
        ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
    );
    assert_eq!(c.etcd_prefix, "/coreos.com/network");
    assert_eq!(c.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
    assert_eq!(c.subnet_lease_renew_margin, 60);
    assert_eq!(c.subnet_lease_ttl, Duration::from_secs(86400));
    assert_eq!(c.iptables_resync, 5);
    assert!(c.iptables_forward_rules && !c.ip_masq && !c.kube_subnet_mgr);
    assert!(!c.vxlan_notrack && !c.ip_blackhole_route);
    assert_eq!(c.healthz_ip.to_string(), "0.0.0.0");
    assert_eq!(
        (c.metrics_ip.to_string().as_str(), c.metrics_port),
        ("127.0.0.1", 0)
    );
    assert_eq!(c.kube_annotation_prefix, "flannel.alpha.coreos.com");
    assert!(c.set_node_network_unavailable);
    assert_eq!(c.config_file(), None);
    let k = parse(&["--kube-subnet-mgr"]).unwrap();
    assert_eq!(k.config_file(), Some(PathBuf::from(KUBE_NET_CONF)));
}

#[test]
fn subcommands_see_the_flags_the_daemon_runs_with() {
    use crate::options::StoreOptions;
    let n = parse(&[
        "--etcd-endpoints=http://198.18.0.1:2379",
        "--vxlan-notrack",
        "--public-ip=198.18.0.7",
    ])
    .unwrap()
    .node_options();
    let StoreOptions::Etcd(etcd) = &n.store else {
        panic!("etcd expected, got {:?}", n.store)
    };
    assert_eq!(etcd.endpoints, ["http://198.18.0.1:2379"]);
    assert!(n.rules.notrack && n.rules.forward && !n.rules.ip_masq);
    assert_eq!(n.public_ip, Some("198.18.0.7".parse().unwrap()));
    assert_eq!(n.config_file, None);
    let k = parse(&[
        "--kube-subnet-mgr",
        "--kube-annotation-prefix=example.com",
        "--ip-blackhole-route",
    ])
    .unwrap()
    .node_options();
    let StoreOptions::Kube(kube) = &k.store else {
        panic!("kube expected, got {:?}", k.store)
    };
    assert_eq!(kube.annotation_prefix, "example.com");
    for bad in ["a/b/c", "org", "example.com/Net"] {
        let e = parse(&[
            "--kube-subnet-mgr",
            &format!("--kube-annotation-prefix={bad}"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--kube-annotation-prefix") && e.contains(bad),
            "{e}"
        );
    }
    assert_eq!(k.store.name(), "the Kubernetes API");
    assert!(k.ip_blackhole_route);
    assert_eq!(k.config_file, Some(PathBuf::from(KUBE_NET_CONF)));
}

#[test]
fn a_repeated_flag_takes_the_last_value_as_flanneld() {
    let c = parse(&[
        "--iptables-resync",
        "2",
        "--ip-masq",
        "--iptables-resync=60",
        "--ip-masq",
    ])
    .unwrap();
    assert_eq!(c.iptables_resync, 60);
    assert!(c.ip_masq);
    // Repeatable flags still collect every value.
    let c = parse(&["--iface=eth0", "--iface=eth1"]).unwrap();
    assert_eq!(c.iface, ["eth0", "eth1"]);
}

#[test]
fn no_masq_cidrs_repeat_and_split_on_commas() {
    let c = parse(&[
        "--no-masq-cidr=172.20.0.0/16,192.0.2.0/24",
        "--no-masq-cidr",
        "fd00:20::/56",
    ])
    .unwrap();
    let got: Vec<String> = c.no_masq_cidr.iter().map(|n| n.to_string()).collect();
    assert_eq!(got, ["172.20.0.0/16", "192.0.2.0/24", "fd00:20::/56"]);
    let e = parse(&["--no-masq-cidr=nonsense"]).unwrap_err().to_string();
    assert!(
        e.contains("--no-masq-cidr") && e.contains("nonsense"),
        "{e}"
    );
}

#[test]
fn go_style_flags() {
    let c = parse(&[
        "-etcd-endpoints=http://198.18.0.1:2379",
        "--ip-masq",
        "--iptables-forward-rules=false",
        "--vxlan-notrack",
        "-ip-blackhole-route",
        "-iface=eth0",
        "--iface",
        "198.18.0.2",
    ])
    .unwrap();
    assert_eq!(c.etcd_endpoints, ["http://198.18.0.1:2379"]);
    assert!(c.ip_masq && !c.iptables_forward_rules && c.vxlan_notrack);
    assert!(c.ip_blackhole_route);
    assert_eq!(c.iface, ["eth0", "198.18.0.2"]);
    assert!(parse(&["--ip-masq=maybe"]).is_err());
}

#[test]
fn klog_flags_of_flanneld_command_lines() {
    assert_eq!(parse(&[]).unwrap().klog.filter(), "info");
    for v in [&["-v=2"][..], &["-v", "2"], &["--v=2"]] {
        assert_eq!(parse(v).unwrap().klog.v, Some(2), "{v:?}");
    }
    assert_eq!(parse(&["-v=1"]).unwrap().klog.filter(), "info,twill=debug");
    assert_eq!(parse(&["-v=10"]).unwrap().klog.filter(), "info,twill=trace");
    let c = parse(&[
        "-v=0",
        "-logtostderr",
        "-vmodule=subnet=4",
        "-log_backtrace_at=main.go:1",
        "--ip-masq",
    ])
    .unwrap();
    assert!(c.ip_masq);
    assert_eq!(c.klog.filter(), "info");
    assert_eq!(c.klog.ignored(), ["--vmodule", "--log_backtrace_at"]);
    let e = parse(&["-v=loud"]).unwrap_err().to_string();
    assert!(e.contains("-v") && e.contains("loud"), "{e}");
}

#[test]
fn bad_values_are_rejected_with_the_flag_name() {
    for (args, flag) in [
        (
            &["--subnet-lease-renew-margin=0"][..],
            "--subnet-lease-renew-margin",
        ),
        (
            &["--subnet-lease-renew-margin=1440"][..],
            "--subnet-lease-renew-margin",
        ),
        (&["--public-ip=nope"][..], "--public-ip"),
        (&["--subnet-lease-ttl=soon"][..], "--subnet-lease-ttl"),
        (&["--iptables-resync=0"][..], "--iptables-resync"),
        (&["--peer-probe-timeout=0"][..], "--peer-probe-timeout"),
        (&["--peer-probe-rate=0"][..], "--peer-probe-rate"),
    ] {
        let e = parse(args).unwrap_err().to_string();
        assert!(e.contains(flag), "{args:?}: {e}");
    }
    let probes = |args: &[&str]| parse(args).unwrap().daemon_options().probes.per_second;
    assert_eq!(probes(&[]), 100);
    assert_eq!(probes(&["--peer-probe-rate=500"]), 500);
    assert_eq!(
        parse(&["--subnet-lease-ttl=90"]).unwrap().subnet_lease_ttl,
        Duration::from_secs(90)
    );
    assert_eq!(
        parse(&["--subnet-lease-ttl=2m"]).unwrap().subnet_lease_ttl,
        Duration::from_secs(120)
    );
}
