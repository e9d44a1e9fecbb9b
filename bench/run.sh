#!/usr/bin/env bash
# Weir vs nginx vs haproxy on this machine, in one run: see bench/README.md.
# Installs nginx, haproxy, wrk and h2load (nghttp2-client) from apt, builds
# weir and the sample plugins in release mode, then runs bench/run.py.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx)
command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
if ((${#need_apt[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

source scripts/wasm-target.sh
(cd plugins && cargo build --release --target wasm32-wasip2 --quiet)
cargo build --release --quiet -p weir
exec python3 bench/run.py "$@"
