#!/usr/bin/env bash
# Section 11 of bench.sh, runnable alone: dual-stack pod throughput. A 2-node dual-stack
# lab (scripts/lab.sh, LAB_DUAL=1: 198.18.0.0/24 and 2001:2::/64 underlays, pods in
# 10.244.0.0/16 and fd00:10:244::/56); iperf3 TCP, 1 stream, pod to pod over IPv4
# (flannel.1) and over IPv6 (flannel-v6.1), and node to node on each raw underlay, the four
# back to back in each round (order reversed every other round). Ratios are taken per round,
# then their median (range): the VM's drift cancels within a round.
# Prints figures, asserts nothing. Run as root; BIN picks the binaries (target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
ROUNDS=${BENCH_IPERF_ROUNDS:-5}
SECS=${BENCH_DS_SECS:-5}
export TWILLD=$PWD/$BIN/twilld
export LAB_PREFIX=${LAB_PREFIX:-twds$$} LAB_DUAL=1
S=/tmp/$LAB_PREFIX
trap 'bash scripts/lab.sh down >/dev/null 2>&1 || true' EXIT
bash scripts/lab.sh up 2 >/dev/null
ns() { ip netns exec "$LAB_PREFIX-$1" "${@:2}"; }
addr() { jq -r "[.ips[] | select(.address | contains(\"$2\"))][0].address | split(\"/\")[0]" "$S/$1/pod.json"; }
p4=$(addr n2 .) p6=$(addr n2 :)
ns p2 iperf3 -s -D -I "$S/iperf-p.pid" >/dev/null
ns n2 iperf3 -s -D -I "$S/iperf-n.pid" >/dev/null
sleep 0.5
gbps() { # gbps <netns> <target> [-6]
  ns "$1" iperf3 -c "$2" ${3:-} -t "$SECS" -J | jq '.end.sum_received.bits_per_second / 1e9'
}
: > "$S/r.txt"
for r in $(seq "$ROUNDS"); do
  if (( r % 2 )); then
    a=$(gbps p1 "$p4") b=$(gbps p1 "$p6" -6) c=$(gbps n1 198.18.0.2) d=$(gbps n1 2001:2::2 -6)
  else
    d=$(gbps n1 2001:2::2 -6) c=$(gbps n1 198.18.0.2) b=$(gbps p1 "$p6" -6) a=$(gbps p1 "$p4")
  fi
  echo "$a $b $c $d" >> "$S/r.txt"
done
for f in "$S"/iperf-*.pid; do kill "$(cat "$f")" 2>/dev/null || true; done
med() { sort -g | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]}'; }
col() { awk -v c="$1" '{print $c}' "$S/r.txt" | med; }
ratio() { # ratio <col x> <col y>: median (min-max) of x/y per round
  awk -v x="$1" -v y="$2" '{print $x / $y}' "$S/r.txt" | sort -g \
    | awk '{r[NR]=$1} END {printf "%.2f (%.2f-%.2f)", r[int((NR+1)/2)], r[1], r[NR]}'
}
echo "| pods over IPv4 | pods over IPv6 | underlay IPv4 | underlay IPv6 | IPv6/IPv4 overlay | IPv6 overlay/underlay | IPv4 overlay/underlay |"
echo "|---|---|---|---|---|---|---|"
printf '| %s Gbit/s | %s Gbit/s | %s Gbit/s | %s Gbit/s | %s | %s | %s |\n' \
  "$(col 1)" "$(col 2)" "$(col 3)" "$(col 4)" "$(ratio 2 1)" "$(ratio 2 4)" "$(ratio 1 3)"
