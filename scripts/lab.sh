#!/usr/bin/env bash
# A twill cluster in network namespaces: an underlay switch, a real etcd, N nodes each
# running twilld, and one pod per node wired by twill's CNI plugin (which delegates to
# Debian's bridge + host-local).
# Nothing is added to the root namespace; every address is in 198.18.0.0/15 (and with
# LAB_DUAL=1 in 2001:2::/64, pods in fd00:10:244::/56 too; with LAB_V6ONLY=1 only those).
#
#   scripts/lab.sh up [N]     build the lab with N nodes (default 3) and pods
#   scripts/lab.sh check      every pod pings every other pod
#   scripts/lab.sh status     leases in etcd and each node's kernel state
#   scripts/lab.sh add-node N one more node N (after up), without a pod
#   scripts/lab.sh add-host NAME IP   a plain host on the underlay (no twilld), e.g. a router
#   scripts/lab.sh stop-node N | start-node N | restart-node N   twilld on node N
#   scripts/lab.sh kill-node N   SIGKILL twilld on node N, then start it again
#   scripts/lab.sh restart-etcd  stop etcd and start it again on the same data
#   scripts/lab.sh stop-etcd | start-etcd  the same in two steps (an outage between them)
#   scripts/lab.sh down       stop everything and delete the namespaces
#
# Env: LAB_PREFIX (namespace prefix, default twlab), TWILLD and TWILL_CNI (binary paths),
# LAB_NETWORK (default 10.244.0.0/16), LAB_CONFIG (the whole net-conf.json instead),
# LAB_TWILLD_ARGS (extra twilld flags), LAB_DUAL=1 (dual stack: an IPv6 underlay beside
# the IPv4 one, EnableIPv6 with LAB_NETWORK6, default fd00:10:244::/56), LAB_V6ONLY=1
# (IPv6-only: EnableIPv4 false, no IPv4 address on the underlay, etcd included), LAB_BACKEND
# (vxlan, the default, or host-gw).
set -euo pipefail

P=${LAB_PREFIX:-twlab}
STATE=/tmp/$P
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TWILLD=${TWILLD:-$ROOT/target/release/twilld}
TWILL_CNI=${TWILL_CNI:-$(dirname "$TWILLD")/twill}
CNI_BIN=/usr/lib/cni
V6ONLY=${LAB_V6ONLY:-0}
ETCD_IP=198.18.0.100 ETCD_IP6=2001:2::100 ETCD_HOST=198.18.0.100
((V6ONLY)) && ETCD_IP= ETCD_HOST="[$ETCD_IP6]"
ETCD_EP=http://$ETCD_HOST:2379
NETWORK=${LAB_NETWORK:-10.244.0.0/16}
DUAL=${LAB_DUAL:-0}
((V6ONLY)) && DUAL=0
NETWORK6=${LAB_NETWORK6:-fd00:10:244::/56}
BACKEND=${LAB_BACKEND:-vxlan}

log() { printf '%s\n' "$*"; }
die() { printf 'lab: %s\n' "$*" >&2; exit 1; }
nsx() { local ns=$1; shift; ip netns exec "$P-$ns" "$@"; }
node_ip() { if ((V6ONLY)); then echo "2001:2::$1"; else echo "198.18.0.$1"; fi; }
node_ip6() { echo "2001:2::$1"; }
nodes() { cat "$STATE/nodes" 2>/dev/null || echo 0; }

start_bg() { # start_bg <pidfile> <logfile> cmd...: detached, survives this script
  local pidfile=$1 logfile=$2; shift 2
  setsid sh -c 'echo $$ > "$0"; exec "$@"' "$pidfile" "$@" >"$logfile" 2>&1 </dev/null &
}

