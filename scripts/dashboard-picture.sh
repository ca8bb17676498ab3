#!/usr/bin/env bash
# README's picture of the Grafana dashboard, drawn from a real run: a 3-node lab
# (scripts/lab.sh) with metrics on, Prometheus (built from its Go module, the version
# promtool is pinned at) scraping each node from the etcd namespace, faults injected one
# after another, and every panel's queries asked of Prometheus over the run and drawn by
# scripts/plot-dashboard.py into manifests/dashboard.svg. Not part of test.sh (its result
# is a picture, not a verdict). Root, Debian 12. Everything stays in the lab's namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cargo build --release -q -p twilld -p twill-cni -p twill-bench
BIN=$PWD/target/release
version=$(awk '$1 == "prometheus" { split($2, m, "@"); print m[2] }' scripts/reference-versions)
PROM_DIR=${TWILL_REFERENCE_CACHE:-/var/cache/twill/reference}/prometheus-server@$version
if [[ ! -x $PROM_DIR/prometheus ]]; then
  echo "dashboard-picture: building prometheus $version (once)"
  mkdir -p "$PROM_DIR"
  # Without the service discovery plugins (every cloud's SDK), as promtool is built.
  GOBIN=$PROM_DIR GOFLAGS=-mod=mod go install -tags remove_all_sd \
    "github.com/prometheus/prometheus/cmd/prometheus@$version"
fi

export LAB_PREFIX=twpic$$ TWILL_CNI=$BIN/twill TWILLD=$BIN/twilld
export LAB_TWILLD_ARGS="--metrics-ip=0.0.0.0 --metrics-port=9471 --peer-probe-interval=2"
# Injected leases take 10.0.x (answering nothing); the nodes lease from 10.128 up.
export LAB_CONFIG='{"Network":"10.0.0.0/8","SubnetMin":"10.128.0.0","Backend":{"Type":"vxlan"}}'
OUT=$(mktemp -d)
ETCD=http://198.18.0.100:2379
nsx() { ip netns exec "$LAB_PREFIX-$1" "${@:2}"; }
cleanup() {
  [[ -f $OUT/prometheus.pid ]] && kill "$(cat "$OUT/prometheus.pid")" 2>/dev/null || true
  bash scripts/lab.sh down >/dev/null 2>&1 || true
  rm -rf "$OUT"
}
trap cleanup EXIT
bash scripts/lab.sh up 3 >/dev/null

cat > "$OUT/prometheus.yml" <<EOF
global: {scrape_interval: 2s, evaluation_interval: 2s}
scrape_configs:
  - job_name: twill
    static_configs:
      - {targets: ["198.18.0.1:9471"], labels: {pod: twill-n1}}
      - {targets: ["198.18.0.2:9471"], labels: {pod: twill-n2}}
      - {targets: ["198.18.0.3:9471"], labels: {pod: twill-n3}}
EOF
nsx etcd "$PROM_DIR/prometheus" --config.file="$OUT/prometheus.yml" \
  --storage.tsdb.path="$OUT/data" --web.listen-address=127.0.0.1:9090 \
  >"$OUT/prometheus.log" 2>&1 &
echo $! > "$OUT/prometheus.pid"

event() { echo "$(date +%s) $*" >> "$OUT/events"; echo "$(date +%T) $*"; }
start=$(date +%s)
: > "$OUT/events"
sleep 40
event "30 leases added"
nsx etcd "$BIN/twill-bench" inject "$ETCD" 30 0 >/dev/null
sleep 30
event "leases removed, one refused"
nsx etcd etcdctl --endpoints "$ETCD" del --prefix /coreos.com/network/subnets/10.0. >/dev/null
nsx etcd etcdctl --endpoints "$ETCD" put /coreos.com/network/subnets/192.168.7.0-24 \
  '{"PublicIP":"198.18.0.77","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:07:07"}}' >/dev/null
sleep 30
event "VXLAN dropped n1-n2"
nsx n2 nft -f - <<'EOF'
table inet twpic {
  chain in { type filter hook input priority -400; ip saddr 198.18.0.1 udp dport 8472 drop; }
  chain out { type filter hook output priority -400; ip daddr 198.18.0.1 udp dport 8472 drop; }
}
EOF
sleep 40
nsx n2 nft delete table inet twpic
event "route fight on n3"
peer=$(nsx n3 ip route show dev flannel.1 | awk 'NR == 1 {print $1}')
for _ in $(seq 40); do nsx n3 ip route del "$peer" dev flannel.1 2>/dev/null || true; sleep 0.5; done
sleep 40
end=$(date +%s)

nsx etcd python3 scripts/plot-dashboard.py manifests/charts/twill/files/twill-dashboard.json \
  http://127.0.0.1:9090 "$start" "$end" "$OUT/events" manifests/dashboard.svg
echo "dashboard-picture: manifests/dashboard.svg ($(( end - start )) s of a 3-node run)"
