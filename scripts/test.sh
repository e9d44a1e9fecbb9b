#!/usr/bin/env bash
# One command for every test: formatting, lints, unit tests, the end-to-end
# suite (which compiles the plugins for wasm32-wasip2 itself), and a compile
# check of the benchmarks. Installs what it needs; rust-toolchain.toml brings
# the wasm32-wasip2 target.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> fmt"
cargo fmt --all --check
(cd plugins && cargo fmt --all --check)

echo "==> clippy"
cargo clippy --workspace --all-targets -- -D warnings
(cd plugins && cargo clippy --target wasm32-wasip2 -- -D warnings)

echo "==> tests"
cargo test --workspace

echo "==> benchmarks compile"
cargo bench --workspace --no-run