add_host() { # add_host <name> <ip> [ip6]
  ip netns add "$P-$1"
  ip -n "$P-$1" link set lo up
  ip -n "$P-ul" link add "ul-$1" type veth peer name eth0 netns "$P-$1"
  ip -n "$P-ul" link set "ul-$1" master br0 up
  [[ -z $2 ]] || ip -n "$P-$1" addr add "$2/24" dev eth0
  # nodad: a tentative address drops traffic for the second DAD takes.
  [[ -z ${3:-} ]] || ip -n "$P-$1" addr add "$3/64" dev eth0 nodad
  ip -n "$P-$1" link set eth0 up
}

start_node() { # start_node <n>
  local n=$1 d=$STATE/n$1
  mkdir -p "$d"
  start_bg "$d/twilld.pid" "$d/twilld.log" ip netns exec "$P-n$n" "$TWILLD" \
    --etcd-endpoints "$ETCD_EP" --iface eth0 --ip-masq \
    --subnet-file "$d/subnet.env" --iptables-resync 2 ${LAB_TWILLD_ARGS:-}
}

wait_file() { local i; for i in $(seq 150); do [[ -s $1 ]] && return 0; sleep 0.1; done; return 1; }

env_get() { sed -n "s/^$2=//p" "$1"; }

add_pod() { # add_pod <n>: pod namespace p<n> on node n, wired by our twill CNI plugin
  local n=$1 d=$STATE/n$1 conf
  ip netns add "$P-p$n"
  conf=$(printf '{"cniVersion":"1.0.0","name":"cbr0","type":"twill","subnetFile":"%s","dataDir":"%s","ipam":{"dataDir":"%s"},"delegate":{"hairpinMode":true,"isDefaultGateway":true}}' \
    "$d/subnet.env" "$d/cni-state" "$d/ipam")
  nsx "n$n" env CNI_COMMAND=ADD CNI_CONTAINERID="lab-p$n" CNI_NETNS="/run/netns/$P-p$n" \
    CNI_IFNAME=eth0 CNI_PATH=$CNI_BIN "$TWILL_CNI" <<<"$conf" > "$d/pod.json" \
    || die "CNI ADD for pod p$n failed: $(cat "$d/pod.json")"
  nsx "p$n" ip link set lo up
}

pod_ip() { jq -r '.ips[0].address | split("/")[0]' "$STATE/n$1/pod.json"; }
pod_ip6() { jq -r '[.ips[] | select(.address | contains(":"))][0].address | split("/")[0]' "$STATE/n$1/pod.json"; }
ip4_of() { ((V6ONLY)) || node_ip "$1"; }
ip6_of() { ((DUAL || V6ONLY)) && node_ip6 "$1" || true; }

start_etcd() { # the lab's etcd, on its data dir (kept across restarts); waits until healthy
  start_bg "$STATE/etcd.pid" "$STATE/etcd.log" ip netns exec "$P-etcd" etcd --name lab \
    --data-dir "$STATE/etcd-data" --listen-client-urls "$ETCD_EP" --advertise-client-urls "$ETCD_EP" \
    --listen-peer-urls "http://$ETCD_HOST:2380" --initial-advertise-peer-urls "http://$ETCD_HOST:2380" \
    --initial-cluster "lab=http://$ETCD_HOST:2380"
  for _ in $(seq 100); do nsx etcd etcdctl --endpoints "$ETCD_EP" endpoint health >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "etcd did not come up; see $STATE/etcd.log"
}

stop_etcd() { # SIGTERM etcd and wait for it to exit
  local pid
  pid=$(cat "$STATE/etcd.pid")
  kill "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
}

restart_etcd() { stop_etcd; start_etcd; }

kill_node() { # kill_node <n>: SIGKILL twilld (no clean stop at all), then start it again
  local f=$STATE/n$1/twilld.pid
  [[ -f $f ]] || die "no node n$1"
  kill -9 "$(cat "$f")" 2>/dev/null || true
  while kill -0 "$(cat "$f")" 2>/dev/null; do sleep 0.05; done
  start_node "$1"
  wait_ready "$1"
}

