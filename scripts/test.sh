#!/usr/bin/env bash
# Run the whole test suite: unit tests, SDK harness tests of every plugin,
# doc tests, and the integration tests (real gateway, real upstreams, real
# .wasm plugins built once for wasm32-wasip2 by the test harness, real
# redis-server for the cluster-state tests).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# The cluster-state tests start real redis-server processes (Debian package).
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (needed by the cluster-state tests)..." >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

cargo test --release --workspace "$@"
