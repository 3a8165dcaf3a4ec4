#!/usr/bin/env python3
"""Peer timing for next-token sampling at Llama 4's vocab (202048), the rows of benches/sample_gpu.rs:
rows 1 / 8 / 64 of bf16 logits; greedy = torch.argmax, top-p (t 0.6, top_p 0.9) = the usual torch chain
softmax + sort (descending) + cumsum + mask + renormalise + multinomial + gather. Microseconds per call
(CUDA events, median of 200), GB/s of the logits read once and the fraction of the floor (one read at
the device-to-device copy bandwidth). Needs python3 with torch and a CUDA GPU; installs nothing."""
import torch

from peers_common import copy_bandwidth, cuda_or_skip, median_us

VOCAB = 202048
ROWS = (1, 8, 64)
TEMPERATURE, TOP_P = 0.6, 0.9


def greedy(logits):
    return torch.argmax(logits, dim=-1)


def top_p(logits, gen):
    probs = torch.softmax(logits.float() / TEMPERATURE, dim=-1)
    sorted_p, sorted_i = torch.sort(probs, dim=-1, descending=True)
    cum = torch.cumsum(sorted_p, dim=-1)
    # Keep the smallest prefix reaching TOP_P: a token is dropped when the mass before it already does.
    sorted_p = sorted_p.masked_fill(cum - sorted_p >= TOP_P, 0.0)
    pick = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=gen)
    return torch.gather(sorted_i, -1, pick).squeeze(-1)


def main():
    if not cuda_or_skip():
        return
    dev = torch.device("cuda")
    bw = copy_bandwidth()
    print(f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, copy {bw:.0f} GB/s")
    gen = torch.Generator(device=dev).manual_seed(0)
    for rows in ROWS:
        logits = (torch.rand(rows, VOCAB, device=dev) * 16 - 8).to(torch.bfloat16)
        nbytes = rows * VOCAB * 2
        floor_us = nbytes / (bw * 1e9) * 1e6
        for name, fn in (("greedy", lambda: greedy(logits)), ("top_p", lambda: top_p(logits, gen))):
            us = median_us(fn, reps=200, warmup=10)
            gbs = nbytes / (us * 1e-6) / 1e9
            print(f"torch sample {name} rows {rows}: {us:.1f} us, {gbs:.0f} GB/s of logits, "
                  f"{100 * floor_us / us:.1f}% of the floor ({floor_us:.2f} us)")


if __name__ == "__main__":
    main()
