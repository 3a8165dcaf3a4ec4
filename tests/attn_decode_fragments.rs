//! CPU mirror of the decode kernel's register dataflow for one 16-key warp step (kernels/attn_decode.cu):
//! which dims each lane loads (k_pair_dim / v_pair_dim, bf16 and fp8), the mma.m16n8k16 fragment
//! layouts (PTX ISA, as kernels/common/mma.cuh documents them), movmatrix.trans and the prmt
//! transposition of V. Checks that S^T = K . Q^T and O^T = V^T . P^T come out right for every lane, so
//! the index maps agree with each other. Runs without a GPU.
// Lane-indexed loops mirror the kernel's per-lane view.
#![allow(clippy::needless_range_loop)]

mod attn_common;

use attn_common::Rng;
use llama4_cuda::quant::fp8::{e4m3_decode, e4m3_encode};

const D: usize = 128;

/// The kernel's k_pair_dim / v_pair_dim.
fn k_pair_dim(fp8: bool, u: usize, c: usize) -> usize {
    if fp8 {
        c * 16 + (u >> 3) * 64 + 2 * (u & 7)
    } else {
        c * 8 + (u >> 2) * 32 + 2 * (u & 3)
    }
}
fn v_pair_dim(fp8: bool, t: usize, r: usize) -> usize {
    if fp8 {
        16 * r + 2 * t
    } else if t < 4 {
        8 * r + 2 * t
    } else {
        64 + 8 * r + 2 * (t - 4)
    }
}

/// One key row as the lanes load it: 16-byte vectors of bf16 values or e4m3 codes.
struct Row {
    vals: Vec<f32>,
    codes: Vec<u8>,
}

/// Pair of (lo, hi) values: what one 32-bit register holds.
type Pair = (f32, f32);

/// K pair u of lane column c, built the way the kernel builds it from its 16-byte loads.
fn k_pair(fp8: bool, row: &Row, c: usize, u: usize) -> Pair {
    if fp8 {
        // raw[i] = 16 codes at dims c*16 + 64i; word w = codes 4w..4w+3; hi picks bytes 2, 3.
        let (i, w, hi) = (u >> 3, (u & 7) >> 1, u & 1);
        let base = c * 16 + 64 * i + 4 * w + 2 * hi;
        (
            e4m3_decode(row.codes[base]),
            e4m3_decode(row.codes[base + 1]),
        )
    } else {
        // raw[i] = 8 bf16 at dims c*8 + 32i; word w = elements 2w, 2w+1.
        let (i, w) = (u >> 2, u & 3);
        let base = c * 8 + 32 * i + 2 * w;
        (row.vals[base], row.vals[base + 1])
    }
}

/// V pair t of lane row r.
fn v_pair(fp8: bool, row: &Row, r: usize, t: usize) -> Pair {
    if fp8 {
        // One 16-byte load: codes 16r..16r+16; word t/2, bytes (t&1)*2, +1.
        let base = 16 * r + 4 * (t >> 1) + 2 * (t & 1);
        (
            e4m3_decode(row.codes[base]),
            e4m3_decode(row.codes[base + 1]),
        )
    } else {
        // Two loads: dims 8r.. (t < 4) and 64 + 8r.. (t >= 4).
        let base = 8 * r + 64 * (t >> 2) + 2 * (t & 3);
        (row.vals[base], row.vals[base + 1])
    }
}

