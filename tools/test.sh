#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the pinned CUDA compiler and libclang from PyPI into
# .cuda/ (no GPU, no root), then runs every test with the kernels required to build.
# GPU tests print "skipped: no CUDA device" where there is none; run them on a GPU machine as in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/cuda-toolchain.sh
export L4C_REQUIRE_KERNELS=1 L4C_REQUIRE_LIBCLANG=1
cargo test "$@"
