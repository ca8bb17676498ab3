#!/usr/bin/env bash
# Regenerates crates/twilld/hot-text.txt: the functions a running twilld executes, which
# its build.rs turns into a linker script that packs them at the front of its text.
#
# Why: twilld's RSS is mostly program text, and not because it runs much of it. A page of
# text becomes resident when any byte of it runs, and the kernel's fault-around maps the
# page cache's pages around every fault (64 KB), so the daemon's few MB of live code,
# spread over 8.9 MB of .text, kept ~7 MB resident. Packed together they keep 2.6–2.8 MB.
#
# How it finds them: a profiling build with every function on its own 4 KB page(s) runs
# the daemon's work (etcd mode: a 3-node lab, 1 000 peers, probes, /metrics, a restart;
# Kubernetes mode: scripts/bench-kube.sh's 5 000 nodes, then tests/kube_real.rs on the real
# API server) from a file system of its own
# (a loop-mounted ext4) whose read-ahead is 0 and whose page cache starts empty. Then
# every page in that cache was read by a fault, i.e. code that ran, and each page names
# exactly one function. Names are matched without their crates' hashes (v0's `Cs<hash>_`,
# legacy's `17h<hash>E`), so the list survives a new toolchain or dependency version; and
# without what moves when any code changes: the number fat LTO appends to a local copy
# (`write_str.21`), and the crate a generic function was instantiated in (the trailing
# `Cs*_6twilld` of `drop_in_place::<Pin<Box<Sleep>>>`, which the next build may take from
# tonic's copy). Matched exactly, those dropped 27 running functions out of the front after
# a one-line change (libm, 2026-12-05), and their pages back cost 0.9 MB. What no longer
# matches just stays where the linker puts it. Run as root; ~8 minutes (4 with its builds
# cached). Touches
# only namespaces, the loop device and files it creates.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=crates/twilld/hot-text.txt
T=${HOT_TEXT_TARGET_DIR:-target/hot-text}
W=$(mktemp -d /tmp/twhot.XXXXXX)
P=twh$$
LOOP=
cleanup() {
  LAB_PREFIX=$P bash scripts/lab.sh down >/dev/null 2>&1 || true
  mountpoint -q "$W/mnt" && umount "$W/mnt"
  [[ -z $LOOP ]] || losetup -d "$LOOP" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
bash scripts/setup.sh build node test reference >/dev/null
# RUSTFLAGS replaces .cargo/config.toml's flags, so the mangling is repeated here; the
# alignment changes no inlining, so the profiling build has the release build's functions.
# Laid out without the old list, so nothing of it leaks into the new one.
CARGO_TARGET_DIR=$T TWILL_HOT_TEXT=0 RUSTFLAGS="-C symbol-mangling-version=v0 -C llvm-args=-align-all-functions=12" \
  cargo build --release -q -p twilld -p twill-cni
cargo build --release -q -p twill-bench

truncate -s 400M "$W/fs.img"
mkfs.ext4 -q "$W/fs.img"
LOOP=$(losetup -f --show "$W/fs.img")
echo 0 > "/sys/block/$(basename "$LOOP")/queue/read_ahead_kb"
mkdir -p "$W/mnt"
mount "$LOOP" "$W/mnt"
mkdir "$W/mnt/bin"
cp "$T/release/twilld" "$T/release/twill" target/release/twill-bench "$W/mnt/bin/"
# A fresh mount starts with nothing of the file cached.
umount "$W/mnt"
mount "$LOOP" "$W/mnt"
BIN=$W/mnt/bin

# Text pages in the page cache, as function names of the profiling binary.
ran() { # ran <out>
  local base
  base=$(readelf -lW "$BIN/twilld" | awk '$1 == "LOAD" && / E / {print $2, $3}')
  python3 - "$BIN/twilld" "$base" > "$1" <<'PY'
import ctypes, mmap, os, subprocess, sys
path, (off, va) = sys.argv[1], [int(x, 16) for x in sys.argv[2].split()]
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
page = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
# Mapped, never touched: mincore reports the page cache, not this mapping.
addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
    sys.exit(f"mincore: {os.strerror(ctypes.get_errno())}")
nm = subprocess.run(["nm", "-n", "-S", "--defined-only", path], capture_output=True, text=True, check=True)
for line in nm.stdout.splitlines():
    f = line.split(maxsplit=3)
    if len(f) != 4 or f[2] not in "tTwW":
        continue
    start, length = int(f[0], 16) - va + off, int(f[1], 16)
    if any(vec[p] & 1 for p in range(start // page, (start + length - 1) // page + 1)):
        print(f[3])
PY
}

# etcd mode: every node serves /metrics and /healthz, which are scraped; node 1 restarts.
export LAB_PREFIX=$P TWILLD=$BIN/twilld TWILL_CNI=$BIN/twill LAB_NETWORK=10.0.0.0/8
export LAB_TWILLD_ARGS="--healthz-port=10256 --metrics-port=10257"
export LAB_CONFIG='{"Network":"10.0.0.0/8","SubnetMin":"10.128.0.0","Backend":{"Type":"vxlan"}}'
bash scripts/lab.sh up 3 >/dev/null
ip netns exec "$P-etcd" "$BIN/twill-bench" inject http://198.18.0.100:2379 1000 0 >/dev/null
for n in 1 2 3; do
  until (( $(ip -n "$P-n$n" route show dev flannel.1 | wc -l) >= 1002 )); do sleep 0.1; done
done
bash scripts/lab.sh check >/dev/null
for round in 1 2; do
  sleep 6
  for n in 1 2 3; do
    ip netns exec "$P-n$n" curl -sf http://127.0.0.1:10257/metrics >/dev/null
    ip netns exec "$P-n$n" curl -sf http://127.0.0.1:10256/healthz >/dev/null
  done
done
bash scripts/lab.sh restart-node 1 >/dev/null
sleep 5
bash scripts/lab.sh down >/dev/null
ran "$W/etcd.txt"
# Kubernetes mode from an empty page cache again, so that what it runs is told apart from
# what etcd mode runs: each mode then keeps the functions both run and its own resident,
# not the other's (etcd's client, tonic, h2; kube's, rustls) spread among them.
umount "$W/mnt"
mount "$LOOP" "$W/mnt"
# On the fake API (5 000 nodes, paged lists, heartbeats; plain HTTP).
BIN=$BIN bash scripts/bench-kube.sh >/dev/null
# ... and on the real API server, as a DaemonSet's twilld talks to one: TLS, a service
# account's token, its RBAC, watches resumed after the server restarts. Without it the
# code of the TLS session (rustls, ring) was left where the linker put it, and twilld on a
# real cluster kept 7.3 MB of its program resident against 4.8 in etcd mode.
TWILLD_BIN=$BIN/twilld TWILL_NS_PREFIX=$P cargo test -q --release -p twill-e2e --test kube_real -- \
  three_nodes_under_twills_rbac_on_a_real_api_server watches_resume_after_the_api_server_restarts >/dev/null 2>&1
ran "$W/kube.txt"
cp "$W/etcd.txt" "$W/kube.txt" "$T/"

norm() {
  sed -E 's/Cs[0-9A-Za-z]+_/Cs*_/g; s/17h[0-9a-f]{16}E$/17h*E/; s/\.[0-9]+$/.*/
    s/ECs\*_[0-9]+[A-Za-z0-9_]+(\.\*)?$/ECs*\1/' | awk '!seen[$0]++'
}
norm < "$W/etcd.txt" > "$W/etcd.norm"
norm < "$W/kube.txt" > "$W/kube.norm"
{
  echo "# Generated by scripts/hot-text.sh ($(git rev-parse --short HEAD), rustc $(rustc --version | cut -d' ' -f2)): the"
  echo "# functions twilld ran, which release builds pack at the front of its text (see that"
  echo "# script and crates/twilld/build.rs), in three groups split by -- lines: what both"
  echo "# modes run, what only etcd mode runs, what only Kubernetes mode runs. Crate hashes"
  echo "# (Cs*_), LTO's copy numbers (.*) and the crate a generic was instantiated in (a"
  echo "# trailing ECs*) are globbed, so a build with other versions or code matches what it can."
  grep -xF -f "$W/kube.norm" "$W/etcd.norm" || true
  echo "--"
  grep -vxF -f "$W/kube.norm" "$W/etcd.norm" || true
  echo "--"
  grep -vxF -f "$W/etcd.norm" "$W/kube.norm" || true
} > "$OUT"
both=$(grep -cxF -f "$W/kube.norm" "$W/etcd.norm" || true)
echo "hot-text: $both functions in both modes, $(( $(wc -l < "$W/etcd.norm") - both )) in etcd mode only, $(( $(wc -l < "$W/kube.norm") - both )) in Kubernetes mode only -> $OUT"
