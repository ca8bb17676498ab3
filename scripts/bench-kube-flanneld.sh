#!/usr/bin/env bash
# Kubernetes mode at scale beside the real flanneld (issue 36; scripts/bench.sh section 12
# runs it after bench-flanneld.sh): tests/kube_scale_bench.rs on the real kube-apiserver and
# controller-manager the tests use, one cluster of three release twilld nodes and three
# flanneld v0.28.9 nodes, fed 1 000 and then 5 000 kubeadm-sized peer nodes through the API.
# Prints, for both daemons and the ratio twilld / flanneld: time until every node routes
# every peer after the last create, CPU, peak and anonymous RSS; then 60 s of idle CPU; and
# per node, when its daemon took the last peer from its watch and when it routed it.
# BENCH_TWILLD_ARGS adds twilld flags (e.g. --peer-probe-interval=0); BENCH_FLANNELD_FIRST=1
# starts flanneld's nodes first; BENCH_KEEP_LOGS=DIR keeps the daemons' logs there.
exec bash "$(dirname "$0")/bench-e2e.sh" kube_scale_bench
