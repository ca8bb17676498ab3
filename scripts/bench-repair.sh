#!/usr/bin/env bash
# Section 8 of bench.sh, runnable alone: how fast twilld puts back what someone removed.
# A 3-node lab (scripts/lab.sh) with --iptables-resync=60, so only the netlink/nftables
# monitors can be what repairs within a second, and BENCH_REPAIRS (default 200) fake peers
# injected into etcd. Each deletion removes a different peer's entry: removing the same
# one again within 30 s is what twilld treats as a fight with another agent (and backs off
# from), which is measured by the e2e test, not here.
# Prints, per kind, the time from deletion to repair (p50/p99); the first repair of each
# flushed chain; a host-gw route's (the lab switched to host-gw); and the pings lost (10 ms interval) while a receiver's route back to the
# sender is deleted, once for each ordered pair of the 3 pods.
# Prints figures, asserts nothing. Run as root; BIN picks the binaries (target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_REPAIRS:-200}
BIN=${BIN:-target/release}
export TWILLD=$PWD/$BIN/twilld
export LAB_PREFIX=${LAB_PREFIX:-twrep$$}
export LAB_NETWORK=10.0.0.0/8
export LAB_CONFIG='{"Network":"10.0.0.0/8","SubnetMin":"10.128.0.0","Backend":{"Type":"vxlan"}}'
export LAB_TWILLD_ARGS="--iptables-resync=60"
S=/tmp/$LAB_PREFIX
trap 'bash scripts/lab.sh down >/dev/null 2>&1 || true' EXIT
bash scripts/lab.sh up 3 >/dev/null
ns() { ip netns exec "$LAB_PREFIX-$1" "${@:2}"; }
ns etcd "$BIN/twill-bench" inject http://198.18.0.100:2379 "$N" 0 >/dev/null
until (( $(ns n1 ip route show dev flannel.1 | wc -l) >= N + 2 )); do sleep 0.2; done

# repair_ms <delete command> <present test>, in node n1: milliseconds until it is back.
repair_ms() {
  ns n1 sh -c "$1 && s=\$(date +%s%N) && until $2; do :; done && echo \$(( (\$(date +%s%N) - s) / 1000000 ))"
}
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p/100+0.999); if (i<1) i=1; print a[i]}'; }

# The injected peers as "subnet vtep mac underlay" (routes and FDB entries of n1).
ns n1 bridge fdb show dev flannel.1 | awk '{print $1, $3}' > "$S/fdb.txt"
ns n1 ip neigh show dev flannel.1 | awk '{print $1, $3}' > "$S/neigh.txt"
# Real nodes lease from 10.128.0.0 up; the injected peers sit below.
ns n1 ip route show dev flannel.1 | awk '{split($1, o, ".")} o[2] < 128 {print $1}' \
  | head -n "$N" > "$S/peers.txt"
