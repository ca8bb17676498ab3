#!/usr/bin/env bash
# Builds the reference programs of scripts/reference-versions from their Go modules (the Go
# module proxy; no copy of their code is kept here) into the cache, once per version.
# Prints where they are. Run by `scripts/setup.sh reference`; needs Go (1.25 or newer, as
# flannel's go.mod asks) and a C compiler (flanneld's udp backend is cgo on amd64).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${TWILL_REFERENCE_CACHE:-/var/cache/twill/reference}

if ! command -v go >/dev/null; then
  for d in /usr/local/go/bin /usr/lib/go/bin; do [[ -x $d/go ]] && PATH=$d:$PATH; done
fi
command -v go >/dev/null || { echo "reference: no Go toolchain on PATH (install Go 1.25 or newer)" >&2; exit 1; }
have=$(go env GOVERSION | sed 's/^go//')
if [[ $(printf '%s\n' "1.25" "$have" | sort -V | head -1) != 1.25 ]]; then
  echo "reference: Go $have is older than 1.25, which flannel's go.mod needs" >&2
  exit 1
fi

build() { # build <name> <module@version> <built> <used>
  local name=$1 mod=$2 built=$3 used=$4 version=${2##*@} dir tmp flags=() ldflags=()
  dir="$CACHE/$name@$version"
  if [[ -x $dir/$used ]]; then
    echo "reference: $name $version (cached) $dir/$used"
    return
  fi
  tmp=$(mktemp -d "$CACHE/.$name.XXXXXX")
  # Each program's own build flags, as their build scripts give them.
  case $name in
    flanneld) ldflags=(-ldflags "-X github.com/flannel-io/flannel/pkg/version.Version=$version") ;;
  esac
  local s=$SECONDS
  echo "reference: building $name $version from $mod"
  # A program with a wrapper module of ours (scripts/reference/<name>: replace directives
  # for what the proxy does not serve) is built from a copy of it; the rest as go install
  # builds them.
  local wrapper=scripts/reference/$name
  if [[ -d $wrapper ]]; then
    cp -r "$wrapper" "$tmp/src"
    gobuild() {
      (cd "$tmp/src" && go mod edit -require="$mod" && GOFLAGS=-mod=mod \
        go build -o "$tmp/$built" "${flags[@]}" "${ldflags[@]}" "${mod%@*}")
    }
  else
    gobuild() { GOBIN=$tmp GOFLAGS=-mod=mod go install "${flags[@]}" "${ldflags[@]}" "$mod"; }
  fi
  # cgo on: flanneld's udp backend is a cgo file on amd64.
  if ! CGO_ENABLED=1 gobuild >"$tmp/build.log" 2>&1; then
    tail -20 "$tmp/build.log" >&2
    rm -rf "$tmp"
    echo "reference: building $name $version failed" >&2
    exit 1
  fi
  mv "$tmp/$built" "$tmp/$used"
  rm -rf "$tmp/src"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  echo "reference: $name $version built in $((SECONDS - s)) s: $dir/$used"
}

mkdir -p "$CACHE"
while read -r name mod built _ used; do
  [[ -z $name || $name == \#* ]] && continue
  build "$name" "$mod" "$built" "$used"
done < scripts/reference-versions