up() {
  local count=${1:-3} n
  [[ -x $TWILLD && -x $TWILL_CNI ]] || die "no twilld/twill binaries next to $TWILLD: run 'bash scripts/setup.sh && cargo build --release -p twilld -p twill-cni' first (scripts/demo.sh does both)"
  bash "$ROOT/scripts/setup.sh" test >/dev/null
  [[ -e /run/netns/$P-ul ]] && die "a lab with prefix $P is already up (scripts/lab.sh down first)"
  mkdir -p "$STATE"; echo "$count" > "$STATE/nodes"
  ip netns add "$P-ul"
  ip -n "$P-ul" link set lo up
  ip -n "$P-ul" link add br0 type bridge
  ip -n "$P-ul" link set br0 up
  # The underlay is a plain switch: with br_netfilter loaded, bridged frames would
  # otherwise traverse iptables here (not part of any node), costing throughput.
  nsx ul sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 2>/dev/null || true
  add_host etcd "$ETCD_IP" "$( ((DUAL || V6ONLY)) && echo "$ETCD_IP6" || true)"
  start_etcd
  local conf=${LAB_CONFIG:-}
  if [[ -z $conf ]] && ((V6ONLY)); then
    conf="{\"EnableIPv4\":false,\"EnableIPv6\":true,\"IPv6Network\":\"$NETWORK6\",\"Backend\":{\"Type\":\"$BACKEND\"}}"
  elif [[ -z $conf ]] && ((DUAL)); then
    conf="{\"Network\":\"$NETWORK\",\"EnableIPv6\":true,\"IPv6Network\":\"$NETWORK6\",\"Backend\":{\"Type\":\"$BACKEND\"}}"
  fi
  [[ -n $conf ]] || conf="{\"Network\":\"$NETWORK\",\"Backend\":{\"Type\":\"$BACKEND\"}}"
  nsx etcd etcdctl --endpoints "$ETCD_EP" put /coreos.com/network/config "$conf" >/dev/null
  log "etcd up at $ETCD_EP (netns $P-etcd), config written"
  for n in $(seq "$count"); do
    add_host "n$n" "$(ip4_of "$n")" "$(ip6_of "$n")"
    nsx "n$n" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    start_node "$n"
  done
  for n in $(seq "$count"); do
    wait_file "$STATE/n$n/subnet.env" || die "node n$n wrote no subnet.env; log: $STATE/n$n/twilld.log"
    add_pod "$n"
    if ((V6ONLY)); then
      log "node n$n ($(node_ip6 "$n")): $(env_get "$STATE/n$n/subnet.env" FLANNEL_IPV6_SUBNET), pod p$n = $(pod_ip "$n")"
    elif ((DUAL)); then
      log "node n$n ($(node_ip "$n"), $(node_ip6 "$n")): $(env_get "$STATE/n$n/subnet.env" FLANNEL_SUBNET) $(env_get "$STATE/n$n/subnet.env" FLANNEL_IPV6_SUBNET), pod p$n = $(pod_ip "$n") $(pod_ip6 "$n")"
    else
      log "node n$n ($(node_ip "$n")): $(env_get "$STATE/n$n/subnet.env" FLANNEL_SUBNET), pod p$n = $(pod_ip "$n")"
    fi
  done
}

add_node() { # add_node <n>: one more node, started (no pod)
  local n=$1
  add_host "n$n" "$(ip4_of "$n")" "$(ip6_of "$n")"
  nsx "n$n" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
  start_node "$n"
  echo "$n" > "$STATE/nodes"
}

check() {
  local count a b fails=0
  count=$(nodes)
  for a in $(seq "$count"); do
    for b in $(seq "$count"); do
      [[ $a == "$b" ]] && continue
      local to
      for to in "$(pod_ip "$b")" $( ((DUAL)) && pod_ip6 "$b"); do
        if nsx "p$a" ping -c 2 -i 0.2 -W 2 -q "$to" >/dev/null; then
          log "p$a -> p$b ($to): ok"
        else
          log "p$a -> p$b ($to): FAILED"; fails=$((fails + 1))
        fi
      done
    done
  done
  ((fails == 0)) || die "$fails pod pairs cannot reach each other"
}

