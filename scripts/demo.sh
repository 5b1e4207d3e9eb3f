#!/usr/bin/env bash
# Build everything and run the demo: the gateway on examples/gateway.toml
# with the built-in plugins and two demo upstreams on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

plugins=()
for dir in plugins/*/; do plugins+=(-p "$(basename "$dir")"); done
cargo build --release --target wasm32-wasip2 "${plugins[@]}"
# `--workspace`: the same feature set as the test build, so wasmtime is built once for both.
cargo build --release --workspace --bins

target/release/weir-demo-upstream users-1 127.0.0.1:9001 users-2 127.0.0.1:9002 &
upstreams=$!
trap 'kill $upstreams 2>/dev/null || true' EXIT

cat <<'TRY'

weir demo: proxy on http://127.0.0.1:8080, admin on http://127.0.0.1:9901
Try, in another terminal:
  curl -i http://127.0.0.1:8080/users/42          # round robin over users-1/users-2, x-greeting added upstream
  curl -i -X DELETE http://127.0.0.1:8080/users/42 # 405: the route allows GET and POST
  curl -i http://127.0.0.1:8080/nowhere           # 404 with a JSON error and request id
  curl -s http://127.0.0.1:9901/admin/status      # generation, plugins and their sha256, routes
  curl -s http://127.0.0.1:9901/metrics           # Prometheus metrics
Edit examples/gateway.toml while it runs: the change is picked up live
(a broken edit is rejected and shown in /admin/status; the old one keeps serving).
Ctrl-C to stop.

TRY
target/release/weir run --config examples/gateway.toml
