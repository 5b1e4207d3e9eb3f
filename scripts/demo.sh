#!/usr/bin/env bash
# Build everything and run the demo: the gateway on examples/gateway.toml
# with the built-in plugins and three demo upstreams on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# protoc: the etcd client's build script needs it (fleet mode).
if ! command -v protoc >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
fi

plugins=()
for dir in plugins/*/; do plugins+=(-p "$(basename "$dir")"); done
cargo build --release --target wasm32-wasip2 "${plugins[@]}"
# `--workspace`: the same feature set as the test build, so wasmtime is built once for both.
cargo build --release --workspace --bins

target/release/weir-demo-upstream users-1 127.0.0.1:9001 users-2 127.0.0.1:9002 orders 127.0.0.1:9003 &
upstreams=$!
trap 'kill $upstreams 2>/dev/null || true' EXIT

# A demo JWT (HS256, kid "demo", valid for a day) signed with the secret in
# examples/gateway.toml.
token=$(python3 - <<'PY'
import base64, hashlib, hmac, json, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "demo"}).encode())
body = b64(json.dumps({"sub": "alice", "iss": "weir-demo", "scope": "orders:read",
                       "exp": int(time.time()) + 86400}).encode())
sig = hmac.new(b"weir-demo-secret-of-at-least-32-bytes!", f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b64(sig)}")
PY
)

cat <<TRY

weir demo: proxy on http://127.0.0.1:8080, admin on http://127.0.0.1:9901
Live dashboard: http://127.0.0.1:9901/dashboard   (access log: target/weir-access.log)
Try, in another terminal:
  curl -i http://127.0.0.1:8080/users/42           # round robin over users-1/users-2, x-greeting added upstream
  curl -i -X DELETE http://127.0.0.1:8080/users/42 # 405: the route allows GET and POST
  curl -i http://127.0.0.1:8080/nowhere            # 404 with a JSON error and request id

The orders route runs auth → rate limit → anomaly → transform:
  TOKEN=$token
  curl -i http://127.0.0.1:8080/api/orders/7                                    # 401 + WWW-Authenticate
  curl -i -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:8080/api/orders/7   # 200: sub → x-client, /api stripped, RateLimit headers
  curl -i -H "x-api-key: demo-key-0123456789" http://127.0.0.1:8080/api/orders/7  # 200 as consumer batch-job
  for i in \$(seq 8); do curl -s -o /dev/null -w '%{http_code} ' -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:8080/api/orders/7; done; echo
                                                                                # 5 per second, then 429 with Retry-After
  for i in \$(seq 40); do curl -s -o /dev/null -w '%{http_code} ' -H "x-api-key: demo-key-0123456789" -H "x-status: 404" http://127.0.0.1:8080/api/probe-\$i; sleep 0.3; done; echo
                                                                                # a scanner: many paths, all 404 → throttled (429)
  curl -s -H 'x-delay-ms: 100' 'http://127.0.0.1:8080/warehouse/42?currency=EUR'
                                                                                # three parts in parallel, merged: ~100 ms, not 300
  curl -s http://127.0.0.1:9901/admin/events       # the anomaly event (also POSTed to the webhook on :9003)
  curl -s http://127.0.0.1:9901/admin/status       # generation, plugins and their sha256, routes, state backend
  curl -s http://127.0.0.1:9901/metrics            # Prometheus metrics
Edit examples/gateway.toml while it runs: the change is picked up live
(a broken edit is rejected and shown in /admin/status; the old one keeps serving).
Ctrl-C to stop.

TRY
target/release/weir run --config examples/gateway.toml
