#!/usr/bin/env bash
# Instructions per request on weir's empty chain, counted by callgrind (so
# the figure does not depend on the machine's speed or noise): the bench
# upstream, weir under `valgrind --tool=callgrind` with instrumentation off
# during start-up and warm-up, then N keep-alive requests with h2load.
#
#   bench/callgrind.sh [--route NAME] [REQUESTS] [CONNECTIONS]     (defaults 20000, 16)
#
# `--route NAME` counts a route with built-in plugins instead (auth-hs256,
# auth-es256, rate-limit, anomaly, transform, mission: the bench table's
# routes, from `bench/run.py --route-config`); the plugins' functions are
# named in wasmtime's perf map (/tmp/perf-PID.map) for reading the profile.
#
# Installs valgrind and h2load when missing, builds in release, prints the
# instructions per request and leaves the profile in target/callgrind/ for
# `callgrind_annotate`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null 2>&1 || ! command -v h2load >/dev/null 2>&1; then
  echo "installing valgrind and nghttp2-client (h2load)..." >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind nghttp2-client >/dev/null
fi
# --workspace: the same feature set as the test build, so nothing is rebuilt.
ROUTE=""
if [ "${1:-}" = "--route" ]; then ROUTE=$2; shift 2; fi
cargo build --release --workspace --bins
if [ -n "$ROUTE" ]; then
  plugins=()
  for dir in plugins/*/; do plugins+=(-p "$(basename "$dir")"); done
  cargo build --release --target wasm32-wasip2 "${plugins[@]}"
fi
N=${1:-20000}
C=${2:-16}
REL=target/release
OUT=target/callgrind
mkdir -p "$OUT"
rm -f "$OUT"/callgrind.out.*

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); GW=$(port); ADMIN=$(port)
cat >"$OUT/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$GW"
admin_listen = "127.0.0.1:$ADMIN"
watch = false
[runtime]
# valgrind cannot reserve the pooling allocator's default address space.
max_instances = 6
[upstreams.up]
targets = ["127.0.0.1:$UP"]
EOF
HEADERS=()
if [ -n "$ROUTE" ]; then
  spec=$(python3 bench/run.py --route-config "$ROUTE")
  sed -i "/^watch = false/a plugins_dir = \"$PWD/target/wasm32-wasip2/release\"" "$OUT/gateway.toml"
  python3 -c 'import json,sys; print(json.loads(sys.argv[1])["toml"])' "$spec" >>"$OUT/gateway.toml"
  while IFS= read -r h; do [ -n "$h" ] && HEADERS+=(-H "$h"); done \
    < <(python3 -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])["headers"]))' "$spec")
else
  printf '[[routes]]\nname = "bench"\nupstream = "up"\n' >>"$OUT/gateway.toml"
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$REL/bench-upstream" "127.0.0.1:$UP" & pids+=($!)
WEIR_WASM_PROFILER=perfmap WEIR_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out.%p" \
  "$REL/weir" run --workers 1 --config "$OUT/gateway.toml" 2>"$OUT/valgrind.log" & pids+=($!)
VG=$!
for _ in $(seq 1 600); do
  curl -fs "${HEADERS[@]}" "http://127.0.0.1:$GW/bench" >/dev/null 2>&1 && break
  sleep 0.1
done
# Warm: connections to the upstream, allocator arenas, lazily built state.
h2load --h1 -n 2000 -c "$C" "${HEADERS[@]}" "http://127.0.0.1:$GW/bench" >/dev/null
callgrind_control -i on "$VG" >/dev/null
h2load --h1 -n "$N" -c "$C" "${HEADERS[@]}" "http://127.0.0.1:$GW/bench" | grep -E "^requests:|^status codes:"
callgrind_control -d "$VG" >/dev/null 2>&1
callgrind_control -i off "$VG" >/dev/null 2>&1
sleep 1
total=$(for f in "$OUT"/callgrind.out.*; do grep -h '^summary:' "$f" | awk '{print $2}'; done | awk '{s+=$1} END {print s}')
echo "instructions: $total over $N requests: $((total / N)) per request"
