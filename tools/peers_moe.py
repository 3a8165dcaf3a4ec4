#!/usr/bin/env python3
"""Torch peers of benches/moe_gpu.rs at the same shapes (hidden 5120, expert intermediate 8192, top-1,
a shared expert of the same size; E = 16 and 128; tokens 1, 8, 64, 512, 4096, 8192, 16384), bf16, CUDA
events (median of 20 after warm-up):

  grouped_mm   torch._grouped_mm over the expert-sorted rows (gate_up [E, 2*inter, hidden] then down),
               the peer of the grouped GEMM prefill (the issue asks >= 0.9x of it);
  gating       topk + sigmoid + argsort (stable) + bincount, the peer of moe_gate;
  moe_block    the whole Llama 4 MoE block written with torch ops: router matmul, the gating chain,
               gather x * score, grouped gate_up, silu * up, grouped down, index_add onto the shared
               expert's output (three matmuls).

fp8 experts (e4m3 codes [E, n, k] + f32 per-channel scales, the peers of the W8A16 fp8 expert prefill
of benches/moe_gpu.rs; the bf16 experts are freed first):

  fp8_deq_gmm  the touched experts' codes dequantized to bf16 (code * scale) on every call, then the
               grouped_mm pair above (torch's W8A16: same rounding points as ours up to the scale);
  fp8_scaled   torch._scaled_grouped_mm (W8A8: rows quantized per token, scale_b per channel), when
               torch has it (hasattr guard) and the device supports it (sm_90); timed with the
               activation quantization. Different numerics (quantized activations), listed for speed.

Rows print "peer E tokens us GB/s(touched) TFLOP/s" like the bench. Needs python3 with torch (2.8+ for
torch._grouped_mm; the row is skipped otherwise) and a CUDA GPU. E = 128 needs ~32 GB for the bf16
experts. `--tokens 1,512 --experts 16` narrow the grid. Installs nothing."""
import argparse
import sys

import torch

from peers_common import median_us

HIDDEN, INTER = 5120, 8192


def gating(logits, k=1):
    vals, ids = torch.topk(logits, k, dim=-1)
    scores = torch.sigmoid(vals.float())
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=logits.shape[1])
    return scores, order, counts


def grouped(xs, w, offs):
    # xs [rows, k] sorted by expert, w [E, n, k] -> [rows, n]
    return torch._grouped_mm(xs, w.transpose(-2, -1), offs=offs)


def dequant(q, s, ids):
    # touched experts only: codes [E, n, k] fp8, scales [E, n] f32 -> bf16 [len(ids), n, k]
    return q[ids].to(torch.bfloat16).mul_(s[ids].unsqueeze(-1).to(torch.bfloat16))


def quant_rows(v):
    # per-row e4m3 quantization: (codes, f32 scales [rows])
    amax = v.abs().amax(-1).float().clamp(min=1e-12) / 448.0
    return (v.float() / amax.unsqueeze(1)).to(torch.float8_e4m3fn), amax


def scaled_grouped(v, q, s, offs):
    vq, vs = quant_rows(v)
    return torch._scaled_grouped_mm(vq, q.transpose(-2, -1), vs, s, offs=offs, out_dtype=torch.bfloat16)


