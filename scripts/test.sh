#!/usr/bin/env bash
# One command for every test: formatting, lints, unit tests, the end-to-end
# suite (which compiles the plugins for wasm32-wasip2 itself), and a compile
# check of the benchmarks. Installs what it needs, the wasm32-wasip2 target
# included (rustup adds rust-toolchain.toml's targets only to a toolchain it
# installs itself, never to one already there).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests drive for real.
need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
# The JavaScript, Python and C sample plugins' toolchains.
source scripts/foreign-toolchains.sh
# Prometheus' own checker of the /metrics text (`promtool check metrics`),
# without what the package recommends (the node exporter and its tools).
need_apt_bare=()
command -v promtool >/dev/null || need_apt_bare+=(prometheus)
if ((${#need_apt[@]} + ${#need_apt_bare[@]})); then
  echo "==> installing ${need_apt[*]} ${need_apt_bare[*]} (apt)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  if ((${#need_apt[@]})); then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
  fi
  if ((${#need_apt_bare[@]})); then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt_bare[@]}"
  fi
fi

# The plugins are built for wasm32-wasip2 by tests/build.rs, minutes into
# the build: check the target now, not there.
source scripts/wasm-target.sh
sysroot="$(rustc --print sysroot)"
if [ ! -d "$sysroot/lib/rustlib/wasm32-wasip2/lib" ]; then
  echo "error: the wasm32-wasip2 target is still missing from $sysroot after 'rustup target add';" >&2
  echo "       the sample plugins cannot be built. Run 'rustup target add wasm32-wasip2' here and look at its output." >&2
  exit 1
fi

echo "==> fmt"
cargo fmt --all --check
(cd plugins && cargo fmt --all --check)

echo "==> clippy"
cargo clippy --workspace --all-targets -- -D warnings
(cd plugins && cargo clippy --target wasm32-wasip2 -- -D warnings)

echo "==> tests"
cargo test --workspace
(cd plugins && cargo test --workspace)

echo "==> benchmarks compile"
cargo bench --workspace --no-run
