#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` (continuous batching) from the llama.cpp
# sources vendored in llama-cpp-python's sdist, so the served engine and the
# in-process bindings run the same llama.cpp build; with it, llama.cpp's own
# benchmarks `llama-bench` and `llama-batched-bench` from the same build tree
# (scripts/bench_serve_cpu.py --part compare measures the server against them).
#
# Usage: scripts/build_llama_server.sh [PREFIX]
#   PREFIX  install directory for bin/llama-server, bin/llama-bench and
#           bin/llama-batched-bench (default: the active venv, else ./.venv).
#           Idempotent: up-to-date binaries are not rebuilt, and a cached build
#           tree compiles only the targets it lacks.
# Env:    LLAMA_CPP_PYTHON_VERSION  sdist version (default: the installed one)
#         JOBS                      parallel build jobs (default 2)
#         WORKDIR                   download/build directory (default ~/.cache/ernie-ops/llama-server)
# Needs cmake and a C++ compiler (Debian/Ubuntu: apt-get install -y cmake g++).
# About 10 minutes on 2 cores.
set -euo pipefail

prefix="${1:-${VIRTUAL_ENV:-$PWD/.venv}}"
jobs="${JOBS:-2}"
workdir="${WORKDIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ernie-ops/llama-server}"
python="${PYTHON:-python}"

for tool in cmake c++ "$python"; do
    command -v "$tool" >/dev/null || {
        echo "build_llama_server: '$tool' not found (hint: apt-get install -y cmake g++)" >&2
        exit 2
    }
done

version="${LLAMA_CPP_PYTHON_VERSION:-$("$python" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true)}"
if [ -z "$version" ]; then
    echo "build_llama_server: llama-cpp-python is not installed; set LLAMA_CPP_PYTHON_VERSION (e.g. 0.3.36)" >&2
    exit 2
fi

targets="llama-server llama-bench llama-batched-bench"
stamp="$prefix/bin/.llama-server.version"
installed=yes
for target in $targets; do
    [ -x "$prefix/bin/$target" ] || installed=no
done
if [ "$installed" = yes ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
    echo "llama.cpp tools already built from llama-cpp-python $version in $prefix/bin: $targets"
    "$prefix/bin/llama-server" --version 2>&1 | grep -i version || true
    exit 0
fi

mkdir -p "$workdir"
src="$workdir/llama_cpp_python-$version/vendor/llama.cpp"
if [ ! -f "$src/CMakeLists.txt" ]; then
    "$python" -m pip download "llama-cpp-python==$version" --no-binary :all: --no-deps -d "$workdir"
    tar -xzf "$workdir/llama_cpp_python-$version.tar.gz" -C "$workdir"
fi

# Native CPU code (this machine only); no curl (models are local files); static libs so the binary
# does not depend on the build tree. Without the AMX kernels: on AMX CPUs this llama.cpp crashes on
# q8_0 / q4_0 weights in its AMX buffers, and without them the repack buffers (faster q4_0) stay on.
noamx=""
if grep -q ' amx_int8' /proc/cpuinfo 2>/dev/null; then
    noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
cmake -S "$src" -B "$src/build" \
    -DCMAKE_C_FLAGS="$noamx" \
    -DCMAKE_CXX_FLAGS="$noamx" \
    -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_CURL=OFF \
    -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF
# shellcheck disable=SC2086  # $targets is a word list on purpose
cmake --build "$src/build" --target $targets -j"$jobs"

mkdir -p "$prefix/bin"
for target in $targets; do
    tmp="$prefix/bin/.$target.tmp.$$"
    cp "$src/build/bin/$target" "$tmp"
    chmod 755 "$tmp"
    mv -f "$tmp" "$prefix/bin/$target"
done
printf '%s\n' "$version" >"$stamp.tmp.$$" && mv -f "$stamp.tmp.$$" "$stamp"
echo "installed $targets in $prefix/bin (llama.cpp vendored in llama-cpp-python $version)"
"$prefix/bin/llama-server" --version 2>&1 | grep -i version || true
