#!/usr/bin/env bash
# Installs everything twill's build, tests and demo need on Debian 12 (run as root).
set -euo pipefail

PKGS=(
  etcd-server etcd-client          # the real store the tests and the demo run against
  protobuf-compiler                # etcd-client's build runs protoc
  iproute2 iptables nftables       # kernel state the daemon programs and tests assert
  containernetworking-plugins      # bridge + host-local + portmap + loopback CNI delegates
  containerd runc busybox-static   # a real container runtime as CNI client in the tests
  systemd                          # systemd-analyze verify on twilld.service
  iputils-ping tcpdump ethtool iperf3 jq openssl procps psmisc curl bc
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install a Rust toolchain (1.91 or newer) first" >&2
  exit 1
fi
# The vxlan and bridge modules are needed inside the namespaces; loading them is
# harmless where they are built in.
modprobe -q vxlan 2>/dev/null || true
modprobe -q bridge 2>/dev/null || true
echo "setup: ok"
