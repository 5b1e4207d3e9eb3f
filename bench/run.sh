#!/usr/bin/env bash
# Side-by-side benchmark: direct upstream, nginx, and weir with several
# chains, pinned to separate cores. Usage: bench/run.sh [--smoke] [--rounds N] [--duration S]
# Results: a markdown table on stdout and bench/results/latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx || ! need taskset || ! need openssl; then
  echo "installing wrk, nginx, util-linux (taskset), openssl (signs the ES256 benchmark token)..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light util-linux openssl >/dev/null \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx util-linux openssl >/dev/null
fi
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# protoc: the etcd client's build script needs it (fleet mode).
if ! command -v protoc >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
fi

plugins=()
for dir in plugins/*/; do plugins+=(-p "$(basename "$dir")"); done
cargo build --release --target wasm32-wasip2 "${plugins[@]}"
# --workspace: the same feature set as the test build, so wasmtime is shared.
cargo build --release --workspace --bins

exec python3 bench/run.py "$@"
