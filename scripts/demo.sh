#!/usr/bin/env bash
# The main job: a three-node twill overlay in network namespaces with a real etcd,
# pods pinging across nodes without NAT. Run as root on Debian 12.
#   scripts/demo.sh              build, bring up, show, tear down
#   scripts/demo.sh --keep       leave it running and print how to look inside
#   scripts/demo.sh --dual-stack the same on both families: an IPv6 underlay beside the
#                                IPv4 one, pods with an address of each (any order of flags)
#   scripts/demo.sh --host-gw    flannel's host-gw backend: no VXLAN device, a route per
#                                peer via its node address (combines with --dual-stack)
#   scripts/demo.sh --ipv6-only  EnableIPv4 false: an underlay with no IPv4 address at all,
#                                pods with an IPv6 address only (combines with --host-gw)
#   scripts/demo.sh --network-policy  Kubernetes mode on a real kube-apiserver (built from
#                                its Go module: a few minutes the first time): a default
#                                deny cutting pods off, an allow rule letting them back
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0 dual=0 v6only=0 backend=vxlan netpol=0
for a in "$@"; do
  case $a in
    --network-policy) netpol=1 ;;
    --keep) keep=1 ;;
    --dual-stack) dual=1 ;;
    --ipv6-only) v6only=1 ;;
    --host-gw) backend=host-gw ;;
    *) echo "demo: unknown argument $a (--keep, --dual-stack, --ipv6-only, --host-gw, --network-policy)" >&2; exit 2 ;;
  esac
done
((dual && v6only)) && { echo "demo: --dual-stack and --ipv6-only exclude each other" >&2; exit 2; }
export LAB_DUAL=$dual LAB_V6ONLY=$v6only LAB_BACKEND=$backend

if ((netpol)); then
  ((keep || dual || v6only)) || [[ $backend != vxlan ]] &&
    { echo "demo: --network-policy runs alone (vxlan, IPv4; the lab goes when it ends)" >&2; exit 2; }
  bash scripts/setup.sh build node test reference
  cargo build --release -q -p twilld -p twill-cni
  # The Kubernetes lab of tests/netpol.rs (namespaces torn down when the demo ends).
  TWILLD_BIN=$PWD/target/release/twilld TWILL_NS_PREFIX=${LAB_PREFIX:-twdemo}np \
    cargo run --release -q -p twill-e2e --example netpol-demo
  exit
fi

bash scripts/setup.sh
cargo build --release -q -p twilld -p twill-cni
export LAB_PREFIX=${LAB_PREFIX:-twdemo}
lab() { bash scripts/lab.sh "$@"; }
lab down
((keep)) || trap 'lab down' EXIT

echo "== bringing up 3 nodes"
lab up 3
echo "== pods ping across nodes"
lab check
echo "== the receiver sees the sender's pod IP (no NAT on the overlay)"
addr() { jq -r "[.ips[] | select(.address | contains(\"$2\"))][0].address | split(\"/\")[0]" "/tmp/$LAB_PREFIX/$1/pod.json"; }
no_nat() { # no_nat <family marker: "." or ":"> <tcpdump filter protocol>
  local src dst seen
  src=$(addr n1 "$1") dst=$(addr n2 "$1")
  seen=$(timeout 5 ip netns exec $LAB_PREFIX-p2 tcpdump -lni eth0 -c 1 "$2 and dst host $dst" 2>/dev/null &
    sleep 0.5; ip netns exec $LAB_PREFIX-p1 ping -c 1 -W 1 "$dst" >/dev/null; wait)
  echo "  $seen"
  [[ $seen == *"$src > $dst"* ]] || { echo "demo: expected source $src at the receiver" >&2; exit 1; }
}
((v6only)) || no_nat . icmp
((dual || v6only)) && no_nat : "icmp6 and ip6[40] == 128"
lab status
if ((keep)); then
  cat <<EOT

The lab is up. Look inside with, e.g.:
  ip netns exec $LAB_PREFIX-n1 ip route          # peer routes (via flannel.1, or eth0 with host-gw)
  ip netns exec $LAB_PREFIX-p1 ping $(addr n2 "$( ((v6only)) && echo : || echo .)")         # pod on n1 -> pod on n2
  cat /tmp/$LAB_PREFIX/n1/twilld.log             # daemon log
Tear it down with:
  LAB_PREFIX=$LAB_PREFIX scripts/lab.sh down
EOT
else
  echo "== tearing down"
fi
