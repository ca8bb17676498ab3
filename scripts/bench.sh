#!/usr/bin/env bash
# Benchmarks; prints figures, asserts nothing (the machine is a noisy 2-core VM). Run as
# root on Debian 12. Ratios are measured in one run, alternating the two sides.
#   1. kernel programming: twilld's data-plane layer vs ip -batch / bridge -batch;
#      1b. the same with routes through nexthop objects (--route-nexthops)
#      1c. dual stack: every peer on both families, against ip -batch for both
#   2. end to end: 3 twilld nodes, 1 000 then 10 000 leases injected into etcd: time to
#      converge; then put -> route latency (p50/p99) over 200 single additions
#   3. twilld memory (peak RSS) and CPU at 0 / 1 000 / 10 000 peers
#   4. start-up: start -> subnet.env -> /readyz 200
#   6. etcd RPCs issued by the three daemons while 10 000 leases arrive
#   5. data plane: iperf3 pod->pod over twilld's overlay vs the hand-built flannel overlay of
#      ../shared/netlab.sh (same run, alternating) vs the raw underlay, 1 and 4 streams;
#      5b. variants (VXLAN untracked, GRO, UDP checksum, jumbo frames, DirectRouting)
#      against the default, as overlay/underlay ratios; 5c. the host-gw backend against
#      vxlan and the underlay
#   7. Kubernetes mode: one twilld against the fake nodes API with 1 000 then 5 000 peer
#      nodes: time to program them, peak RSS, CPU for 5 000 status-only updates
#   8. repair: deletion -> repair time per kind (p50/p99 over 200), and pings lost at a
#      10 ms interval while a route is deleted (scripts/bench-repair.sh)
#   9. BGP, central feed: 1 000 leases -> all on a BIRD router through ExaBGP, and lease
#      put -> route on the router p50/p99 (scripts/bench-bgp.sh); per node: 1 000 nodes'
#      BIRDs -> all on an FRR router, subnet change -> route p50/p99 (bench-bgp-nodes.sh)
#  10. peer probes: CPU and peak RSS of probing 1 000 peers against a node that does not,
#      and VXLAN blocked -> vxlan-blocked verdict time (scripts/bench-probes.sh)
#  11. dual stack: pod throughput over IPv4 and IPv6 against each raw underlay
#      (scripts/bench-dualstack.sh)
#  12. twilld beside the real flanneld, each figure for both and the ratio
#      (scripts/bench-flanneld.sh); with --plot, an SVG of convergence time and peak RSS
#      against peers for both daemons next to the figures (target/bench/flanneld.{tsv,svg});
#      12b. Kubernetes mode on the real API server, 1 000 and 5 000 peer nodes, both
#      daemons (scripts/bench-kube-flanneld.sh)
# BENCH_TWILLD_ARGS adds daemon flags for sections 2-7 (e.g. --route-nexthops);
# NETLAB=none skips section 5; BENCH_SECTIONS=flanneld runs only 12, =kernel only 1; =core
# runs only 1-4 and 6 (a refactor's check; TWILLD=<another build's twilld> measures that
# build in 2-4 and 6).
set -euo pipefail
cd "$(dirname "$0")/.."
PLOT=$([[ ${1:-} == --plot ]] && echo --plot || true)
section12() {
  echo "== 12. twilld vs the real flanneld"
  bash scripts/bench-flanneld.sh $PLOT | sed 's/^/  /'
  echo "== 12b. Kubernetes mode on the real API server, twilld vs flanneld"
  bash scripts/bench-kube-flanneld.sh | sed 's/^/  /'
}
if [[ ${BENCH_SECTIONS:-all} == flanneld ]]; then
  section12
  exit 0
fi
bash scripts/setup.sh >/dev/null
cargo build --release -q -p twilld -p twill-cni -p twill-bench
cargo build --release -q -p twill-dataplane --example program_peers
ROUNDS=${BENCH_ROUNDS:-3}
P=twb$$
# Real nodes lease from 10.128.0.0 up; injected fake leases use 10.0.1.0 to 10.39.x, so the
# injector never overwrites a real node's lease.
export LAB_PREFIX=$P-lab LAB_NETWORK=10.0.0.0/8 LAB_TWILLD_ARGS="--healthz-port=8471 ${BENCH_TWILLD_ARGS:-}"
export LAB_CONFIG='{"Network":"10.0.0.0/8","SubnetMin":"10.128.0.0","Backend":{"Type":"vxlan"}}'
BIN=target/release
cleanup() {
  bash scripts/lab.sh down >/dev/null 2>&1 || true
  ip netns del "$P-k" 2>/dev/null || true
  rm -rf "/tmp/$P"
}
trap cleanup EXIT
mkdir -p "/tmp/$P"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ms() { echo $(( ($2 - $1) / 1000000 )); }