while read -r net; do
  vtep=${net%/*}
  mac=$(awk -v v="$vtep" '$1 == v {print $2}' "$S/neigh.txt")
  dst=$(awk -v m="$mac" '$1 == m {print $2}' "$S/fdb.txt")
  echo "$net $vtep $mac $dst"
done < "$S/peers.txt" > "$S/objects.txt"

echo "| what is removed ($(wc -l < "$S/objects.txt") different peers) | p50 | p99 | max |"
echo "|---|---|---|---|"
kind() { # kind <label> <delete template> <present template>; {net} {vtep} {mac} {dst}
  : > "$S/t.txt"
  while read -r net vtep mac dst; do
    sub() { sed -e "s|{net}|$net|g" -e "s|{vtep}|$vtep|g" -e "s|{mac}|$mac|g" -e "s|{dst}|$dst|g" <<< "$1"; }
    repair_ms "$(sub "$2")" "$(sub "$3")" >> "$S/t.txt"
    sleep 0.03
  done < "$S/objects.txt"
  printf '| %s | %s ms | %s ms | %s ms |\n' "$1" "$(pct 50 < "$S/t.txt")" "$(pct 99 < "$S/t.txt")" "$(sort -n "$S/t.txt" | tail -1)"
}
kind "peer route" "ip route del {net} dev flannel.1" "ip route show {net} dev flannel.1 | grep -q ."
kind "neighbour" "ip neigh del {vtep} dev flannel.1" "ip neigh show {vtep} dev flannel.1 | grep -q PERMANENT"
kind "FDB entry" "bridge fdb del {mac} dev flannel.1 dst {dst}" "bridge fdb show dev flannel.1 | grep -q '{mac} dst {dst}'"
fwd=$(repair_ms "iptables -F FLANNEL-FWD" "iptables -S FLANNEL-FWD | grep -q ACCEPT")
nat=$(repair_ms "iptables -t nat -F FLANNEL-POSTRTG" "iptables -t nat -S FLANNEL-POSTRTG | grep -q RETURN")
echo "chain flushed: filter FLANNEL-FWD back after $fwd ms, nat FLANNEL-POSTRTG after $nat ms"

# host-gw: the lab switched by SIGHUP (the injected vxlan peers are then refused); each
# node's routes to the two others deleted once each, on the node, as above.
ns etcd etcdctl --endpoints http://198.18.0.100:2379 put /coreos.com/network/config \
  "$(jq -c '.Backend = {"Type": "host-gw"}' <<< "$LAB_CONFIG")" >/dev/null
for n in 1 2 3; do kill -HUP "$(cat "$S/n$n/twilld.pid")"; done
hg_routes() { ns "n$1" ip route show dev eth0 | awk '/ via / {print $1}'; }
for n in 1 2 3; do until (( $(hg_routes "$n" | wc -l) == 2 )); do sleep 0.05; done; done
: > "$S/t.txt"
for n in 1 2 3; do
  for net in $(hg_routes "$n"); do
    ns "n$n" sh -c "ip route del $net dev eth0 && s=\$(date +%s%N) && until ip route show $net dev eth0 | grep -q .; do :; done && echo \$(( (\$(date +%s%N) - s) / 1000000 ))" >> "$S/t.txt"
  done
done
printf '| host-gw route (the lab on host-gw, %s routes) | %s ms | %s ms | %s ms |\n' "$(wc -l < "$S/t.txt")" \
  "$(pct 50 < "$S/t.txt")" "$(pct 99 < "$S/t.txt")" "$(sort -n "$S/t.txt" | tail -1)"
ns etcd etcdctl --endpoints http://198.18.0.100:2379 put /coreos.com/network/config "$LAB_CONFIG" >/dev/null
for n in 1 2 3; do kill -HUP "$(cat "$S/n$n/twilld.pid")"; done
for n in 1 2 3; do until (( $(ns "n$n" ip route show dev flannel.1 | wc -l) >= N + 2 )); do sleep 0.05; done; done

# Pings from one pod to another every 10 ms while, on the receiver's node, the route back
# to the sender's subnet is deleted once; each ordered pair of pods is one sample.
pod_ip() { jq -r '.ips[0].address | split("/")[0]' "$S/n$1/pod.json"; }
subnet() { sed -n 's/^FLANNEL_SUBNET=//p' "$S/n$1/subnet.env" | sed 's/\.1\//.0\//'; }
total=0
for a in 1 2 3; do for b in 1 2 3; do
  (( a == b )) && continue
  ns "p$a" ping -i 0.01 -W 1 -c 150 "$(pod_ip "$b")" > "$S/ping.txt" 2>&1 &
  pinger=$!
  sleep 0.5
  ns "n$b" ip route del "$(subnet "$a")" dev flannel.1
  wait "$pinger" || true
  sent=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' "$S/ping.txt")
  got=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' "$S/ping.txt")
  total=$((total + sent - got))
  printf 'p%s -> p%s: %s of %s pings lost\n' "$a" "$b" "$((sent - got))" "$sent"
done; done
echo "pings lost at a 10 ms interval per deleted route: $(echo "scale=1; $total / 6" | bc) on average over 6"