status() {
  local n
  log "== leases in etcd"
  nsx etcd etcdctl --endpoints "$ETCD_EP" get --prefix /coreos.com/network/subnets/ | paste - - | sed 's/^/  /'
  for n in $(seq "$(nodes)"); do
    log "== n$n"
    if ! nsx "n$n" ip link show flannel.1 >/dev/null 2>&1 \
      && ! nsx "n$n" ip link show flannel-v6.1 >/dev/null 2>&1; then
      # host-gw: no device, a route per peer subnet via the peer's address.
      nsx "n$n" ip route show dev eth0 | grep ' via ' | sed 's/^/  route /' || true
      nsx "n$n" ip -6 route show dev eth0 | grep ' via ' | sed 's/^/  route /' || true
      continue
    fi
    if ! ((V6ONLY)); then
      nsx "n$n" ip -br addr show dev flannel.1 | sed 's/^/  /'
      nsx "n$n" ip route show dev flannel.1 | sed 's/^/  route /'
      nsx "n$n" ip neigh show dev flannel.1 | sed 's/^/  neigh /'
      nsx "n$n" bridge fdb show dev flannel.1 | sed 's/^/  fdb   /'
    fi
    if ((DUAL || V6ONLY)); then
      nsx "n$n" ip -br addr show dev flannel-v6.1 | sed 's/^/  /'
      nsx "n$n" ip -6 route show dev flannel-v6.1 | grep -v '^fe80' | sed 's/^/  route /'
      nsx "n$n" ip -6 neigh show dev flannel-v6.1 | grep -v '^fe80' | sed 's/^/  neigh /'
      nsx "n$n" bridge fdb show dev flannel-v6.1 | sed 's/^/  fdb   /'
    fi
  done
}

stop_node() { # stop_node <n>: SIGTERM; the data plane stays, as on any twilld stop
  local f=$STATE/n$1/twilld.pid
  [[ -f $f ]] || die "no node n$1"
  kill "$(cat "$f")" 2>/dev/null || true
  while kill -0 "$(cat "$f")" 2>/dev/null; do sleep 0.05; done
}

wait_ready() { # wait_ready <n>: the running twilld logged "ready" (its log starts afresh)
  local i
  for i in $(seq 150); do grep -q ': ready subnet=' "$STATE/n$1/twilld.log" && return 0; sleep 0.1; done
  die "n$1 did not become ready; see $STATE/n$1/twilld.log"
}

restart_node() { # restart_node <n>: stop, then start with the same flags
  stop_node "$1"
  start_node "$1"
  wait_ready "$1"
}

down() {
  local f ns
  for f in "$STATE"/n*/twilld.pid "$STATE"/etcd.pid; do
    [[ -f $f ]] && kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  # A mount under the state (scripts/bench-flanneld.sh puts etcd's data on a tmpfs) would
  # keep rm from removing it.
  findmnt -rn -o TARGET | awk -v s="$STATE/" 'index($0, s) == 1' | sort -r | xargs -r umount 2>/dev/null || true
  rm -rf "$STATE"
}

case ${1:-} in
  up) shift; up "$@" ;;
  add-node) shift; add_node "$@" ;;
  add-host) shift; add_host "$@" ;;
  stop-node) shift; stop_node "$@" ;;
  start-node) shift; start_node "$1"; wait_ready "$1" ;;
  restart-node) shift; restart_node "$@" ;;
  kill-node) shift; kill_node "$@" ;;
  restart-etcd) restart_etcd ;;
  stop-etcd) stop_etcd ;;
  start-etcd) start_etcd ;;
  check) check ;;
  status) status ;;
  down) down ;;
  *) sed -n '2,24p' "$0"; exit 2 ;;
esac