echo "== 1. kernel programming (fdb + neigh + route per peer), median of $ROUNDS"
ip netns add "$P-k"
ip -n "$P-k" link set lo up
ip -n "$P-k" link add eth0 type veth peer name eth0p
ip -n "$P-k" addr add 198.18.0.1/24 dev eth0
ip -n "$P-k" link set eth0 up
# child_sys_ms: sets KSYS to the kernel CPU time of this shell's finished children, in ms
# (bash's `times`, from getrusage: microseconds, where /proc's ticks are 10 ms; it must run
# in this shell, not in a $(...) of its own, which has no children). A netlink request is
# carried out in its sender's sendmsg, so this is what the kernel spent on ip's batch.
child_sys_ms() {
  local out=/tmp/$P/times.$BASHPID
  times >"$out"
  KSYS=$(awk 'NR == 2 { split($2, t, "m"); sub("s", "", t[2]); printf "%.1f", (t[1] * 60 + t[2]) * 1000 }' \
    "$out")
}
# batch_ms <ip batch file> [more ip batch file]: on a fresh flannel.1, that batch and
# bridge.batch; prints their wall and kernel ms, then (with the second file) the same for
# ip-more.batch + bridge-more.batch, the next peers on top, per peer in ms.
batch_ms() {
  ip -n "$P-k" link add flannel.1 type vxlan id 1 local 198.18.0.1 dev eth0 dstport 8472 nolearning
  ip -n "$P-k" link set flannel.1 up
  # As twilld's device (and program_peers'), it has an address: the kernel checks an
  # onlink nexthop's gateway against the local table.
  ip -n "$P-k" addr add 10.0.0.0/32 dev flannel.1
  local s e k0 k1
  child_sys_ms; k0=$KSYS
  s=$(date +%s%N)
  ip -n "$P-k" -batch "$1"
  bridge -n "$P-k" -batch "/tmp/$P/bridge.batch"
  e=$(date +%s%N)
  child_sys_ms; k1=$KSYS
  printf '%s %s' "$(ms "$s" "$e")" "$(echo "$k1 - $k0" | bc -l)"
  if [ -n "${2:-}" ]; then
    s=$(date +%s%N)
    ip -n "$P-k" -batch "$2"
    bridge -n "$P-k" -batch "/tmp/$P/bridge-more.batch"
    e=$(date +%s%N)
    child_sys_ms; k0=$KSYS
    printf ' %s %s' "$(echo "($e - $s) / 1000000 / $MORE" | bc -l)" "$(echo "($k0 - $k1) / $MORE" | bc -l)"
  fi
  echo
  ip -n "$P-k" link del flannel.1
}
# The peers program_peers adds one at a time on top of N (its MORE).
MORE=200
# one_more_row <n>: the medians of a size's one-peer-more figures (om, omk, ipm, ipmk).
one_more_row() {
  local m=()
  m+=("$(printf '%s\n' "${om[@]}" | median)" "$(printf '%s\n' "${omk[@]}" | median)")
  m+=("$(printf '%s\n' "${ipm[@]}" | median)" "$(printf '%s\n' "${ipmk[@]}" | median)")
  printf '| %s | %.2f ms (%.2f) | %.2f ms (%.2f) |' "$1" "${m[@]}"
}
echo "A netlink request's kernel work is done in its sender's sendmsg, so 'in the kernel' is"
echo "each side's system CPU time (split from user time by the kernel's 100 Hz tick samples:"
echo "rough below ~50 ms). 'kernel floor' is twilld's kernel time over iproute2's wall time:"
echo "the ratio twilld would reach if its own (user-space) work cost nothing."
printf '| peers | twilld program (in the kernel) | iproute2 -batch (in the kernel) | ratio | kernel floor | no-op reconcile | remove all |\n|---|---|---|---|---|---|---|\n'
one_more=()
for n in 100 1000 10000; do
  $BIN/examples/program_peers "$n" "/tmp/$P"
  tw=(); tws=(); ipb=(); ipk=(); noop=(); rm_=(); om=(); omk=(); ipm=(); ipmk=()
  for _ in $(seq "$ROUNDS"); do
    j=$(ip netns exec "$P-k" $BIN/examples/program_peers "$n")
    tw+=("$(jq .program_ms <<<"$j")"); tws+=("$(jq .program_sys_ms <<<"$j")")
    noop+=("$(jq .noop_ms <<<"$j")"); rm_+=("$(jq .remove_ms <<<"$j")")
    om+=("$(jq .one_more_p50_ms <<<"$j")"); omk+=("$(jq .one_more_sys_ms <<<"$j")")
    read -r b k mw mk <<<"$(batch_ms "/tmp/$P/ip.batch" "/tmp/$P/ip-more.batch")"
    ipb+=("$b"); ipk+=("$k"); ipm+=("$mw"); ipmk+=("$mk")
  done
  t=$(printf '%s\n' "${tw[@]}" | median); b=$(printf '%s\n' "${ipb[@]}" | median)
  tk=$(printf '%s\n' "${tws[@]}" | median)
  printf '| %s | %s ms (%s) | %s ms (%s) | %.2f | %.2f | %s ms | %s ms |\n' "$n" "$t" "$tk" "$b" \
    "$(printf '%s\n' "${ipk[@]}" | median)" "$(echo "$t / $b" | bc -l)" "$(echo "$tk / $b" | bc -l)" \
    "$(printf '%s\n' "${noop[@]}" | median)" "$(printf '%s\n' "${rm_[@]}" | median)"
  one_more+=("$(one_more_row "$n")")
