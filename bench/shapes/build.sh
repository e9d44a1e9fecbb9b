#!/usr/bin/env bash
# Builds the contract-shape bench's guests (Rust, JavaScript, Python) into
# OUT_DIR/{rust,js,python}.wasm. Run by tests/benches/contract_shapes.rs;
# the toolchains are the samples' (plugins/build-foreign.sh installs them).
#
# Usage: bench/shapes/build.sh OUT_DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
mkdir -p "$1"
out="$(cd "$1" && pwd)"
source "$root/scripts/wasm-target.sh"
env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS \
    -u CARGO_MAKEFLAGS -u RUSTC_WRAPPER -u RUSTC_WORKSPACE_WRAPPER \
    "${CARGO:-cargo}" build --quiet --release --locked --target wasm32-wasip2 \
    --manifest-path "$here/rust/Cargo.toml" --target-dir "$root/target/shapes"
cp "$root/target/shapes/wasm32-wasip2/release/shapes.wasm" "$out/rust.wasm"
"$root/plugins/build-foreign.sh" --wit "$here/wit" --world shapes "$out" \
    "$here/js" "$here/python"
