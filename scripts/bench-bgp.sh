#!/usr/bin/env bash
# Section 9 of bench.sh, runnable alone: both BGP shapes. First the ExaBGP feed (twilld
# exabgp-feed) to a BIRD 2
# router, both in namespaces on the lab's underlay. Prints the time until 1 000 injected
# leases are all in the router's kernel table, and lease put -> route on the router
# (p50/p99 over 200 single additions). Prints figures, asserts nothing. Run as root;
# BIN picks the binaries (target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
export TWILLD=$PWD/$BIN/twilld
export LAB_PREFIX=${LAB_PREFIX:-twbgp$$}
export LAB_NETWORK=10.0.0.0/8
export LAB_CONFIG='{"Network":"10.0.0.0/8","SubnetMin":"10.128.0.0","Backend":{"Type":"vxlan"}}'
S=/tmp/$LAB_PREFIX
trap 'bash scripts/lab.sh down >/dev/null 2>&1 || true' EXIT
bash scripts/lab.sh up 1 >/dev/null
ns() { ip netns exec "$LAB_PREFIX-$1" "${@:2}"; }
SPK=198.18.0.200 RTR=198.18.0.201 ETCD=http://198.18.0.100:2379
bash scripts/lab.sh add-host speaker "$SPK"
bash scripts/lab.sh add-host router "$RTR"
# The injected peers' addresses (198.19.0.0/16) are next hops the router must reach.
ns router ip addr add 198.19.255.254/16 dev eth0
mkdir -p "$S/bgp"

cat > "$S/bgp/bird.conf" <<EOF
router id $RTR;
protocol device { }
protocol kernel { ipv4 { export all; }; }
protocol bgp feed {
  local $RTR as 64513;
  neighbor $SPK as 64512;
  ipv4 { import all; export none; };
}
EOF
ns router bird -c "$S/bgp/bird.conf" -s "$S/bgp/bird.ctl" -P "$S/bgp/bird.pid"

cat > "$S/bgp/exabgp.conf" <<EOF
process feed {
  run $TWILLD exabgp-feed --etcd-endpoints=$ETCD;
  encoder text;
}
neighbor $RTR {
  router-id $SPK;
  local-address $SPK;
  local-as 64512;
  peer-as 64513;
  api { processes [ feed ]; }
}
EOF
# Detached (lab.sh down kills everything in the lab's namespaces at the end).
(cd "$S/bgp" && env exabgp.daemon.user=root exabgp.daemon.daemonize=false \
  exabgp.log.destination="$S/bgp/exabgp.log" exabgp.api.ack=false \
  setsid -f ip netns exec "$LAB_PREFIX-speaker" exabgp "$S/bgp/exabgp.conf" >/dev/null 2>&1)

bgp_routes() { ns router ip route show proto bird | wc -l; }
until (( $(bgp_routes) >= 1 )); do sleep 0.1; done
s=$(date +%s%N)
ns etcd "$BIN/twill-bench" inject "$ETCD" 1000 0 > "$S/inject.json"
until (( $(bgp_routes) >= 1001 )); do sleep 0.02; done
e=$(date +%s%N)
echo "1 000 leases injected: all 1 001 subnets in the router's table $(( (e - s) / 1000000 )) ms after injection began (injecting took $(jq .ms "$S/inject.json") ms)"
echo "lease put -> route on the router, 200 single additions with 1 000 present:"
ns etcd "$BIN/twill-bench" latency "$ETCD" 200 "$LAB_PREFIX-router" | sed 's/^/  /'

# The per-node shape (each node's BIRD, an FRR router), in namespaces of its own.
BIN=$BIN bash scripts/bench-bgp-nodes.sh
