#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: unit, real-etcd integration,
# kernel integration in network namespaces, and end-to-end. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh build node test reference

# One prefix for every namespace this run creates, so a leak is attributable and
# parallel runs never collide.
export TWILL_NS_PREFIX="twt$$"
leftovers() { ip netns list 2>/dev/null | awk '{print $1}' | grep "^${TWILL_NS_PREFIX}-" || true; }
cleanup() {
  for ns in $(leftovers); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap cleanup EXIT

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings

echo "== build"
cargo build --workspace --all-targets -q

echo "== image"
# tests/daemonset.rs runs the manifests' containers from this image under containerd.
bash scripts/image.sh

echo "== tests"
# Two threads: each namespace test runs several daemons; more would only thrash 2 cores.
# --no-fail-fast: a red suite must not hide what the suites after it would say.
cargo test --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee /tmp/twill-test-$$.log
status=${PIPESTATUS[0]}

echo "== fuzz (the CNI conf, subnet.env and net-conf.json parsers, briefly)"
# cargo-fuzz wants nightly flags; RUSTC_BOOTSTRAP lets the one stable toolchain here
# accept them.
command -v cargo-fuzz >/dev/null || cargo install -q cargo-fuzz --locked
for target in cni_conf subnet_env net_conf; do
  if ! (cd crates/twill-cni && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- \
        -max_total_time="${FUZZ_SECONDS:-15}" >"/tmp/twill-fuzz-$target.log" 2>&1); then
    echo "fuzz target $target failed; see /tmp/twill-fuzz-$target.log" >&2
    tail -30 "/tmp/twill-fuzz-$target.log" >&2
    status=1
  else
    grep -E "^Done" "/tmp/twill-fuzz-$target.log" | sed "s/^/  $target: /"
  fi
done

left=$(leftovers)
if [[ -n $left ]]; then
  echo "test.sh: namespaces left behind by the tests: $left" >&2
  status=1
fi
if pgrep -f "etcd --name=test-${TWILL_NS_PREFIX}( |$)" >/dev/null; then
  echo "test.sh: an etcd started by the tests is still running" >&2
  status=1
fi
# One closing line for the whole run (cargo's own last line is a doc-test summary).
read -r passed failed < <(awk '/^test result:/ { p += $4; f += $6 } END { print p+0, f+0 }' /tmp/twill-test-$$.log)
rm -f /tmp/twill-test-$$.log
echo "twill: $passed passed, $failed failed"
exit "$status"
