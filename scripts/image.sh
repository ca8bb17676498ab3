#!/usr/bin/env bash
# Builds the twilld image as an OCI archive, with no registry access: a Debian bookworm
# root from Debian packages (scripts/image-root.sh, which manifests/Containerfile runs too)
# plus this checkout's release binaries, stripped, assembled by Debian's umoci.
#
#   scripts/image.sh [OUT]        OUT defaults to target/image/twilld.oci.tar
#   scripts/image.sh --check      only check that manifests/Containerfile agrees
#
# The image is named as manifests/kube-twill.yml names it. To use it:
#   ctr -n k8s.io images import OUT                       # containerd on a node, or
#   skopeo copy oci-archive:OUT docker://REGISTRY/twilld:TAG   # then set image: in the manifest
set -euo pipefail
cd "$(dirname "$0")/.."

check_only=0
[[ ${1:-} == --check ]] && { check_only=1; shift; }
out=${1:-target/image/twilld.oci.tar}

# Every image: line of the manifests names one reference, the one this image gets.
refs=$(sed -n 's/^ *image: *//p' manifests/kube-twill.yml manifests/uninstall-twill.yml | sort -u)
if [[ $(wc -l <<<"$refs") != 1 ]]; then
  echo "image.sh: the manifests name more than one image: $refs" >&2
  exit 1
fi
ref=$refs tag=${refs##*:}

# The Containerfile must build the same image: the same root script, the same binaries in
# the same places, the same entrypoint. Checked before anything is built.
cf=manifests/Containerfile
entrypoint=$(sed -n 's/^ENTRYPOINT *//p' "$cf")
disagree() { echo "image.sh: manifests/Containerfile disagrees with image.sh: $*" >&2; exit 1; }
[[ $(tr -d ' ' <<<"$entrypoint") == '["/usr/local/bin/twilld"]' ]] ||
  disagree "ENTRYPOINT is '$entrypoint', image.sh sets [\"/usr/local/bin/twilld\"]"
grep -q '^RUN .*scripts/image-root.sh /rootfs /twilld /twill$' "$cf" ||
  disagree "it does not build its root with 'scripts/image-root.sh /rootfs /twilld /twill'"
grep -q 'cargo build --release --locked -p twilld -p twill-cni' "$cf" ||
  disagree "it does not build the release twilld and twill-cni"
grep -q '^FROM scratch$' "$cf" && grep -q '^COPY --from=root /rootfs /$' "$cf" ||
  disagree "its final stage is not the root alone (FROM scratch + COPY --from=root /rootfs /)"
if ((check_only)); then
  echo "image.sh: manifests/Containerfile agrees ($ref)"
  exit 0
fi

[[ $EUID == 0 ]] || { echo "image.sh: run as root (mmdebstrap installs into a chroot)" >&2; exit 1; }
for tool in mmdebstrap umoci strip jq; do
  command -v "$tool" >/dev/null || { echo "image.sh: $tool missing: bash scripts/setup.sh test" >&2; exit 1; }
done

started=$(date +%s)
cargo build --release --locked -q -p twilld -p twill-cni

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Release builds keep line tables for backtraces; the image does not need them.
strip -o "$work/twilld" target/release/twilld
strip -o "$work/twill" target/release/twill
bash scripts/image-root.sh "$work/rootfs" "$work/twilld" "$work/twill" >"$work/mmdebstrap.log" 2>&1 ||
  { tail -20 "$work/mmdebstrap.log" >&2; echo "image.sh: building the root failed" >&2; exit 1; }

# One layer, reproducible in its order and ownership.
tar --sort=name --numeric-owner -C "$work/rootfs" -cf "$work/layer.tar" .
umoci init --layout "$work/oci"
umoci new --image "$work/oci:$tag"
umoci raw add-layer --image "$work/oci:$tag" --history.created_by "scripts/image-root.sh" "$work/layer.tar"
umoci config --image "$work/oci:$tag" --no-history --os linux --architecture amd64 \
  --config.entrypoint /usr/local/bin/twilld --clear config.cmd \
  --config.label "org.opencontainers.image.source=https://github.com/twill-net/twill" \
  --config.label "org.opencontainers.image.version=$tag"
umoci gc --layout "$work/oci"
# containerd names an imported image by this annotation; the OCI one carries the tag only.
jq --arg ref "$ref" '.manifests[0].annotations["io.containerd.image.name"] = $ref' \
  "$work/oci/index.json" >"$work/index.json"
mv "$work/index.json" "$work/oci/index.json"

mkdir -p "$(dirname "$out")"
tar --sort=name --numeric-owner -C "$work/oci" -cf "$out.tmp" .
mv "$out.tmp" "$out"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
size=$(stat -c %s "$work/layer.tar")
echo "image: $ref -> $out ($(($(date +%s) - started)) s)"
echo "  packages: $(bash scripts/image-root.sh --packages) on busybox"
echo "  uncompressed: $(mib "$size"), archive (gzip layer): $(mib "$(stat -c %s "$out")")"
echo "  largest parts:"
{
  for f in usr/local/bin/twilld usr/local/bin/twill bin/busybox; do
    echo "$(stat -c %s "$work/rootfs/$f") /$f"
  done
  du -sb "$work/rootfs/usr/lib/x86_64-linux-gnu" "$work/rootfs/lib/x86_64-linux-gnu" \
    "$work/rootfs/usr/sbin" "$work/rootfs/var/lib/dpkg" 2>/dev/null | sed "s|$work/rootfs||"
} | sort -rn | head -6 | while read -r b p; do echo "    $(mib "$b")  $p"; done
