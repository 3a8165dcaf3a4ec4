#!/usr/bin/env python3
"""Peer timing for MoE gating: the torch chain topk + sigmoid + argsort (stable) + bincount + cumsum +
inverse on the GPU at the bench shape (16384 tokens x 128 experts, k = 1 and 8), in microseconds
(CUDA events, median of 200). Needs python3 with torch and a CUDA GPU; installs nothing."""
import torch

from peers_common import median_us

TOKENS, EXPERTS = 16384, 128


def chain(logits, k):
    vals, ids = torch.topk(logits, k, dim=-1)
    scores = torch.sigmoid(vals.float())
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=logits.shape[1])
    offsets = torch.cumsum(counts, 0)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return scores, order, offsets, inverse


def main():
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.randn(TOKENS, EXPERTS, device=dev).to(dtype)
        for k in (1, 8):
            us = median_us(lambda: chain(logits, k), reps=200, warmup=10)
            print(f"torch gating chain {TOKENS}x{EXPERTS} {str(dtype)[6:]} k={k}: {us:.1f} us")


if __name__ == "__main__":
    main()