done
echo
echo "One peer more at N, $MORE times (twilld: each its own apply, the p50; iproute2: a $MORE-peer batch, per peer):"
printf '| peers | twilld, one apply (in the kernel) | iproute2 -batch, per peer (in the kernel) |\n|---|---|---|\n'
printf '%s\n' "${one_more[@]}"

echo
echo "== 1b. the same with --route-nexthops (one nexthop object per peer, routes by id), median of $ROUNDS"
printf '| peers | twilld program (in the kernel) | iproute2 -batch (in the kernel) | ratio | twilld, nexthops/flanneld form | no-op reconcile | remove all |\n|---|---|---|---|---|---|---|\n'
one_more=()
for n in 100 1000 10000; do
  $BIN/examples/program_peers "$n" "/tmp/$P"
  tw=(); tws=(); plain=(); ipb=(); ipk=(); noop=(); rm_=(); om=(); omk=(); ipm=(); ipmk=()
  for _ in $(seq "$ROUNDS"); do
    # Both forms back to back, so the speed-up is paired within the round.
    j=$(ip netns exec "$P-k" $BIN/examples/program_peers "$n")
    plain+=("$(jq .program_ms <<<"$j")")
    j=$(ip netns exec "$P-k" $BIN/examples/program_peers "$n" --nexthops)
    tw+=("$(jq .program_ms <<<"$j")"); tws+=("$(jq .program_sys_ms <<<"$j")")
    noop+=("$(jq .noop_ms <<<"$j")"); rm_+=("$(jq .remove_ms <<<"$j")")
    om+=("$(jq .one_more_p50_ms <<<"$j")"); omk+=("$(jq .one_more_sys_ms <<<"$j")")
    read -r b k mw mk <<<"$(batch_ms "/tmp/$P/ip-nh.batch" "/tmp/$P/ip-nh-more.batch")"
    ipb+=("$b"); ipk+=("$k"); ipm+=("$mw"); ipmk+=("$mk")
  done
  t=$(printf '%s\n' "${tw[@]}" | median); b=$(printf '%s\n' "${ipb[@]}" | median)
  p=$(printf '%s\n' "${plain[@]}" | median)
  printf '| %s | %s ms (%s) | %s ms (%s) | %.2f | %.2f (%s ms) | %s ms | %s ms |\n' "$n" "$t" \
    "$(printf '%s\n' "${tws[@]}" | median)" "$b" "$(printf '%s\n' "${ipk[@]}" | median)" \
    "$(echo "$t / $b" | bc -l)" "$(echo "$t / $p" | bc -l)" "$p" \
    "$(printf '%s\n' "${noop[@]}" | median)" "$(printf '%s\n' "${rm_[@]}" | median)"
  one_more+=("$(one_more_row "$n")")
