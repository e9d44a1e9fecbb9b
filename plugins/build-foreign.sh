#!/usr/bin/env bash
# Builds the plugins written in other languages into Wasm components:
#
#   plugins/js/<name>/plugin.js       componentize-qjs (QuickJS) or
#                                     componentize-js (SpiderMonkey), as the
#                                     plugin's package.json pins (with its
#                                     package-lock.json); a subdirectory with
#                                     its own pins builds <name>_<subdir>.wasm
#                                     from the same source
#   plugins/python/<name>/plugin.py   componentize-py (pinned by
#                                     plugins/python/requirements.txt)
#   plugins/c/<name>/*.c              clang for wasm32-wasi + wasi-libc, with
#                                     tools/build-c (wit-bindgen's C
#                                     bindings, wit-component; pinned by the
#                                     root Cargo.lock)
#
# into OUT_DIR/<name with - as _>.wasm. The toolchains are installed on first
# use under target/foreign/ (npm ci, a Python venv), outside the source tree,
# and reinstalled only when their pins change; a component is rebuilt only
# when it is older than its sources, the WIT, the pins or this script.
#
# Needs node >= 18 with npm, python3 >= 3.10 with venv and pip, and clang
# with the wasm32-wasi target (Debian: clang lld wasi-libc
# libclang-rt-14-dev-wasm32).
#
# Usage: plugins/build-foreign.sh [--wit DIR --world NAME] OUT_DIR [SOURCE_DIR...]
#
# With no SOURCE_DIR, every sample under plugins/js, plugins/python and
# plugins/c against the plugin world; with some (a directory holding
# plugin.js, plugin.py or C sources), just those, named after the directory
# (the contract-shape bench builds its guests so, against its own WIT).
set -euo pipefail

usage() {
    echo "usage: $0 [--wit DIR --world NAME] OUT_DIR [SOURCE_DIR...]" >&2
    exit 2
}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
script="$root/plugins/build-foreign.sh"
# The JavaScript and Python samples target contract 0.2.0, as the Rust ones
# and `weir plugin new` do. The C sample stays on 0.1.0: it is the frozen
# contract's component that the tests serve beside 0.2.0 plugins in one
# chain. `--wit` sets the WIT for every language.
wit="$root/wit"
wit_c="$root/wit/0.1.0"
world=plugin
while [ $# -gt 0 ]; do
    case "$1" in
    --wit) [ $# -ge 2 ] || usage; wit="$(cd "$2" && pwd)"; wit_c="$wit"; shift 2 ;;
    --world) [ $# -ge 2 ] || usage; world="$2"; shift 2 ;;
    -*) usage ;;
    *) break ;;
    esac
done
[ $# -ge 1 ] || usage
work="$root/target/foreign"
mkdir -p "$1" "$work"
out="$(cd "$1" && pwd)"
# Components built here may link Rust (the C bindings tool, guest crates):
# the pinned toolchain must have its wasm32-wasip2 target.
source "$root/scripts/wasm-target.sh"

# One build at a time: tests, clippy and a hand-run may overlap.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$work/lock"
    flock 9
fi

need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "build-foreign.sh: \`$1\` not found; $2" >&2
        exit 1
    }
}

# True when $1 is missing or older than any of the other paths (files, or
# every file under a directory).
stale() {
    local target="$1"
    shift
    [ -e "$target" ] || return 0
    [ -n "$(find "$@" -newer "$target" -print -quit)" ]
}

# Write to a temp file and rename, so an interrupted build leaves no
# half-written component that looks up to date.
finish() {
    mv -f "$1.tmp" "$1"
    echo "built $1 ($(wc -c <"$1") bytes)"
}

# The JavaScript engine a package.json pins: `quickjs` (componentize-qjs,
# the default: a call costs a fifth of SpiderMonkey's, BENCHMARKS.md) or
# `spidermonkey` (componentize-js, for code that needs more of the language).
js_engine() {
    if grep -q '"componentize-qjs"' "$1"; then
        echo quickjs
    elif grep -q '"@bytecodealliance/componentize-js"' "$1"; then
        echo spidermonkey
    else
        echo "build-foreign.sh: $1 pins neither componentize-qjs nor @bytecodealliance/componentize-js" >&2
        exit 1
    fi
}

