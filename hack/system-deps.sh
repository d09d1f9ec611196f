#!/usr/bin/env bash
# Installs the Debian packages SharpML needs that pip cannot bring, only where one is missing.
#   hack/system-deps.sh core   libmagic (intake reads file types from the bytes)
#   hack/system-deps.sh viewer node and npm (the browser viewer's build, `make viewer`)
#   hack/system-deps.sh test   core and viewer, plus openssl (dev control plane certificates), podman +
#                              runc (the SfM image in operator tests; crun fails on hybrid cgroup hosts),
#                              mmdebstrap (a local base image where no registry is reachable) and chromium
#                              (the viewer's browser tests, headless with software WebGL)
set -euo pipefail
mode=${1:-core}
need=()
[ "$mode" = viewer ] || ldconfig -p | grep -q 'libmagic.so.1 ' || need+=(libmagic1)
if [ "$mode" = viewer ] || [ "$mode" = test ]; then
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)
fi
if [ "$mode" = test ]; then
  for tool in openssl podman runc mmdebstrap chromium; do command -v "$tool" >/dev/null || need+=("$tool"); done
fi
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "system-deps: please install: ${need[*]}" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${need[@]}"
