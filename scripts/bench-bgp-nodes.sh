#!/usr/bin/env bash
# Section 9 of bench.sh, the per-node shape: N nodes (default 1 000), each a BIRD 2 with
# the configuration twilld writes for it (`twill-bench bird-conf`, i.e. twilld::bgp::render),
# peered with one FRR router that takes every node as a dynamic neighbour. Prints the time
# from starting the nodes' BIRDs until all N pod subnets are in the router's kernel table,
# and, on one node, subnet change -> route on the router (p50/p99 over 200 changes, each
# made with twilld's own apply(): the file rewritten and `birdc configure`). The nodes share
# one namespace, so their configs get `strict bind` (each BIRD listens on its own address);
# that line is the only one not twilld's. Prints figures, asserts nothing. Run as root;
# BIN picks the binaries (target/release); BGP_NODES the node count (at most 1 000).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
N=${BGP_NODES:-1000}
P=${LAB_PREFIX:-twbgp$$}-pn
D=/tmp/$P
RTR=198.18.7.254
cleanup() {
  for ns in "$P-nodes" "$P-router"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$D"
}
trap cleanup EXIT
mkdir -p "$D/inc" "$D/frr"
ip netns add "$P-router"
ip netns add "$P-nodes"
ip link add eth0 netns "$P-router" type veth peer name eth0 netns "$P-nodes"
ip -n "$P-router" addr add $RTR/22 dev eth0
ip -n "$P-router" link set eth0 up
ip -n "$P-nodes" link set eth0 up
ip -n "$P-router" link set lo up
ip -n "$P-nodes" link set lo up
node_ip() { echo "198.18.$((4 + $1 / 256)).$(($1 % 256))"; }
for i in $(seq 1 "$N"); do echo "addr add $(node_ip "$i")/22 dev eth0"; done | ip -n "$P-nodes" -batch -

# FRR as the router, every node a dynamic neighbour (user frr, a private /run).
cat > "$D/frr/frr.conf" <<EOF
frr defaults traditional
router bgp 64513
 bgp router-id $RTR
 no bgp ebgp-requires-policy
 bgp graceful-restart
 neighbor nodes peer-group
 neighbor nodes remote-as 64512
 bgp listen range 198.18.4.0/22 peer-group nodes
 bgp listen limit 5000
EOF
chown -R frr:frr "$D/frr"
chmod 755 "$D" "$D/frr"
setsid -f ip netns exec "$P-router" unshare -m sh -c "
  mount -t tmpfs -o mode=755 tmpfs /run && mkdir -p /run/frr && chown frr:frr /run/frr
  /usr/lib/frr/zebra -i $D/frr/zebra.pid -z $D/frr/zserv.api --vty_socket $D/frr -f /dev/null --log file:$D/frr/zebra.log &
  sleep 1
  exec /usr/lib/frr/bgpd -i $D/frr/bgpd.pid -z $D/frr/zserv.api --vty_socket $D/frr -f $D/frr/frr.conf --log file:$D/frr/bgpd.log" >/dev/null 2>&1
sleep 2

subnet() { echo "10.$((100 + $1 / 256)).$(($1 % 256)).0/24"; }
for i in $(seq 1 "$N"); do
  "$BIN/twill-bench" bird-conf $RTR "$(node_ip "$i")" "$(subnet "$i")" "$D/inc" > "$D/n$i.conf"
done
routes() { ip -n "$P-router" -4 route show proto bgp | wc -l; }
s=$(date +%s%N)
for i in $(seq 1 "$N"); do
  ip netns exec "$P-nodes" bird -c "$D/n$i.conf" -s "$D/n$i.ctl" -P "$D/n$i.pid"
done
started=$(date +%s%N)
deadline=$((SECONDS + 600))
until (( $(routes) >= N )) || (( SECONDS > deadline )); do sleep 0.1; done
e=$(date +%s%N)
echo "per node: $N nodes' BIRDs started (in $(( (started - s) / 1000000 )) ms): $(routes) of $N subnets in the router's table $(( (e - s) / 1000000 )) ms after the first start"
echo "per node: subnet change -> route on the router, 200 changes on one node (twilld's apply: file + birdc configure):"
"$BIN/twill-bench" bird-latency 200 "$P-router" $RTR "$(node_ip 1)" "$D/n1.conf" "$D/n1.ctl" "$D/inc" | sed 's/^/  /'