done
echo
echo "One peer more at N by nexthop id, $MORE times (as in 1):"
printf '| peers | twilld, one apply (in the kernel) | iproute2 -batch, per peer (in the kernel) |\n|---|---|---|\n'
printf '%s\n' "${one_more[@]}"

echo
echo "== 1c. dual stack: each peer on both families (flannel.1 and flannel-v6.1), median of $ROUNDS"
ip -n "$P-k" addr add 2001:2::1/64 dev eth0 nodad
batch2_ms() { # both devices fresh, then both families' batches, timed in ms
  local s e
  ip -n "$P-k" link add flannel.1 type vxlan id 1 local 198.18.0.1 dev eth0 dstport 8472 nolearning
  ip -n "$P-k" link add flannel-v6.1 type vxlan id 1 local 2001:2::1 dev eth0 dstport 8472 nolearning
  ip -n "$P-k" link set flannel.1 up
  ip -n "$P-k" link set flannel-v6.1 up
  ip -n "$P-k" addr add 10.0.0.0/32 dev flannel.1
  ip -n "$P-k" addr add fd00::/128 dev flannel-v6.1 nodad
  s=$(date +%s%N)
  ip -n "$P-k" -batch "/tmp/$P/ip.batch"
  ip -n "$P-k" -batch "/tmp/$P/ip6.batch"
  bridge -n "$P-k" -batch "/tmp/$P/bridge.batch"
  bridge -n "$P-k" -batch "/tmp/$P/bridge6.batch"
  e=$(date +%s%N)
  ip -n "$P-k" link del flannel.1
  ip -n "$P-k" link del flannel-v6.1
  ms "$s" "$e"
}
printf '| peers (x2 families) | twilld program | iproute2 -batch | ratio | no-op reconcile | remove all |\n|---|---|---|---|---|---|\n'
for n in 1000 10000; do
  $BIN/examples/program_peers "$n" "/tmp/$P" --dual
  tw=(); ipb=(); noop=(); rm_=()
  for _ in $(seq "$ROUNDS"); do
    j=$(ip netns exec "$P-k" $BIN/examples/program_peers "$n" --dual)
    tw+=("$(jq .program_ms <<<"$j")"); noop+=("$(jq .noop_ms <<<"$j")"); rm_+=("$(jq .remove_ms <<<"$j")")
    ipb+=("$(batch2_ms)")
  done
  t=$(printf '%s\n' "${tw[@]}" | median); b=$(printf '%s\n' "${ipb[@]}" | median)
  printf '| %s | %s ms | %s ms | %.2f | %s ms | %s ms |\n' "$n" "$t" "$b" "$(echo "$t / $b" | bc -l)" \
    "$(printf '%s\n' "${noop[@]}" | median)" "$(printf '%s\n' "${rm_[@]}" | median)"
done
ip netns del "$P-k"
if [[ ${BENCH_SECTIONS:-all} == kernel ]]; then
  exit 0
fi

