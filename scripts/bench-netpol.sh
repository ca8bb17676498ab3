#!/usr/bin/env bash
# NetworkPolicy benchmark (issue 34; not part of scripts/bench.sh, which needs no API
# server): tests/netpol_bench.rs on the real kube-apiserver and controller-manager the
# tests use, three release twilld nodes with --network-policy, pods that exist only as API
# objects beside nine real ones. Prints: policy created -> enforced on every node (p50/p99,
# 1 000 pods), pod created -> in every selecting set (p50/p99), new TCP connections per
# second with 0, 100 and 1 000 policies, twilld's memory at 5 000 pods and 1 000 policies.
exec bash "$(dirname "$0")/bench-e2e.sh" netpol_bench
