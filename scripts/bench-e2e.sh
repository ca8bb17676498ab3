#!/usr/bin/env bash
# bench-e2e.sh <test>: runs the ignored benchmark test tests/<test>.rs (bench-netpol.sh,
# bench-kube-flanneld.sh) against release builds of twilld and the CNI plugin and the real
# parts the tests use (etcd, the API server, flanneld), and prints its figures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh build node test reference
cargo build -q --release -p twilld -p twill-cni
TWILLD_BIN=$PWD/target/release/twilld TWILL_NS_PREFIX="twbe$$" \
  cargo test -q --release -p twill-e2e --test "$1" -- --ignored --nocapture 2>&1 |
  grep -v -E '^(running|test |$)|the matrix is as wanted'