def moe_block(x, router, w13, w2, shared):
    t = x.shape[0]
    logits = x @ router.t()
    scores, order, counts = gating(logits)
    offs = torch.cumsum(counts, 0).to(torch.int32)
    tok = order  # k = 1: slot == token
    xs = x[tok] * scores.flatten()[tok].unsqueeze(1).to(x.dtype)
    h = grouped(xs, w13, offs)
    g, u = h[:, :INTER], h[:, INTER:]
    y = grouped(torch.nn.functional.silu(g) * u, w2, offs)
    sg, su, sd = shared
    out = (torch.nn.functional.silu(x @ sg.t()) * (x @ su.t())) @ sd.t()
    return out.index_add_(0, tok, y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="1,8,64,512,4096,8192,16384")
    ap.add_argument("--experts", default="16,128")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return
    dev = torch.device("cuda")
    bf = torch.bfloat16
    print(f"# torch {torch.__version__} on {torch.cuda.get_device_name(dev)}")
    print(f"{'peer':<12} {'E':>4} {'tokens':>6} {'us':>10} {'GB/s':>8} {'TFLOP/s':>8}")
    expert_bytes = 3 * HIDDEN * INTER * 2
    shared = tuple(torch.randn(n, k, device=dev, dtype=bf) * 0.01 for n, k in ((INTER, HIDDEN), (INTER, HIDDEN), (HIDDEN, INTER)))
    for e in [int(v) for v in a.experts.split(",")]:
        router = torch.randn(e, HIDDEN, device=dev, dtype=bf) * 0.02
        w13 = torch.randn(e, 2 * INTER, HIDDEN, device=dev, dtype=bf) * 0.01
        w2 = torch.randn(e, HIDDEN, INTER, device=dev, dtype=bf) * 0.01
        for t in [int(v) for v in a.tokens.split(",")]:
            x = torch.randn(t, HIDDEN, device=dev, dtype=bf)
            logits = x @ router.t()
            _, order, counts = gating(logits)
            touched = int((counts > 0).sum())
            offs = torch.cumsum(counts, 0).to(torch.int32)
            xs = x[order]
            rows = []
            rows.append(("gating", median_us(lambda: gating(logits)), 0.0, 0.0))
            try:
                us = median_us(lambda: grouped(grouped(xs, w13, offs)[:, :INTER].contiguous(), w2, offs))
                rows.append(("grouped_mm", us, touched * expert_bytes, 2.0 * 3 * t * HIDDEN * INTER))
                us = median_us(lambda: moe_block(x, router, w13, w2, shared))
                rows.append(("moe_block", us, (touched + 1) * expert_bytes, 2.0 * 6 * t * HIDDEN * INTER))
            except (AttributeError, RuntimeError) as err:
                print(f"# E={e} tokens={t}: {type(err).__name__}: {str(err).splitlines()[0][:120]}", file=sys.stderr)
            for name, us, by, fl in rows:
                print(f"{name:<12} {e:>4} {t:>6} {us:>10.1f} {by / us / 1e3:>8.0f} {fl / us / 1e6:>8.1f}")
            del x, xs
        del w13, w2
        torch.cuda.empty_cache()
        if not hasattr(torch, "float8_e4m3fn"):
            continue
        # random finite positive codes (0x00..0x7e; the values do not change the timing)
        q13 = torch.randint(0, 0x7F, (e, 2 * INTER, HIDDEN), dtype=torch.uint8, device=dev).view(torch.float8_e4m3fn)
        q2 = torch.randint(0, 0x7F, (e, HIDDEN, INTER), dtype=torch.uint8, device=dev).view(torch.float8_e4m3fn)
        s13 = torch.rand(e, 2 * INTER, device=dev) * 1e-3
        s2 = torch.rand(e, HIDDEN, device=dev) * 1e-3
        fp8_bytes = 3 * HIDDEN * INTER + 4 * (2 * INTER + HIDDEN)
        for t in [int(v) for v in a.tokens.split(",")]:
            x = torch.randn(t, HIDDEN, device=dev, dtype=bf)
            _, order, counts = gating(x @ router.t())
            ids = torch.nonzero(counts).flatten()
            touched = int(ids.numel())
            offs = torch.cumsum(counts, 0).to(torch.int32)
            offs_t = torch.cumsum(counts[ids], 0).to(torch.int32)
            xs = x[order]
            fl = 2.0 * 3 * t * HIDDEN * INTER
            rows = []
            try:
                us = median_us(lambda: grouped(grouped(xs, dequant(q13, s13, ids), offs_t)[:, :INTER].contiguous(),
                                               dequant(q2, s2, ids), offs_t))
                rows.append(("fp8_deq_gmm", us))
            except (AttributeError, RuntimeError) as err:
                print(f"# fp8_deq_gmm E={e} tokens={t}: {type(err).__name__}: {str(err).splitlines()[0][:120]}", file=sys.stderr)
            if hasattr(torch, "_scaled_grouped_mm"):
                try:
                    us = median_us(lambda: scaled_grouped(scaled_grouped(xs, q13, s13, offs)[:, :INTER].contiguous(),
                                                          q2, s2, offs))
                    rows.append(("fp8_scaled", us))
                except (AttributeError, RuntimeError) as err:
                    print(f"# fp8_scaled E={e} tokens={t}: {type(err).__name__}: {str(err).splitlines()[0][:120]}", file=sys.stderr)
            for name, us in rows:
                print(f"{name:<12} {e:>4} {t:>6} {us:>10.1f} {touched * fp8_bytes / us / 1e3:>8.0f} {fl / us / 1e6:>8.1f}")
            del x, xs
        del q13, q2, s13, s2
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
