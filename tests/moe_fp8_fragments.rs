//! CPU mirror of the fp8 expert prefill's shared-memory W tile and register-A fragments
//! (`grouped_prefill<kFp8>` and `fp8_frag_smem` in kernels/common/gemm_grouped.cuh,
//! `e4m3_b13_to_bf16x2` in kernels/common/dequant.cuh): the cp.async placement of a 128 x 64-code
//! slab at an 80-byte row pitch, the two word loads + prmt per row that must hand lane (g, c) of k16
//! step j exactly the codes of the mma.m16n8k16 A layout (PTX ISA: a0 = (g, 2c..2c+1), a1 = (g+8, ..),
//! a2 = (g, 2c+8..), a3 = (g+8, 2c+8..), k offset 16j; wgmma's register A is the same per warp), the
//! bank-conflict freedom of those loads, and the exact widening of every finite e4m3 code to bf16.
//! Runs without a GPU.
// Lane-indexed loops mirror the kernel's per-lane view.
#![allow(clippy::needless_range_loop)]

mod common;

use common::Rng;
use llama4_cuda::quant::fp8::e4m3_decode;

/// The kernel's constants: kGgFp8Pitch, kGgPreBN, kGgSlabK, kGgPreThreads, kGgPreXBytes.
const PITCH: usize = 80;
const ROWS: usize = 128;
const SLAB_K: usize = 64;
const THREADS: usize = 256;
const X_BYTES: usize = 128 * 128;

/// PTX prmt.b32 (default mode): byte i of the result is byte (sel >> 4i) & 7 of {b, a}; bit 3 of
/// the nibble replicates that byte's sign bit instead.
fn prmt(a: u32, b: u32, sel: u32) -> u32 {
    let src = (u64::from(b) << 32) | u64::from(a);
    (0..4).fold(0u32, |r, i| {
        let nib = (sel >> (4 * i)) & 0xf;
        let byte = ((src >> (8 * (nib & 7))) & 0xff) as u32;
        let byte = if nib & 8 != 0 {
            if byte & 0x80 != 0 {
                0xff
            } else {
                0
            }
        } else {
            byte
        };
        r | (byte << (8 * i))
    })
}

/// e4m3_b13_to_bf16x2: the codes in bytes 1 and 3 of t -> (low, high) values (the bf16 multiply by
/// 2^120 is exact, so f32 arithmetic gives the same value).
fn e4m3_b13(t: u32) -> (f32, f32) {
    let sign = t & 0x8000_8000;
    let bits = ((t >> 4) & 0x07f0_07f0) | sign;
    let half = |h: u32| f32::from_bits(h << 16) * 2f32.powi(120);
    (half(bits & 0xffff), half(bits >> 16))
}

fn lds32(smem: &[u8], addr: usize) -> u32 {
    assert_eq!(addr % 4, 0, "unaligned 32-bit shared load at {addr}");
    u32::from_le_bytes(smem[addr..addr + 4].try_into().unwrap())
}

/// fp8_frag_smem: word addresses (lo, hi) of row half h and the prmt selectors (a[h], a[2 + h]).
fn frag_words(pitch: usize, j: usize, g: usize, c: usize, h: usize) -> (usize, usize, u32, u32) {
    let off = 16 * j + 4 * (c >> 1);
    let sel = 0x1000u32 + 0x2020 * (c as u32 & 1);
    let row = (g + 8 * h) * pitch + off;
    (row, row + 8, sel, sel + 0x4040)
}

/// The tile's shared memory after one slab's cp.async copies (the kernel's load_stage):
/// u = tid + 256 q, virtual row u / 4, 16-byte chunk u % 4 -> byte vr * PITCH + 16 ch.
fn load_slab(w: &[u8]) -> Vec<u8> {
    let mut smem = vec![0u8; ROWS * PITCH];
    let mut written = vec![false; ROWS * PITCH];
    for tid in 0..THREADS {
        for q in 0..ROWS * 4 / THREADS {
            let u = tid + q * THREADS;
            let (vr, ch) = (u / 4, u % 4);
            let dst = vr * PITCH + ch * 16;
            assert_eq!(dst % 16, 0, "cp.async destination must be 16-byte aligned");
            for b in 0..16 {
                assert!(!written[dst + b], "byte {} written twice", dst + b);
                written[dst + b] = true;
                smem[dst + b] = w[vr * SLAB_K + ch * 16 + b];
            }
        }
    }
    for vr in 0..ROWS {
        assert!(
            written[vr * PITCH..vr * PITCH + SLAB_K].iter().all(|&x| x),
            "row {vr} not fully copied"
        );
    }
    smem
}

#[test]
fn fp8_prefill_fragments_hold_the_a_layout() {
    let (mut rng, seed) = Rng::fresh();
    // Random finite codes (0x7f / 0xff are NaN, never produced by the quantizers).
    let w: Vec<u8> = (0..ROWS * SLAB_K)
        .map(|_| match rng.below(256) as u8 {
            0x7f | 0xff => 0x3c,
            c => c,
        })
        .collect();
    let smem = load_slab(&w);
    // Every 16-row tile (sm_80: warps own tiles 2wn, 2wn + 1; sm_90a: warp w owns tile w).
    for tile in 0..ROWS / 16 {
        let base = tile * 16 * PITCH;
        for j in 0..4 {
            for lane in 0..32 {
                let (g, c) = (lane / 4, lane % 4);
                for h in 0..2 {
                    let (lo, hi, s0, s2) = frag_words(PITCH, j, g, c, h);
                    let (wl, wh) = (lds32(&smem, base + lo), lds32(&smem, base + hi));
                    let row = tile * 16 + g + 8 * h;
                    for (reg, sel, k0) in [(h, s0, 16 * j + 2 * c), (2 + h, s2, 16 * j + 2 * c + 8)]
                    {
                        let (v0, v1) = e4m3_b13(prmt(wl, wh, sel));
                        let want = (
                            e4m3_decode(w[row * SLAB_K + k0]),
                            e4m3_decode(w[row * SLAB_K + k0 + 1]),
                        );
                        assert_eq!(
                            (v0.to_bits(), v1.to_bits()),
                            (want.0.to_bits(), want.1.to_bits()),
                            "seed {seed}: tile {tile} j {j} lane {lane} a[{reg}] (row {row}, k {k0}): got \
                             {v0} {v1}, want {} {}",
                            want.0,
                            want.1
                        );
                    }
                }
            }
        }
    }
}

