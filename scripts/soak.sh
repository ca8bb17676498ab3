#!/usr/bin/env bash
# Fault-injection soak; prints figures, asserts nothing. Run as root on Debian 12.
#   3 nodes (scripts/lab.sh), every pod pinging every other every 10 ms, one iperf3 stream
#   p1 -> p2, while faults are injected in turn for SOAK_SECONDS (default 300):
#     etcd-restart      etcd stopped and started again on its data
#     twilld-kill       SIGKILL twilld on n3 and start it again (n1 and n2 run throughout,
#                       so their fd and RSS figures cover the whole soak)
#     chains-flush      iptables -F of FLANNEL-FWD and FLANNEL-POSTRTG on a node
#     route-delete      one peer route deleted on a node
#     device-delete     flannel.1 deleted on a node
#     underlay-flap     the node's eth0 down for 1 s, then up
#     hostile-lease     hostile keys written into etcd (the underlay network, outside
#                       Network, broadcast VtepMAC), left there
#     etcd-compact      etcd compacted to its current revision
#   SOAK_FAULTS limits the faults to a list of those names.
#   Per fault: pod packets lost (all 6 pairs) and the time until the kernel object was back
#   (polled every 10 ms). At the end: kernel objects, fds and RSS of each twilld, before
#   and after.
# Everything runs in namespaces prefixed twsoak<pid>; underlay addresses in 198.18.0.0/15.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cargo build --release -q -p twilld -p twill-cni
SECONDS_TOTAL=${SOAK_SECONDS:-300}
export LAB_PREFIX=twsoak$$ LAB_TWILLD_ARGS="--healthz-port=8471"
P=$LAB_PREFIX
W=/tmp/$P-soak
ETCD_EP=http://198.18.0.100:2379
lab() { bash scripts/lab.sh "$@"; }
nsx() { local ns=$1; shift; ip netns exec "$P-$ns" "$@"; }
ctl() { nsx etcd etcdctl --endpoints "$ETCD_EP" "$@"; }
cleanup() {
  pkill -f "ping -D -O -i 0.01" 2>/dev/null || true
  pkill -f "iperf3 -c 10\\.244" 2>/dev/null || true
  lab down >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
rm -rf "$W"; mkdir -p "$W"
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

faults=(etcd-restart twilld-kill chains-flush route-delete device-delete underlay-flap hostile-lease etcd-compact)
# SOAK_FAULTS="etcd-restart route-delete" injects only those (e.g. to find what grows RSS).
if [[ -n ${SOAK_FAULTS:-} ]]; then
  read -r -a faults <<<"$SOAK_FAULTS"
  for f in "${faults[@]}"; do
    [[ " etcd-restart twilld-kill chains-flush route-delete device-delete underlay-flap hostile-lease etcd-compact " == *" $f "* ]] \
      || { echo "soak: unknown fault '$f'" >&2; exit 2; }
  done
fi
echo "== soak: 3 nodes, ${SECONDS_TOTAL} s of faults"
lab up 3 >/dev/null
pod_ip() { jq -r '.ips[0].address | split("/")[0]' "/tmp/$P/n$1/pod.json"; }
lease() { sed -n 's/^FLANNEL_SUBNET=\(.*\)\.[0-9]*\/\(.*\)$/\1.0\/\2/p' "/tmp/$P/n$1/subnet.env"; }
twilld_pid() { cat "/tmp/$P/n$1/twilld.pid"; }

# Kernel objects twilld owns on node n, one line.
objects() {
  local n=$1
  printf 'routes=%s neigh=%s fdb=%s links=%s fwd_rules=%s masq_rules=%s' \
    "$(nsx "n$n" ip -4 route show dev flannel.1 | wc -l)" \
    "$(nsx "n$n" ip neigh show dev flannel.1 | wc -l)" \
    "$(nsx "n$n" bridge fdb show dev flannel.1 | grep -c dst || true)" \
    "$(nsx "n$n" ip -o link show | wc -l)" \
    "$(nsx "n$n" iptables -S FLANNEL-FWD | grep -c '^-A' || true)" \
    "$(nsx "n$n" iptables -t nat -S FLANNEL-POSTRTG | grep -c '^-A' || true)"
}
proc_figures() { # fds and RSS (kB) of node n's twilld
  local pid; pid=$(twilld_pid "$1")
  printf '%s %s' "$(ls "/proc/$pid/fd" | wc -l)" "$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")"
}

