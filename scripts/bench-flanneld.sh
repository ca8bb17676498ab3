#!/usr/bin/env bash
# twilld beside the real flanneld (v0.28.9, scripts/setup.sh reference): the same 3-node lab
# on one etcd, built anew for each daemon in turn in one run, the same leases injected the
# same way; prints each figure for both and the ratio twill / flanneld. Figures, not
# assertions (a noisy 2-core VM). Run as root on Debian 12; BENCH_FLANNELD_ROUNDS pairs
# more runs (each round: twilld then flanneld, order reversed every other round);
# BENCH_TWILLD_ARGS are extra twilld flags (e.g. --peer-probe-interval=0: what probing
# the injected peers, which answer nothing, costs); BENCH_RPC_SECONDS (default 600) is how
# long each daemon's idle etcd RPCs are counted; BENCH_OUT (default target/bench) gets the
# figures as flanneld.tsv, and with --plot flanneld.svg beside them (gnuplot: convergence
# time and peak RSS against peers, both daemons).
set -euo pipefail
cd "$(dirname "$0")/.."
PLOT=$([[ ${1:-} == --plot ]] && echo 1 || true)
bash scripts/setup.sh >/dev/null
bash scripts/setup.sh reference >/dev/null
[[ -z $PLOT ]] || bash scripts/setup.sh bench >/dev/null
RESULTS=${BENCH_OUT:-$PWD/target/bench}
RPC_SECONDS=${BENCH_RPC_SECONDS:-600}
mkdir -p "$RESULTS"
cargo build --release -q -p twilld -p twill-cni -p twill-bench
BIN=$PWD/target/release
version=$(awk '$1 == "flanneld" { split($2, m, "@"); print m[2] }' scripts/reference-versions)
FLANNELD=${TWILL_REFERENCE_CACHE:-/var/cache/twill/reference}/flanneld@$version/flanneld
[[ -x $FLANNELD ]] || { echo "bench-flanneld: $FLANNELD missing" >&2; exit 1; }
ROUNDS=${BENCH_FLANNELD_ROUNDS:-1}
P=twf$$
OUT=/tmp/$P
mkdir -p "$OUT"
export LAB_NETWORK=10.0.0.0/8 TWILL_CNI=$BIN/twill LAB_TWILLD_ARGS=""
# Real nodes lease from 10.128.0.0 up; the injected leases take 10.0.1.0 to 10.39.x.
export LAB_CONFIG='{"Network":"10.0.0.0/8","SubnetMin":"10.128.0.0","Backend":{"Type":"vxlan"}}'
ETCD=http://198.18.0.100:2379
cleanup() { bash scripts/lab.sh down >/dev/null 2>&1 || true; rm -rf "$OUT"; }
trap cleanup EXIT