/// mma.m16n8k16 over the whole warp: lane l = 4g + c holds a = [A[g][2c..], A[g+8][2c..],
/// A[g][2c+8..], A[g+8][2c+8..]], b = [B[2c..][g], B[2c+8..][g]]; returns each lane's
/// d = [D[g][2c], D[g][2c+1], D[g+8][2c], D[g+8][2c+1]].
fn mma(a: &[[Pair; 4]; 32], b: &[[Pair; 2]; 32]) -> [[f64; 4]; 32] {
    let mut am = [[0f64; 16]; 16];
    let mut bm = [[0f64; 8]; 16];
    for l in 0..32 {
        let (g, c) = (l / 4, l % 4);
        for (i, (row, col)) in [
            (g, 2 * c),
            (g + 8, 2 * c),
            (g, 2 * c + 8),
            (g + 8, 2 * c + 8),
        ]
        .into_iter()
        .enumerate()
        {
            am[row][col] = a[l][i].0 as f64;
            am[row][col + 1] = a[l][i].1 as f64;
        }
        for (i, k) in [2 * c, 2 * c + 8].into_iter().enumerate() {
            bm[k][g] = b[l][i].0 as f64;
            bm[k + 1][g] = b[l][i].1 as f64;
        }
    }
    let dm = |m: usize, n: usize| (0..16).map(|k| am[m][k] * bm[k][n]).sum::<f64>();
    std::array::from_fn(|l| {
        let (g, c) = (l / 4, l % 4);
        [
            dm(g, 2 * c),
            dm(g, 2 * c + 1),
            dm(g + 8, 2 * c),
            dm(g + 8, 2 * c + 1),
        ]
    })
}

/// movmatrix.m8n8.trans.b16: lane 4g + c holds M[g][2c..2c+1]; returns M^T in the same layout.
fn movmatrix(x: &[Pair; 32]) -> [Pair; 32] {
    let m = |row: usize, col: usize| {
        let p = x[row * 4 + col / 2];
        if col % 2 == 0 {
            p.0
        } else {
            p.1
        }
    };
    std::array::from_fn(|l| {
        let (g, c) = (l / 4, l % 4);
        (m(2 * c, g), m(2 * c + 1, g))
    })
}

