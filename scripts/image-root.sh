#!/bin/bash
# The root filesystem of the twilld image, from Debian packages only. One definition for
# both builds: scripts/image.sh (no registry: an OCI archive) and manifests/Containerfile
# (a registry build) run this, so the two images cannot drift apart.
#
#   scripts/image-root.sh ROOTDIR TWILLD TWILL_PLUGIN
#
# Why not debian:bookworm-slim: it is ~75 MB before iptables, most of it perl-base, apt and
# coreutils, none of which twilld runs. Here dpkg installs only what twilld execs
# (iptables, ip6tables, nft) on a busybox base: busybox gives the `sh`, `cp`, `mv` and
# `sleep` that flannel's manifest (`cp -f ...`), /opt/bin/install-conf and
# uninstall-twill.yml (`/bin/sleep infinity`) run. Maintainer scripts do run (through
# busybox's sh), so the iptables alternatives point where Debian's postinst points them
# (then `iptables` itself goes through a wrapper that follows the node's mode, below).
#
# Needs root and chroot, but no mounts (--skip=chroot/mount), so it runs in a container
# build with the default capabilities too.
set -euo pipefail

# What twilld needs at run time (`image-root.sh --packages` prints it), and the
# libraries of BIRD 2, the BGP engine that runs beside it (see below).
PACKAGES="iptables nftables libreadline8 libssh-gcrypt-4"
# The busybox base: dpkg to install the packages above, and the minimum it needs.
BASE="dpkg busybox libc-bin base-files base-passwd debianutils"
SUITE=bookworm
MIRRORS=(
  "deb http://deb.debian.org/debian $SUITE main"
  "deb http://deb.debian.org/debian $SUITE-updates main"
  "deb http://deb.debian.org/debian-security $SUITE-security main"
)

if [ "${1:-}" = --packages ]; then
  echo "$PACKAGES"
  exit 0
fi
if [ $# -ne 3 ]; then
  echo "usage: $0 ROOTDIR TWILLD TWILL_PLUGIN" >&2
  exit 2
fi
root=$1
twilld=$2
plugin=$3
for f in "$twilld" "$plugin"; do
  [ -x "$f" ] || { echo "image-root: $f: not an executable" >&2; exit 1; }
done
if [ -e "$root" ] && [ -n "$(ls -A "$root")" ]; then
  echo "image-root: $root: exists and is not empty" >&2
  exit 1
fi
mkdir -p "$root"

# Documentation, manuals and translations are dropped as dpkg unpacks them, and glibc's
# iconv modules (8 MB, gconv): nothing in the image converts character sets.
exclude=()
for p in /usr/share/doc/'*' /usr/share/man/'*' /usr/share/locale/'*' /usr/share/info/'*' \
  /usr/share/lintian/'*' /usr/share/bash-completion/'*' /usr/lib/x86_64-linux-gnu/gconv/'*'; do
  exclude+=("--dpkgopt=path-exclude=$p")
done
# Copyright files stay: the image is redistributed.
exclude+=("--dpkgopt=path-include=/usr/share/doc/*/copyright")

include=$(echo $BASE $PACKAGES | tr ' ' ',')
mmdebstrap --mode=root --variant=custom --skip=chroot/mount \
  --include="$include" \
  --hook-dir=/usr/share/mmdebstrap/hooks/busybox \
  "${exclude[@]}" \
  --customize-hook='rm -rf "$1"/var/cache/apt "$1"/var/lib/apt/lists "$1"/var/log/*' \
  "$SUITE" "$root" "${MIRRORS[@]}"

# BIRD 2 (the `bird` container of kube-twill.yml, for BGP) as Debian builds it, without
# the package: bird2 depends on adduser and ucf, which pull perl and debconf into an image
# that would then be half perl. Its two programs go in beside the libraries dpkg installed
# above; its maintainer scripts only add a system user, which this image never uses.
bird=$(mktemp -d)
mmdebstrap --mode=root --variant=extract --skip=chroot/mount --include=bird2 \
  "$SUITE" "$bird" "${MIRRORS[@]}" >/dev/null 2>&1 ||
  { echo "image-root: fetching bird2 failed" >&2; rm -rf "$bird"; exit 1; }
install -m 755 "$bird/usr/sbin/bird" "$bird/usr/sbin/birdc" "$root/usr/sbin/"
install -D -m 644 "$bird/usr/share/doc/bird2/copyright" "$root/usr/share/doc/bird2/copyright"
rm -rf "$bird"
# Both start (a missing library stops them before they look at their arguments).
for b in bird birdc; do
  if chroot "$root" /usr/sbin/$b -s /nonexistent -h 2>&1 | grep -q 'error while loading shared libraries'; then
    echo "image-root: /usr/sbin/$b is missing libraries" >&2
    exit 1
  fi
done

# iptables in the node's own mode. Debian points `iptables` at iptables-nft, but a node
# whose kube-proxy (or docker) writes iptables-legacy must get twilld's rules in legacy
# too: a legacy FORWARD policy of DROP is not overridden by an ACCEPT in nft, so pods
# across nodes would be dropped. Like kube-proxy's image (kubernetes-sigs/iptables-wrappers,
# whose idea this is, not its code): the first call counts the rules each backend holds,
# picks the one in use (nft when equal, e.g. an empty node), and every call after runs it.
cat > "$root/usr/sbin/iptables-wrapper" <<'WRAPPER'
#!/bin/sh
# twill: runs iptables, ip6tables and their -save/-restore in the backend this node uses.
name=${0##*/}
base=${name%%-*}
suffix=${name#"$base"}
mode_file=/run/twill-iptables-mode
if [ ! -s "$mode_file" ]; then
  count() { { "iptables-$1-save"; "ip6tables-$1-save"; } 2>/dev/null | grep -c '^-'; }
  if [ "$(count legacy)" -gt "$(count nft)" ]; then mode=legacy; else mode=nft; fi
  echo "$mode" > "$mode_file.$$" && mv "$mode_file.$$" "$mode_file"
fi
read -r mode < "$mode_file"
exec "/usr/sbin/$base-$mode$suffix" "$@"
WRAPPER
chmod 755 "$root/usr/sbin/iptables-wrapper"
for t in iptables ip6tables; do
  for s in "" -save -restore; do
    ln -sf iptables-wrapper "$root/usr/sbin/$t$s"
  done
done

# The binaries, where kube-twill.yml runs them, and the paths flannel's own kube-flannel.yml
# runs, so swapping its image for this one works: /opt/bin/flanneld (twilld takes
# flanneld's flags) and /opt/bin/install-conf (its install-cni: an atomic copy).
install -D -m 755 "$twilld" "$root/usr/local/bin/twilld"
install -D -m 755 "$plugin" "$root/usr/local/bin/twill"
# flannel's plugin image keeps its plugin at /flannel, copied by `cp -f /flannel ...`.
ln -s usr/local/bin/twill "$root/flannel"
mkdir -p "$root/opt/bin"
ln -s /usr/local/bin/twilld "$root/opt/bin/flanneld"
printf '#!/bin/sh\nset -e\ncp "$1" "$2.tmp"\nmv "$2.tmp" "$2"\n' > "$root/opt/bin/install-conf"
chmod 755 "$root/opt/bin/install-conf"
