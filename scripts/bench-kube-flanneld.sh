#!/usr/bin/env bash
# Kubernetes mode at scale beside the real flanneld (issue 36; scripts/bench.sh section 12
# runs it after bench-flanneld.sh): tests/kube_scale_bench.rs on the real kube-apiserver and
# controller-manager the tests use, three release twilld nodes, then three flanneld
# v0.28.9 nodes, each fed 1 000 and then 5 000 kubeadm-sized peer nodes through the API.
# Prints, for both daemons and the ratio twilld / flanneld: time until every node routes
# every peer after the last create, CPU, peak and anonymous RSS; then 60 s of idle CPU.
# BENCH_TWILLD_ARGS adds twilld flags (e.g. --peer-probe-interval=0).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh build node test reference
cargo build -q --release -p twilld -p twill-cni
TWILLD_BIN=$PWD/target/release/twilld TWILL_NS_PREFIX="twks$$" \
  cargo test -q --release -p twill-e2e --test kube_scale_bench -- --ignored --nocapture 2>&1 |
  grep -v -E '^(running|test |$)'