echo
echo "== 2-4, 6. end to end: etcd + 3 twilld nodes in namespaces"
bash scripts/lab.sh up 3 >/dev/null
ETCD=http://198.18.0.100:2379
pids() { for n in 1 2 3; do cat "/tmp/$LAB_PREFIX/n$n/twilld.pid"; done; }
rss() { for p in $(pids); do awk '/VmHWM/ {printf "%.1f ", $2/1024}' "/proc/$p/status"; done; echo "MB (peak RSS per node)"; }
# utime + stime + the children's (the iptables processes each pass runs).
cpu() { local t=0; for p in $(pids); do t=$((t + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat"))); done; echo "$t"; }
# Also counts routes by nexthop id (ip shows their device in the default compat mode).
routes() { ip -n "$LAB_PREFIX-n$1" route show dev flannel.1 | wc -l; }
converge() { # converge <expected routes per node> <start ns>: ms until every node has them
  local want=$1 s=$2 n
  for n in 1 2 3; do while (( $(routes "$n") < want )); do sleep 0.01; done; done
  ms "$s" "$(date +%s%N)"
}
inject() { # inject <count> <first>: in the background, timed from its start
  ip netns exec "$LAB_PREFIX-etcd" $BIN/twill-bench inject "$ETCD" "$1" "$2" > "/tmp/$P/inject.json" &
}
grpc() { ip netns exec "$LAB_PREFIX-etcd" curl -s "$ETCD/metrics" \
  | awk '/^grpc_server_handled_total/ { match($0, /grpc_method="[^"]*"/); m = substr($0, RSTART+13, RLENGTH-14); c[m] += $NF } END { for (k in c) print k, c[k] }' | sort; }
echo "memory at 2 peers: $(rss)"

NETLAB=${NETLAB:-$(cd .. && pwd)/shared/netlab.sh}
SECS=${BENCH_IPERF_SECS:-10}
# Throughput on this VM drifts by a third over minutes. Each round measures the sides
# back to back (order reversed every other round) and the ratios are taken per round,
# then their median: the drift cancels within a round, which a ratio of medians would not.
IPERF_ROUNDS=${BENCH_IPERF_ROUNDS:-5}
ratios() { # ratios <file of "x y" lines>: "median(x/y) min-max"
  awk '{print $1 / $2}' "$1" | sort -g | awk '{r[NR]=$1} END {printf "%.2f (%.2f-%.2f)", r[int((NR+1)/2)], r[1], r[NR]}'
}
CORE_ONLY=$([[ ${BENCH_SECTIONS:-all} == core ]] && echo 1 || true)
if [[ -n $CORE_ONLY ]]; then
  echo "== 5. skipped (BENCH_SECTIONS=core)"
elif [[ -x $NETLAB ]] && ! ip netns list | grep -qE '^(n1|p1|underlay)( |$)'; then
  echo "== 5. data plane: iperf3 TCP ${SECS}s, $IPERF_ROUNDS rounds, sides back to back; medians (ratios: median of per-round ratios, range)"
  "$NETLAB" up >/dev/null 2>&1
  ours=$(jq -r '.ips[0].address | split("/")[0]' "/tmp/$LAB_PREFIX/n2/pod.json")
  hand=$(jq -r '.ips[0].address | split("/")[0]' /tmp/lab/cni/p2-bridge.json)
  ip netns exec "$LAB_PREFIX-p2" iperf3 -s -D -I "/tmp/$P/iperf-a.pid" >/dev/null
  ip netns exec "$LAB_PREFIX-n2" iperf3 -s -D -I "/tmp/$P/iperf-u.pid" >/dev/null
  ip netns exec p2 iperf3 -s -D -I "/tmp/$P/iperf-b.pid" >/dev/null
  sleep 0.5
  gbps() { ip netns exec "$1" iperf3 -c "$2" -t "${4:-$SECS}" -P "$3" -J | jq '.end.sum_received.bits_per_second / 1e9'; }
  printf '| streams | twilld overlay | hand-built overlay | underlay | twilld/hand | twilld/underlay |\n|---|---|---|---|---|---|\n'
  for streams in 1 4; do
    : > "/tmp/$P/ab"; : > "/tmp/$P/au"
    for r in $(seq "$IPERF_ROUNDS"); do
      if (( r % 2 )); then
        a=$(gbps "$LAB_PREFIX-p1" "$ours" "$streams"); b=$(gbps p1 "$hand" "$streams")
        u=$(gbps "$LAB_PREFIX-n1" 198.18.0.2 "$streams")
      else
        u=$(gbps "$LAB_PREFIX-n1" 198.18.0.2 "$streams"); b=$(gbps p1 "$hand" "$streams")
        a=$(gbps "$LAB_PREFIX-p1" "$ours" "$streams")
      fi
      echo "$a $b" >> "/tmp/$P/ab"; echo "$a $u" >> "/tmp/$P/au"
    done
    A=$(awk '{print $1}' "/tmp/$P/ab" | median); B=$(awk '{print $2}' "/tmp/$P/ab" | median)
    U=$(awk '{print $2}' "/tmp/$P/au" | median)
    printf '| %s | %.2f Gbit/s | %.2f Gbit/s | %.2f Gbit/s | %s | %s |\n' "$streams" "$A" "$B" "$U" \
      "$(ratios "/tmp/$P/ab")" "$(ratios "/tmp/$P/au")"
  done
  "$NETLAB" down >/dev/null 2>&1 || true

  # 5b. Can settings on the devices beat flannel's default data plane? Each variant is
  # applied to nodes 1 and 2 (and the switch for jumbo frames), measured pod->pod and
  # node->node alternately, and undone.
  echo "== 5b. data-plane variants, 1 stream, 5 s, $IPERF_ROUNDS rounds: overlay/underlay per variant"
  lab() { bash scripts/lab.sh "$@" >/dev/null; }
  nodes12() { for n in 1 2; do ip netns exec "$LAB_PREFIX-n$n" "$@"; done; }
  set_mtu() { # set_mtu <underlay> <overlay>: every link on the p1 -> p2 path
    local l n
    for l in $(ip -n "$LAB_PREFIX-ul" -o link show master br0 | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip -n "$LAB_PREFIX-ul" link set "$l" mtu "$1"; done
    ip -n "$LAB_PREFIX-ul" link set br0 mtu "$1"
    for n in 1 2; do
      ip -n "$LAB_PREFIX-n$n" link set eth0 mtu "$1"
      ip -n "$LAB_PREFIX-n$n" link set flannel.1 mtu "$2"
      for l in $(ip -n "$LAB_PREFIX-n$n" -o link show master cni0 | awk -F': ' '{print $2}' | cut -d@ -f1); do
        ip -n "$LAB_PREFIX-n$n" link set "$l" mtu "$2"; done
      ip -n "$LAB_PREFIX-n$n" link set cni0 mtu "$2"
      ip -n "$LAB_PREFIX-p$n" link set eth0 mtu "$2"
    done
  }
  recreate_vxlan() { # recreate_vxlan <udpcsum|noudpcsum>: twilld stopped, device rebuilt, twilld adopts it
    local n mac addr
    for n in 1 2; do
      lab stop-node "$n"
      mac=$(ip -n "$LAB_PREFIX-n$n" -j link show flannel.1 | jq -r '.[0].address')
      addr=$(ip -n "$LAB_PREFIX-n$n" -j addr show flannel.1 | jq -r '.[0].addr_info[0].local')
      ip -n "$LAB_PREFIX-n$n" link del flannel.1
      ip -n "$LAB_PREFIX-n$n" link add flannel.1 address "$mac" mtu 1450 type vxlan id 1 \
        local "198.18.0.$n" dev eth0 dstport 8472 nolearning "$1"
      ip -n "$LAB_PREFIX-n$n" addr add "$addr/32" dev flannel.1
      ip -n "$LAB_PREFIX-n$n" link set flannel.1 up
      lab start-node "$n"
    done
    while (( $(routes 1) < 2 || $(routes 2) < 2 )); do sleep 0.05; done
  }
  ratio() { # ratio <name>: 5 s runs, overlay and underlay back to back per round
    : > "/tmp/$P/v"
    for _ in $(seq "$IPERF_ROUNDS"); do
      echo "$(gbps "$LAB_PREFIX-p1" "$ours" 1 5) $(gbps "$LAB_PREFIX-n1" 198.18.0.2 1 5)" >> "/tmp/$P/v"
    done
    printf '| %s | %.2f Gbit/s | %.2f Gbit/s | %s |\n' "$1" "$(awk '{print $1}' "/tmp/$P/v" | median)" \
      "$(awk '{print $2}' "/tmp/$P/v" | median)" "$(ratios "/tmp/$P/v")"
  }
  printf '| variant | overlay | underlay | overlay/underlay |\n|---|---|---|---|\n'
  ratio "default (as flannel: udpcsum, MTU 1500, VXLAN tracked by conntrack)"
  for n in 1 2; do LAB_TWILLD_ARGS="$LAB_TWILLD_ARGS --vxlan-notrack" lab restart-node "$n"; done
  ratio "VXLAN kept out of conntrack (--vxlan-notrack)"
  for n in 1 2; do lab restart-node "$n"; done
  nodes12 ethtool -K eth0 gro on; ratio "GRO on the underlay veths"; nodes12 ethtool -K eth0 gro off
  recreate_vxlan noudpcsum; ratio "VXLAN without UDP checksum"; recreate_vxlan udpcsum
  set_mtu 9000 8950; ratio "jumbo underlay (9000, overlay 8950)"; set_mtu 1500 1450
  nodes12 sysctl -qw net.bridge.bridge-nf-call-iptables=0
  ratio "no br_netfilter on cni0 (not an option with kube-proxy)"
  nodes12 sysctl -qw net.bridge.bridge-nf-call-iptables=1
  # Not a device setting but flannel's own option: with every node on one L2 segment (as
  # here) pod traffic is routed, not encapsulated. Nodes 1 and 2 re-read the config (SIGHUP).
  direct_routing() { # direct_routing <net-conf.json>: to etcd, nodes 1 and 2 reload it
    ip netns exec "$LAB_PREFIX-etcd" etcdctl --endpoints "$ETCD" put /coreos.com/network/config "$1" >/dev/null
    for n in 1 2; do kill -HUP "$(cat "/tmp/$LAB_PREFIX/n$n/twilld.pid")"; done
  }
  direct_routing "$(jq -c '.Backend.DirectRouting = true' <<< "$LAB_CONFIG")"
  while (( $(routes 1) > 0 || $(routes 2) > 0 )); do sleep 0.05; done
  ratio "Backend.DirectRouting (nodes on one L2 segment: no encapsulation)"
  direct_routing "$LAB_CONFIG"
  while (( $(routes 1) < 2 || $(routes 2) < 2 )); do sleep 0.05; done

  # 5c. flannel's host-gw backend against vxlan and the raw underlay. Nodes 1 and 2 switch
  # backends by SIGHUP once per round (node 3 stays on vxlan: each side refuses the
  # other's leases); each round measures both backends and the underlay back to back.
  echo "== 5c. host-gw backend, 1 stream, 5 s, $IPERF_ROUNDS rounds: ratios per round"
  hostgw_conf=$(jq -c '.Backend = {"Type": "host-gw"}' <<< "$LAB_CONFIG")
  hg_routes() { ip -n "$LAB_PREFIX-n$1" route show dev eth0 | grep -c ' via ' || true; }
  backend() { # backend host-gw|vxlan: nodes 1 and 2 reload it, until each routes the other
    if [[ $1 == host-gw ]]; then
      direct_routing "$hostgw_conf"
      while (( $(hg_routes 1) < 1 || $(hg_routes 2) < 1 )); do sleep 0.05; done
    else
      direct_routing "$LAB_CONFIG"
      while (( $(routes 1) < 2 || $(routes 2) < 2 || $(hg_routes 1) > 0 )); do sleep 0.05; done
    fi
  }
  : > "/tmp/$P/hu"; : > "/tmp/$P/hv"
  backend host-gw; current=host-gw
  for r in $(seq "$IPERF_ROUNDS"); do
    declare -A g=()
    g[$current]=$(gbps "$LAB_PREFIX-p1" "$ours" 1 5)
    u=$(gbps "$LAB_PREFIX-n1" 198.18.0.2 1 5)
    current=$([[ $current == host-gw ]] && echo vxlan || echo host-gw)
    backend "$current"
    g[$current]=$(gbps "$LAB_PREFIX-p1" "$ours" 1 5)
    echo "${g[host-gw]} $u" >> "/tmp/$P/hu"; echo "${g[host-gw]} ${g[vxlan]}" >> "/tmp/$P/hv"
  done
  [[ $current == vxlan ]] || backend vxlan
  printf '| host-gw | vxlan | underlay | host-gw/underlay | host-gw/vxlan |\n|---|---|---|---|---|\n'
  printf '| %.2f Gbit/s | %.2f Gbit/s | %.2f Gbit/s | %s | %s |\n' \
    "$(awk '{print $1}' "/tmp/$P/hu" | median)" "$(awk '{print $2}' "/tmp/$P/hv" | median)" \
    "$(awk '{print $2}' "/tmp/$P/hu" | median)" "$(ratios "/tmp/$P/hu")" "$(ratios "/tmp/$P/hv")"
  for f in /tmp/$P/iperf-*.pid; do kill "$(cat "$f")" 2>/dev/null || true; done
else
  echo "== 5. skipped: $NETLAB missing, or its namespaces (n1, p1, underlay) are in use"
fi

s=$(date +%s%N)
bash scripts/lab.sh add-node 4 >/dev/null
while [[ ! -s /tmp/$LAB_PREFIX/n4/subnet.env ]]; do sleep 0.002; done
e1=$(date +%s%N)
until ip netns exec "$LAB_PREFIX-n4" curl -sf http://127.0.0.1:8471/readyz >/dev/null; do sleep 0.002; done
e2=$(date +%s%N)
echo "start-up (4th node): subnet.env after $(ms "$s" "$e1") ms, /readyz 200 after $(ms "$s" "$e2") ms (includes ip netns exec)"
kill "$(cat /tmp/$LAB_PREFIX/n4/twilld.pid)"; sleep 0.3
ip netns exec "$LAB_PREFIX-etcd" etcdctl --endpoints "$ETCD" del "/coreos.com/network/subnets/$(sed -n 's/^FLANNEL_SUBNET=//p' /tmp/$LAB_PREFIX/n4/subnet.env | sed 's/\.1\//.0-/')" >/dev/null
ip netns del "$LAB_PREFIX-n4"; echo 3 > "/tmp/$LAB_PREFIX/nodes"
for n in 1 2 3; do while (( $(routes "$n") != 2 )); do sleep 0.05; done; done

before=$(grpc)
cpu0=$(cpu)
s=$(date +%s%N); inject 1000 0
t=$(converge 1002 "$s"); wait
echo "1 000 leases: every node had programmed all of them $t ms after injection began (injecting took $(jq .ms /tmp/$P/inject.json) ms); $(rss)"
s=$(date +%s%N); inject 9000 1000
t=$(converge 10002 "$s"); wait
echo "10 000 leases: every node had programmed the 9 000 more $t ms after injection began (injecting took $(jq .ms /tmp/$P/inject.json) ms); $(rss)"
cpu1=$(cpu)
echo "CPU seconds of the 3 daemons while taking in 10 000 leases: $(echo "($cpu1 - $cpu0) / $(getconf CLK_TCK)" | bc -l | xargs printf '%.2f')"
after=$(grpc)
echo "etcd RPCs handled during the 10 000-lease phase (all clients, including the injector's Puts):"
join -a1 -e0 -o 0,1.2,2.2 <(echo "$after") <(echo "$before") | awk '$2 - $3 > 0 { printf "  %-16s %d\n", $1, $2 - $3 }'
# The first passes after the burst still read the kernel (the burst touched every entry);
# after that the monitor lets periodic passes skip the read.
sleep 6
cpu1b=$(cpu)
sleep 10
cpu2=$(cpu)
tck=$(getconf CLK_TCK)
echo "CPU in the 6 s after convergence (post-burst full passes): $(echo "($cpu1b - $cpu1) / $tck" | bc -l | xargs printf '%.2f') s for 3 daemons"
echo "idle CPU over the next 10 s at 10 000 peers: $(echo "($cpu2 - $cpu1b) / $tck" | bc -l | xargs printf '%.2f') s for 3 daemons"

echo "put -> route latency, 200 single additions with 10 000 peers present:"
ip netns exec "$LAB_PREFIX-etcd" $BIN/twill-bench latency "$ETCD" 200 "$LAB_PREFIX-n1" "$LAB_PREFIX-n2" "$LAB_PREFIX-n3" | sed 's/^/  /'

# The etcd lab is done with; section 7 runs in a namespace of its own.
bash scripts/lab.sh down >/dev/null 2>&1 || true
[[ -n $CORE_ONLY ]] && exit 0
echo "== 7. Kubernetes mode (FAKE nodes API, kubeadm-sized node objects)"
BIN=$BIN bash scripts/bench-kube.sh | sed 's/^/  /'
echo "== 8. repair at the kernel's word (resync 60 s: only the monitors repair in time)"
BIN=$BIN LAB_PREFIX=$P-rep bash scripts/bench-repair.sh | sed 's/^/  /'
echo "== 9. BGP: twilld exabgp-feed -> ExaBGP -> a BIRD 2 router; each node's BIRD -> FRR"
BIN=$BIN LAB_PREFIX=$P-bgp bash scripts/bench-bgp.sh | sed 's/^/  /'
echo "== 10. peer probes: cost at 1 000 unanswering peers, block -> verdict"
BIN=$BIN LAB_PREFIX=$P-prb bash scripts/bench-probes.sh | sed 's/^/  /'
echo "== 11. dual stack: pod throughput over IPv4 and IPv6, and each raw underlay"
BIN=$BIN LAB_PREFIX=$P-ds bash scripts/bench-dualstack.sh | sed 's/^/  /'
section12