/// Worst bank-conflict degree over the fragment loads of one warp at `pitch` (1 = conflict-free;
/// lanes reading the same word are a broadcast).
fn worst_conflict(pitch: usize) -> usize {
    let mut worst = 1;
    for j in 0..4 {
        for h in 0..2 {
            for which in 0..2 {
                let mut words: Vec<usize> = (0..32)
                    .map(|lane| {
                        let (lo, hi, _, _) = frag_words(pitch, j, lane / 4, lane % 4, h);
                        (if which == 0 { lo } else { hi }) / 4
                    })
                    .collect();
                words.sort_unstable();
                words.dedup();
                let mut per_bank = [0usize; 32];
                for w in words {
                    per_bank[w % 32] += 1;
                }
                worst = worst.max(*per_bank.iter().max().unwrap());
            }
        }
    }
    worst
}

#[test]
fn fp8_prefill_fragment_loads_are_conflict_free() {
    assert_eq!(worst_conflict(PITCH), 1, "80-byte pitch");
    // The checker sees the conflict the pitch avoids.
    assert_eq!(worst_conflict(64), 4, "64-byte pitch");
    // Stage layout: X tile (SW128, 1024-byte aligned) then the fp8 tile; stages stay 1024-aligned.
    assert_eq!((X_BYTES + ROWS * PITCH) % 1024, 0);
    assert_eq!(PITCH % 16, 0);
}

/// e4m3_b13_to_bf16x2 is exact for every finite code and ignores bytes 0 and 2 (the prmt of
/// fp8_frag_smem leaves other codes there).
#[test]
fn e4m3_widening_is_exact_and_ignores_bytes_0_and_2() {
    let (mut rng, seed) = Rng::fresh();
    for lo in 0..=255u8 {
        for hi in [0u8, 0x01, 0x08, 0x38, 0x77, 0x80, 0xb5, 0xfe, lo] {
            if matches!(lo, 0x7f | 0xff) || matches!(hi, 0x7f | 0xff) {
                continue;
            }
            let junk = rng.next_u64() as u32 & 0x00ff_00ff;
            let t = (u32::from(hi) << 24) | (u32::from(lo) << 8) | junk;
            let (v0, v1) = e4m3_b13(t);
            assert_eq!(
                v0.to_bits(),
                e4m3_decode(lo).to_bits(),
                "seed {seed}: code {lo:#04x}"
            );
            assert_eq!(
                v1.to_bits(),
                e4m3_decode(hi).to_bits(),
                "seed {seed}: code {hi:#04x}"
            );
        }
    }
}

/// The prefill's virtual-row bookkeeping (`actual_row`, `weight_of`, the wscale staging clamp and the
/// epilogue's column loop): every stored output column gets its own channel's scale from the right
/// weight (gate virtual rows 0..64 and up 64..128 under SwiGLU), the grid covers every column once,
/// and a scale read for a virtual row past n (clamped to row n - 1) is never used by a stored column.
#[test]
fn fp8_prefill_scales_follow_their_columns() {
    for swiglu in [false, true] {
        for n in [1usize, 15, 63, 64, 65, 127, 128, 129, 300] {
            let cols_per_block = if swiglu { ROWS / 2 } else { ROWS };
            let mut stored = vec![0usize; n];
            for bx in 0..n.div_ceil(cols_per_block) {
                let vrow0 = bx * cols_per_block;
                let actual_row = |vr: usize| {
                    if swiglu {
                        vrow0 + (vr & 63)
                    } else {
                        vrow0 + vr
                    }
                };
                let weight_of = |vr: usize| usize::from(swiglu && vr >= 64);
                // wscale[vr] = scales[weight_of(vr)][min(actual_row(vr), n - 1)] (threads 128..256).
                let wscale: Vec<(usize, usize)> = (0..ROWS)
                    .map(|vr| (weight_of(vr), actual_row(vr).min(n - 1)))
                    .collect();
                let out_cols = if swiglu { ROWS / 2 } else { ROWS };
                for c0 in (0..out_cols).step_by(8) {
                    for q in 0..8 {
                        let col = vrow0 + c0 + q;
                        if col >= n {
                            continue; // the epilogue's store guard
                        }
                        stored[col] += 1;
                        let ctx = format!("swiglu {swiglu} n {n} block {bx} col {col}");
                        assert_eq!(actual_row(c0 + q), col, "{ctx}");
                        assert_eq!(wscale[c0 + q], (0, col), "gate / plain scale: {ctx}");
                        if swiglu {
                            assert_eq!(actual_row(64 + c0 + q), col, "{ctx}");
                            assert_eq!(wscale[64 + c0 + q], (1, col), "up scale: {ctx}");
                        }
                    }
                }
            }
            assert!(
                stored.iter().all(|&s| s == 1),
                "swiglu {swiglu} n {n}: {stored:?}"
            );
        }
    }
}
