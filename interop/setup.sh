#!/usr/bin/env bash
# Installs the interop peers of tests/interop.rs and gateway/tests/sdk_clients.rs, pinned, inside
# the checkout:
#   .cache/interop/venv   the official MCP Python SDK and schemathesis (interop/python/requirements.txt)
#   .cache/interop/node   the official MCP TypeScript SDK and @modelcontextprotocol/server-everything
#                         (interop/node/package-lock.json)
#   .cache/interop/browser  playwright-core, driving Debian's chromium for the Admin UI tests
#                         (interop/browser/package-lock.json; no browser download: it uses
#                         /usr/bin/chromium, which .ci/run installs)
# Idempotent: a stamp holding the hash of the pin file skips an install already done, so a
# second run takes well under a second. Needs python3 (3.10+) with venv, and node 18+ with npm.
#
# Then run the tests with:
#   export MCP_POOL_INTEROP_PYTHON="$PWD/.cache/interop/venv/bin/python"
#   export MCP_POOL_INTEROP_NODE_DIR="$PWD/.cache/interop/node"
#   export MCP_POOL_BROWSER_DIR="$PWD/.cache/interop/browser"
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$root/.cache/interop"
mkdir -p "$cache"

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# Python: a venv with the pinned SDK.
venv="$cache/venv"
want="$(hash_of "$root/interop/python/requirements.txt")"
if [[ "$(cat "$venv/.installed" 2>/dev/null)" != "$want" ]]; then
  echo "interop: installing the MCP Python SDK into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
    -r "$root/interop/python/requirements.txt"
  "$venv/bin/python" -c "import mcp, uvicorn, schemathesis" # fails the setup if the install is unusable
  "$venv/bin/schemathesis" --version
  echo "$want" > "$venv/.installed"
fi

# npm_ci NAME WHAT CHECK: installs interop/NAME's lock file into .cache/interop/NAME with npm ci
# (exactly the locked versions, no install scripts), then runs the node snippet CHECK there.
npm_ci() {
  local name=$1 what=$2 check=$3
  local dir="$cache/$name"
  local want
  want="$(hash_of "$root/interop/$name/package.json" "$root/interop/$name/package-lock.json")"
  if [[ "$(cat "$dir/.installed" 2>/dev/null)" != "$want" ]]; then
    echo "interop: installing $what into $dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$root/interop/$name/package.json" "$root/interop/$name/package-lock.json" "$dir/"
    (cd "$dir" && npm ci --silent --no-audit --no-fund --ignore-scripts)
    NODE_PATH="$dir/node_modules" node -e "$check"
    echo "$want" > "$dir/.installed"
  fi
}

# Node: the pinned MCP SDK and server-everything.
npm_ci node "the MCP TypeScript SDK and server-everything" \
  "require('@modelcontextprotocol/sdk/server/mcp.js'); require('fs').accessSync(process.env.NODE_PATH + '/@modelcontextprotocol/server-everything/dist/index.js')"
# Browser: playwright-core only; it drives Debian's chromium and downloads no browser.
npm_ci browser "playwright-core" "require('playwright-core')"
echo "interop: peers ready in $cache"
