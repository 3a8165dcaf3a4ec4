#!/usr/bin/env python3
"""Torch peers of the quantized GEMMs at the Llama 4 shapes, on the current GPU (benches/gemm_gpu.rs
runs ours at the same shapes). Prints one table: time, weight GB/s, TFLOP/s per (peer, m, n, k).

Peers: torch bf16 matmul (cuBLAS), torch._weight_int4pack_mm (tinygemm int4, group 128, bf16),
torch._scaled_mm (fp8 e4m3 rowwise: per-token x scales, per-channel w scales, bf16 out).
Timing: CUDA events around `reps` calls after a warm-up, median of 5 such runs; weights rotate over
enough copies to exceed L2 so decode shapes measure DRAM, as our bench does.

Usage: python3 tools/peers_gemm.py [--m 1,16,128,2048] [--shapes 5120x5120,...] [--csv out.csv]
Needs only python3 + torch with CUDA (nothing is installed).
"""
import argparse
import itertools
import sys

import torch

from peers_common import batch_ms

SHAPES = [(1024, 5120), (5120, 5120), (8192, 5120), (16384, 5120), (202048, 5120), (5120, 8192), (5120, 16384)]
MS = [1, 2, 4, 8, 16, 32, 64, 128, 512, 2048, 8192]
L2_ROTATE_BYTES = 256 << 20


def timed(fn, args_list, reps=20):
    """Median over 5 runs of the mean time (ms) of `reps` calls, rotating through args_list."""
    it = itertools.cycle(args_list)
    return batch_ms(lambda: fn(*next(it)), reps=reps, runs=5)


def copies_for(nbytes):
    return max(1, min(32, -(-L2_ROTATE_BYTES // max(nbytes, 1))))


def bf16_peer(m, n, k):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies_for(2 * n * k))]
    return timed(lambda w: x @ w.t(), [(w,) for w in ws]), 2 * n * k


def int4_peer(m, n, k, group=128, inner_k_tiles=8):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    packs = []
    for _ in range(copies_for(n * k // 2)):
        q = torch.randint(0, 16, (n, k), device="cuda", dtype=torch.int32)
        try:  # torch >= 2.5: uint8 [n, k/2], two nibbles per byte (even k in the high nibble)
            w = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), inner_k_tiles)
        except RuntimeError:  # older torch: int32 [n, k]
            w = torch.ops.aten._convert_weight_to_int4pack(q, inner_k_tiles)
        sz = torch.rand(k // group, n, 2, device="cuda", dtype=torch.bfloat16) * 0.01
        packs.append((w, sz))
    t = timed(lambda w, sz: torch.ops.aten._weight_int4pack_mm(x, w, group, sz), packs)
    return t, n * k // 2 + (k // group) * n * 4


def fp8_peer(m, n, k):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    fp8 = torch.float8_e4m3fn
    ws = []
    for _ in range(copies_for(n * k)):
        w = (torch.randn(n, k, device="cuda") * 0.5).to(fp8)
        ws.append((w, torch.rand(1, n, device="cuda", dtype=torch.float32) * 0.01))

    def run(w, sw):
        # Dynamic per-token quantization is part of the op, as in ours.
        sx = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / 448.0
        xq = (x.float() / sx).to(fp8)
        return torch._scaled_mm(xq, w.t(), scale_a=sx, scale_b=sw, out_dtype=torch.bfloat16)

    return timed(run, ws), n * k + 4 * n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default=",".join(map(str, MS)))
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES))
    ap.add_argument("--csv")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return 0
    ms = [int(v) for v in args.m.split(",")]
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    dev = torch.cuda.get_device_name()
    print(f"# torch {torch.__version__} on {dev}")
    rows = []
    for n, k in shapes:
        for m in ms:
            for name, peer in (("torch-bf16", bf16_peer), ("torch-int4pack", int4_peer), ("torch-fp8-rowwise", fp8_peer)):
                try:
                    t, wbytes = peer(m, n, k)
                    rows.append((name, m, n, k, t, wbytes / t / 1e6, 2 * m * n * k / t / 1e9))
                except Exception as e:  # a peer missing on this torch build is reported, not fatal
                    rows.append((name, m, n, k, float("nan"), float("nan"), float("nan")))
                    print(f"# {name} m={m} n={n} k={k}: {type(e).__name__}: {str(e).splitlines()[0][:120]}", file=sys.stderr)
                torch.cuda.empty_cache()
    print(f"{'peer':<18} {'m':>5} {'n':>7} {'k':>6} {'ms':>9} {'wGB/s':>8} {'TFLOP/s':>8}")
    for name, m, n, k, t, gbs, tf in rows:
        print(f"{name:<18} {m:>5} {n:>7} {k:>6} {t:>9.4f} {gbs:>8.1f} {tf:>8.2f}")
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("peer,m,n,k,ms,weight_gbs,tflops\n")
            for r in rows:
                f.write(",".join(str(v) for v in r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
