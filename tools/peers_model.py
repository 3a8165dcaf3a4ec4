#!/usr/bin/env python3
"""Torch peer of `llama4 bench-model --preset scout --quantize int4` decode rows: one decode step of
Scout's GEMM and attention chain in eager torch, on the current GPU, at the same batch x context rows.

Per layer (48): RMSNorm, q/k/v/o bf16 matmuls, SDPA (flash, GQA 40/8, head 128) over `context` cached
keys, RMSNorm, router, the shared expert and the routed experts touched (int4 `_weight_int4pack_mm`,
group 128, each on its share of the batch), SiLU-mul; then the bf16 lm_head. Weights rotate over 4
distinct layer sets (each larger than L2) so every step reads DRAM as ours does. Routing is uniform:
the expected number of distinct experts `16 (1 - (15/16)^batch)` runs, rounded up.

Prints: the device copy bandwidth, then | batch | context | step ms | tokens/s | weight GB/s |.
Usage: python3 tools/peers_model.py [--batch 1,8,32,64] [--context 1024,131072] [--layers 48]
Needs python3 + torch with CUDA; prints a skip line without a GPU.
"""
import argparse
import math
import sys

import torch

from peers_common import batch_ms, copy_bandwidth, cuda_or_skip, sdpa_gqa

H, HEADS, KV, D, INTER, E, VOCAB, GROUP = 5120, 40, 8, 128, 8192, 16, 202048, 128


def timed(fn, reps=10):
    """Median of 3 batches of `reps` calls (ms per call), after one warm-up call."""
    return batch_ms(fn, reps=reps, runs=3, warmup=1)


def int4(n, k):
    q = torch.randint(0, 16, (n, k), device="cuda", dtype=torch.int32)
    try:
        w = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), 8)
    except RuntimeError:
        w = torch.ops.aten._convert_weight_to_int4pack(q, 8)
    sz = torch.rand(k // GROUP, n, 2, device="cuda", dtype=torch.bfloat16) * 0.01
    return lambda x: torch.ops.aten._weight_int4pack_mm(x, w, GROUP, sz)


def bf16(n, k):
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k**-0.5
    return lambda x: x @ w.t()


def mlp():
    g, u, d = int4(INTER, H), int4(INTER, H), int4(H, INTER)
    return lambda x: d(torch.nn.functional.silu(g(x)) * u(x))


def layer():
    return dict(q=bf16(HEADS * D, H), k=bf16(KV * D, H), v=bf16(KV * D, H), o=bf16(H, HEADS * D),
                router=bf16(E, H), shared=mlp(), experts=[mlp() for _ in range(E)])


def rms(x):
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5).to(x.dtype)


def step_fn(layers, n_layers, lm_head, batch, context):
    kc = torch.randn(batch, KV, context, D, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    x0 = torch.randn(batch, H, device="cuda", dtype=torch.bfloat16)
    touched = min(E, math.ceil(E * (1 - (1 - 1 / E) ** batch)))
    share = math.ceil(batch / touched)

    def step():
        x = x0
        for i in range(n_layers):
            L = layers[i % len(layers)]
            h = rms(x)
            q = L["q"](h).view(batch, HEADS, 1, D)
            L["k"](h), L["v"](h)  # the new token's K/V (the append itself is not timed)
            a = sdpa_gqa(q, kc, vc)
            x = x + L["o"](a.reshape(batch, HEADS * D))
            h = rms(x)
            L["router"](h)
            f = L["shared"](h)
            for e in range(touched):
                f[: share] = f[: share] + L["experts"][e](h[: share])
            x = x + f
        return lm_head(rms(x))

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", default="1,8,32,64")
    ap.add_argument("--context", default="1024,131072")
    ap.add_argument("--layers", type=int, default=48)
    args = ap.parse_args()
    if not cuda_or_skip():
        return 0
    print(f"# torch {torch.__version__} on {torch.cuda.get_device_name()}")
    bw = copy_bandwidth(reps=20, runs=3)
    print(f"device copy bandwidth: {bw:.0f} GB/s (read + write of 1 GiB)")
    layers = [layer() for _ in range(4)]
    lm_head = bf16(VOCAB, H)
    print("\n| batch | context | step ms | tokens/s | weight GB/s |\n|---|---|---|---|---|")
    for c in [int(v) for v in args.context.split(",")]:
        for b in [int(v) for v in args.batch.split(",")]:
            try:
                t = timed(step_fn(layers, args.layers, lm_head, b, c), reps=5)
            except torch.cuda.OutOfMemoryError:
                print(f"| {b} | {c} | - | - | out of memory |")
                torch.cuda.empty_cache()
                continue
            touched = min(E, math.ceil(E * (1 - (1 - 1 / E) ** b)))
            per_layer = 2 * (2 * H * HEADS * D + 2 * H * KV * D) + (1 + touched) * 3 * INTER * H * 0.5156  # int4 + bf16 scales per 128
            wbytes = args.layers * per_layer + 2 * VOCAB * H
            print(f"| {b} | {c} | {t:.3f} | {b / t * 1e3:.0f} | {wbytes / t / 1e6:.0f} |")
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