for n in 1 2 3; do echo "$(objects "$n")" > "$W/objects-before-$n"; done
sleep 2 # the daemons' start-up allocations settle first
for n in 1 2 3; do proc_figures "$n" > "$W/proc-before-$n"; done

for a in 1 2 3; do
  for b in 1 2 3; do
    ((a == b)) && continue
    nsx "p$a" ping -D -O -i 0.01 -W 1 "$(pod_ip "$b")" > "$W/ping-$a-$b" 2>&1 &
  done
done
nsx p2 iperf3 -s -D -1 -I "$W/iperf.pid" >/dev/null
sleep 0.3
nsx p1 iperf3 -c "$(pod_ip 2)" -t $((SECONDS_TOTAL + 120)) -J > "$W/iperf.json" 2>&1 &
iperf_client=$!
sleep 2

# wait_for <what to run, true when repaired>: ms until it holds (10 ms polls, 30 s cap).
wait_for() {
  local s e; s=$(now_ms)
  for _ in $(seq 3000); do
    if eval "$1" >/dev/null 2>&1; then e=$(now_ms); echo $((e - s)); return; fi
    sleep 0.01
  done
  echo "never"
}

round=0
end=$(( $(date +%s) + SECONDS_TOTAL ))
: > "$W/faults"
while (( $(date +%s) < end )); do
  round=$((round + 1))
  for f in "${faults[@]}"; do
    (( $(date +%s) < end )) || break
    n=$(( (round % 3) + 1 )); peer=$(( (n % 3) + 1 ))
    start=$(now_ms) window=$start
    case $f in
      etcd-restart)
        lab restart-etcd >/dev/null   # returns once etcd answers again
        repair=$(( $(now_ms) - start ))
        ;;
      twilld-kill)
        n=3
        lab kill-node 3 >/dev/null    # returns once the new twilld logged "ready"
        repair=$(( $(now_ms) - start ))
        ;;
      chains-flush)
        nsx "n$n" iptables -F FLANNEL-FWD
        nsx "n$n" iptables -t nat -F FLANNEL-POSTRTG
        repair=$(wait_for "nsx n$n iptables -S FLANNEL-FWD | grep -q '^-A' && nsx n$n iptables -t nat -S FLANNEL-POSTRTG | grep -q '^-A'")
        ;;
      route-delete)
        nsx "n$n" ip route del "$(lease "$peer")"
        repair=$(wait_for "nsx n$n ip route show $(lease "$peer") | grep -q flannel")
        ;;
      device-delete)
        nsx "n$n" ip link del flannel.1
        repair=$(wait_for "[ \$(nsx n$n ip -4 route show dev flannel.1 | wc -l) -eq 2 ]")
        ;;
      underlay-flap)
        nsx "n$n" ip link set eth0 down; sleep 1; nsx "n$n" ip link set eth0 up
        start=$(now_ms)
        repair=$(wait_for "nsx n$n ping -c1 -W1 -q 198.18.0.$peer && [ \$(nsx n$n ip -4 route show dev flannel.1 | wc -l) -eq 2 ]")
        ;;
      hostile-lease)
        ctl put /coreos.com/network/subnets/198.18.0.0-24 \
          "{\"PublicIP\":\"198.18.0.$((200 + round % 50))\",\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1,\"VtepMAC\":\"02:00:00:00:00:99\"}}" >/dev/null
        # The same keys every round with new values: each is judged again, and the table
        # keeps its size, so RSS growth over rounds means a leak, not more data.
        ctl put /coreos.com/network/subnets/10.99.0.0-24 \
          "{\"PublicIP\":\"198.18.0.$((100 + round % 50))\",\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1,\"VtepMAC\":\"02:00:00:00:00:98\"}}" >/dev/null
        ctl put /coreos.com/network/subnets/10.244.254.0-24 \
          '{"PublicIP":"198.18.0.251","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}}' >/dev/null
        # Nothing to repair: the underlay must simply stay where it is.
        repair=$(wait_for "nsx n$n ip route get 198.18.0.100 | grep -q 'dev eth0'")
        ;;
      etcd-compact)
        rev=$(ctl endpoint status -w json | jq '.[0].Status.header.revision')
        ctl compact "$rev" >/dev/null
        repair=0
        ;;
    esac
    sleep 3 # lets a loss show up before the next fault, and be counted against this one
    echo "$f n$n $window $(now_ms) $repair" >> "$W/faults"
  done
  # Growth shows as a trend over rounds; warm-up as a step in the first ones.
  for n in 1 2; do echo "$(proc_figures "$n")" >> "$W/rounds-$n"; done
