#!/usr/bin/env bash
# Run the whole test suite: unit tests, SDK harness tests of every plugin,
# doc tests, and the integration tests (real gateway, real upstreams, real
# .wasm plugins built once for wasm32-wasip2 by the test harness).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

cargo test --release --workspace "$@"
