use super::*;

fn node(v: Value) -> Node {
    serde_json::from_value(v).expect("node JSON")
}

fn peer(name: &str, cidr: &str, ip: &str, mac: &str) -> Node {
    node(json!({
        "metadata": {
            "name": name,
            "resourceVersion": "7",
            "annotations": {
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/backend-data": format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}"),
                "flannel.alpha.coreos.com/public-ip": ip,
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            }
        },
        "spec": { "podCIDR": cidr, "podCIDRs": [cidr] }
    }))
}

fn conf(text: &str) -> NetConf {
    NetConf::parse(text).unwrap().0
}

#[test]
fn published_annotations_match_flannels() {
    let keys = AnnotationKeys::default();
    let attrs = LeaseAttrs::vxlan("198.18.0.1".parse().unwrap(), 1, "0a:58:0a:f4:01:00");
    let got = keys.publish(&attrs);
    let set: BTreeMap<_, _> = got
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.as_str(), v.as_str())))
        .collect();
    assert_eq!(
        set,
        BTreeMap::from([
            (
                "flannel.alpha.coreos.com/backend-data",
                r#"{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}"#
            ),
            ("flannel.alpha.coreos.com/backend-type", "vxlan"),
            ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
            ("flannel.alpha.coreos.com/public-ip", "198.18.0.1"),
        ])
    );
    // The v6 keys are ours too: published as removals on a v4-only node.
    assert_eq!(got["flannel.alpha.coreos.com/public-ipv6"], None);
}

#[test]
fn host_gw_publishes_null_backend_data_as_flanneld() {
    let keys = AnnotationKeys::default();
    let mut attrs = LeaseAttrs::host_gw("198.18.0.1".parse().unwrap());
    let got = keys.publish(&attrs);
    let k = |n: &str| format!("flannel.alpha.coreos.com/{n}");
    assert_eq!(got[&k("backend-type")].as_deref(), Some("host-gw"));
    assert_eq!(got[&k("backend-data")].as_deref(), Some("null"));
    assert_eq!(got[&k("backend-v6-data")], None, "v4-only: removed");
    attrs.public_ipv6 = Some("2001:2::1".parse().unwrap());
    let got = keys.publish(&attrs);
    assert_eq!(got[&k("backend-v6-data")].as_deref(), Some("null"));

    // And a host-gw node reads back as a host-gw peer.
    let mut n = peer("b", "10.244.2.0/24", "198.18.0.2", "0a:00:00:00:00:02");
    let ann = n.metadata.annotations.as_mut().unwrap();
    ann.insert(k("backend-type"), "host-gw".into());
    ann.insert(k("backend-data"), "null".into());
    let lease = keys.lease(&n, false).expect("a peer");
    let a = lease.attrs.unwrap();
    assert_eq!(a.backend_type, "host-gw");
    assert!(!a.is_placeholder());
}

#[test]
fn patch_only_what_differs_and_nothing_when_equal() {
    let keys = AnnotationKeys::new("example.com/").unwrap();
    let attrs = LeaseAttrs::vxlan("198.18.0.1".parse().unwrap(), 1, "0a:58:0a:f4:01:00");
    let want = keys.publish(&attrs);
    let mut n = node(json!({"metadata": {"name": "a", "annotations": {
        "example.com/public-ip": "198.18.0.1",
        "example.com/public-ipv6": "fd00::1",
        "other/keep": "x",
    }}}));
    let p = keys.patch(&n, &want).expect("a patch");
    let ann = &p["metadata"]["annotations"];
    assert_eq!(ann["example.com/backend-type"], "vxlan");
    assert!(
        ann.get("example.com/public-ip").is_none(),
        "unchanged key rewritten: {p}"
    );
    assert_eq!(
        ann["example.com/public-ipv6"],
        Value::Null,
        "stale v6 key not removed"
    );
    assert!(ann.get("other/keep").is_none());

    let mut applied: BTreeMap<String, String> = BTreeMap::from([("other/keep".into(), "x".into())]);
    for (k, v) in &want {
        if let Some(v) = v {
            applied.insert(k.clone(), v.clone());
        }
    }
    n.metadata.annotations = Some(applied);
    assert_eq!(keys.patch(&n, &want), None);
}

