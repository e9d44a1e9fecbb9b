#!/usr/bin/env bash
# One command for the demo: build the sample plugins and weir, start the echo
# upstream on 127.0.0.1:9000 and weir on 127.0.0.1:8080 with
# examples/proxy.toml. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building the sample plugins (wasm32-wasip2; rust-toolchain.toml brings the target)"
(cd plugins && cargo build --release --target wasm32-wasip2 --quiet)
for wasm in plugins/target/wasm32-wasip2/release/*.wasm; do
  cp "$wasm" plugins/
done

echo "==> building weir"
cargo build --release --quiet -p weir
WEIR=target/release/weir

"$WEIR" check --config examples/proxy.toml

"$WEIR" echo --listen 127.0.0.1:9000 &
ECHO_PID=$!
trap 'kill $ECHO_PID 2>/dev/null || true' EXIT

cat <<'TRY'

Weir is serving on http://127.0.0.1:8080 (upstream: weir echo on :9000). Try:

  curl -i 127.0.0.1:8080/anything            # echoed, with x-weir-demo headers both ways
  curl -i 127.0.0.1:8080/admin/secrets       # 403 from the tagger plugin
  curl -i --http2-prior-knowledge 127.0.0.1:8080/h2   # HTTP/2 cleartext

Ctrl-C to stop.
TRY
"$WEIR" run --config examples/proxy.toml