done

for n in 1 2 3; do proc_figures "$n" > "$W/proc-after-$n"; echo "$(objects "$n")" > "$W/objects-after-$n"; done
pkill -f "ping -D -O -i 0.01" 2>/dev/null || true
pkill -INT -f "iperf3 -c $(pod_ip 2)" 2>/dev/null || true   # it still writes its JSON summary
wait "$iperf_client" 2>/dev/null || true
sleep 0.5

python3 - "$W" <<'PY'
import glob, json, os, re, sys
w = sys.argv[1]
# Per pinger: every sequence number sent, when, and whether any reply came.
lost_at = []  # timestamps (ms) of sequence numbers never answered
sent = 0
for f in glob.glob(os.path.join(w, "ping-*")):
    replied, pending = set(), {}
    for line in open(f):
        m = re.match(r"\[(\d+\.\d+)\] (.*)", line)
        if not m:
            continue
        ts, rest = float(m.group(1)) * 1000, m.group(2)
        s = re.search(r"icmp_seq=(\d+)", rest)
        if not s:
            continue
        seq = int(s.group(1))
        if rest.startswith("no answer yet"):
            pending.setdefault(seq, ts)
        else:
            replied.add(seq)
    top = max(replied | set(pending) | {0})
    sent += top
    lost_at += [ts for seq, ts in pending.items() if seq not in replied]
faults = [l.split() for l in open(os.path.join(w, "faults"))]
rows = {}
for name, node, start, end, repair in faults:
    start, end = int(start), int(end)
    r = rows.setdefault(name, {"n": 0, "lost": 0, "repair": []})
    r["n"] += 1
    r["lost"] += sum(1 for t in lost_at if start <= t < end)
    if repair != "never":
        r["repair"].append(int(repair))
    else:
        r["repair"].append(None)
print()
print(f"{'fault':<15} {'times':>5} {'pod pkts lost':>13} {'repair ms (median / max)':>26}")
for name, r in rows.items():
    rep = [x for x in r["repair"] if x is not None]
    never = len(r["repair"]) - len(rep)
    med = sorted(rep)[len(rep) // 2] if rep else "-"
    mx = max(rep) if rep else "-"
    extra = f"  ({never} never repaired)" if never else ""
    print(f"{name:<15} {r['n']:>5} {r['lost']:>13} {str(med) + ' / ' + str(mx):>26}{extra}")
print(f"pings sent {sent}, lost {len(lost_at)} in all (6 pod pairs, every 10 ms)")
try:
    j = json.load(open(os.path.join(w, "iperf.json")))
    e = j["end"]["sum_sent"]
    print(f"iperf3 p1->p2: {e['bits_per_second']/1e9:.2f} Gbit/s average, {e.get('retransmits', 0)} retransmits")
except Exception as ex:  # a stream cut short still leaves the table above
    print(f"iperf3: no summary ({ex})")
print()
print(f"{'node':<5} {'fds before/after':>17} {'RSS kB before/after':>20}  kernel objects before -> after")
for n in (1, 2, 3):
    fb, rb = open(os.path.join(w, f"proc-before-{n}")).read().split()
    fa, ra = open(os.path.join(w, f"proc-after-{n}")).read().split()
    ob = open(os.path.join(w, f"objects-before-{n}")).read().strip()
    oa = open(os.path.join(w, f"objects-after-{n}")).read().strip()
    note = " (restarted by twilld-kill)" if n == 3 else ""
    print(f"n{n:<4} {fb + ' / ' + fa:>17} {rb + ' / ' + ra:>20}  {ob} -> {oa}{note}")
for n in (1, 2):
    rounds = [l.split() for l in open(os.path.join(w, f"rounds-{n}"))]
    print(f"n{n} after each round, fds: {' '.join(r[0] for r in rounds)}")
    print(f"n{n} after each round, RSS kB: {' '.join(r[1] for r in rounds)}")
PY
