#!/usr/bin/env bash
# Builds the reference programs of scripts/reference-versions from their Go modules (the Go
# module proxy; no copy of their code is kept here) into the cache, once per version.
# Prints where they are. Run by `scripts/setup.sh reference`; needs Go (1.25 or newer, as
# flannel's go.mod asks) and a C compiler (flanneld's udp backend is cgo on amd64).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${TWILL_REFERENCE_CACHE:-/var/cache/twill/reference}
ROOT=$PWD

if ! command -v go >/dev/null; then
  for d in /usr/local/go/bin /usr/lib/go/bin; do [[ -x $d/go ]] && PATH=$d:$PATH; done
fi
command -v go >/dev/null || { echo "reference: no Go toolchain on PATH (install Go 1.25 or newer)" >&2; exit 1; }
have=$(go env GOVERSION | sed 's/^go//')
if [[ $(printf '%s\n' "1.25" "$have" | sort -V | head -1) != 1.25 ]]; then
  echo "reference: Go $have is older than 1.25, which flannel's go.mod needs" >&2
  exit 1
fi

# The wrapper module a program is built in (the current directory): ours from
# scripts/reference/<name> when there is one (replace directives for what the proxy does not
# serve), else an empty one. Either way it requires the pinned module, and where that
# module's go.mod points modules of its own at local directories (Kubernetes' staging
# modules, etcd's api/client/pkg), which is why `go install mod@version` refuses it, each of
# those is replaced by its published release: v0.X.Y for Kubernetes' v1.X.Y, the same
# version for the others.
wrapper() { # wrapper <name> <module@version>
  local name=$1 mod=$2 version=${2##*@} gomod sub args=()
  if [[ -d $ROOT/scripts/reference/$name ]]; then
    cp -r "$ROOT/scripts/reference/$name/." .
  else
    printf 'module twill.invalid/reference/%s\n\ngo 1.24\n' "$name" > go.mod
  fi
  gomod=$(go mod download -json "$mod" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
  [[ -f $gomod ]] || { echo "reference: no go.mod for $mod" >&2; return 1; }
  sub=$version
  [[ ${mod%@*} == k8s.io/kubernetes ]] && sub=v0.${version#v1.}
  args=(-require="$mod")
  for m in $(sed -n 's/^\(replace \)\{0,1\}[[:space:]]*\([^[:space:]]*\) => \.\{1,2\}\/.*/\2/p' "$gomod"); do
    args+=(-replace="$m=$m@$sub")
  done
  go mod edit "${args[@]}"
  # Kubernetes keeps its own GODEBUG defaults in go.mod; a wrapper inherits none.
  if grep -q '^godebug' "$gomod"; then
    go mod edit "$(sed -n 's/^godebug \(.*\)/-godebug=\1/p' "$gomod" | head -1)"
  fi
}

# Files of a module the tests read beside its programs: flannel's own manifest, applied as
# a user would (with twill's image), and its chart's values.yaml, which twill's chart
# takes. Added to a cached build that lacks them.
extras() { # extras <name> <module@version> <dir>
  local src
  [[ $1 == flanneld && ! -f $3/kube-flannel-values.yaml ]] || return 0
  src=$(cd "$(mktemp -d)" && go mod download -json "$2" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  cp "$src/Documentation/kube-flannel.yml" "$3/"
  cp "$src/chart/kube-flannel/values.yaml" "$3/kube-flannel-values.yaml"
}

build() { # build <name> <module@version> <package[=binary],...>
  local name=$1 mod=$2 targets=$3 version=${2##*@} dir tmp t pkg bin ldflags=() tags=()
  dir="$CACHE/$name@$version"
  if [[ -f $dir/.built ]]; then
    extras "$name" "$mod" "$dir"
    echo "reference: $name $version (cached) $dir"
    return
  fi
  mkdir -p "$CACHE"
  tmp=$(mktemp -d "$CACHE/.$name.XXXXXX")
  chmod 755 "$tmp"
  local s=$SECONDS
  echo "reference: building $name $version from $mod"
  case $name in
    flanneld) ldflags=(-ldflags "-X github.com/flannel-io/flannel/pkg/version.Version=$version") ;;
    kubernetes) ldflags=(-ldflags "-X k8s.io/component-base/version.gitVersion=$version") ;;
    flannel-cni) ldflags=(-ldflags "-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$version") ;;
    # promtool checks and tests rule files; without the service discovery plugins (every
    # cloud's SDK) it builds in a fraction of the time.
    prometheus) tags=(-tags remove_all_sd) ;;
  esac
  mkdir "$tmp/src"
  if ! (cd "$tmp/src" && wrapper "$name" "$mod") >"$tmp/build.log" 2>&1; then
    tail -20 "$tmp/build.log" >&2; rm -rf "$tmp"
    echo "reference: preparing $name $version failed" >&2; exit 1
  fi
  IFS=, read -ra list <<<"$targets"
  for t in "${list[@]}"; do
    pkg=${t%%=*}; bin=${t#*=}
    [[ $t == *=* ]] || bin=${pkg##*/}
    [[ $pkg == . ]] && pkg=${mod%@*} || pkg=${mod%@*}/$pkg
    # cgo on: flanneld's udp backend is a cgo file on amd64.
    if ! (cd "$tmp/src" && CGO_ENABLED=1 GOFLAGS=-mod=mod go build -o "$tmp/$bin" "${ldflags[@]}" "${tags[@]}" "$pkg") >>"$tmp/build.log" 2>&1; then
      tail -20 "$tmp/build.log" >&2; rm -rf "$tmp"
      echo "reference: building $pkg ($name $version) failed" >&2; exit 1
    fi
  done
  extras "$name" "$mod" "$tmp"
  rm -rf "$tmp/src"
  touch "$tmp/.built"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  echo "reference: $name $version built in $((SECONDS - s)) s: $dir"
}

while read -r name mod targets; do
  [[ -z $name || $name == \#* ]] && continue
  build "$name" "$mod" "$targets"
done < scripts/reference-versions
