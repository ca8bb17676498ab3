#!/usr/bin/env bash
# Benchmark 7 (called by scripts/bench.sh; runs alone too, after a release build):
# Kubernetes mode at scale. One twilld with --kube-subnet-mgr against the FAKE nodes API
# (`twill-bench fake-kube`: real request shapes, paged lists, node objects the size of
# a kubeadm cluster's), 1 000 then 5 000 peer nodes: time to program them, peak RSS, and
# the CPU that 5 000 status-only updates (kubelet heartbeats) cost. Everything runs in one
# throw-away namespace; the fake listens on its loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
P=twk$$
K=$P-kube
D=/tmp/$P
cleanup() {
  exec 7>&- 2>/dev/null || true
  ip netns pids "$K" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$K" 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT
ms() { echo $(( ($2 - $1) / 1000000 )); }
mkdir -p "$D"
ip netns add "$K"
ip -n "$K" link set lo up
# twilld needs an underlay interface with an address: a veth pair inside the namespace.
# Nothing is sent to the fake peers' 198.19.x addresses.
ip -n "$K" link add eth0 type veth peer name eth1
ip -n "$K" addr add 198.18.9.1/24 dev eth0
ip -n "$K" link set eth0 up
ip -n "$K" link set eth1 up
mkfifo "$D/cmd"
echo '{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}' > "$D/net-conf.json"
ip netns exec "$K" "$BIN/twill-bench" fake-kube 127.0.0.1:6443 1000 < "$D/cmd" > "$D/fake.out" 2>&1 &
exec 7> "$D/cmd"
until grep -q serving "$D/fake.out"; do sleep 0.05; done
sed 's/^/fake API: /' "$D/fake.out"
kcmd() { # kcmd <command>: sends it to the fake, waits for its "done"
  local n; n=$(grep -c '^done' "$D/fake.out" || true)
  echo "$1" >&7
  until (( $(grep -c '^done' "$D/fake.out" || true) > n )); do sleep 0.02; done
}
routes() { ip -n "$K" route show dev flannel.1 2>/dev/null | wc -l; }
s=$(date +%s%N)
ip netns exec "$K" env NODE_NAME=bench-self "$BIN/twilld" --kube-subnet-mgr \
  --kube-api-url=http://127.0.0.1:6443 --net-config-path="$D/net-conf.json" --iface=eth0 \
  --subnet-file="$D/subnet.env" --iptables-resync=2 > "$D/twilld.log" 2>&1 &
pid=$!
until (( $(routes) >= 1000 )); do sleep 0.01; done
t=$(ms "$s" "$(date +%s%N)")
# `ip netns exec` execs twilld in place: $! is twilld.
hwm() { awk '/VmHWM/ {printf "%.1f MB", $2/1024}' "/proc/$pid/status"; }
cpu() { awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat"; }
echo "start -> 1 000 peer nodes programmed: $t ms; peak RSS $(hwm)"
s=$(date +%s%N)
kcmd "add 4000"
until (( $(routes) >= 5000 )); do sleep 0.01; done
echo "4 000 more (5 000 nodes, Kubernetes' largest supported cluster): programmed $(ms "$s" "$(date +%s%N)") ms after the fake began adding them; peak RSS $(hwm)"
sleep 3
c0=$(cpu)
kcmd "churn 5000"
sleep 3
c1=$(cpu)
echo "5 000 status-only node updates: $(awk -v a="$c0" -v b="$c1" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (b - a) / hz}') s of twilld CPU, $(routes) routes still; peak RSS $(hwm)"
kill "$pid"
wait "$pid" 2>/dev/null || true
echo quit >&7
