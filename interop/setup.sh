#!/usr/bin/env bash
# Installs the interop peers of tests/interop.rs and gateway/tests/sdk_clients.rs, pinned, inside
# the checkout:
#   .cache/interop/venv   the official MCP Python SDK and schemathesis (interop/python/requirements.txt)
#   .cache/interop/node   the official MCP TypeScript SDK and @modelcontextprotocol/server-everything
#                         (interop/node/package-lock.json)
# Idempotent: a stamp holding the hash of the pin file skips an install already done, so a
# second run takes well under a second. Needs python3 (3.10+) with venv, and node 18+ with npm.
#
# Then run the tests with:
#   export MCP_POOL_INTEROP_PYTHON="$PWD/.cache/interop/venv/bin/python"
#   export MCP_POOL_INTEROP_NODE_DIR="$PWD/.cache/interop/node"
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

# Node: the pinned SDK from the lock file (npm ci: exactly the locked versions).
node_dir="$cache/node"
want="$(hash_of "$root/interop/node/package.json" "$root/interop/node/package-lock.json")"
if [[ "$(cat "$node_dir/.installed" 2>/dev/null)" != "$want" ]]; then
  echo "interop: installing the MCP TypeScript SDK and server-everything into $node_dir"
  rm -rf "$node_dir"
  mkdir -p "$node_dir"
  cp "$root/interop/node/package.json" "$root/interop/node/package-lock.json" "$node_dir/"
  (cd "$node_dir" && npm ci --silent --no-audit --no-fund --ignore-scripts)
  NODE_PATH="$node_dir/node_modules" node -e "require('@modelcontextprotocol/sdk/server/mcp.js')"
  test -f "$node_dir/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
  echo "$want" > "$node_dir/.installed"
fi
echo "interop: peers ready in $cache"
