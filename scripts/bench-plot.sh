#!/usr/bin/env bash
# bench-plot.sh <figures.tsv> <out.svg> [flanneld version]: the scaling of twilld and
# flanneld at a glance, from the figures scripts/bench-flanneld.sh wrote (one run, both
# daemons): time to program injected leases on every node after the last put, and peak RSS,
# against the number of peers. gnuplot draws it (scripts/setup.sh bench installs it).
set -euo pipefail
tsv=$1 out=$2 version=${3:-}
command -v gnuplot >/dev/null || { echo "bench-plot: gnuplot missing: scripts/setup.sh bench" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# figure -> "twilld flanneld" columns, rows by peers; "-" (not reached) stays missing.
pick() { awk -F'\t' -v k="$1" '$1 == k { print $2, $3 }' "$tsv"; }
{
  echo "1000 $(pick conv_1000_after_last_put_ms)"
  echo "10000 $(pick conv_10000_after_last_put_ms)"
} > "$dir/converge"
{
  echo "2 $(pick rss_2)"
  echo "1000 $(pick rss_1000)"
  echo "10000 $(pick rss_10000)"
} > "$dir/rss"
gnuplot <<EOF
set terminal svg size 960,420 dynamic font "sans,12" background "white"
set output "$out"
set datafile missing "-"
set multiplot layout 1,2 title "twilld vs flanneld ${version}: 3 nodes, one etcd, the same run"
set logscale xy
set grid
set key top left
set xlabel "peers (leases in etcd)"
set ylabel "ms after the last put"
set title "injected leases programmed on every node"
set xrange [500:20000]
plot "$dir/converge" using 1:2 with linespoints lw 2 pt 7 title "twilld", \
     "$dir/converge" using 1:3 with linespoints lw 2 pt 5 title "flanneld"
unset logscale y
set ylabel "MB (largest of 3 nodes)"
set title "peak RSS (VmHWM)"
set xrange [1:20000]
set yrange [0:*]
plot "$dir/rss" using 1:2 with linespoints lw 2 pt 7 title "twilld", \
     "$dir/rss" using 1:3 with linespoints lw 2 pt 5 title "flanneld"
unset multiplot
EOF
