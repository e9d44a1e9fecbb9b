#!/usr/bin/env bash
# Weir vs nginx vs haproxy on this machine, in one run: see BENCHMARKS.md.
# Installs nginx, haproxy, redis-server, wrk and h2load (nghttp2-client) from apt, builds
# weir and the sample plugins in release mode (into CARGO_TARGET_DIR when
# set), then runs bench/run.py; `bench/run.sh --storm` runs the storms of
# bench/storm.py (issue #13) instead of the load test, and builds the
# JavaScript, Python and C samples first (target/foreign-plugins): the
# reload storm compiles the largest of them.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx)
command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
storm=false
for arg in "$@"; do [ "$arg" = --storm ] && storm=true; done
if $storm; then source scripts/foreign-toolchains.sh; fi
if ((${#need_apt[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

source scripts/wasm-target.sh
(cd plugins && cargo build --release --target wasm32-wasip2 --quiet)
cargo build --release --quiet -p weir
if $storm; then bash plugins/build-foreign.sh "$PWD/target/foreign-plugins"; fi
# With CARGO_TARGET_DIR set, both builds went there.
weir_dir="${CARGO_TARGET_DIR:-$PWD/target}"
plugins_dir="${CARGO_TARGET_DIR:-$PWD/plugins/target}/wasm32-wasip2/release"
exec python3 bench/run.py --weir-binary "$weir_dir/release/weir" --plugins-dir "$plugins_dir" "$@"
