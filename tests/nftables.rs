//! net-conf.json `EnableNFTables: true`: flannel's `ip flannel-ipv4` table instead of the
//! iptables chains, masquerading pod traffic that leaves the pod network, repaired when
//! damaged, and each mode removing what the other left when a node switches.

use std::time::Duration;

use twill_e2e::{doctor_check, Cluster, ETCD_IP};
use twill_testutil::wait_until;

const IPTABLES: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const NFTABLES: &str =
    r#"{"Network":"10.244.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;

fn nft_table(c: &Cluster, i: usize) -> Option<String> {
    let ns = &c.nodes[i].ns;
    ns.try_sh("nft list table ip flannel-ipv4")
        .then(|| ns.sh("nft list table ip flannel-ipv4"))
}

fn iptables_chains(c: &Cluster, i: usize) -> String {
    c.nodes[i]
        .ns
        .sh("iptables-save -t nat; iptables-save -t filter")
}

/// The source address the etcd namespace (outside the pod network) sees for a ping from
/// node `i`'s pod: the node's underlay address when masqueraded.
fn source_seen_outside(c: &Cluster, i: usize) -> String {
    let capture = std::thread::spawn({
        let ns = c.etcd_netns().to_string();
        move || {
            twill_testutil::sh(&format!(
                "timeout 10 ip netns exec {ns} tcpdump -lni any -c 1 'icmp[icmptype] = icmp-echo and dst host {ETCD_IP}' 2>/dev/null"
            ))
        }
    });
    std::thread::sleep(Duration::from_millis(800));
    c.pod(i).ns.sh(&format!(
        "ping -c 3 -i 0.2 -W 1 {ETCD_IP} >/dev/null || true"
    ));
    capture.join().unwrap()
}

#[test]
fn nftables_mode_masquerades_repairs_and_switches_modes_cleanly() {
    let args = ["--ip-masq", "--iptables-resync=1"];
    let mut c = Cluster::with_pods("nft", IPTABLES, 2, &args);
    assert!(iptables_chains(&c, 0)
        .contains("-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG"));
    assert!(nft_table(&c, 0).is_none());

    // Node 1 restarts in nftables mode: flannel's table, the iptables chains gone.
    c.put_config(NFTABLES);
    c.nodes[0].stop(libc::SIGTERM);
    // subnet.env stays from the first run: readiness is the second "ready" in the log.
    c.nodes[0].start();
    let restarted = |c: &Cluster| c.nodes[0].log().matches(" ready ").count() >= 2;
    wait_until(20, "node 1 ready again", || restarted(&c));
    let lease = c.nodes[0].lease();
    let table = nft_table(&c, 0)
        .unwrap_or_else(|| panic!("no table ip flannel-ipv4:\n{}", c.nodes[0].log()));
    for want in [
        "chain postrtg",
        "type nat hook postrouting priority srcnat; policy accept;",
        &format!("ip saddr {lease} ip daddr 10.244.0.0/16 return"),
        &format!("ip saddr != 10.244.0.0/16 ip daddr {lease} return"),
        "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "chain forward",
        "ip saddr 10.244.0.0/16 accept",
    ] {
        assert!(table.contains(want), "{want:?} missing:\n{table}");
    }
    let ipt = iptables_chains(&c, 0);
    assert!(
        !ipt.contains("FLANNEL-POSTRTG") && !ipt.contains("FLANNEL-FWD"),
        "{ipt}"
    );
    c.assert_full_mesh();
    let seen = source_seen_outside(&c, 0);
    assert!(
        seen.contains(&format!("{} > {ETCD_IP}", c.nodes[0].ip)),
        "{seen}"
    );

    // doctor probes the tool the config asks for.
    let etcd = format!("--etcd-endpoints=http://{ETCD_IP}:2379");
    let env = format!("--subnet-file={}", c.nodes[0].subnet_env().display());
    let (_, out) = c.nodes[0].twilld(&["doctor", "--output=json", "--iface=eth0", &etcd, &env]);
    let kernel = doctor_check(&out, "kernel");
    assert_eq!(kernel["status"], "pass", "{kernel}");
    assert!(
        kernel["detail"].as_str().unwrap().contains("nftables work"),
        "{kernel}"
    );
    // ... and compares the table with the one twilld writes.
    let rules = doctor_check(&out, "rules");
    assert_eq!(rules["status"], "pass", "{rules}");
    assert_eq!(
        rules["detail"],
        "nftables: masquerade, forward rules in place"
    );

    // A flushed chain is rewritten within a resync.
    c.nodes[0].ns.sh("nft flush chain ip flannel-ipv4 postrtg");
    wait_until(10, "postrtg repaired", || {
        nft_table(&c, 0).is_some_and(|t| t.contains("masquerade"))
    });
    // So is a deleted table.
    c.nodes[0].ns.sh("nft delete table ip flannel-ipv4");
    wait_until(10, "table recreated", || {
        nft_table(&c, 0).is_some_and(|t| t.contains("masquerade"))
    });
    assert!(c.nodes[0].log().contains("wrote nft table ip flannel-ipv4"));

    // Back to iptables: the table goes, the chains come back, pods still masquerade.
    c.put_config(IPTABLES);
    c.nodes[0].stop(libc::SIGTERM);
    c.nodes[0].start();
    wait_until(20, "node 1 ready a third time", || {
        c.nodes[0].log().matches(" ready ").count() >= 3
    });
    assert!(nft_table(&c, 0).is_none(), "{:?}", nft_table(&c, 0));
    wait_until(10, "iptables chains back", || {
        iptables_chains(&c, 0).contains("-j FLANNEL-POSTRTG")
    });
    c.assert_full_mesh();
    let seen = source_seen_outside(&c, 0);
    assert!(
        seen.contains(&format!("{} > {ETCD_IP}", c.nodes[0].ip)),
        "{seen}"
    );
}
