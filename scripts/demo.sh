#!/usr/bin/env bash
# One command for the demo: build the sample plugins and weir, start the echo
# upstream on 127.0.0.1:9000 and weir on 127.0.0.1:8080 with
# examples/proxy.toml. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/wasm-target.sh
echo "==> building the sample plugins (wasm32-wasip2)"
(cd plugins && cargo build --release --target wasm32-wasip2 --quiet)
for wasm in plugins/target/wasm32-wasip2/release/*.wasm; do
  cp "$wasm" plugins/
done

echo "==> building weir"
cargo build --release --quiet -p weir
WEIR=target/release/weir

"$WEIR" check --config examples/proxy.toml

"$WEIR" echo --listen 127.0.0.1:9000 --name main &
MAIN_PID=$!
"$WEIR" echo --listen 127.0.0.1:9001 --name v2 &
V2_PID=$!
trap 'kill $MAIN_PID $V2_PID 2>/dev/null || true' EXIT

cat <<'TRY'

Weir is serving on http://127.0.0.1:8080 with the chain auth -> ratelimit ->
cache -> router, in front of two echo upstreams (main :9000, v2 :9001).
Admin (metrics, purge, weir ctl) on http://127.0.0.1:9901. Try:

  curl -i 127.0.0.1:8080/anything                                   # 401: no API key
  curl -i -H 'x-api-key: demo-key' '127.0.0.1:8080/doc?max_age=60'  # 200, cache-status: weir; fwd=miss; stored
  curl -i -H 'x-api-key: demo-key' '127.0.0.1:8080/doc?max_age=60'  # 200, cache-status: weir; hit
  curl -i -H 'x-api-key: demo-key' 127.0.0.1:8080/v2/hello          # routed: x-echo-upstream: v2, path /hello
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code}\n' -H 'x-api-key: demo-key' 127.0.0.1:8080/x; done
                                                                    # 5 per 10 s per tenant: ... 429
  curl -s -H "Authorization: Bearer $(cat examples/admin.token)" 127.0.0.1:9901/metrics
  target/release/weir ctl --token-file examples/admin.token plugins   # or status, upstreams, cache, reload

Ctrl-C to stop.
TRY
"$WEIR" run --config examples/proxy.toml
