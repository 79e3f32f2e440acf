#!/usr/bin/env bash
# Rebuild treescale/web/static/vendor/msgpack/ (the dashboard's copy of @msgpack/msgpack's
# ES module build) from an `npm ci` in clients/js (the version its package-lock.json pins)
# when it depends on @msgpack/msgpack, else MSGPACK_VERSION (default below) in a temporary
# directory. Copies dist.esm/**/*.mjs with its layout and the LICENSE; no maps, no .d.ts.
# The page maps the bare "@msgpack/msgpack" to /vendor/msgpack/index.mjs (its import map).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dest="$repo/treescale/web/static/vendor/msgpack"
version="${MSGPACK_VERSION:-3.1.3}"
tmp=""
trap '[ -n "$tmp" ] && rm -rf "$tmp"' EXIT

if [ -f "$repo/clients/js/package.json" ] && grep -q '"@msgpack/msgpack"' "$repo/clients/js/package.json"; then
  if [ -f "$repo/clients/js/package-lock.json" ]; then
    (cd "$repo/clients/js" && npm ci --no-audit --no-fund --ignore-scripts >&2)  # the lock's version
  else
    (cd "$repo/clients/js" && npm install --no-audit --no-fund --ignore-scripts >&2)
  fi
  pkg="$repo/clients/js/node_modules/@msgpack/msgpack"
else
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm init -y >/dev/null &&
     npm install --no-audit --no-fund --ignore-scripts "@msgpack/msgpack@$version" >&2)
  pkg="$tmp/node_modules/@msgpack/msgpack"
fi

rm -rf "$dest"
mkdir -p "$dest"
(cd "$pkg/dist.esm" && find . -name '*.mjs' -print0 | while IFS= read -r -d '' f; do
   mkdir -p "$dest/$(dirname "$f")"; cp "$f" "$dest/$f"; done)
cp "$pkg/LICENSE" "$dest/LICENSE"
echo "vendored @msgpack/msgpack $(node -p "require('$pkg/package.json').version") into ${dest#"$repo"/}" >&2
