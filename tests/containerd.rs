//! A real container runtime as the CNI client: Debian's containerd + `ctr run --rm --cni`
//! inside a node namespace, with our conflist in its /etc/cni/net.d and our plugin beside
//! Debian's in its plugin dir. /etc and the plugin dir are overlaid inside a private mount
//! namespace, so the host's files are never touched; containerd's root, state and socket
//! live in a temp dir. Everything in the namespace is killed when the test ends.

use std::path::Path;
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
    let prepare = format!(
        r#"cp {plugin} $T/plugins/twill
printf 'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n' > $T/subnet.env
cat > $T/netd/10-twill.conflist <<EOC
{{"name":"cbr0","cniVersion":"1.0.0","plugins":[{{"type":"twill","subnetFile":"$T/subnet.env","dataDir":"$T/cni-state","ipam":{{"dataDir":"$T/ipam"}},"delegate":{{"hairpinMode":true,"isDefaultGateway":true}}}},{{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}
EOC"#,
        plugin = twill_plugin_bin().display(),
    );
    let inside = "ctr --address $T/containerd.sock run --rm --cni --rootfs $T/rootfs twill-ctr1 \\
    /bin/sh -c 'ip -4 -o addr show eth0; ping -c 1 -W 2 10.244.7.1 >/dev/null && echo GATEWAY-OK' > $T/ctr.out 2>&1";
    let out = in_containerd(&node, t.path(), &prepare, inside);
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
    let ipam = reserved(t.path());
    assert!(ipam.is_empty(), "address released: {ipam:?}");
    let state = std::fs::read_dir(t.path().join("cni-state"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(state, 0, "per-container state removed");
}

/// In-place migration under a real runtime: containerd adds a pod with one plugin and,
/// after the plugin binary is swapped underneath it (as a node's CNI plugin is replaced),
/// deletes it with the other, both ways: flannel's real plugin and ours. The address goes
/// back to host-local and the state file goes, whichever plugin added the pod.
#[test]
fn containerd_deletes_pods_across_flannels_plugin_and_ours() {
    let node = Netns::new("k-mig");
    let t = tempfile::tempdir().unwrap();
    // cniVersion 0.4.0: the newest flannel's plugin of the pinned release speaks.
    let prepare = format!(
        r#"cp {flannel} $T/flannel-plugin
cp {plugin} $T/twill-plugin
printf 'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.8.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n' > $T/subnet.env
cat > $T/netd/10-flannel.conflist <<EOC
{{"name":"cbr0","cniVersion":"0.4.0","plugins":[{{"type":"flannel","subnetFile":"$T/subnet.env","dataDir":"$T/cni-state","ipam":{{"dataDir":"$T/ipam"}},"delegate":{{"hairpinMode":true,"isDefaultGateway":true}}}}]}}
EOC"#,
        flannel = twill_e2e::flannel_plugin_bin().display(),
        plugin = twill_plugin_bin().display(),
    );
    // One pod per direction: added by the first plugin, deleted by the second.
    let inside = r"for pair in 'flannel-plugin twill-plugin by-flannel' 'twill-plugin flannel-plugin by-twill'; do
    set -- \$pair
    cp $T/\$1 /usr/lib/cni/flannel
    ctr --address $T/containerd.sock run --rm --cni --rootfs $T/rootfs mig-\$3 \
      /bin/sh -c 'ip -4 -o addr show eth0; sleep 2' > $T/ctr-\$3.out 2>&1 &
    run=\$!
    for i in \$(seq 100); do grep -q 'inet ' $T/ctr-\$3.out 2>/dev/null && break; sleep 0.1; done
    ls $T/cni-state > $T/state-\$3.txt
    ls $T/ipam/cbr0 | grep -c '^10\.' > $T/ipam-\$3.txt || true
    cp $T/\$2 /usr/lib/cni/flannel.new && mv /usr/lib/cni/flannel.new /usr/lib/cni/flannel
    wait \$run
  done";
    let out = in_containerd(&node, t.path(), &prepare, inside);
    let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
    let log = read("containerd.log");
    assert!(
        out.status.success(),
        "{}\nctr: {} {}\ncontainerd: {}",
        String::from_utf8_lossy(&out.stderr),
        read("ctr-by-flannel.out"),
        read("ctr-by-twill.out"),
        &log[log.len().saturating_sub(2000)..]
    );
    for pod in ["by-flannel", "by-twill"] {
        let ctr = read(&format!("ctr-{pod}.out"));
        assert!(ctr.contains("inet 10.244.8."), "{pod}: {ctr}");
        // While it ran: one address reserved, its state saved under the container ID.
        assert_eq!(read(&format!("ipam-{pod}.txt")).trim(), "1", "{pod}");
        assert_eq!(
            read(&format!("state-{pod}.txt")).trim(),
            format!("default-mig-{pod}"),
            "{pod}: ctr names the container <namespace>-<id>"
        );
    }
    // Both deleted by the other plugin: nothing reserved, no state left.
    let ipam = reserved(t.path());
    assert!(ipam.is_empty(), "addresses released: {ipam:?}");
    let state = std::fs::read_dir(t.path().join("cni-state"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(state, 0, "per-container state removed");
}

/// Runs `inside` under a real containerd in `node`'s network namespace, in a private mount
/// namespace whose /etc/cni/net.d and /usr/lib/cni are `$T/netd` and `$T/plugins` (`$T`:
/// the temp dir `t`). `prepare` runs first on the host side, with Debian's plugins already
/// copied into `$T/plugins` and a busybox rootfs in `$T/rootfs`: it puts the plugins,
/// subnet.env and conflist in place. containerd's root, state and socket live under `$T`.
fn in_containerd(node: &Netns, t: &Path, prepare: &str, inside: &str) -> std::process::Output {
    let script = format!(
        r#"set -eu
T={d}
mkdir -p $T/root $T/state $T/rootfs/bin $T/netd $T/plugins $T/etc-up $T/etc-work
cp -a /usr/lib/cni/. $T/plugins/
cp /bin/busybox $T/rootfs/bin/ && for c in sh ip ping sleep; do ln -s busybox $T/rootfs/bin/$c; done
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
{prepare}
nsenter --net=/run/netns/{ns} unshare -m sh -c "
  set -e
  mount --make-rprivate /
  mount -t overlay overlay -o lowerdir=/etc,upperdir=$T/etc-up,workdir=$T/etc-work /etc
  mkdir -p /etc/cni/net.d && mount --bind $T/netd /etc/cni/net.d
  mount --bind $T/plugins /usr/lib/cni
  containerd --config $T/config.toml > $T/containerd.log 2>&1 &
  pid=\$!
  for i in \$(seq 100); do [ -S $T/containerd.sock ] && break; sleep 0.1; done
  {inside}
  kill \$pid; wait \$pid || true
"
"#,
        d = t.display(),
        ns = node.name,
    );
    Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap()
}

/// The addresses host-local still holds in `$T/ipam/cbr0`.
fn reserved(t: &Path) -> Vec<String> {
    twill_e2e::host_local_reserved(&t.join("ipam"))
}
