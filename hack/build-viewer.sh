#!/usr/bin/env bash
# Builds the browser viewer (viewer/, an npm project) into api/sharpml_api/static/viewer/, which the API
# serves: `npm ci` (the npm cache under ~/.cache/sharpml/npm; CI reaches only the npm registry), then
# a type check (tsc --noEmit, viewer/tsconfig.json) and viewer/build.mjs (esbuild). Each step is skipped
# when its inputs are unchanged: `npm ci` when package.json and package-lock.json are, the check and the
# build when those, tsconfig.json, build.mjs and src/ are.
set -euo pipefail
cd "$(dirname "$0")/.."
NPM_CACHE=${NPM_CACHE:-$HOME/.cache/sharpml/npm}
out=api/sharpml_api/static/viewer
command -v npm >/dev/null || { echo "build-viewer: node and npm are needed (hack/system-deps.sh test)" >&2; exit 1; }

deps_hash=$(cat viewer/package.json viewer/package-lock.json | sha256sum | cut -c1-16)
build_hash=$( (echo "$deps_hash"; cd viewer && find src build.mjs tsconfig.json -type f -print0 | sort -z | xargs -0 sha256sum) \
  | sha256sum | cut -c1-16)
if [ -f "$out/index.html" ] && [ "$(cat viewer/.build-stamp 2>/dev/null)" = "$build_hash" ]; then
  exit 0
fi
if [ "$(cat viewer/node_modules/.deps-stamp 2>/dev/null)" != "$deps_hash" ]; then
  (cd viewer && npm ci --cache "$NPM_CACHE" --prefer-offline --no-audit --no-fund)
  echo "$deps_hash" > viewer/node_modules/.deps-stamp
fi
(cd viewer && node_modules/.bin/tsc -p . && node build.mjs)
echo "$build_hash" > viewer/.build-stamp
