#!/usr/bin/env bash
# Build the SfM image (images/sfm/Dockerfile) with podman; prints the image reference on stdout.
#
#   hack/build-images.sh            # localhost/sharpml-sfm:<content hash>, also tagged :latest
#   SHARPML_BASE_IMAGE=python:3.11-slim-bookworm hack/build-images.sh   # explicit base
#
# Cached: the image is tagged with a hash of everything that goes into it (Dockerfile, pyproject.toml,
# sharpml/, base image), kept in podman's storage and saved under ~/.cache/sharpml/images/, so a re-run
# with unchanged inputs is a no-op and a machine with a fresh podman store but a kept ~/.cache loads it.
# Base image: SHARPML_BASE_IMAGE if set; else the official python slim image when it is present or can be
# pulled; else (no registry, like the CI machines) a Debian bookworm base made by mmdebstrap from apt,
# whose root filesystem tarball is cached too.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${SHARPML_IMAGE_CACHE:-$HOME/.cache/sharpml/images}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$REPO/hack/containers.conf}"
OFFICIAL_BASE="docker.io/library/python:3.11-slim-bookworm"
LOCAL_BASE="localhost/sharpml-base:bookworm"
IMAGE="${SHARPML_SFM_IMAGE_NAME:-localhost/sharpml-sfm}"
HOST_CA=/etc/ssl/certs/ca-certificates.crt
mkdir -p "$CACHE"
log() { echo "build-images: $*" >&2; }

for tool in podman runc; do
  command -v "$tool" >/dev/null || { log "$tool is missing: apt-get install podman runc mmdebstrap"; exit 1; }
done

have_image() { podman image exists "$1" 2>/dev/null; }

local_base() {
  # A minimal Debian with python3 + venv + libmagic, from apt (works without any container registry).
  local pkgs="python3,python3-venv,ca-certificates,libmagic1"
  local key; key="$(echo "bookworm $pkgs v1" | sha256sum | cut -c1-12)"
  local tar="$CACHE/base-bookworm-$key.tar"
  if have_image "$LOCAL_BASE" && [ "$(podman image inspect -f '{{index .Labels "sharpml.base"}}' "$LOCAL_BASE" 2>/dev/null)" = "$key" ]; then
    echo "$LOCAL_BASE"; return
  fi
  if [ ! -s "$tar" ]; then
    command -v mmdebstrap >/dev/null || { log "mmdebstrap is missing: apt-get install mmdebstrap"; exit 1; }
    log "making a Debian bookworm base with mmdebstrap (cached in $tar)"
    local tmp; tmp="$(mktemp -d "${TMPDIR:-/tmp}/sharpml-base.XXXXXX")"
    local sources=/etc/apt/sources.list.d/debian.sources
    [ -f "$sources" ] || sources="deb http://deb.debian.org/debian bookworm main"
    local hooks=/usr/share/mmdebstrap/hooks
    TMPDIR="$tmp" mmdebstrap --quiet --variant=minbase --include="$pkgs" \
      --hook-dir="$hooks/merged-usr" --hook-dir="$hooks/eatmydata" \
      --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
      bookworm "$tmp/rootfs.tar" "$sources" >/dev/null 2>"$tmp/mmdebstrap.log" \
      || { cat "$tmp/mmdebstrap.log" >&2; exit 1; }
    mv "$tmp/rootfs.tar" "$tar"
    rm -rf "$tmp"
  fi
  podman import --quiet --change "LABEL sharpml.base=$key" --change "CMD [\"/bin/bash\"]" \
    "$tar" "$LOCAL_BASE" >/dev/null
  echo "$LOCAL_BASE"
}

pick_base() {
  if [ -n "${SHARPML_BASE_IMAGE:-}" ]; then
    have_image "$SHARPML_BASE_IMAGE" || podman pull "$SHARPML_BASE_IMAGE" >&2
    echo "$SHARPML_BASE_IMAGE"; return
  fi
  if have_image "$OFFICIAL_BASE"; then echo "$OFFICIAL_BASE"; return; fi
  if [ "${SHARPML_TRY_PULL:-1}" = 1 ] && timeout 60 podman pull --quiet "$OFFICIAL_BASE" >/dev/null 2>&1; then
    echo "$OFFICIAL_BASE"; return
  fi
  log "no registry reachable for $OFFICIAL_BASE; using a local mmdebstrap base"
  local_base
}

base="$(pick_base)"
# The base's identity: the mmdebstrap recipe key for the local base (a re-import gets a new image id but
# has the same content), else the image id.
base_id="$(podman image inspect -f '{{index .Labels "sharpml.base"}}' "$base")"
[ -n "$base_id" ] && [ "$base_id" != "<no value>" ] || base_id="$(podman image inspect -f '{{.Id}}' "$base")"
hash="$(
  cd "$REPO"
  { echo "$base_id"; cat images/sfm/Dockerfile pyproject.toml hack/requirements.py;
    find sharpml -name '*.py' -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16
)"
ref="$IMAGE:$hash"
archive="$CACHE/sfm-$hash.tar"
if have_image "$ref"; then
  log "up to date: $ref"
elif [ -s "$archive" ]; then
  log "loading cached $archive"
  podman load --quiet -i "$archive" >/dev/null
else
  log "building $ref from $base"
  ca_mount=()
  [ -f "$HOST_CA" ] && ca_mount=(-v "$HOST_CA:/etc/ssl/certs/ca-certificates.crt:ro")
  # The build context holds only what the image needs (no .venv, .cluster, .data from the checkout).
  ctx="$(mktemp -d "${TMPDIR:-/tmp}/sharpml-ctx.XXXXXX")"
  trap 'rm -rf "$ctx"' EXIT
  cp "$REPO/pyproject.toml" "$ctx/"
  python3 "$REPO/hack/requirements.py" sfm > "$ctx/requirements.txt"
  mkdir -p "$ctx/operator" "$ctx/api"  # package roots named in pyproject; not part of this image
  (cd "$REPO" && find sharpml -name '*.py' -exec cp --parents {} "$ctx/" \;)
  start=$(date +%s)
  podman build --quiet "${ca_mount[@]}" --build-arg "BASE_IMAGE=$base" \
    --label "sharpml.content=$hash" -t "$ref" -f "$REPO/images/sfm/Dockerfile" "$ctx" >&2
  log "built $ref in $(( $(date +%s) - start )) s"
  rm -f "$CACHE"/sfm-*.tar
  podman save --quiet -o "$archive.tmp" "$ref" && mv "$archive.tmp" "$archive"
fi
podman tag "$ref" "$IMAGE:latest"
echo "$ref"
