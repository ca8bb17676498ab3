#!/usr/bin/env bash
# The main job: a three-node twill overlay in network namespaces with a real etcd,
# pods pinging across nodes without NAT. Run as root on Debian 12.
#   scripts/demo.sh          build, bring up, show, tear down
#   scripts/demo.sh --keep   leave it running and print how to look inside
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0
[[ ${1:-} == --keep ]] && keep=1

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
src=$(jq -r '.ips[0].address | split("/")[0]' /tmp/$LAB_PREFIX/n1/pod.json)
dst=$(jq -r '.ips[0].address | split("/")[0]' /tmp/$LAB_PREFIX/n2/pod.json)
seen=$(timeout 5 ip netns exec $LAB_PREFIX-p2 tcpdump -lni eth0 -c 1 "icmp and dst host $dst" 2>/dev/null &
  sleep 0.5; ip netns exec $LAB_PREFIX-p1 ping -c 1 -W 1 "$dst" >/dev/null; wait)
echo "  $seen"
[[ $seen == *"$src > $dst"* ]] || { echo "demo: expected source $src at the receiver" >&2; exit 1; }
lab status
if ((keep)); then
  cat <<EOT

The lab is up. Look inside with, e.g.:
  ip netns exec $LAB_PREFIX-n1 ip route          # peer routes via flannel.1
  ip netns exec $LAB_PREFIX-p1 ping $dst         # pod on n1 -> pod on n2
  cat /tmp/$LAB_PREFIX/n1/twilld.log             # daemon log
Tear it down with:
  LAB_PREFIX=$LAB_PREFIX scripts/lab.sh down
EOT
else
  echo "== tearing down"
fi
