"""Shared by the torch peer scripts (tools/peers_*.py): CUDA-event timing, the device-to-device copy
bandwidth (the same floor the Rust benches measure) and the no-GPU skip line.

The scripts run as `python3 tools/peers_X.py` from any directory: Python puts the script's own
directory (tools/) first on sys.path, so `import peers_common` finds this file."""
import statistics

import torch
import torch.nn.functional as F


def cuda_or_skip():
    """True when a CUDA device is there; else prints the skip line."""
    if torch.cuda.is_available():
        return True
    print("skipped: no CUDA device")
    return False


def batch_ms(fn, reps=20, runs=1, warmup=3):
    """Mean ms per call of `reps` back-to-back calls between two CUDA events, after `warmup` calls;
    the median over `runs` such batches."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) / reps)
    return statistics.median(out)


def per_call_ms(fn, reps=20, warmup=3):
    """The ms of each of `reps` calls timed alone between two CUDA events, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = []
    for _ in range(reps):
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return out


def median_us(fn, reps=20, warmup=3):
    """The median (upper middle) of `per_call_ms`, in microseconds."""
    return statistics.median_high(per_call_ms(fn, reps, warmup)) * 1e3


def copy_bandwidth(reps=10, runs=1):
    """GB/s (read + write bytes) of a 1 GiB device-to-device copy."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = batch_ms(lambda: dst.copy_(src), reps=reps, runs=runs)
    return 2 * n / (ms / 1e3) / 1e9


_GQA = None  # whether this torch's scaled_dot_product_attention takes enable_gqa (2.5+)


def sdpa_gqa(q, k, v, **kw):
    """scaled_dot_product_attention with fewer K/V heads than query heads: enable_gqa where torch has
    it, else K/V repeated to the query heads (older torch; more memory)."""
    global _GQA
    if _GQA is not False:
        try:
            out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
            _GQA = True
            return out
        except TypeError:  # unknown keyword: torch < 2.5
            _GQA = False
    g = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), **kw)
