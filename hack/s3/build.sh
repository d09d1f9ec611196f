#!/usr/bin/env bash
# Builds versitygw, the S3 server the storage tests run against (hack/s3server.py starts it), from the Go
# module proxy, pinned by go.mod in this folder. A real server because the tests need signature and expiry
# checks and conditional writes (If-None-Match) that in-process fakes do not make.
#
#   hack/s3/build.sh               # build into the cache (a no-op when the pins have not changed)
#   hack/s3/build.sh --print-path  # where the binary lives
#
# Cached outside the work tree, in ${SHARPML_CACHE:-~/.cache/sharpml}/versitygw-<version>/versitygw, with a stamp
# holding a hash of the pins (go.mod, go.sum) and the build flags, as hack/k8s-tools/build.sh does; the wall
# time and peak RSS of each build are appended to build-times.log beside the binary.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
export PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || { echo "s3/build.sh: the go command is not on PATH (expected /usr/local/go/bin/go)" >&2; exit 1; }

pkg=github.com/versity/versitygw
version="$(awk -v m="$pkg" '$1 == m && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")"
[ -n "$version" ] || { echo "s3/build.sh: no $pkg pin in $here/go.mod" >&2; exit 1; }
out="${SHARPML_CACHE:-$HOME/.cache/sharpml}/versitygw-$version"

if [ "${1:-}" = "--print-path" ]; then echo "$out/versitygw"; exit 0; fi
[ $# -eq 0 ] || { echo "s3/build.sh: unknown argument '$1' (none, or --print-path)" >&2; exit 2; }

export GOFLAGS="-p=${SHARPML_GO_P:-2} -trimpath -buildvcs=false -mod=readonly"
export CGO_ENABLED=0
ldflags="-s -w -X=main.Version=$version -X=main.Build=proxy -X=main.BuildTime=1970-01-01T00:00:00Z"
want="$({ cat "$here/go.mod" "$here/go.sum"; echo "$GOFLAGS $CGO_ENABLED $ldflags"; } | sha256sum | cut -d' ' -f1)"
stamp="$out/.stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$out/versitygw" ]; then exit 0; fi

mkdir -p "$out"
rm -f "$stamp"
echo "s3/build.sh: building versitygw $version into $out" >&2
start=$SECONDS
tlog="$(mktemp)"
trap 'rm -f "$tlog"' EXIT
timer=()
[ -x /usr/bin/time ] && timer=(/usr/bin/time -v -o "$tlog")
if ! (cd "$here" && "${timer[@]}" go build -ldflags="$ldflags" -o "$out/versitygw.tmp" "$pkg/cmd/versitygw"); then
  cat "$tlog" >&2; exit 1
fi
mv -f "$out/versitygw.tmp" "$out/versitygw"
rss_kb="$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tlog")"
printf '%s\tversitygw\twall_s=%s\tpeak_rss_mib=%s\tsize_mib=%s\n' "$(date -u +%FT%TZ)" "$((SECONDS - start))" \
  "$(( ${rss_kb:-0} / 1024 ))" "$(( $(stat -c %s "$out/versitygw") / 1048576 ))" | tee -a "$out/build-times.log" >&2
echo "$want" > "$stamp"