fn check(fp8: bool, seed: u64) {
    let mut rng = Rng(seed);
    // Small dyadic values so every sum below is exact in f64.
    let mk = |rng: &mut Rng| -> Row {
        let vals: Vec<f32> = (0..D)
            .map(|_| (rng.below(33) as f32 - 16.0) / 8.0)
            .collect();
        let codes: Vec<u8> = vals.iter().map(|&v| e4m3_encode(v)).collect();
        let vals = if fp8 {
            codes.iter().map(|&c| e4m3_decode(c)).collect()
        } else {
            vals
        };
        Row { vals, codes }
    };
    let keys: Vec<Row> = (0..16).map(|_| mk(&mut rng)).collect();
    let vrows: Vec<Row> = (0..16).map(|_| mk(&mut rng)).collect();
    let q: Vec<Vec<f32>> = (0..8)
        .map(|_| (0..D).map(|_| (rng.below(9) as f32 - 4.0) / 4.0).collect())
        .collect();

    // S^T = K . Q^T, 8 k-steps.
    let mut s = [[0f64; 4]; 32];
    for j in 0..8 {
        let a: [[Pair; 4]; 32] = std::array::from_fn(|l| {
            let (r, c) = (l / 4, l % 4);
            [
                k_pair(fp8, &keys[r], c, 2 * j),
                k_pair(fp8, &keys[r + 8], c, 2 * j),
                k_pair(fp8, &keys[r], c, 2 * j + 1),
                k_pair(fp8, &keys[r + 8], c, 2 * j + 1),
            ]
        });
        let b: [[Pair; 2]; 32] = std::array::from_fn(|l| {
            let (r, c) = (l / 4, l % 4);
            let (d0, d1) = (k_pair_dim(fp8, 2 * j, c), k_pair_dim(fp8, 2 * j + 1, c));
            [(q[r][d0], q[r][d0 + 1]), (q[r][d1], q[r][d1 + 1])]
        });
        let d = mma(&a, &b);
        for l in 0..32 {
            for i in 0..4 {
                s[l][i] += d[l][i];
            }
        }
    }
    let dot = |k: &Row, q: &[f32]| {
        k.vals
            .iter()
            .zip(q)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum::<f64>()
    };
    for l in 0..32 {
        let (r, c) = (l / 4, l % 4);
        let want = [
            dot(&keys[r], &q[2 * c]),
            dot(&keys[r], &q[2 * c + 1]),
            dot(&keys[r + 8], &q[2 * c]),
            dot(&keys[r + 8], &q[2 * c + 1]),
        ];
        assert_eq!(s[l], want, "fp8 {fp8}: S^T of lane {l}");
    }

    // P (any values): lane (r, c) holds P[key r][q 2c..], P[key r+8][q 2c..].
    let p: [[f32; 4]; 32] =
        std::array::from_fn(|_| std::array::from_fn(|_| rng.below(5) as f32 / 4.0));
    let b0 = movmatrix(&std::array::from_fn(|l| (p[l][0], p[l][1])));
    let b1 = movmatrix(&std::array::from_fn(|l| (p[l][2], p[l][3])));
    let pm = |key: usize, qq: usize| -> f64 {
        let (lane, off) = if key < 8 {
            (key * 4 + qq / 2, 0)
        } else {
            ((key - 8) * 4 + qq / 2, 2)
        };
        p[lane][off + qq % 2] as f64
    };
    // O^T = V^T . P^T, one mma per m-tile t of 16 dim slots.
    for t in 0..8 {
        let a: [[Pair; 4]; 32] = std::array::from_fn(|l| {
            let (r, c) = (l / 4, l % 4);
            let vp = |kk: usize| v_pair(fp8, &vrows[2 * c + (kk & 1) + 8 * (kk >> 1)], r, t);
            let (v0, v1, v2, v3) = (vp(0), vp(1), vp(2), vp(3));
            // prmt 0x5410 = (lo, lo), 0x7632 = (hi, hi)
            [(v0.0, v1.0), (v0.1, v1.1), (v2.0, v3.0), (v2.1, v3.1)]
        });
        let b: [[Pair; 2]; 32] = std::array::from_fn(|l| [b0[l], b1[l]]);
        let d = mma(&a, &b);
        for l in 0..32 {
            let (r, c) = (l / 4, l % 4);
            let dim = v_pair_dim(fp8, t, r);
            let o = |dim: usize, qq: usize| {
                (0..16)
                    .map(|k| pm(k, qq) * vrows[k].vals[dim] as f64)
                    .sum::<f64>()
            };
            let want = [
                o(dim, 2 * c),
                o(dim, 2 * c + 1),
                o(dim + 1, 2 * c),
                o(dim + 1, 2 * c + 1),
            ];
            assert_eq!(d[l], want, "fp8 {fp8}: O^T m-tile {t} lane {l}");
        }
    }
    // Every output dim is produced exactly once per lane row pair: (t, r) -> (dim, dim + 1) is a bijection.
    let mut seen = [false; D];
    for t in 0..8 {
        for r in 0..8 {
            let d = v_pair_dim(fp8, t, r);
            assert!(!seen[d] && !seen[d + 1], "dim {d} produced twice");
            seen[d] = true;
            seen[d + 1] = true;
        }
    }
    assert!(seen.iter().all(|&x| x));
}

#[test]
fn bf16_fragment_maps_compute_s_and_o() {
    for seed in 0..4 {
        check(false, 0xf4a6 + seed);
    }
}

#[test]
fn fp8_fragment_maps_compute_s_and_o() {
    for seed in 0..4 {
        check(true, 0xf8a6 + seed);
    }
}

#[test]
fn k_maps_cover_every_dim_once_per_lane_column() {
    for fp8 in [false, true] {
        let mut seen = [0u32; D];
        for c in 0..4 {
            for u in 0..16 {
                let d = k_pair_dim(fp8, u, c);
                seen[d] += 1;
                seen[d + 1] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "fp8 {fp8}: {seen:?}");
    }
}
