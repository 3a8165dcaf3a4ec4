#!/usr/bin/env python3
"""Peer timing for decode attention (benches/attn_decode_gpu.rs): torch scaled_dot_product_attention
with ONE query per head over the same K/V shape (40 query heads over 8 KV heads x 128, bf16,
enable_gqa), at 4K, 128K, 1M and 10M tokens, plus a 1 GiB device-to-device copy for the HBM
bandwidth. Prints the same rows as the bench: time, K/V GB/s, fraction of copy bandwidth. torch has no
paged / fp8 decode kernel: the K/V here are dense contiguous [1, 8, T, 128] tensors (the best case for
it). Sizes that do not fit are skipped. Needs python3 with torch and a CUDA GPU; installs nothing."""
import torch

from peers_common import batch_ms, copy_bandwidth, cuda_or_skip, sdpa_gqa

SIZES = (4096, 131072, 1048576, 10_000_000)
H, KVH, D = 40, 8, 128


def main():
    if not cuda_or_skip():
        return
    dev = torch.device("cuda")
    bw = copy_bandwidth()
    print(f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, device-to-device copy {bw:.0f} GB/s")
    q = torch.randn(1, H, 1, D, device=dev, dtype=torch.bfloat16)
    for t in SIZES:
        kv_bytes = 2 * KVH * t * D * 2
        free, _ = torch.cuda.mem_get_info(dev)
        if kv_bytes + (2 << 30) > free:
            print(f"torch sdpa decode bf16 {t} tokens: skipped: needs {kv_bytes / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
            continue
        k = torch.randn(1, KVH, t, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        f = lambda: sdpa_gqa(q, k, v)  # noqa: E731
        try:
            ms = batch_ms(f)
        except torch.cuda.OutOfMemoryError:  # K/V repeated to 40 heads where torch has no enable_gqa
            print(f"torch sdpa decode bf16 {t} tokens: skipped: out of memory")
            del k, v
            torch.cuda.empty_cache()
            continue
        gbs = kv_bytes / (ms / 1e3) / 1e9
        print(f"torch sdpa decode bf16 {t} tokens: {ms:.3f} ms, K/V {kv_bytes / 1e9:.2f} GB, {gbs:.0f} GB/s, "
              f"{100 * gbs / bw:.0f}% of copy bandwidth (floor {kv_bytes / 1e9 / bw * 1e3:.3f} ms)")
        del k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
