#!/usr/bin/env bash
# Builds the development control plane from the Go module proxy, pinned by go.mod in this folder.
#
#   hack/k8s-tools/build.sh            # kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd
#   hack/k8s-tools/build.sh helm       # helm (separate module in ./helm, built only when chart work needs it)
#   hack/k8s-tools/build.sh kubeconform  # kubeconform (./kubeconform): chart manifests against local schemas
#   hack/k8s-tools/build.sh promtool   # promtool (./promtool, Prometheus): `promtool test rules` on the alerts
#   hack/k8s-tools/build.sh monitoring-crds  # ServiceMonitor + PrometheusRule CRDs (prometheus-operator module)
#   hack/k8s-tools/build.sh --print-dir  # where the binaries live
#
# Binaries are cached outside the work tree, in ${SHARPML_CACHE:-~/.cache/sharpml}/k8s-<version>/, with a
# stamp holding a hash of the pins (go.mod, go.sum) and the build flags. A second run with the same pins is a
# no-op; changing a pin rebuilds. The build is bounded for a 2-core machine (-p=2 by default; set
# SHARPML_GO_P=1 to halve peak memory). Each binary's wall time and peak RSS are appended to build-times.log
# in the cache folder (from /usr/bin/time -v, where installed) so the README's numbers can be re-measured.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
export PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || { echo "build.sh: the go command is not on PATH (expected /usr/local/go/bin/go)" >&2; exit 1; }

k8s_version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")"
cache_root="${SHARPML_CACHE:-$HOME/.cache/sharpml}"
out="$cache_root/k8s-$k8s_version"

if [ "${1:-}" = "--print-dir" ]; then echo "$out"; exit 0; fi
what="${1:-core}"

export GOFLAGS="-p=${SHARPML_GO_P:-2} -trimpath -buildvcs=false -mod=readonly"
export CGO_ENABLED=0
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
# Without these the binaries report v0.0.0-master and kubectl warns about version skew.
ver_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ver_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ver_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
ldflags="-s -w$ver_ldflags"

# build NAME PACKAGE [MODULE_DIR]: one binary, timed, into $out/NAME.
build() {
  local name="$1" pkg="$2" dir="${3:-$here}"
  echo "build.sh: building $name ($pkg) into $out" >&2
  local start=$SECONDS tlog
  tlog="$(mktemp)"
  local timer=()
  [ -x /usr/bin/time ] && timer=(/usr/bin/time -v -o "$tlog")
  if ! (cd "$dir" && "${timer[@]}" go build -ldflags="$ldflags" -o "$out/$name.tmp" "$pkg"); then
    cat "$tlog" >&2; rm -f "$tlog"; return 1
  fi
  mv -f "$out/$name.tmp" "$out/$name"
  local rss_kb
  rss_kb="$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tlog")"
  rss_kb="${rss_kb:-0}"
  printf '%s\t%s\twall_s=%s\tpeak_rss_mib=%s\tsize_mib=%s\n' "$(date -u +%FT%TZ)" "$name" \
    "$((SECONDS - start))" "$((rss_kb / 1024))" "$(( $(stat -c %s "$out/$name") / 1048576 ))" | tee -a "$out/build-times.log" >&2
  rm -f "$tlog"
}

# pin_hash FILES...: what the stamp records; the build flags are part of it, so changing them rebuilds.
pin_hash() { { cat "$@"; echo "$GOFLAGS $CGO_ENABLED $ldflags"; } | sha256sum | cut -d' ' -f1; }

mkdir -p "$out"
case "$what" in
  core)
    stamp="$out/.stamp-core"
    want="$(pin_hash "$here/go.mod" "$here/go.sum" "$here/cmd/etcd/main.go")"
    bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && (cd "$out" && ls "${bins[@]}" >/dev/null 2>&1); then
      exit 0
    fi
    rm -f "$stamp"
    total_start=$SECONDS
    # Biggest first: kube-apiserver compiles most of the shared dependency graph.
    build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
    build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
    build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
    build kubectl k8s.io/kubernetes/cmd/kubectl
    build etcd ./cmd/etcd
    printf '%s\tcore-total\twall_s=%s\n' "$(date -u +%FT%TZ)" "$((SECONDS - total_start))" | tee -a "$out/build-times.log" >&2
    echo "$want" > "$stamp"
    ;;
  helm)
    stamp="$out/.stamp-helm"
    helm_version="$(awk '$1 == "helm.sh/helm/v3" && $2 ~ /^v/ {print $2; exit}' "$here/helm/go.mod")"
    ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
    # As helm's own Makefile: the Kubernetes version `helm template` and `helm lint` assume is its client-go's
    # (v0.37 -> 1.37), not the source's fallback 1.20, which a chart's kubeVersion constraint would refuse.
    client_go="$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$here/helm/go.mod")"
    kminor="$(echo "$client_go" | cut -d. -f2)"
    for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
      ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$kminor"
    done
    want="$(pin_hash "$here/helm/go.mod" "$here/helm/go.sum")"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$out/helm" ]; then exit 0; fi
    rm -f "$stamp"
    build helm helm.sh/helm/v3/cmd/helm "$here/helm"
    echo "$want" > "$stamp"
    ;;
  kubeconform|promtool)
    # A tool module of its own (its `tool` line names the package), so its dependencies move no other pin.
    stamp="$out/.stamp-$what"
    pkg="$(awk '$1 == "tool" {print $2; exit}' "$here/$what/go.mod")"
    ldflags="-s -w"
    # promtool: without Prometheus' service-discovery plugins (cloud SDKs, client-go): `promtool test rules`
    # needs none of them, and they are most of its build.
    [ "$what" = promtool ] && export GOFLAGS="$GOFLAGS -tags=remove_all_sd"
    want="$(pin_hash "$here/$what/go.mod" "$here/$what/go.sum")"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$out/$what" ]; then exit 0; fi
    rm -f "$stamp"
    build "$what" "$pkg" "$here/$what"
    echo "$want" > "$stamp"
    ;;
  monitoring-crds)
    # The Prometheus Operator's CRDs, from its Go module (checked against the checksum database): the chart
    # tests install them so that the ServiceMonitor and PrometheusRule are validated by a real apiserver.
    version=v0.85.0
    dest="$out/monitoring-crds-$version"
    [ -s "$dest/monitoring.coreos.com_prometheusrules.yaml" ] && exit 0
    dir="$(cd "$here/promtool" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$version" \
      | awk -F'"' '$2 == "Dir" {print $4}')"
    mkdir -p "$dest.tmp"
    cp "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,prometheusrules}.yaml "$dest.tmp/"
    chmod u+w "$dest.tmp"/*; rm -rf "$dest"; mv "$dest.tmp" "$dest"
    ;;
  *) echo "build.sh: unknown target '$what' (core, helm, kubeconform, promtool, monitoring-crds, --print-dir)" >&2; exit 2 ;;
esac
