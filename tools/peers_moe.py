#!/usr/bin/env python3
"""Torch peers of benches/moe_gpu.rs at the same shapes (hidden 5120, expert intermediate 8192, top-1,
a shared expert of the same size; E = 16 and 128; tokens 1, 8, 64, 512, 4096, 16384), bf16, CUDA
events (median of 20 after warm-up):

  grouped_mm   torch._grouped_mm over the expert-sorted rows (gate_up [E, 2*inter, hidden] then down),
               the peer of the grouped GEMM prefill (the issue asks >= 0.9x of it);
  gating       topk + sigmoid + argsort (stable) + bincount, the peer of moe_gate;
  moe_block    the whole Llama 4 MoE block written with torch ops: router matmul, the gating chain,
               gather x * score, grouped gate_up, silu * up, grouped down, index_add onto the shared
               expert's output (three matmuls).

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
    ap.add_argument("--tokens", default="1,8,64,512,4096,16384")
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


if __name__ == "__main__":
    main()