ms() { echo $(( ($2 - $1) / 1000000 )); }
pids() { for n in 1 2 3; do cat "/tmp/$LAB_PREFIX/n$n/twilld.pid"; done; }
# A /proc/<pid>/status figure in MB, largest of the three: VmHWM is the peak resident set;
# RssAnon the daemon's own pages (heap, stacks), RssFile its program text and libraries,
# shared with the page cache.
rss_kind() { for p in $(pids); do awk -v k="$1:" '$1 == k {print $2/1024}' "/proc/$p/status"; done | sort -n | tail -1; }
rss() { rss_kind VmHWM; }
breakdown() { # where one daemon's resident set sits, MB, by mapping (node 1's)
  local p; p=$(cat "/tmp/$LAB_PREFIX/n1/twilld.pid")
  awk -v bin="$(readlink -f "/proc/$p/exe")" '
    /^[0-9a-f]+-[0-9a-f]+ / { name = $6; what = (name == bin) ? "program" : (name ~ /\.so/) ? "libraries" : (name == "[heap]") ? "heap" : (name ~ /^\[stack/) ? "stacks" : (name == "") ? "anonymous maps (thread stacks, allocator arenas)" : "other" }
    /^Rss:/ { kb[what] += $2 }
    END { for (w in kb) printf "breakdown %s: %.1f\n", w, kb[w] / 1024 }' "/proc/$p/smaps"
  echo "breakdown threads: $(awk '/^Threads:/ {print $2}' "/proc/$p/status")"
  # twilld's release build packs the code it runs into .text.hot (crates/twilld/build.rs).
  local hot
  hot=$(readelf -SW "/proc/$p/exe" 2>/dev/null | awk '$2 == ".text.hot" {print $6}')
  [[ -z $hot ]] || echo "breakdown of the program text, packed as run (.text.hot): $(echo "$((16#$hot)) / 1048576" | bc -l | xargs printf '%.1f')"
}
# Both daemons serve /healthz and /readyz here; 0 (off) is the default of both.
HEALTHZ_PORT=8285
ready_poll() { # ready_poll <n>: waits for node n's namespace, then for its daemon's /readyz
  # to answer 200, and prints when (seconds since the epoch), or "-" after 120 s. Started
  # before the lab, it enters the namespace itself (setns) the moment it exists: `ip netns
  # exec` and an interpreter's start after that took longer than the daemon does.
  python3 -c '
import ctypes, os, socket, sys, time
end = time.time() + 120
libc = ctypes.CDLL(None, use_errno=True)
while time.time() < end:
    try:
        fd = os.open("/run/netns/" + sys.argv[1], os.O_RDONLY)
    except OSError:
        time.sleep(0.002)
        continue
    # Fails until "ip netns add" has bind-mounted the namespace on the file.
    ok = libc.setns(fd, 0x40000000) == 0  # CLONE_NEWNET
    os.close(fd)
    if ok:
        break
    time.sleep(0.002)
while time.time() < end:
    try:
        with socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=0.2) as s:
            s.sendall(b"GET /readyz HTTP/1.0\r\nHost: n\r\n\r\n")
            if s.recv(64).split(b" ")[1:2] == [b"200"]:
                print(f"{time.time():.6f}")
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.002)
print("-")' "$LAB_PREFIX-n$1" "$HEALTHZ_PORT"
}
start_ready() { # daemon started (its pid file) -> /readyz 200, ms, slowest of the three ("-"
  # if one never answered 200)
  local n
  for n in 1 2 3; do
    echo "$(stat -c %.9Y "/tmp/$LAB_PREFIX/n$n/twilld.pid") $(cat "$OUT/ready.$n")"
  done | awk '$2 == "-" { never = 1 } $2 != "-" && ($2 - $1) * 1000 > max { max = ($2 - $1) * 1000 }
    END { if (never) print "-"; else printf "%d\n", max }'
}
start_env() { # daemon started (its pid file) -> subnet.env written, ms, slowest of the three
  local n
  for n in 1 2 3; do
    awk -v a="$(stat -c %.9Y "/tmp/$LAB_PREFIX/n$n/twilld.pid")" -v b="$(stat -c %.9Y "/tmp/$LAB_PREFIX/n$n/subnet.env")" \
      'BEGIN { printf "%d\n", (b - a) * 1000 }'
  done | sort -n | tail -1
}
cpu() { local t=0; for p in $(pids); do t=$((t + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat"))); done; echo "$t"; }
routes() { ip -n "$LAB_PREFIX-n$1" route show dev flannel.1 | wc -l; }
converge() { # converge <routes per node> <start ns>: ms until every node has them (or "-" after 600 s)
  local want=$1 s=$2 n
  for n in 1 2 3; do
    while (( $(routes "$n") < want )); do
      (( ($(date +%s%N) - s) / 1000000000 < 600 )) || { echo "-"; return; }
      sleep 0.01
    done
  done
  ms "$s" "$(date +%s%N)"
}
back() { # back <seconds> <command...>: ms until the command succeeds, or "-" after <seconds>
  local limit=$1 s; shift
  s=$(date +%s%N)
  until "$@" >/dev/null 2>&1; do
    (( ($(date +%s%N) - s) / 1000000000 < limit )) || { echo "-"; return; }
    sleep 0.01
  done
  ms "$s" "$(date +%s%N)"
}
routed() { # routed <cidr> <node...>: every node named routes <cidr> over flannel.1
  local cidr=$1 n; shift
  for n in "$@"; do [[ -n $(ip -n "$LAB_PREFIX-n$n" route show "$cidr" dev flannel.1) ]] || return 1; done
}
has_route() { routed "$1" 1; }
# Requests etcd has received: gRPC messages from clients, so a unary call counts once and
# a stream (watch, lease keep-alive) once per message on it. "methods": "method count" lines.
grpc() { ip netns exec "$LAB_PREFIX-etcd" curl -s "$ETCD/metrics" \
  | awk -v per="${1:-}" '/^grpc_server_msg_received_total/ { match($0, /grpc_method="[^"]*"/); m = substr($0, RSTART+13, RLENGTH-14); c[m] += $NF; t += $NF }
      END { if (per == "") print t + 0; else for (k in c) print k, c[k] }' | sort; }
masq_rules() { ip netns exec "$LAB_PREFIX-n1" iptables -t nat -S FLANNEL-POSTRTG 2>/dev/null | grep -c '^-A' || true; }
rules_back() { (( $(masq_rules) >= $1 )); }
restart_loss() { # new outbound connections from pod 1 to the etcd host failed while node 1's daemon restarts
  local ok=0 failed=0 end listener restart
  ip netns exec "$LAB_PREFIX-etcd" python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.18.0.100", 9999)); s.listen(512)
while True: s.accept()[0].close()' &
  listener=$!
  sleep 0.5
  # start-node waits for twilld's "ready" line, which flanneld does not write: its
  # complaint about that is not this figure's business.
  ( sleep 2; bash scripts/lab.sh stop-node 1 >/dev/null; bash scripts/lab.sh start-node 1 >/dev/null 2>&1 ) &
  restart=$!
  end=$(( $(date +%s) + 12 ))
  while (( $(date +%s) < end )); do
    if ip netns exec "$LAB_PREFIX-p1" timeout 0.5 bash -c 'exec 3<>/dev/tcp/198.18.0.100/9999' 2>/dev/null; then
      ok=$((ok + 1))
    else
      failed=$((failed + 1))
    fi
  done
  wait "$restart" || true
  kill "$listener" 2>/dev/null || true
  echo "$failed $((ok + failed))"
}
put_route() { # put_route <key prefix>: 200 puts at node 1, timed to its route (twill-bench latency)
  ip netns exec "$LAB_PREFIX-etcd" "$BIN/twill-bench" latency "$ETCD" 200 "$LAB_PREFIX-n1" \
    | jq -r --arg p "$1" '"\($p)put_route_p50_ms \(.p50_ms)\n\($p)put_route_p99_ms \(.p99_ms)\n\($p)put_commit_p99_ms \(.commit_p99_ms)\n\($p)after_commit_p50_ms \(.after_commit_p50_ms)\n\($p)after_commit_p99_ms \(.after_commit_p99_ms)"'
}
inject() { # inject <count> <first>: timed from its start, in the background
  ip netns exec "$LAB_PREFIX-etcd" "$BIN/twill-bench" inject "$ETCD" "$1" "$2" > "$OUT/inject.json" &
}

measure() { # measure <name> <daemon>: one lab, one daemon; figures to $OUT/<name>.<round>
  local name=$1 daemon=$2 f=$OUT/$1.$round s t inj c0 c1 c2 tck n pollers=()
  export LAB_PREFIX=$P-$name TWILLD=$daemon LAB_TWILLD_ARGS="--healthz-port $HEALTHZ_PORT"
  [[ $name == twilld ]] && LAB_TWILLD_ARGS+=" ${BENCH_TWILLD_ARGS:-}"
  tck=$(getconf CLK_TCK)
  for n in 1 2 3; do ready_poll "$n" > "$OUT/ready.$n" & pollers+=($!); done
  s=$(date +%s%N)
  bash scripts/lab.sh up 3 >/dev/null
  echo "startup_ms $(( ($(date +%s%N) - s) / 1000000 ))" > "$f"
  wait "${pollers[@]}"
  echo "start_env_ms $(start_env)" >> "$f"
  echo "start_ready_ms $(start_ready)" >> "$f"
  echo "rss_2 $(rss)" >> "$f"
  echo "anon_2 $(rss_kind RssAnon)" >> "$f"
  echo "file_2 $(rss_kind RssFile)" >> "$f"
  breakdown > "$OUT/$1.breakdown"
  # etcd RPCs the three daemons make while nothing changes, per node's lease, scaled to
  # 10 minutes; nothing else talks to etcd meanwhile.
  local g0 m0
  g0=$(grpc); m0=$(grpc methods)
  sleep "$RPC_SECONDS"
  echo "rpcs_per_lease_10min $(echo "($(grpc) - $g0) / 3 * 600 / $RPC_SECONDS" | bc -l | xargs printf '%.1f')" >> "$f"
  join <(grpc methods) <(echo "$m0") | awk '$2 > $3 { printf "%s %d  ", $1, $2 - $3 } END { print "" }' > "$OUT/$1.rpcs"
  c0=$(cpu)
  s=$(date +%s%N); inject 1000 0
  t=$(converge 1002 "$s"); wait
  inj=$(jq .ms "$OUT/inject.json")
  echo "conv_1000_after_last_put_ms $([[ $t == - ]] && echo - || echo $((t - inj)))" >> "$f"
  echo "rss_1000 $(rss)" >> "$f"
  echo "anon_1000 $(rss_kind RssAnon)" >> "$f"
  s=$(date +%s%N); inject 9000 1000
  t=$(converge 10002 "$s"); wait
  inj=$(jq .ms "$OUT/inject.json")
  echo "conv_10000_after_last_put_ms $([[ $t == - ]] && echo - || echo $((t - inj)))" >> "$f"
  echo "rss_10000 $(rss)" >> "$f"
  echo "anon_10000 $(rss_kind RssAnon)" >> "$f"
  c1=$(cpu)
  echo "cpu_10000_s $(echo "($c1 - $c0) / $tck" | bc -l | xargs printf '%.2f')" >> "$f"
  sleep 10
  c2=$(cpu)
  sleep 10
  echo "idle_cpu_10s $(echo "($(cpu) - $c2) / $tck" | bc -l | xargs printf '%.2f')" >> "$f"
  put_route "" >> "$f"
  # The same with nodes 2 and 3's daemons stopped (SIGSTOP): one daemon programming each
  # route, as on a cluster, where every node has a kernel and CPUs of its own. In the lab
  # the three share one kernel (RTNL, which every route insertion holds, and the fib_info
  # chain it walks meanwhile) and the VM's two cores with etcd. They are let go after.
  local others
  others=$(pids | sed 1d)
  kill -STOP $others
  put_route alone_ >> "$f"
  kill -CONT $others
  sleep 5
  # Repair at 10 000 peers: one peer's route deleted on node 1, then its MASQUERADE chain
  # flushed (both daemons run with --iptables-resync 2 here; flanneld's default is 5).
  local r n
  r=$(ip -n "$LAB_PREFIX-n1" route show dev flannel.1 | awk 'NR == 1 {print $1}')
  ip -n "$LAB_PREFIX-n1" route del "$r" dev flannel.1
  echo "repair_route_ms $(back 30 has_route "$r")" >> "$f"
  n=$(masq_rules)
  ip netns exec "$LAB_PREFIX-n1" iptables -t nat -F FLANNEL-POSTRTG
  echo "repair_chain_ms $(back 30 rules_back "$n")" >> "$f"
  restart_loss > "$OUT/$name.restart.$round"
  echo "restart_failed $(awk '{print $1}' "$OUT/$name.restart.$round")" >> "$f"
  echo "restart_tried $(awk '{print $2}' "$OUT/$name.restart.$round")" >> "$f"
  # etcd down for 30 s (flannel #2171): the daemons' CPU meanwhile; then one lease put as
  # soon as etcd is healthy again: how long until every node routes it.
  local c3
  c3=$(cpu)
  bash scripts/lab.sh stop-etcd
  sleep 30
  echo "outage_cpu_30s $(echo "($(cpu) - $c3) / $tck" | bc -l | xargs printf '%.2f')" >> "$f"
  bash scripts/lab.sh start-etcd
  # Index 50000 is 10.195.81.0/24 (twill-bench: lease i is 10.0.0.0 + ((i + 1) << 8)).
  ip netns exec "$LAB_PREFIX-etcd" "$BIN/twill-bench" inject "$ETCD" 1 50000 >/dev/null
  echo "after_outage_ms $(back 120 routed 10.195.81.0/24 1 2 3)" >> "$f"
  # put -> route again with etcd's data on a tmpfs, where its WAL fsync costs nothing:
  # whether the disk is what etcd's share of the figure is (on this VM it was not: README,
  # Benchmarks). Lease 50001 (10.195.82.0/24) routed on every node first: the daemons are
  # back on the restarted etcd.
  local data=/tmp/$LAB_PREFIX/etcd-data
  bash scripts/lab.sh stop-etcd
  mv "$data" "$data.disk"
  mkdir "$data"
  mount -t tmpfs -o size=1g twill-bench "$data"
  cp -a "$data.disk/." "$data/"
  bash scripts/lab.sh start-etcd
  ip netns exec "$LAB_PREFIX-etcd" "$BIN/twill-bench" inject "$ETCD" 1 50001 >/dev/null
  back 120 routed 10.195.82.0/24 1 2 3 >/dev/null
  # A restarted etcd and daemons that just came back are slower for a while (compaction,
  # re-watches, a full pass): let that pass before timing.
  sleep 20
  put_route tmpfs_ >> "$f"
  bash scripts/lab.sh down >/dev/null 2>&1 || true
}

for round in $(seq "$ROUNDS"); do
  if (( round % 2 )); then
    measure twilld "$BIN/twilld"; measure flanneld "$FLANNELD"
  else
    measure flanneld "$FLANNELD"; measure twilld "$BIN/twilld"
  fi
done

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "== twilld vs flanneld $version: 3 nodes, one etcd, $ROUNDS round(s), medians; ratio = twill / flanneld"
printf '| figure | twilld | flanneld | ratio |\n|---|---|---|---|\n'
printf 'figure\ttwilld\tflanneld\n' > "$RESULTS/flanneld.tsv"
while read -r key label; do
  # "-" is a figure not reached in its time; a daemon that never reached it has none.
  tw=$(cat "$OUT"/twilld.[0-9]* | awk -v k="$key" '$1 == k && $2 != "-" {print $2}' | median)
  fl=$(cat "$OUT"/flanneld.[0-9]* | awk -v k="$key" '$1 == k && $2 != "-" {print $2}' | median)
  ratio=$(awk -v a="$tw" -v b="$fl" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }')
  printf '| %s | %s | %s | %s |\n' "$label" "${tw:-not reached}" "${fl:-not reached}" "$ratio"
  printf '%s\t%s\t%s\n' "$key" "${tw:--}" "${fl:--}" >> "$RESULTS/flanneld.tsv"
done <<'EOF'
startup_ms lab up (3 nodes to subnet.env and pods wired), ms
start_env_ms daemon start -> subnet.env (slowest of 3 nodes), ms
start_ready_ms daemon start -> /readyz 200 (slowest of 3 nodes), ms
conv_1000_after_last_put_ms 1 000 leases programmed on every node, ms after the last put
conv_10000_after_last_put_ms 9 000 more (10 000), ms after the last put
put_route_p50_ms put -> route at 10 000 peers, p50 ms
put_route_p99_ms put -> route at 10 000 peers, p99 ms
put_commit_p99_ms of which etcd: put -> etcd's answer, p99 ms
after_commit_p50_ms of which the daemon: etcd's answer -> route, p50 ms
after_commit_p99_ms of which the daemon: etcd's answer -> route, p99 ms
alone_put_route_p50_ms the same with the other 2 nodes' daemons stopped (one daemon per kernel), p50 ms
alone_put_route_p99_ms the same with the other 2 nodes' daemons stopped (one daemon per kernel), p99 ms
alone_put_commit_p99_ms of which etcd (the other 2 stopped): put -> etcd's answer, p99 ms
alone_after_commit_p99_ms of which the daemon (the other 2 stopped): etcd's answer -> route, p99 ms
tmpfs_put_route_p50_ms put -> route at 10 000 peers, etcd's data on a tmpfs (no fsync), p50 ms
tmpfs_put_route_p99_ms put -> route at 10 000 peers, etcd's data on a tmpfs (no fsync), p99 ms
tmpfs_put_commit_p99_ms of which etcd on a tmpfs: put -> etcd's answer, p99 ms
rss_2 peak RSS at 2 peers, MB (largest of 3)
rss_1000 peak RSS at 1 000 peers, MB
rss_10000 peak RSS at 10 000 peers, MB
anon_2 anonymous RSS (heap, stacks) at 2 peers, MB
file_2 file-backed RSS (program text, libraries) at 2 peers, MB
anon_1000 anonymous RSS at 1 000 peers, MB
anon_10000 anonymous RSS at 10 000 peers, MB
cpu_10000_s CPU of the 3 daemons while 10 000 leases arrive, s
idle_cpu_10s idle CPU of the 3 daemons over 10 s at 10 000 peers, s
repair_route_ms a deleted peer route back, ms (not reached: not within 30 s)
repair_chain_ms a flushed FLANNEL-POSTRTG chain back, ms
restart_failed new connections pod 1 -> etcd host (masqueraded) that failed over 12 s, node 1's daemon restarted at 2 s
restart_tried connections tried in those 12 s, one after another
rpcs_per_lease_10min etcd requests (gRPC messages) per node's lease over 10 min, idle at 2 peers
outage_cpu_30s CPU of the 3 daemons while etcd is down for 30 s, s
after_outage_ms a lease put once etcd is back -> routed on every node, ms
EOF
for d in twilld flanneld; do
  echo "== $d's etcd requests by method over the idle count (last round, 3 nodes)"
  cat "$OUT/$d.rpcs"
done
# Each round's own figures, for the spread the medians hide.
mkdir -p "$RESULTS/flanneld-rounds"
cp "$OUT"/twilld.[0-9]* "$OUT"/flanneld.[0-9]* "$RESULTS/flanneld-rounds/"
echo "figures: $RESULTS/flanneld.tsv (each round's: $RESULTS/flanneld-rounds/)"
if [[ -n $PLOT ]]; then
  bash scripts/bench-plot.sh "$RESULTS/flanneld.tsv" "$RESULTS/flanneld.svg" "$version"
  echo "plot: $RESULTS/flanneld.svg"
fi
for d in twilld flanneld; do
  echo "== where $d's resident set sits at 2 peers (last round, node 1), MB"
  sed 's/^breakdown //' "$OUT/$d.breakdown"
done
