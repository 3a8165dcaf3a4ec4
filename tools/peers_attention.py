#!/usr/bin/env python3
"""Torch peer of benches/attn_prefill_gpu.rs: causal prefill attention at the Llama 4 shape (bf16,
head_dim 128, 40 query heads over 8 KV heads, one sequence) with torch's
scaled_dot_product_attention restricted to the flash backend, at T = 8K, 32K, 128K.

Rows, as the Rust bench prints them:
  causal       full causal layer (one SDPA call over T tokens)
  chunked8192  chunked-local layer, attention chunk 8192: the T tokens reshaped into T / 8192
               independent causal sequences of 8192 (exactly the chunked-local mask when T is a
               multiple of the chunk, the cheapest way torch can run it)
TFLOP/s counts only unmasked work, 4 * heads * head_dim * sum_i visible(i), like the Rust bench.
GQA: `enable_gqa=True` where this torch has it (2.5+); otherwise K/V are expanded to 40 heads first
(outside the timed region) and the script says so.

Usage: python3 tools/peers_attention.py [--t 8192,32768,131072] [--iters 10]
"""
import argparse
import sys

import torch
import torch.nn.functional as F

from peers_common import cuda_or_skip, per_call_ms

HEADS, KV_HEADS, D, CHUNK = 40, 8, 128, 8192


def visible_pairs(t, chunk=None):
    if chunk is None:
        return t * (t + 1) / 2
    full, rest = divmod(t, chunk)
    return full * chunk * (chunk + 1) / 2 + rest * (rest + 1) / 2


def flash_backend():
    """A context manager that allows only the flash backend."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    except ImportError:  # torch < 2.3
        return torch.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False, enable_mem_efficient=False)


def has_enable_gqa():
    try:
        q = torch.zeros(1, 2, 1, 64, device="cuda", dtype=torch.bfloat16)
        kv = torch.zeros(1, 1, 1, 64, device="cuda", dtype=torch.bfloat16)
        with flash_backend():
            F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
        return True
    except (TypeError, RuntimeError):
        return False


def time_ms(fn, iters):
    """Best of `iters` calls, each timed alone (after one warm-up call)."""
    return min(per_call_ms(fn, reps=iters, warmup=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--t", default="8192,32768,131072")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    if not cuda_or_skip():
        return 0
    cc = torch.cuda.get_device_capability()
    peak = 989e12 if cc[0] >= 9 else 312e12
    gqa = has_enable_gqa()
    print(f"device {torch.cuda.get_device_name()} (sm_{cc[0]}{cc[1]}), torch {torch.__version__}, "
          f"GQA via {'enable_gqa' if gqa else 'expanded K/V (enable_gqa unavailable)'}")
    print(f"{'layer':<12} {'T':>7} {'ms':>10} {'TFLOP/s':>9} {'peak':>7} {'us / 1K tok':>12}")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for t in [int(x) for x in args.t.split(",")]:
        q = torch.randn(1, HEADS, t, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        k = torch.randn(1, KV_HEADS, t, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        v = torch.randn(1, KV_HEADS, t, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        if not gqa:
            k, v = (x.repeat_interleave(HEADS // KV_HEADS, dim=1) for x in (k, v))
        kw = {"enable_gqa": True} if gqa else {}
        for name, chunk in (("causal", None), ("chunked8192", CHUNK)):
            if chunk is None:
                qq, kk, vv = q, k, v
            else:
                if t % chunk:
                    print(f"{name:<12} {t:>7}  skipped: T is not a multiple of {chunk}")
                    continue
                n = t // chunk
                # [1, H, T, D] -> [n, H, chunk, D]: each attention chunk is its own causal sequence.
                qq, kk, vv = (x.view(x.shape[1], n, chunk, D).transpose(0, 1).contiguous() for x in (q, k, v))

            def run():
                with flash_backend():
                    return F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, scale=D ** -0.5, **kw)

            try:
                ms = time_ms(run, args.iters)
            except RuntimeError as e:
                print(f"{name:<12} {t:>7}  failed: {e}".splitlines()[0])
                continue
            flops = 4 * HEADS * D * visible_pairs(t, chunk)
            tf = flops / (ms / 1e3) / 1e12
            print(f"{name:<12} {t:>7} {ms:>10.3f} {tf:>9.1f} {100 * tf * 1e12 / peak:>6.1f}% {ms * 1e3 / (t / 1024):>12.2f}")
        del q, k, v
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
