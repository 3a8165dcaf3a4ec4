#!/usr/bin/env bash
# Checks the built kernel library: every kernels/*.cu must carry sm_80 and sm_90a machine code
# (cuobjdump --list-elf) and compute_80 PTX; reports ptxas spills and register use.
# Usage: tools/check-kernels.sh [path/to/libllama4_cuda_kernels.a [path/to/kernels-ptxas.txt]]
# Defaults: the newest of target/{debug,release}/. cuobjdump from CUOBJDUMP, PATH, or .cuda/ (tools/cuda-toolchain.sh).
# Exit status: 0 ok, 1 a missing arch or file, 2 no library / no cuobjdump.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib="${1:-$(ls -t "$repo"/target/{debug,release}/libllama4_cuda_kernels.a 2>/dev/null | head -n 1 || true)}"
[[ -n "$lib" && -f "$lib" ]] || { echo "check-kernels: no libllama4_cuda_kernels.a (build with kernels first)" >&2; exit 2; }
report="${2:-$(dirname "$lib")/kernels-ptxas.txt}"

cuobjdump="${CUOBJDUMP:-$(command -v cuobjdump || true)}"
[[ -n "$cuobjdump" ]] || cuobjdump="$repo/.cuda/py/nvidia/cu13/bin/cuobjdump"
[[ -x "$cuobjdump" ]] || { echo "check-kernels: cuobjdump not found (run tools/cuda-toolchain.sh or set CUOBJDUMP)" >&2; exit 2; }

elf="$("$cuobjdump" --list-elf "$lib")"
ptx="$("$cuobjdump" --list-ptx "$lib")"
echo "check-kernels: $lib"
echo "$elf"

# Per archive member (<stem>-<hash>.o): the archs of its ELF images and PTX.
member_archs() { # $1 = listing; prints "stem arch" pairs
  awk '/^member /{ m=$2; sub(/:$/, "", m); sub(/.*:/, "", m); sub(/\.o$/, "", m); sub(/-[0-9a-f]+$/, "", m) }
       /(ELF|PTX) file/{ n=split($NF, a, "."); print m, a[n-1] }' <<<"$1"
}
have_elf="$(member_archs "$elf")"
have_ptx="$(member_archs "$ptx")"

status=0
for src in "$repo"/kernels/*.cu; do
  stem="$(basename "$src" .cu)"
  for arch in sm_80 sm_90a; do
    grep -qx "$stem $arch" <<<"$have_elf" || { echo "MISSING: $stem.cu has no $arch ELF" >&2; status=1; }
  done
  grep -qx "$stem sm_80" <<<"$have_ptx" || { echo "MISSING: $stem.cu has no compute_80 PTX" >&2; status=1; }
done

if [[ -f "$report" ]]; then
  # Summary rows: "<file> <arch> <N> registers, ... <S> bytes spill stores, <L> bytes spill loads <kernel>".
  rows="$(grep -E '^[A-Za-z0-9_]+ +sm_[0-9a]+ +[0-9]+ registers' "$report" || true)"
  echo "check-kernels: $(wc -l <<<"$rows") kernel images; max registers per file and arch:"
  awk '{ k=$1" "$2; if ($3 > max[k]) max[k]=$3 } END { for (k in max) print "  " k ": " max[k] }' <<<"$rows" | sort
  spills="$(grep -E '[1-9][0-9]* bytes spill (stores|loads)' <<<"$rows" || true)"
  if [[ -n "$spills" ]]; then
    echo "check-kernels: SPILLS in $(wc -l <<<"$spills") kernel images:"
    echo "$spills"
  else
    echo "check-kernels: no spills"
  fi
else
  echo "check-kernels: no ptxas report at $report" >&2
fi
[[ $status -eq 0 ]] && echo "check-kernels: every kernels/*.cu has sm_80 + sm_90a ELF and compute_80 PTX"
exit $status
