//! A real container runtime as the CNI client: Debian's containerd + `ctr run --rm --cni`
//! inside a node namespace, with our conflist in its /etc/cni/net.d and our plugin beside
//! Debian's in its plugin dir. /etc and the plugin dir are overlaid inside a private mount
//! namespace, so the host's files are never touched; containerd's root, state and socket
//! live in a temp dir. Everything in the namespace is killed when the test ends.

use std::process::Command;

use twill_e2e::twill_plugin_bin;
use twill_testutil::Netns;

#[test]
fn ctr_run_with_cni_gets_an_address_in_our_subnet_and_rm_releases_it() {
    for bin in [
        "/usr/bin/containerd",
        "/usr/bin/ctr",
        "/usr/sbin/runc",
        "/bin/busybox",
    ] {
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} missing: scripts/setup.sh installs containerd, runc and busybox-static"
        );
    }
    let node = Netns::new("k-ctr");
    let t = tempfile::tempdir().unwrap();
    let d = t.path().display().to_string();
    let script = format!(
        r#"set -eu
T={d}
mkdir -p $T/root $T/state $T/rootfs/bin $T/netd $T/plugins $T/etc-up $T/etc-work
cp -a /usr/lib/cni/. $T/plugins/ && cp {plugin} $T/plugins/twill
printf 'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n' > $T/subnet.env
cat > $T/netd/10-twill.conflist <<EOC
{{"name":"cbr0","cniVersion":"1.0.0","plugins":[{{"type":"twill","subnetFile":"$T/subnet.env","dataDir":"$T/cni-state","ipam":{{"dataDir":"$T/ipam"}},"delegate":{{"hairpinMode":true,"isDefaultGateway":true}}}},{{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}
EOC
cp /bin/busybox $T/rootfs/bin/ && for c in sh ip ping; do ln -s busybox $T/rootfs/bin/$c; done
cat > $T/config.toml <<EOC
version = 2
root = "$T/root"
state = "$T/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$T/containerd.sock"
[ttrpc]
  address = "$T/containerd.sock.ttrpc"
EOC
nsenter --net=/run/netns/{ns} unshare -m sh -c "
  set -e
  mount --make-rprivate /
  mount -t overlay overlay -o lowerdir=/etc,upperdir=$T/etc-up,workdir=$T/etc-work /etc
  mkdir -p /etc/cni/net.d && mount --bind $T/netd /etc/cni/net.d
  mount --bind $T/plugins /usr/lib/cni
  containerd --config $T/config.toml > $T/containerd.log 2>&1 &
  pid=\$!
  for i in \$(seq 100); do [ -S $T/containerd.sock ] && break; sleep 0.1; done
  ctr --address $T/containerd.sock run --rm --cni --rootfs $T/rootfs twill-ctr1 \
    /bin/sh -c 'ip -4 -o addr show eth0; ping -c 1 -W 2 10.244.7.1 >/dev/null && echo GATEWAY-OK' > $T/ctr.out 2>&1
  kill \$pid; wait \$pid || true
"
"#,
        plugin = twill_plugin_bin().display(),
        ns = node.name,
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let ctr = std::fs::read_to_string(t.path().join("ctr.out")).unwrap_or_default();
    let log = std::fs::read_to_string(t.path().join("containerd.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\nctr: {ctr}\ncontainerd: {}",
        String::from_utf8_lossy(&out.stderr),
        &log[log.len().saturating_sub(2000)..]
    );
    assert!(
        ctr.contains("inet 10.244.7."),
        "address from our subnet: {ctr}"
    );
    assert!(ctr.contains("GATEWAY-OK"), "pings the gateway: {ctr}");
    // --rm ran DEL through the chain: the address and our per-container state are gone.
    let ipam: Vec<String> = std::fs::read_dir(t.path().join("ipam/cbr0"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(ipam.is_empty(), "address released: {ipam:?}");
    let state = std::fs::read_dir(t.path().join("cni-state"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(state, 0, "per-container state removed");
}
