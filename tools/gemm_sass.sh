#!/usr/bin/env bash
# Compiles kernels/gemm_*.cu and kernels/moe_grouped_gemm.cu for sm_80 and sm_90a (the flags build.rs uses) and prints, per kernel and
# arch, ptxas registers / spills and the SASS count of tensor-core instructions (HMMA, HGMMA, QGMMA)
# and local-memory accesses (LDL/STL). No GPU needed. Usage: tools/gemm_sass.sh [outdir]
# Toolchain: NVCC or <repo>/.cuda/py (tools/cuda-toolchain.sh); cuobjdump + nvdisasm from the same
# place or PATH.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cu="$repo/.cuda/py/nvidia/cu13/bin"
nvcc="${NVCC:-$cu/nvcc}"
export PATH="$cu:$(dirname "$nvcc"):$PATH"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
for f in gemm_w4a16 gemm_fp8 moe_grouped_gemm; do
  for a in 80 90a; do
    "$nvcc" -std=c++17 -O3 --expt-relaxed-constexpr -lineinfo -gencode "arch=compute_$a,code=sm_$a" -Xptxas -v \
      -I"$repo/kernels/include" -I"$repo/kernels" -c "$repo/kernels/$f.cu" -o "$out/${f}_$a.o" 2> "$out/${f}_$a.ptxas.txt"
    cuobjdump --dump-sass "$out/${f}_$a.o" > "$out/${f}_$a.sass"
  done
done
python3 - "$out" <<'PY'
import re, sys, pathlib
out = pathlib.Path(sys.argv[1])
def short(name):
    # _ZN <len><ident>... : the last identifier of the nested name, plus the template arguments.
    i, ident = (3 if name.startswith("_ZN") else 2), name
    while i < len(name) and name[i].isdigit():
        j = i
        while name[j].isdigit():
            j += 1
        n = int(name[i:j])
        ident, i = name[j:j + n], j + n
    t = re.findall(r"(13__nv_bfloat16|6__half|WFmtE(\d)E|Li(\d)E)", name[i:])
    fmt = {"0": "bf16", "1": "int4", "2": "fp8"}
    tags = [("bf16" if a.startswith("13") else "f16" if a.startswith("6") else fmt[w] if w else f"MT{b}") for a, w, b in t]
    return ident + ("<" + ",".join(tags) + ">" if tags else "")
print(f"{'kernel':<34} {'arch':<5} {'regs':>4} {'stack':>5} {'spill st/ld':>11} {'smem':>6} {'HMMA':>5} {'HGMMA':>5} {'QGMMA':>5} {'LDL/STL':>7}")
for f in ["gemm_w4a16", "gemm_fp8", "moe_grouped_gemm"]:
    for a in ["80", "90a"]:
        ptx = (out / f"{f}_{a}.ptxas.txt").read_text()
        res = {}
        for m in re.finditer(r"Compiling entry function '([^']+)'.*?\n(?:.*\n)*?.*?(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads\n.*?Used (\d+) registers(.*)", ptx):
            smem = re.search(r"(\d+) bytes smem", m.group(6))
            res[m.group(1)] = (m.group(5), m.group(2), m.group(3), m.group(4), smem.group(1) if smem else "0")
        sass = (out / f"{f}_{a}.sass").read_text()
        for blk in re.split(r"\n\s*Function : ", sass)[1:]:
            name = blk.split("\n")[0].strip()
            c = {k: len(re.findall(r"\b" + k + r"\b", blk)) for k in ["HMMA", "HGMMA", "QGMMA", "LDL", "STL"]}
            r = res.get(name, ("?",) * 5)
            print(f"{short(name):<34} sm_{a:<3} {r[0]:>4} {r[1]:>5} {r[2]+'/'+r[3]:>11} {r[4]:>6} {c['HMMA']:>5} {c['HGMMA']:>5} {c['QGMMA']:>5} {c['LDL']+c['STL']:>7}")
PY
echo "wgmma serialization notices (ptxas C75xx): $(cat "$out"/*.ptxas.txt | grep -c "Potential Performance Loss" || true)"
