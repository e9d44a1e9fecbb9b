#!/usr/bin/env bash
# Makes sure the Rust toolchain this checkout uses (rust-toolchain.toml) has
# the wasm32-wasip2 target. rustup installs the targets listed in
# rust-toolchain.toml only when it installs the toolchain itself, never for
# a toolchain that is already there, so every entry point that compiles
# plugins sources this file first. Idempotent and quiet when the target is
# present.
#
# Usage: source scripts/wasm-target.sh   (or run it)
weir_wasm_target() {
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if ! command -v rustup >/dev/null 2>&1; then
        # Without rustup the toolchain must bring the target itself.
        if rustc --print target-list 2>/dev/null | grep -qx wasm32-wasip2 &&
            [ -d "$(rustc --print sysroot 2>/dev/null)/lib/rustlib/wasm32-wasip2" ]; then
            return 0
        fi
        echo "error: rustup not found and this Rust toolchain has no wasm32-wasip2 target." >&2
        echo "       Install rustup (https://rustup.rs), then run this command again;" >&2
        echo "       it installs the toolchain pinned in rust-toolchain.toml with the target." >&2
        return 1
    fi
    # Run from the checkout so rustup resolves rust-toolchain.toml's channel.
    if (cd "$root" && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2); then
        return 0
    fi
    echo "==> adding the wasm32-wasip2 target to the pinned toolchain (rustup target add)"
    (cd "$root" && rustup target add wasm32-wasip2)
}
weir_wasm_target
