#!/usr/bin/env bash
# Build the trainer image (images/trainer/Dockerfile) with podman; prints the image reference on stdout.
#
#   hack/build-trainer-image.sh     # CPU image FROM the local Debian base (made by hack/build-images.sh)
#   SHARPML_TRAINER_BASE=docker.io/nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04 hack/build-trainer-image.sh
#
# Tagged localhost/sharpml-trainer:<content hash> and :latest; a rerun with unchanged inputs is a no-op.
# The torch wheels come from the ~/.cache/sharpml/wheels wheelhouse that `make venv` fills (hard-linked
# into the build context and bind-mounted into the build, so no image layer keeps them).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$REPO/hack/containers.conf}"
IMAGE="${SHARPML_TRAINER_IMAGE_NAME:-localhost/sharpml-trainer}"
WHEELS="${WHEELS:-$HOME/.cache/sharpml/wheels}"
HOST_CA=/etc/ssl/certs/ca-certificates.crt
log() { echo "build-trainer-image: $*" >&2; }

base="${SHARPML_TRAINER_BASE:-}"
if [ -z "$base" ]; then
  # The local Debian base that hack/build-images.sh makes (and caches) where no registry is reachable;
  # not made from here, since that script also retags the SfM image others' tests may be using.
  if podman image exists localhost/sharpml-base:bookworm; then base=localhost/sharpml-base:bookworm
  elif podman image exists docker.io/library/python:3.11-slim-bookworm; then base=docker.io/library/python:3.11-slim-bookworm
  else log "no base image: run hack/build-images.sh once (it makes localhost/sharpml-base:bookworm) or set SHARPML_TRAINER_BASE"; exit 1; fi
fi
base_id="$(podman image inspect -f '{{.Id}}' "$base")"
hash="$(
  cd "$REPO"
  { echo "$base_id"; cat images/trainer/Dockerfile pyproject.toml hack/requirements.py;
    find sharpml -name '*.py' -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16
)"
ref="$IMAGE:$hash"
if podman image exists "$ref"; then
  log "up to date: $ref"
else
  log "building $ref from $base"
  ctx="$(mktemp -d "${TMPDIR:-/var/tmp}/sharpml-trainer-ctx.XXXXXX")"
  trap 'rm -rf "$ctx"' EXIT
  cp "$REPO/pyproject.toml" "$ctx/"
  python3 "$REPO/hack/requirements.py" runpod > "$ctx/requirements.txt"
  mkdir -p "$ctx/operator" "$ctx/api" "$ctx/wheels"
  (cd "$REPO" && find sharpml -name '*.py' -exec cp --parents {} "$ctx/" \;)
  if [ -d "$WHEELS" ]; then cp -l "$WHEELS"/*.whl "$ctx/wheels/" 2>/dev/null || cp "$WHEELS"/*.whl "$ctx/wheels/"; fi
  ca_mount=()
  [ -f "$HOST_CA" ] && ca_mount=(-v "$HOST_CA:/etc/ssl/certs/ca-certificates.crt:ro")
  start=$(date +%s)
  podman build --quiet "${ca_mount[@]}" --build-arg "BASE_IMAGE=$base" \
    --label "sharpml.content=$hash" -t "$ref" -f "$REPO/images/trainer/Dockerfile" "$ctx" >&2
  log "built $ref in $(( $(date +%s) - start )) s"
fi
podman tag "$ref" "$IMAGE:latest"
echo "$ref"