# build_js SRC NAME [PINS]: SRC/plugin.js into NAME.wasm, with the engine
# and versions pinned by PINS/package.json and PINS/package-lock.json
# (default SRC).
build_js() {
    local src="$1" name="$2" pins="${3:-$1}"
    local deps="$work/js/$name" wasm="$out/${name//-/_}.wasm"
    if [ ! -f "$pins/package-lock.json" ]; then
        echo "build-foreign.sh: $pins has no package-lock.json" >&2
        exit 1
    fi
    stale "$wasm" "$src" "$pins" "$wit" "$script" || return 0
    need node "install Node.js >= 18 (with npm) to build $src"
    need npm "install npm to build $src"
    local engine
    engine="$(js_engine "$pins/package.json")"
    # node_modules lives under target/: copy the pins there and `npm ci`
    # when they differ from the installed ones.
    mkdir -p "$deps"
    if ! cmp -s "$pins/package-lock.json" "$deps/package-lock.json" \
        || ! cmp -s "$pins/package.json" "$deps/package.json" \
        || [ ! -d "$deps/node_modules" ]; then
        rm -rf "$deps/node_modules"
        cp "$pins/package.json" "$pins/package-lock.json" "$deps/"
        # A registry mirror that lacks other platforms' optional packages
        # yields a lockfile without them, which `npm ci` calls out of sync;
        # `npm install` then still installs exactly the locked versions.
        (cd "$deps" && { npm ci --no-audit --no-fund >"$deps/npm-ci.log" 2>&1 \
            || npm install --no-audit --no-fund --loglevel=error; })
        # Compare against the committed pins next time, not npm's rewrite.
        cp "$pins/package-lock.json" "$deps/"
    fi
    case "$engine" in
    quickjs)
        # `--sync`: plain (not component-model async) exports and imports,
        # as Weir calls them. WASI is not stubbed: Weir's WASI gives a
        # plugin no files, sockets or environment anyway.
        "$deps/node_modules/.bin/componentize-qjs" --sync \
            --wit "$wit" --world "$world" --js "$src/plugin.js" \
            --output "$wasm.tmp" >/dev/null
        ;;
    spidermonkey)
        # Everything the engine offers beyond the plugin world is left out
        # (no stdio, random, clocks or http imports); `--aot` is not used: it
        # downloads a compiler at build time.
        "$deps/node_modules/.bin/componentize-js" "$src/plugin.js" \
            --wit "$wit" --world-name "$world" \
            --disable stdio random clocks http fetch-event \
            --out "$wasm.tmp" >/dev/null
        ;;
    esac
    finish "$wasm"
}

# A JavaScript sample with its pins, and with every other engine whose pins
# sit in a subdirectory (plugins/js/cors/spidermonkey/package.json builds
# cors_spidermonkey.wasm from the same plugin.js).
build_js_sample() {
    local src="$1" name="$2" variant
    build_js "$src" "$name"
    for variant in "$src"/*/; do
        variant="${variant%/}"
        [ -f "$variant/package.json" ] || continue
        build_js "$src" "${name}_$(basename "$variant")" "$variant"
    done
}

python_venv() {
    local venv="$work/python"
    local pins="$root/plugins/python/requirements.txt"
    if ! cmp -s "$pins" "$venv/requirements.txt" || [ ! -x "$venv/bin/componentize-py" ]; then
        need python3 "install Python >= 3.10 (with venv) to build the Python plugins"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$pins"
        cp "$pins" "$venv/requirements.txt"
    fi
    componentize_py="$venv/bin/componentize-py"
}

build_python() {
    local src="$1" name="$2"
    local wasm="$out/${name//-/_}.wasm" stage="$work/python-src/$name"
    stale "$wasm" "$src" "$wit" "$script" "$root/plugins/python/requirements.txt" || return 0
    python_venv
    # componentize-py writes __pycache__ next to the sources: build from a
    # copy so the source tree stays clean.
    rm -rf "$stage"
    mkdir -p "$stage"
    cp -R "$src/." "$stage/"
    (cd "$stage" && "$componentize_py" --quiet --wit-path "$wit" --world "$world" \
        componentize --python-path "$stage" plugin --output "$wasm.tmp")
    finish "$wasm"
}

build_c() {
    local src="$1" name="$2"
    local wasm="$out/${name//-/_}.wasm" tools="$work/tools"
    local tool="$tools/release/weir-build-c"
    stale "$wasm" "$src" "$wit_c" "$script" "$root/tools/build-c" "$root/Cargo.lock" || return 0
    need "${WASI_CC:-clang}" "install clang, lld, wasi-libc and libclang-rt-14-dev-wasm32 to build $src"
    # The build tool is a member of the root workspace, built into a target
    # dir of its own (the caller may hold the workspace's).
    env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS \
        -u CARGO_MAKEFLAGS -u RUSTC_WRAPPER -u RUSTC_WORKSPACE_WRAPPER \
        "${CARGO:-cargo}" build --quiet --release --locked \
        --manifest-path "$root/Cargo.toml" -p weir-build-c --target-dir "$tools"
    "$tool" --wit "$wit_c" --world "$world" --work "$work/c/$name" \
        --out "$wasm.tmp" "$src" >/dev/null
    finish "$wasm"
}

if [ $# -gt 1 ]; then
    shift
    for dir in "$@"; do
        dir="$(cd "$dir" && pwd)"
        if [ -f "$dir/plugin.js" ]; then
            build_js_sample "$dir" "$(basename "$dir")"
        elif [ -f "$dir/plugin.py" ]; then
            build_python "$dir" "$(basename "$dir")"
        elif compgen -G "$dir/*.c" >/dev/null; then
            build_c "$dir" "$(basename "$dir")"
        else
            echo "build-foreign.sh: $dir has no plugin.js, plugin.py or C sources" >&2
            exit 1
        fi
    done
    exit 0
fi

shopt -s nullglob
for dir in "$root"/plugins/js/*/; do
    build_js_sample "${dir%/}" "$(basename "$dir")"
done
for dir in "$root"/plugins/python/*/; do
    build_python "${dir%/}" "$(basename "$dir")"
done
for dir in "$root"/plugins/c/*/; do
    build_c "${dir%/}" "$(basename "$dir")"
done
