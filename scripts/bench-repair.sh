#!/usr/bin/env bash
# Section 8 of bench.sh, runnable alone: how fast twilld puts back what someone removed.
# A 3-node lab (scripts/lab.sh) with --iptables-resync=60, so only the netlink/nftables
# monitors can be what repairs within a second. Prints, per kind, the time from deletion to
# repair (p50/p99 over BENCH_REPAIRS deletions, default 200), then the pings lost (10 ms
# interval) while the receiver's route back to the sender is deleted, over 20 deletions.
# Prints figures, asserts nothing. Run as root; BIN picks the binaries (target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_REPAIRS:-200}
BIN=${BIN:-target/release}
export TWILLD=$PWD/$BIN/twilld
export LAB_PREFIX=${LAB_PREFIX:-twrep$$}
export LAB_TWILLD_ARGS="--iptables-resync=60 --ip-masq"
trap 'bash scripts/lab.sh down >/dev/null 2>&1 || true' EXIT
bash scripts/lab.sh up 3 >/dev/null
ns() { ip netns exec "$LAB_PREFIX-$1" "${@:2}"; }
env_of() { sed -n "s/^$2=//p" "/tmp/$LAB_PREFIX/$1/subnet.env"; }
peer=$(env_of n2 FLANNEL_SUBNET | sed 's/\.1\//.0\//')
vtep=${peer%/*}
mac=$(ns n2 cat /sys/class/net/flannel.1/address)
under=198.18.0.2

# repair_ms <delete command> <present test>, in node n1: milliseconds until it is back.
repair_ms() {
  ns n1 sh -c "$1 && s=\$(date +%s%N) && until $2; do :; done && echo \$(( (\$(date +%s%N) - s) / 1000000 ))"
}
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p/100+0.999); if (i<1) i=1; print a[i]}'; }

echo "| what is removed | p50 | p99 | max | repairs |"
echo "|---|---|---|---|---|"
kind() { # kind <label> <delete> <present>
  local f=/tmp/$LAB_PREFIX/repair.txt
  : > "$f"
  for _ in $(seq "$N"); do
    repair_ms "$2" "$3" >> "$f"
    # Apart, so no two deletions fall into one repair or look like a fight.
    sleep 0.05
  done
  printf '| %s | %s ms | %s ms | %s ms | %s |\n' "$1" "$(pct 50 < "$f")" "$(pct 99 < "$f")" \
    "$(sort -n "$f" | tail -1)" "$(wc -l < "$f")"
}
kind "peer route" "ip route del $peer dev flannel.1" "ip route show $peer dev flannel.1 | grep -q ."
kind "neighbour" "ip neigh del $vtep dev flannel.1" "ip neigh show $vtep dev flannel.1 | grep -q PERMANENT"
kind "FDB entry" "bridge fdb del $mac dev flannel.1 dst $under" "bridge fdb show dev flannel.1 | grep -q '$mac dst $under'"
kind "FORWARD chain flushed" "iptables -F FLANNEL-FWD" "iptables -S FLANNEL-FWD | grep -q ACCEPT"

# Pings from p2 to p1 every 10 ms; on n1 the route back to p2's subnet is deleted 20
# times, 2 s apart. Replies are lost until the route is back.
p1=$(jq -r '.ips[0].address | split("/")[0]' "/tmp/$LAB_PREFIX/n1/pod.json")
back=$(env_of n2 FLANNEL_SUBNET | sed 's/\.1\//.0\//')
ns p2 ping -i 0.01 -W 1 "$p1" > "/tmp/$LAB_PREFIX/ping.txt" 2>&1 &
pinger=$!
sleep 1
for _ in $(seq 20); do ns n1 ip route del "$back" dev flannel.1; sleep 2; done
kill -INT "$pinger"; wait "$pinger" || true
sent=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' "/tmp/$LAB_PREFIX/ping.txt")
got=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' "/tmp/$LAB_PREFIX/ping.txt")
lost=$((sent - got))
echo "pings lost at a 10 ms interval while the receiver's route back is deleted: $lost over 20 deletions ($sent sent), $(echo "scale=1; $lost / 20" | bc) per deletion"