#[test]
fn peers_need_the_manager_flag_a_public_ip_and_a_podcidr() {
    let keys = AnnotationKeys::default();
    let ok = peer("b", "10.244.2.0/24", "198.18.0.2", "aa:bb:cc:dd:ee:02");
    let l = keys.lease(&ok, false).expect("a peer");
    assert_eq!(l.key.to_string(), "10.244.2.0-24");
    let a = l.attrs.unwrap();
    assert_eq!(a.public_ip, "198.18.0.2".parse::<Ipv4Addr>().unwrap());
    assert_eq!(a.vxlan_data().unwrap().vtep_mac, "aa:bb:cc:dd:ee:02");
    assert_eq!(l.mod_revision, 7);

    let mut off = ok.clone();
    off.metadata.annotations.as_mut().unwrap().insert(
        "flannel.alpha.coreos.com/kube-subnet-manager".into(),
        "false".into(),
    );
    assert_eq!(keys.lease(&off, false), None);

    let mut bad_ip = ok.clone();
    bad_ip
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert("flannel.alpha.coreos.com/public-ip".into(), "nope".into());
    assert_eq!(keys.lease(&bad_ip, false), None);

    let mut no_cidr = ok.clone();
    no_cidr.spec = None;
    assert_eq!(keys.lease(&no_cidr, false), None);
}

#[test]
fn public_ip_overwrite_wins_for_peers() {
    let keys = AnnotationKeys::default();
    let mut n = peer("b", "10.244.2.0/24", "10.0.0.2", "aa:bb:cc:dd:ee:02");
    n.metadata.annotations.as_mut().unwrap().insert(
        "flannel.alpha.coreos.com/public-ip-overwrite".into(),
        "198.18.5.5".into(),
    );
    let a = keys.lease(&n, false).unwrap().attrs.unwrap();
    assert_eq!(a.public_ip, "198.18.5.5".parse::<Ipv4Addr>().unwrap());
    assert_eq!(
        keys.public_ip_overwrite(&n),
        Some("198.18.5.5".parse().unwrap())
    );
}

