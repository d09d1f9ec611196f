#!/usr/bin/env bash
# Build the project's images with podman; prints each image reference on stdout, one a line, in the order asked.
#
#   hack/build-images.sh                  # the SfM image: localhost/sharpml-sfm:<content hash>, also :latest
#   hack/build-images.sh api operator     # localhost/sharpml-api, localhost/sharpml-operator (the chart's)
#   hack/build-images.sh trainer          # localhost/sharpml-trainer on CPU (hack/build-trainer-image.sh)
#   hack/build-images.sh all              # sfm, api, operator, trainer
#   SHARPML_BASE_IMAGE=python:3.11-slim-bookworm hack/build-images.sh   # explicit base
#
# Each image NAME is images/NAME/Dockerfile with the requirements of the pyproject extra of the same name
# (hack/requirements.py NAME) and only the sources it runs: sharpml/, plus api/ or operator/. Besides
# :<content hash> and :latest it is tagged with the project's version (pyproject.toml), the chart's appVersion.
#
# Cached: the image is tagged with a hash of everything that goes into it (Dockerfile, pyproject.toml,
# its sources, base image), kept in podman's storage and saved under ~/.cache/sharpml/images/, so a re-run
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
version="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$REPO/pyproject.toml")"

# build_image NAME: images/NAME/Dockerfile with the extra NAME's requirements; prints the reference.
build_image() {
  local name="$1" image sources
  if [ "$name" = trainer ]; then
    # Its own script (6 GB of torch: wheels from the wheelhouse, no archive cache); the same base.
    SHARPML_TRAINER_BASE="$base" "$REPO/hack/build-trainer-image.sh"
    return
  fi
  case "$name" in
    sfm) image="${SHARPML_SFM_IMAGE_NAME:-localhost/sharpml-sfm}"; sources=(sharpml) ;;
    api) image="${SHARPML_API_IMAGE_NAME:-localhost/sharpml-api}"; sources=(sharpml api) ;;
    operator) image="${SHARPML_OPERATOR_IMAGE_NAME:-localhost/sharpml-operator}"; sources=(sharpml operator) ;;
    *) log "unknown image '$name' (sfm, api, operator, trainer, all)"; exit 2 ;;
  esac
  # The API serves the browser viewer: built (npm, cached: a no-op when unchanged) before it is copied in.
  local assets=()
  if [ "$name" = api ]; then
    "$REPO/hack/build-viewer.sh" >&2
    assets=(api/sharpml_api/static)
  fi
  local hash
  hash="$(
    cd "$REPO"
    { echo "$base_id"; cat "images/$name/Dockerfile" pyproject.toml hack/requirements.py;
      find "${sources[@]}" -name '*.py' -print0 | sort -z | xargs -0 sha256sum;
      [ ${#assets[@]} -eq 0 ] || find "${assets[@]}" -type f -print0 | sort -z | xargs -0 sha256sum; } \
      | sha256sum | cut -c1-16
  )"
  local ref="$image:$hash" archive="$CACHE/$name-$hash.tar"
  if have_image "$ref"; then
    log "up to date: $ref"
  elif [ -s "$archive" ]; then
    log "loading cached $archive"
    podman load --quiet -i "$archive" >/dev/null
  else
    log "building $ref from $base"
    local ca_mount=()
    [ -f "$HOST_CA" ] && ca_mount=(-v "$HOST_CA:/etc/ssl/certs/ca-certificates.crt:ro")
    # The build context holds only what the image needs (no .venv, .cluster, .data from the checkout).
    local ctx
    ctx="$(mktemp -d "${TMPDIR:-/tmp}/sharpml-ctx.XXXXXX")"
    cp "$REPO/pyproject.toml" "$ctx/"
    python3 "$REPO/hack/requirements.py" "$name" > "$ctx/requirements.txt"
    mkdir -p "$ctx/operator" "$ctx/api"  # package roots named in pyproject; empty unless this image's
    (cd "$REPO" && find "${sources[@]}" -name '*.py' -exec cp --parents {} "$ctx/" \;)
    [ ${#assets[@]} -eq 0 ] || (cd "$REPO" && cp -r --parents "${assets[@]}" "$ctx/")
    local start; start=$(date +%s)
    podman build --quiet "${ca_mount[@]}" --build-arg "BASE_IMAGE=$base" \
      --label "sharpml.content=$hash" -t "$ref" -f "$REPO/images/$name/Dockerfile" "$ctx" >&2
    log "built $ref in $(( $(date +%s) - start )) s, $(podman image inspect -f '{{.Size}}' "$ref" | awk '{printf "%.0f MB", $1/1e6}')"
    rm -rf "$ctx"
    rm -f "$CACHE/$name"-*.tar
    podman save --quiet -o "$archive.tmp" "$ref" && mv "$archive.tmp" "$archive"
  fi
  podman tag "$ref" "$image:latest" "$image:$version"
  echo "$ref"
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(sfm)
[ "${names[*]}" != all ] || names=(sfm api operator trainer)
for name in "${names[@]}"; do build_image "$name"; done
