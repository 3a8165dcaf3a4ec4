#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (and libclang for bindgen) from PyPI into <repo>/.cuda/py.
# No GPU, no root. Idempotent: a stamp file records the pins; a re-run with the same pins is instant.
# Usage: tools/cuda-toolchain.sh [--force]      Env: PYTHON (default python3), L4C_CUDA_DIR (default <repo>/.cuda)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${L4C_CUDA_DIR:-$repo/.cuda}/py"
python="${PYTHON:-python3}"

# Pin every piece: an unpinned nvvm pulls a newer one whose PTX version nvcc 13.0's ptxas rejects.
# cuobjdump and nvdisasm have no 13.0.x wheel on PyPI; 13.2.51 (the oldest) reads 13.0 fatbinaries and
# is only a reader (cuobjdump --dump-sass calls nvdisasm).
pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-cuobjdump==13.2.51
  nvidia-cuda-nvdisasm==13.2.51
  libclang==18.1.1
)
stamp="$dest/.llama4-cuda-toolchain"
want="$(printf '%s\n' "${pins[@]}")"

if [[ "${1:-}" != "--force" && -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$dest/nvidia/cu13/bin/nvcc" ]]; then
  echo "cuda-toolchain: up to date in $dest"
else
  echo "cuda-toolchain: installing ${pins[*]} into $dest"
  tmp="$dest.tmp.$$"
  rm -rf "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  # --no-deps: the pins above are the whole closure; letting pip resolve would float nvvm.
  "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$tmp" "${pins[@]}"
  printf '%s\n' "$want" >"$tmp/.llama4-cuda-toolchain"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  trap - EXIT
  # Cargo does not rerun build.rs for a new toolchain by itself; a newer build.rs mtime makes it.
  touch "$repo/build.rs"
fi

cu="$dest/nvidia/cu13"
# Smoke test: nvcc must find cicc (nvvm), the crt headers and gcc as host compiler.
"$cu/bin/nvcc" --version | tail -n 2
if [[ "$dest" == "$repo/.cuda/py" ]]; then
  echo "cuda-toolchain: nvcc      $cu/bin/nvcc (build.rs finds it here by itself)"
else
  echo "cuda-toolchain: nvcc      $cu/bin/nvcc (outside the repository: export NVCC=$cu/bin/nvcc)"
fi
echo "cuda-toolchain: cuobjdump $cu/bin/cuobjdump"
echo "cuda-toolchain: libclang  $dest/clang/native (tests/bindings_fresh.rs looks in <repo>/.cuda; elsewhere export LIBCLANG_PATH=$dest/clang/native)"
