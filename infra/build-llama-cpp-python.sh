#!/usr/bin/env bash
# Installs llama-cpp-python into a venv from a wheel built on this machine with the given CPU flags.
#
#   infra/build-llama-cpp-python.sh PYTHON VERSION CMAKE_ARGS [--wheel-only]
#
# --wheel-only builds (or finds) the wheel and prints its path instead of installing it.
# pip's own wheel cache keys a built wheel by the sdist alone, not by CMAKE_ARGS nor by the CPU it was
# built on, so it hands back a wheel built with other flags (one with AMX kernels that crash, say).
# This keeps its own wheels instead, one per (version, CMake arguments, compiler, CPU flags), and
# builds with pip's cache off, so a wheel is reused only where it was built for exactly this.
set -euo pipefail

python=$1
version=$2
cmake_args=$3
mode=${4:-install}

cpu_flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m)
compiler=$(${CC:-cc} --version 2>/dev/null | head -n1 || echo unknown)
key=$(printf '%s\n' "$version" "$cmake_args" "$compiler" "$cpu_flags" | sha256sum | cut -c1-16)
store=${LLAMA_WHEEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-chat-service/llama-cpp-python}/$version-$key

if ! compgen -G "$store/llama_cpp_python-*.whl" >/dev/null; then
    echo >&2 "Building llama-cpp-python $version with CMAKE_ARGS=$cmake_args (a few minutes) into $store"
    rm -rf "$store.partial"
    mkdir -p "$store.partial"
    CMAKE_ARGS=$cmake_args CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        "$python" -m pip wheel --quiet --no-deps --no-cache-dir --no-binary llama-cpp-python \
        "llama-cpp-python==$version" -w "$store.partial"
    printf 'CMAKE_ARGS=%s\ncompiler=%s\n%s\n' "$cmake_args" "$compiler" "$cpu_flags" >"$store.partial/BUILD-INFO"
    rm -rf "$store"
    mv "$store.partial" "$store"
fi
wheels=("$store"/llama_cpp_python-*.whl)
if [ "$mode" = --wheel-only ]; then
    echo "${wheels[0]}"
else
    "$python" -m pip install --quiet --no-deps --force-reinstall "${wheels[0]}"
fi
