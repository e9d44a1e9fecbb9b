#!/usr/bin/env bash
# The apt packages behind plugins/build-foreign.sh: the JavaScript and
# Python sample plugins are built by their own toolchains (componentize-qjs
# and componentize-js from npm, componentize-py from PyPI), the C sample by
# clang for wasm32-wasi with its linker, wasi-libc and the wasm32 compiler
# builtins. Appends what is missing to the caller's `need_apt` array.
#
# Usage: need_apt=(); source scripts/foreign-toolchains.sh
command -v node >/dev/null || need_apt+=(nodejs npm)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v clang >/dev/null || need_apt+=(clang)
command -v wasm-ld >/dev/null || need_apt+=(lld)
[ -f /usr/lib/wasm32-wasi/libc.a ] || need_apt+=(wasi-libc)
compgen -G '/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a' >/dev/null \
  || need_apt+=(libclang-rt-dev-wasm32)
