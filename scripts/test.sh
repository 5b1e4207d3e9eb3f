#!/usr/bin/env bash
# Run the whole test suite: unit tests, SDK harness tests of every plugin,
# doc tests, and the integration tests (real gateway, real upstreams, real
# .wasm plugins built once for wasm32-wasip2 by the test harness, real
# redis-server for the cluster-state tests, the dashboard in headless
# Chromium driven by playwright-core, HTTP/2 abuse from Python's h2, TLS
# and HTTP/2 with curl and h2load, gRPC with grpcio, descriptor sets for the
# protocol-translation tests compiled with grpcio-tools, WebSocket with the
# Python websockets client). First it builds the book (docs/), whose
# examples the tests check (tests/it/docs.rs, the SDK's doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# Debian packages the tests need: redis-server (the cluster-state tests
# start real Redis processes), docker-registry (the CNCF distribution
# registry: the OCI tests push and pull plugin modules through a real one),
# etcd-server (the fleet tests keep the configuration in a real etcd),
# protobuf-compiler (protoc: the etcd client's build script needs it),
# chromium (the dashboard is tested in a real
# headless browser), Node.js with npm (to drive it with playwright-core),
# curl and h2load (real HTTP/2 and TLS clients).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
[ -x /usr/bin/etcd ] || missing+=(etcd-server)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (needed by the tests)..." >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# playwright-core, pinned by tests/dashboard/package-lock.json.
if [ ! -d tests/dashboard/node_modules/playwright-core ]; then
  (cd tests/dashboard && npm ci --no-audit --no-fund --loglevel=error)
fi

# Python's h2, for the HTTP/2 abuse tests (tests/h2/abuse.py).
if ! python3 -c 'import h2' 2>/dev/null; then
  python3 -m pip install --quiet h2 2>/dev/null || {
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-h2 >/dev/null
  }
fi

# Real gRPC and WebSocket peers (tests/grpc/peer.py, tests/ws/peer.py):
# grpcio, and websockets 13 or later (its asyncio API), from PyPI.
if ! python3 -c 'import grpc, websockets.asyncio.client' 2>/dev/null; then
  python3 -m pip install --quiet 'grpcio>=1.60' 'websockets>=13'
fi
# grpcio-tools: protoc as a Python module, for the descriptor sets and the
# message classes of the protocol-translation tests (tests/it/transcode.rs).
if ! python3 -c 'import grpc_tools.protoc' 2>/dev/null; then
  python3 -m pip install --quiet 'grpcio-tools>=1.60'
fi

# The book: mdbook from crates.io when it is missing (without its default
# features: no search index, no `serve`/`watch`, a much shorter build),
# then `mdbook build docs` into docs/book/. mdbook reports a broken
# {{#include}} but still exits 0, so its output is checked too.
command -v mdbook >/dev/null 2>&1 || cargo install mdbook --locked --no-default-features
book_log=$(mdbook build docs 2>&1) || { echo "$book_log" >&2; exit 1; }
if grep -E '^\s*(ERROR|WARN)' <<<"$book_log" >&2; then
  echo "mdbook build docs reported problems (above)" >&2
  exit 1
fi

cargo test --release --workspace "$@"

# The SDK as plugin authors get it from a registry: packaged on its own (the
# WIT inside it) and built from the package. --allow-dirty so a work tree
# with local changes can run the suite too.
cargo package -p weir-plugin-sdk --allow-dirty --quiet
