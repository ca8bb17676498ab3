#!/usr/bin/env bash
# Section 10 of bench.sh, runnable alone: what probing every peer costs, and how soon a
# blocked overlay is named. A 3-node lab (scripts/lab.sh) with BENCH_PROBE_PEERS (default
# 1 000) fake peers injected into etcd: their addresses (198.19.0.0/16) answer nothing, so
# every round is the worst case (each path tried twice, every echo waiting out its
# timeout). Node 1 probes (--peer-probe-interval=10), node 2 does not: the same peers, the
# same run, CPU over BENCH_PROBE_SECS (default 60) and peak RSS side by side.
# Then, between nodes 1 and 3 (probing every 2 s), VXLAN's UDP port is dropped by an
# nftables rule on node 3, 5 times: the time until node 1's `twilld status` says
# vxlan-blocked, and until it says ok again once the rule is gone.
# Prints figures, asserts nothing. Run as root; BIN picks the binaries (target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_PROBE_PEERS:-1000}
SECS=${BENCH_PROBE_SECS:-60}
BIN=${BIN:-target/release}
export TWILLD=$PWD/$BIN/twilld
export LAB_PREFIX=${LAB_PREFIX:-twprb$$}
export LAB_NETWORK=10.0.0.0/8
export LAB_CONFIG='{"Network":"10.0.0.0/8","SubnetMin":"10.128.0.0","Backend":{"Type":"vxlan"}}'
S=/tmp/$LAB_PREFIX
trap 'bash scripts/lab.sh down >/dev/null 2>&1 || true' EXIT
lab() { bash scripts/lab.sh "$@" >/dev/null; }
ns() { ip netns exec "$LAB_PREFIX-$1" "${@:2}"; }
LAB_TWILLD_ARGS="--peer-probe-interval=10" lab up 3
LAB_TWILLD_ARGS="--peer-probe-interval=0" lab restart-node 2
ns etcd "$BIN/twill-bench" inject http://198.18.0.100:2379 "$N" 0 >/dev/null
for n in 1 2; do until (( $(ns "n$n" ip route show dev flannel.1 | wc -l) >= N + 2 )); do sleep 0.2; done; done
pid() { cat "$S/n$1/twilld.pid"; }
cpu() { awk '{print $14 + $15}' "/proc/$(pid "$1")/stat"; }
rss() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$(pid "$1")/status"; }
# Let node 1's probes reach their steady state (every peer's first round done).
sleep 12
c1=$(cpu 1) c2=$(cpu 2)
sleep "$SECS"
hz=$(getconf CLK_TCK)
d1=$(( $(cpu 1) - c1 )) d2=$(( $(cpu 2) - c2 ))
echo "| $((N + 2)) peers, ${SECS} s | probing every 10 s | not probing | ratio |"
echo "|---|---|---|---|"
printf '| CPU | %.2f s | %.2f s | %s |\n' "$(bc -l <<< "$d1 / $hz")" "$(bc -l <<< "$d2 / $hz")" \
  "$( (( d2 > 0 )) && printf '%.1f' "$(bc -l <<< "$d1 / $d2")" || echo "n/a")"
printf '| peak RSS | %s MB | %s MB | %.2f |\n' "$(rss 1)" "$(rss 2)" "$(bc -l <<< "$(rss 1) / $(rss 2)")"
unreach=$(ns n1 "$TWILLD" status --output json --subnet-file "$S/n1/subnet.env" 2>/dev/null \
  | jq '[.probes[] | select(.verdict == "peer-down")] | length' || true)
echo "peers node 1 calls peer-down (the injected ones answer nothing): $unreach of $((N + 2))"

# Block -> verdict, unblock -> ok, between nodes 1 and 3, probing every 2 s.
LAB_TWILLD_ARGS="--peer-probe-interval=2" lab restart-node 1
# The injected peers go (10.<o>.x.0 for o up to N/256; real nodes lease 10.128 and up).
for o in $(seq 0 $(( (N + 1) / 256 ))); do
  ns etcd etcdctl --endpoints http://198.18.0.100:2379 del --prefix "/coreos.com/network/subnets/10.$o." >/dev/null
done
verdict() {
  ns n1 "$TWILLD" status --output json --subnet-file "$S/n1/subnet.env" 2>/dev/null \
    | jq -r '.probes[] | select(.peer == "198.18.0.3") | .verdict' || true
}
until [[ $(verdict) == ok ]]; do sleep 0.2; done
now() { date +%s%N; }
: > "$S/block.txt"; : > "$S/clear.txt"
for _ in 1 2 3 4 5; do
  ns n3 nft -f - <<'EOF'
table inet twprobe {
  chain in { type filter hook input priority -400; ip saddr 198.18.0.1 udp dport 8472 drop; }
  chain out { type filter hook output priority -400; ip daddr 198.18.0.1 udp dport 8472 drop; }
}
EOF
  s=$(now); until [[ $(verdict) == vxlan-blocked ]]; do sleep 0.05; done
  echo $(( ($(now) - s) / 1000000 )) >> "$S/block.txt"
  ns n3 nft delete table inet twprobe
  s=$(now); until [[ $(verdict) == ok ]]; do sleep 0.05; done
  echo $(( ($(now) - s) / 1000000 )) >> "$S/clear.txt"
done
med() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "VXLAN blocked -> vxlan-blocked: median $(med "$S/block.txt") ms, max $(sort -n "$S/block.txt" | tail -1) ms (interval 2 s, timeout 1 s, 5 times)"
echo "unblocked -> ok: median $(med "$S/clear.txt") ms, max $(sort -n "$S/clear.txt" | tail -1) ms"
