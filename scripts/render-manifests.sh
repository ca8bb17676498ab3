#!/usr/bin/env bash
# Renders manifests/kube-twill.yml from the Helm chart manifests/charts/twill, its one
# source: the chart's default values, release namespace kube-twill, and the Namespace
# object (createNamespace=true: kubectl has no --create-namespace). Edit the chart, then
# run this; tests/chart.rs fails while the two differ. Needs helm (scripts/setup.sh
# reference builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(awk '$1 == "helm" { sub(/.*@/, "", $2); print $2 }' scripts/reference-versions)
helm=${TWILL_REFERENCE_CACHE:-/var/cache/twill/reference}/helm@$version/helm
[[ -x $helm ]] || { echo "render-manifests: $helm not built: run scripts/setup.sh reference" >&2; exit 1; }
{
  cat <<'HEADER'
# twill for Kubernetes: `kubectl apply --server-side -f kube-twill.yml`, or the Helm chart
# manifests/charts/twill, of which this file is the rendering with the default values
# (scripts/render-manifests.sh; do not edit it by hand).
HEADER
  "$helm" template twill manifests/charts/twill --namespace kube-twill --set createNamespace=true
} > manifests/kube-twill.yml.new
mv manifests/kube-twill.yml.new manifests/kube-twill.yml
echo "render-manifests: wrote manifests/kube-twill.yml"
