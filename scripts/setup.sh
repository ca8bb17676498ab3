#!/usr/bin/env bash
# Installs what twill needs on Debian 12 (run as root). Groups, any combination:
#   build   compile twilld and the CNI plugin (etcd-client's build runs protoc, which
#           imports the well-known .proto files from libprotobuf-dev)
#   node    what twilld and the plugin call at run time on a node
#   test    the real parts the tests, the demo, the lab and the benchmarks run against
#   bench   what only the benchmarks need (gnuplot for bench.sh --plot)
#   reference  flanneld and flannel's CNI plugin, built with Go from their modules at the
#           versions pinned in scripts/reference-versions, into a cache outside the checkout
# No group means build, node and test. Every package is named here, installed without recommends:
# a package that is only recommended by another is a package a new machine may not have.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=(protobuf-compiler libprotobuf-dev pkg-config)
NODE=(
  iproute2 iptables nftables       # kernel state the daemon programs
  containernetworking-plugins      # bridge + host-local, the CNI plugin's delegates
  kmod                             # modprobe vxlan / bridge
)
TEST=(
  etcd-server etcd-client          # the real store the tests and the demo run against
  containerd runc busybox-static   # a real container runtime as CNI client in the tests
  systemd                          # systemd-analyze verify on twilld.service
  bird2 exabgp frr                 # BGP: the nodes' engine, a feed speaker, a router
  mmdebstrap umoci binutils        # scripts/image.sh: the image, built without a registry
  iputils-ping tcpdump ethtool iperf3 jq openssl procps psmisc curl bc util-linux
)

BENCH=(gnuplot-nox)

groups=("$@")
((${#groups[@]})) || groups=(build node test)
want=() need_cargo=0 reference=0
for g in "${groups[@]}"; do
  case $g in
    build) want+=("${BUILD[@]}"); need_cargo=1 ;;
    node) want+=("${NODE[@]}") ;;
    test) want+=("${TEST[@]}" "${NODE[@]}") ;;
    bench) want+=("${BENCH[@]}") ;;
    reference) reference=1 ;;
    *) echo "setup: unknown group '$g' (build, node, test, bench, reference)" >&2; exit 2 ;;
  esac
done

[[ $EUID == 0 ]] || { echo "setup: run as root (it installs Debian packages)" >&2; exit 1; }
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ((need_cargo)); then
  if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found: install a Rust toolchain ($(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml 2>/dev/null || echo 1.91) or newer) and a C linker first" >&2
    exit 1
  fi
  if ! command -v cc >/dev/null; then
    echo "setup: no C compiler/linker (cc): apt-get install build-essential" >&2
    exit 1
  fi
fi
if ((reference)); then
  bash scripts/reference.sh
fi
# The vxlan and bridge modules are needed inside the namespaces; loading them is
# harmless where they are built in.
modprobe -q vxlan 2>/dev/null || true
modprobe -q bridge 2>/dev/null || true
echo "setup: ok"