#[test]
fn own_subnet_waits_for_a_podcidr_and_refuses_one_outside_network() {
    let c = conf(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let none = node(json!({"metadata": {"name": "a"}, "spec": {}}));
    let err = own_subnet(&none, &c).unwrap_err();
    assert!(matches!(err, PodCidrError::NotAssigned { .. }));
    let msg = err.to_string();
    for want in [
        "node a",
        "--allocate-node-cidrs",
        "--cluster-cidr=10.244.0.0/16",
        "--pod-network-cidr=10.244.0.0/16",
    ] {
        assert!(msg.contains(want), "{msg:?} lacks {want:?}");
    }

    let outside = node(json!({"metadata": {"name": "a"}, "spec": {"podCIDR": "10.42.1.0/24"}}));
    let msg = own_subnet(&outside, &c).unwrap_err().to_string();
    assert!(
        msg.contains("10.42.1.0/24") && msg.contains("Network=10.244.0.0/16"),
        "{msg}"
    );

    // Wider than Network is not inside it either.
    let wide = node(json!({"metadata": {"name": "a"}, "spec": {"podCIDR": "10.0.0.0/8"}}));
    assert!(matches!(
        own_subnet(&wide, &c),
        Err(PodCidrError::Outside { .. })
    ));

    let ok = node(json!({"metadata": {"name": "a"}, "spec": {"podCIDR": "10.244.7.0/24"}}));
    assert_eq!(own_subnet(&ok, &c).unwrap().to_string(), "10.244.7.0-24");
}

#[test]
fn dual_stack_needs_both_families() {
    let c = conf(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    );
    let v4_only = node(json!({"metadata": {"name": "a"}, "spec": {"podCIDRs": ["10.244.7.0/24"]}}));
    assert!(matches!(
        own_subnet(&v4_only, &c),
        Err(PodCidrError::NotAssigned { family: "IPv6", .. })
    ));
    let both = node(json!({"metadata": {"name": "a"},
        "spec": {"podCIDRs": ["10.244.7.0/24", "fd00:10:244:7::/64"]}}));
    let key = own_subnet(&both, &c).unwrap();
    assert_eq!(key.v6.unwrap().to_string(), "fd00:10:244:7::/64");
}

#[test]
fn condition_is_recognised_once_set() {
    let patch = network_condition_patch("2026-11-23T00:00:00Z");
    let mut n = node(json!({"metadata": {"name": "a"}}));
    assert!(!network_condition_set(&n));
    n.status = serde_json::from_value(patch["status"].clone()).unwrap();
    assert!(network_condition_set(&n));
}

#[test]
fn node_set_turns_into_lease_events() {
    let mut t = NodeLeases::new(AnnotationKeys::default(), false);
    let b = peer("b", "10.244.2.0/24", "198.18.0.2", "aa:bb:cc:dd:ee:02");
    let c = peer("c", "10.244.3.0/24", "198.18.0.3", "aa:bb:cc:dd:ee:03");
    let plain = node(json!({"metadata": {"name": "d"}, "spec": {"podCIDR": "10.244.4.0/24"}}));
    let WatchEvent::Snapshot(all) = t.snapshot([&b, &c, &plain]) else {
        panic!("not a snapshot")
    };
    assert_eq!(all.len(), 2, "a node without our annotations is not a peer");

    // Annotations removed: the lease it stood for is deleted.
    let mut b_off = b.clone();
    b_off.metadata.annotations = None;
    let key_b = all[0].key;
    assert_eq!(t.apply(&b_off), vec![WatchEvent::Delete(key_b)]);
    assert_eq!(t.apply(&b_off), vec![], "nothing to delete twice");

    // A node that moves subnet: the old key goes, the new one comes.
    let c_moved = peer("c", "10.244.9.0/24", "198.18.0.3", "aa:bb:cc:dd:ee:03");
    let ev = t.apply(&c_moved);
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0], WatchEvent::Delete(all[1].key));
    assert!(matches!(&ev[1], WatchEvent::Put(l) if l.key.to_string() == "10.244.9.0-24"));

    assert_eq!(t.delete(&c_moved).len(), 1);
    assert_eq!(t.delete(&plain), vec![]);
}

/// flanneld's newAnnotations rules, case by case.
#[test]
fn annotation_prefixes_follow_flanneld() {
    let key = |p: &str| AnnotationKeys::new(p).map(|k| k.key("public-ip"));
    assert_eq!(
        key("flannel.alpha.coreos.com").unwrap(),
        "flannel.alpha.coreos.com/public-ip"
    );
    assert_eq!(key("example.com/").unwrap(), "example.com/public-ip");
    assert_eq!(key("example.com/net").unwrap(), "example.com/net-public-ip");
    assert_eq!(
        key("example.com/net-").unwrap(),
        "example.com/net-public-ip"
    );
    assert_eq!(
        key("a_b.example-1.com/x_y").unwrap(),
        "a_b.example-1.com/x_y-public-ip"
    );
    assert!(matches!(key("a/b/c"), Err(PrefixError::Slashes(_))));
    for bad in [
        "org",
        "example.com/Net",
        "example.com/a.b",
        "EXAMPLE.COM",
        "example.com/a b",
        "",
    ] {
        let e = key(bad).unwrap_err();
        assert!(matches!(e, PrefixError::Format(_)), "{bad}: {e}");
        assert!(e.to_string().contains("fqdn/[0-9a-z-_]*"), "{e}");
    }
    // flanneld searches its pattern rather than anchoring it; so do we.
    assert_eq!(key("My.example.com").unwrap(), "My.example.com/public-ip");
}
