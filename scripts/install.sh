#!/usr/bin/env bash
# Installs twill on a bare node (no Kubernetes): the binaries, the systemd unit, the
# environment file (kept if it exists), the CNI plugin and conflist, and drop-ins that
# order containerd/docker after twilld. Run as root from a checkout.
#
#   scripts/install.sh [--root DIR] [--bin-dir DIR] [--no-start]
#     --root DIR     install under DIR instead of / (packaging, tests); implies --no-start
#     --bin-dir DIR  take twilld and twill from DIR (default: build target/release)
#     --no-start     don't run systemctl daemon-reload / enable --now
set -euo pipefail
cd "$(dirname "$0")/.."

root="" bin_dir="" start=1
while (($#)); do
  case $1 in
    --root) root=${2:?--root needs a directory}; start=0; shift 2 ;;
    --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
    --no-start) start=0; shift ;;
    *) echo "install.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

# A new machine has neither protoc for the build nor the tools twilld calls at run time.
if [[ -z $bin_dir ]]; then
  bash scripts/setup.sh build node
  cargo build --release -q -p twilld -p twill-cni
  bin_dir=target/release
elif [[ -z $root ]]; then
  bash scripts/setup.sh node
fi
for b in twilld twill; do
  [[ -x $bin_dir/$b ]] || { echo "install.sh: $bin_dir/$b not found or not executable" >&2; exit 1; }
done

install -d "$root/usr/local/bin" "$root/etc/systemd/system" "$root/etc/twill" \
  "$root/opt/cni/bin" "$root/etc/cni/net.d"
install -m 0755 "$bin_dir/twilld" "$bin_dir/twill" "$root/usr/local/bin/"
install -m 0644 manifests/twilld.service "$root/etc/systemd/system/twilld.service"
# The operator's settings survive a re-install.
if [[ -e $root/etc/twill/twilld.env ]]; then
  echo "kept $root/etc/twill/twilld.env"
else
  install -m 0600 manifests/twilld.env "$root/etc/twill/twilld.env"
fi
"$root/usr/local/bin/twilld" install-cni \
  --plugin "$root/usr/local/bin/twill" \
  --cni-bin-dir "$root/opt/cni/bin" --cni-conf-dir "$root/etc/cni/net.d"
for rt in containerd docker; do
  install -D -m 0644 manifests/runtime-after-twilld.conf \
    "$root/etc/systemd/system/$rt.service.d/10-twill.conf"
done
echo "installed twill under ${root:-/}"

if ((start)) && [[ ! -d /run/systemd/system ]]; then
  echo "systemd is not running here (no /run/systemd/system): not starting twilld"
  start=0
fi
if ((start)); then
  systemctl daemon-reload
  systemctl enable --now twilld.service
  echo "twilld started; edit /etc/twill/twilld.env and 'systemctl restart twilld' to change settings"
else
  echo "edit $root/etc/twill/twilld.env, then: systemctl daemon-reload && systemctl enable --now twilld"
fi
