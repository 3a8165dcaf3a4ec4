//! GPU norm / RoPE kernels against the CPU reference (`reference::norm`, `reference::rope`). Random
//! inputs in ±[0.05, 4] (never zero), fresh per run (the seed is printed on failure); odd shapes (dim 1,
//! 7, 4097, odd head counts, head_dim not a multiple of 8, 1 token, 4097 rows); positions near 10M;
//! aligned (16-byte vector path) and offset-by-one (scalar / pair path) buffers; RMSNorm outputs
//! poisoned with NaN before each launch. Without a GPU each test prints one "skipped" line and passes.
//!
//! Tolerances, as `max|out - ref| / max|ref|` over the whole output:
//! - f32 storage: 1e-5. The GPU sums squares as a tree and uses rsqrtf (2 ulp), the CPU sums in order
//!   (~sqrt(n) * 6e-8 for the dims here); RoPE's cos/sin come from the same f64 angle on both sides
//!   (sincospi vs sin_cos: equal after rounding to f32 up to 1 ulp) and FMA contraction moves a
//!   product by 1 ulp. An f32 angle at position 10M (off by up to 0.25 rad) fails this by 4 orders.
//! - 16-bit storage: 1e-2. The reference gets the same rounded inputs; the output is rounded once to
//!   bf16 (2^-8 relative) or f16 (2^-11), and an f32 difference of a few ulp can flip that rounding.

use std::sync::Arc;

use common::gpu::{f32s, poisoned, random, Elem};
use common::{rel_err, Rng};
use half::{bf16, f16};
use llama4_cuda::device::{device_for_test, CudaSlice, CudaStream, Device};
use llama4_cuda::ops::norm_rope as ops;
use llama4_cuda::reference::{norm, rope};
use llama4_cuda::Error;

mod common;

const EPS: f32 = 1e-5;
const SCOUT: rope::Llama3Scaling = rope::Llama3Scaling {
    factor: 16.0,
    low_freq_factor: 1.0,
    high_freq_factor: 1.0,
    original_max_position_embeddings: 8192.0,
};

/// Positions: some small, some just below 10,485,760 (Scout's 10M context).
fn positions(rng: &mut Rng, n: usize) -> Vec<usize> {
    (0..n)
        .map(|_| {
            if rng.below(2) == 0 {
                rng.below(20_000)
            } else {
                10_485_760 - 1 - rng.below(500_000)
            }
        })
        .collect()
}

/// The tolerance of a result stored in T (module docs): 1e-5 for f32, 1e-2 for a 16-bit type.
fn tol<T: Elem>() -> f64 {
    if std::mem::size_of::<T>() == 4 {
        1e-5
    } else {
        1e-2
    }
}

fn stream(dev: &Device) -> &Arc<CudaStream> {
    dev.stream()
}

fn upload_i64(dev: &Device, v: &[usize]) -> CudaSlice<i64> {
    ops::positions_on_device(stream(dev), v).expect("upload positions")
}

// ---- RMSNorm ------------------------------------------------------------------------------------

const RMS_SHAPES: [(usize, usize); 8] = [
    (1, 1),
    (3, 7),
    (4097, 7),
    (1, 5120),
    (33, 128),
    (3, 4097),
    (2, 16384),
    (5, 40),
];

/// `weighted`: W = f32 or X; `off` = 1 shifts every buffer by one element (unaligned: scalar path).
fn check_rms<O: Elem, X: Elem, W: Elem>(dev: &Device, rng: &mut Rng, seed: u64, weighted: bool) {
    for (rows, dim) in RMS_SHAPES {
        for off in [0usize, 1] {
            let n = rows * dim;
            let x: Vec<X> = random(rng, n + off);
            let w: Vec<W> = random(rng, dim + off);
            let (xf, wf) = (f32s(&x[off..]), f32s(&w[off..]));
            let want = norm::rms_norm(&xf, dim, weighted.then_some(&wf[..]), EPS)
                .expect("reference rms_norm");
            let (dx, dw) = (dev.upload(&x).unwrap(), dev.upload(&w).unwrap());
            let mut out = poisoned::<O>(dev, n + off);
            {
                let mut vo = out.slice_mut(off..);
                if weighted {
                    ops::rms_norm(
                        stream(dev),
                        &dx.slice(off..),
                        dim,
                        &dw.slice(off..),
                        EPS,
                        &mut vo,
                    )
                    .expect("rms_norm");
                } else {
                    ops::rms_norm_unweighted(stream(dev), &dx.slice(off..), dim, EPS, &mut vo)
                        .expect("rms_norm");
                }
            }
            let got = f32s(&dev.download(&out).unwrap());
            let e = rel_err(&got[off..], &want);
            let what = format!(
                "{}<-{} w {} weighted {weighted} {rows}x{dim} off {off}",
                O::DTYPE,
                X::DTYPE,
                W::DTYPE
            );
            assert!(
                e <= tol::<O>(),
                "rms_norm {what}: rel err {e} (seed {seed})"
            );
            assert!(
                got[..off].iter().all(|v| v.is_nan()),
                "rms_norm {what} wrote before its view (seed {seed})"
            );
        }
    }
}

#[test]
fn rms_norm_matches_reference() {
    let Some(dev) = device_for_test("rms_norm_matches_reference") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    check_rms::<f32, f32, f32>(&dev, &mut rng, seed, true);
    check_rms::<bf16, bf16, bf16>(&dev, &mut rng, seed, true);
    check_rms::<bf16, bf16, f32>(&dev, &mut rng, seed, true);
    check_rms::<bf16, f32, f32>(&dev, &mut rng, seed, true);
    check_rms::<f32, bf16, bf16>(&dev, &mut rng, seed, true);
    check_rms::<f16, f16, f16>(&dev, &mut rng, seed, true);
    check_rms::<f32, f32, f32>(&dev, &mut rng, seed, false);
    check_rms::<bf16, bf16, f32>(&dev, &mut rng, seed, false);
}

// ---- RoPE / qk norm ------------------------------------------------------------------------------

/// (tokens, q_heads, k_heads, head_dim): Scout's 40/8/128, odd head counts, head_dim not a multiple
/// of 8 (pair path), 2 (one pair), one token, 4097 tokens; 512 and 258 put more than one vector on a
/// lane (the second one is read again after the reduction).
const QK_SHAPES: [(usize, usize, usize, usize); 9] = [
    (1, 40, 8, 128),
    (5, 3, 1, 128),
    (7, 5, 3, 6),
    (4097, 1, 1, 2),
    (3, 7, 7, 64),
    (1, 1, 1, 256),
    (2, 9, 3, 18),
    (1, 2, 1, 512),
    (2, 3, 1, 258),
];

/// The CPU result for q or k: RoPE (when `positions`), then the weightless norm over head_dim (when
/// `norm`).
fn reference_qk(
    x: &[f32],
    heads: usize,
    hd: usize,
    positions: Option<(&[usize], &[f32])>,
    norm_it: bool,
) -> Vec<f32> {
    let mut y = x.to_vec();
    if let Some((pos, inv)) = positions {
        rope::apply_rope(&mut y, heads, hd, pos, inv).expect("reference rope");
    }
    if norm_it {
        y = norm::rms_norm(&y, hd, None, EPS).expect("reference qk norm");
    }
    y
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Rope,
    Norm,
    RopeNorm,
}

fn check_qk<T: Elem>(dev: &Device, rng: &mut Rng, seed: u64, mode: Mode) {
    for (tokens, hq, hk, hd) in QK_SHAPES {
        for off in [0usize, 2] {
            let (nq, nk) = (tokens * hq * hd, tokens * hk * hd);
            let (q, k): (Vec<T>, Vec<T>) = (random(rng, nq + off), random(rng, nk + off));
            let pos = positions(rng, tokens);
            let inv = rope::inv_freq(hd, 500_000.0, Some(&SCOUT));
            let tables = (mode != Mode::Norm).then_some((&pos[..], &inv[..]));
            let norm_it = mode != Mode::Rope;
            let want_q = reference_qk(&f32s(&q[off..]), hq, hd, tables, norm_it);
            let want_k = reference_qk(&f32s(&k[off..]), hk, hd, tables, norm_it);
            let (mut dq, mut dk) = (dev.upload(&q).unwrap(), dev.upload(&k).unwrap());
            let dpos = upload_i64(dev, &pos);
            let dinv = ops::inv_freq_on_device(stream(dev), hd, 500_000.0, Some(&SCOUT)).unwrap();
            {
                let (mut vq, mut vk) = (dq.slice_mut(off..), dk.slice_mut(off..));
                let s = stream(dev);
                match mode {
                    Mode::Rope => ops::rope(s, &mut vq, hq, &mut vk, hk, hd, &dpos, &dinv),
                    Mode::Norm => ops::qk_norm(s, &mut vq, hq, &mut vk, hk, hd, EPS),
                    Mode::RopeNorm => {
                        ops::rope_qk_norm(s, &mut vq, hq, &mut vk, hk, hd, &dpos, &dinv, EPS)
                    }
                }
                .expect("launch");
            }
            let (gq, gk) = (
                f32s(&dev.download(&dq).unwrap()),
                f32s(&dev.download(&dk).unwrap()),
            );
            let what = format!(
                "{mode:?} {} tokens {tokens} heads {hq}/{hk} head_dim {hd} off {off}",
                T::DTYPE
            );
            let (eq, ek) = (rel_err(&gq[off..], &want_q), rel_err(&gk[off..], &want_k));
            assert!(
                eq <= tol::<T>() && ek <= tol::<T>(),
                "{what}: rel err q {eq} k {ek} (seed {seed})"
            );
            assert_eq!(
                gq[..off],
                f32s(&q[..off]),
                "{what}: touched q before its view (seed {seed})"
            );
        }
    }
}

#[test]
fn rope_matches_reference() {
    let Some(dev) = device_for_test("rope_matches_reference") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    check_qk::<f32>(&dev, &mut rng, seed, Mode::Rope);
    check_qk::<bf16>(&dev, &mut rng, seed, Mode::Rope);
    check_qk::<f16>(&dev, &mut rng, seed, Mode::Rope);
}

#[test]
fn rope_qk_norm_matches_reference() {
    let Some(dev) = device_for_test("rope_qk_norm_matches_reference") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    check_qk::<f32>(&dev, &mut rng, seed, Mode::RopeNorm);
    check_qk::<bf16>(&dev, &mut rng, seed, Mode::RopeNorm);
    check_qk::<f16>(&dev, &mut rng, seed, Mode::RopeNorm);
}

#[test]
fn qk_norm_matches_reference() {
    let Some(dev) = device_for_test("qk_norm_matches_reference") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    check_qk::<f32>(&dev, &mut rng, seed, Mode::Norm);
    check_qk::<bf16>(&dev, &mut rng, seed, Mode::Norm);
    // Odd head_dim (norm only): the one-element path.
    let (hq, hk, hd, tokens) = (3usize, 1usize, 5usize, 4usize);
    let (q, k): (Vec<f32>, Vec<f32>) = (
        random(&mut rng, tokens * hq * hd),
        random(&mut rng, tokens * hk * hd),
    );
    let (mut dq, mut dk) = (dev.upload(&q).unwrap(), dev.upload(&k).unwrap());
    ops::qk_norm(stream(&dev), &mut dq, hq, &mut dk, hk, hd, EPS).expect("qk_norm");
    let e = rel_err(
        &dev.download(&dq).unwrap(),
        &reference_qk(&q, hq, hd, None, true),
    );
    assert!(
        e <= tol::<f32>(),
        "qk_norm head_dim 5: rel err {e} (seed {seed})"
    );
}

/// The fused qkv layout: q and k parts rotated (and normed), v bit-for-bit untouched.
#[test]
fn rope_qkv_fused_layout() {
    let Some(dev) = device_for_test("rope_qkv_fused_layout") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    for norm_it in [false, true] {
        for (tokens, hq, hkv, hd) in [
            (1usize, 40usize, 8usize, 128usize),
            (9, 5, 3, 6),
            (257, 3, 1, 64),
        ] {
            let width = (hq + 2 * hkv) * hd;
            let qkv: Vec<bf16> = random(&mut rng, tokens * width);
            let pos = positions(&mut rng, tokens);
            let inv = rope::inv_freq(hd, 500_000.0, Some(&SCOUT));
            let mut dqkv = dev.upload(&qkv).unwrap();
            let (dpos, dinv) = (upload_i64(&dev, &pos), dev.upload(&inv).unwrap());
            ops::rope_qkv(
                stream(&dev),
                &mut dqkv,
                hq,
                hkv,
                hd,
                &dpos,
                &dinv,
                norm_it.then_some(EPS),
            )
            .expect("rope_qkv");
            let got = f32s(&dev.download(&dqkv).unwrap());
            let src = f32s(&qkv);
            let part = |v: &[f32], from: usize, heads: usize| -> Vec<f32> {
                v.chunks(width)
                    .flat_map(|t| t[from * hd..(from + heads) * hd].to_vec())
                    .collect()
            };
            let what = format!("norm {norm_it} tokens {tokens} heads {hq}/{hkv} head_dim {hd}");
            for (from, heads) in [(0, hq), (hq, hkv)] {
                let want = reference_qk(
                    &part(&src, from, heads),
                    heads,
                    hd,
                    Some((&pos, &inv)),
                    norm_it,
                );
                let e = rel_err(&part(&got, from, heads), &want);
                assert!(
                    e <= tol::<bf16>(),
                    "rope_qkv {what} heads from {from}: rel err {e} (seed {seed})"
                );
            }
            assert_eq!(
                part(&got, hq + hkv, hkv),
                part(&src, hq + hkv, hkv),
                "rope_qkv {what}: v changed"
            );
        }
    }
}

/// f32 at positions within 1 of 10,485,760: the angle must be the f64 one (module docs).
#[test]
fn rope_exact_at_10m_positions() {
    let Some(dev) = device_for_test("rope_exact_at_10m_positions") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    let (hq, hk, hd) = (40usize, 8usize, 128usize);
    let pos: Vec<usize> = (0..16).map(|i| 10_485_759 - i * 7).collect();
    let (q, k): (Vec<f32>, Vec<f32>) = (
        random(&mut rng, pos.len() * hq * hd),
        random(&mut rng, pos.len() * hk * hd),
    );
    let inv = rope::inv_freq(hd, 500_000.0, Some(&SCOUT));
    let (mut dq, mut dk) = (dev.upload(&q).unwrap(), dev.upload(&k).unwrap());
    let (dpos, dinv) = (upload_i64(&dev, &pos), dev.upload(&inv).unwrap());
    ops::rope(stream(&dev), &mut dq, hq, &mut dk, hk, hd, &dpos, &dinv).expect("rope");
    let e = rel_err(
        &dev.download(&dq).unwrap(),
        &reference_qk(&q, hq, hd, Some((&pos, &inv)), false),
    );
    assert!(e <= tol::<f32>(), "rope at 10M: rel err {e} (seed {seed})");
}

#[test]
fn bad_arguments_are_typed_errors() {
    let Some(dev) = device_for_test("bad_arguments_are_typed_errors") else {
        return;
    };
    let s = stream(&dev);
    let x = dev.filled(12, 1.5f32).unwrap();
    let w = dev.filled(4, 1.0f32).unwrap();
    let mut out = dev.filled(12, 0.0f32).unwrap();
    let e = ops::rms_norm(s, &x, 5, &w, EPS, &mut out).unwrap_err();
    assert!(matches!(e, Error::Shape { op: "rms_norm", .. }), "{e}");
    let e = ops::rms_norm(s, &x, 3, &w, EPS, &mut out).unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. }) && e.to_string().contains("weight"),
        "{e}"
    );
    let e = ops::rms_norm(s, &x, 4, &w, f32::NAN, &mut out).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let mut short = dev.filled(11, 0.0f32).unwrap();
    assert!(matches!(
        ops::rms_norm(s, &x, 4, &w, EPS, &mut short),
        Err(Error::Shape { .. })
    ));
    let wb = dev.filled(4, bf16::ONE).unwrap();
    let e = ops::rms_norm(s, &x, 4, &wb, EPS, &mut out).unwrap_err();
    assert!(
        matches!(e, Error::DType { .. }),
        "bf16 weight with f32 x: {e}"
    );

    let (mut q, mut k) = (
        dev.filled(2 * 3 * 4, 1.0f32).unwrap(),
        dev.filled(2 * 4, 1.0f32).unwrap(),
    );
    let pos = upload_i64(&dev, &[0, 1]);
    let inv = dev.upload(&[1.0f32, 0.5]).unwrap();
    let e = ops::rope(s, &mut q, 3, &mut k, 2, 4, &pos, &inv).unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. }) && e.to_string().contains("k has 8"),
        "{e}"
    );
    let e = ops::rope(s, &mut q, 3, &mut k, 1, 3, &pos, &inv).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { .. }) || matches!(e, Error::Shape { .. }),
        "odd head_dim: {e}"
    );
    let short_inv = dev.upload(&[1.0f32]).unwrap();
    let e = ops::rope(s, &mut q, 3, &mut k, 1, 4, &pos, &short_inv).unwrap_err();
    assert!(e.to_string().contains("inv_freq"), "{e}");
    let e = ops::qk_norm(s, &mut q, 0, &mut k, 1, 4, EPS).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let e = ops::rope_qk_norm(s, &mut q, 3, &mut k, 1, 4, &pos, &inv, -1.0).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("eps"),
        "{e}"
    );
    let e = ops::inv_freq_on_device(s, 7, 500_000.0, None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(ops::positions_on_device(s, &[]).is_err());
}

/// The C launchers reject bad params on the host, before any CUDA call: runs without a GPU. Every
/// case here must fail validation (the fake pointers are never dereferenced).
#[test]
fn launchers_validate_without_a_gpu() {
    #[cfg(not(llama4_kernels))]
    println!("skipped: CUDA kernels not built (run tools/cuda-toolchain.sh)");
    #[cfg(llama4_kernels)]
    launcher_validation();
}

#[cfg(llama4_kernels)]
fn launcher_validation() {
    use llama4_cuda::sys::{self, l4c_dtype as D, l4c_status as S};
    use std::ffi::c_void;
    let fake = 0x1000usize as *mut c_void;
    let null_stream = std::ptr::null_mut();
    let rms = sys::l4c_rmsnorm_params {
        out: fake,
        x: fake,
        weight: std::ptr::null(),
        rows: 2,
        dim: 8,
        out_row_stride: 8,
        x_row_stride: 8,
        eps: EPS,
        out_dtype: D::L4C_DTYPE_BF16,
        x_dtype: D::L4C_DTYPE_BF16,
        weight_dtype: D::L4C_DTYPE_F32,
    };
    let rms_cases: [(&str, sys::l4c_rmsnorm_params, S); 9] = [
        (
            "negative rows",
            sys::l4c_rmsnorm_params { rows: -1, ..rms },
            S::L4C_ERR_INVALID_ARGUMENT,
        ),
        (
            "dim 0",
            sys::l4c_rmsnorm_params { dim: 0, ..rms },
            S::L4C_ERR_INVALID_ARGUMENT,
        ),
        (
            "null x",
            sys::l4c_rmsnorm_params {
                x: std::ptr::null(),
                ..rms
            },
            S::L4C_ERR_INVALID_ARGUMENT,
        ),
        (
            "eps NaN",
            sys::l4c_rmsnorm_params {
                eps: f32::NAN,
                ..rms
            },
            S::L4C_ERR_INVALID_ARGUMENT,
        ),
        (
            "stride < dim",
            sys::l4c_rmsnorm_params {
                x_row_stride: 7,
                ..rms
            },
            S::L4C_ERR_INVALID_ARGUMENT,
        ),
        (
            "fp8 x",
            sys::l4c_rmsnorm_params {
                x_dtype: D::L4C_DTYPE_F8E4M3,
                ..rms
            },
            S::L4C_ERR_UNSUPPORTED_DTYPE,
        ),
        (
            "f16 weight with bf16 x",
            sys::l4c_rmsnorm_params {
                weight: fake,
                weight_dtype: D::L4C_DTYPE_F16,
                ..rms
            },
            S::L4C_ERR_UNSUPPORTED_DTYPE,
        ),
        (
            "dtype out of range",
            sys::l4c_rmsnorm_params {
                out_dtype: D(99),
                ..rms
            },
            S::L4C_ERR_UNSUPPORTED_DTYPE,
        ),
        (
            "rows 0 launches nothing",
            sys::l4c_rmsnorm_params {
                rows: 0,
                x: std::ptr::null(),
                ..rms
            },
            S::L4C_OK,
        ),
    ];
    for (what, p, want) in rms_cases {
        // SAFETY: params that fail host validation (or launch nothing); no pointer is dereferenced.
        assert_eq!(
            unsafe { sys::l4c_rmsnorm(&p, null_stream) },
            want,
            "rmsnorm: {what}"
        );
    }
    // SAFETY: a null params pointer must be rejected.
    assert_eq!(
        unsafe { sys::l4c_rmsnorm(std::ptr::null(), null_stream) },
        S::L4C_ERR_INVALID_ARGUMENT
    );

    let rp = sys::l4c_rope_params {
        q: fake,
        k: fake,
        positions: fake as *const i64,
        inv_freq: fake as *const f32,
        tokens: 3,
        q_heads: 4,
        k_heads: 2,
        head_dim: 8,
        q_token_stride: 32,
        k_token_stride: 16,
        eps: EPS,
        dtype: D::L4C_DTYPE_BF16,
    };
    type Launcher = unsafe extern "C" fn(*const sys::l4c_rope_params, sys::l4c_stream_t) -> S;
    let rope: Launcher = sys::l4c_rope;
    let norm: Launcher = sys::l4c_qk_norm;
    let fused: Launcher = sys::l4c_rope_qk_norm;
    let rope_cases: [(&str, Launcher, sys::l4c_rope_params, S); 10] = [
        (
            "odd head_dim",
            rope,
            sys::l4c_rope_params {
                head_dim: 7,
                q_token_stride: 28,
                k_token_stride: 14,
                ..rp
            },
            S::L4C_ERR_INVALID_ARGUMENT,
        ),
        (
            "null positions",
            fused,
            sys::l4c_rope_params {
                positions: std::ptr::null(),
                ..rp
            },
            S::L4C_ERR_INVALID_ARGUMENT,
        ),
        (
            "null inv_freq",
            rope,
            sys::l4c_rope_params {
                inv_freq: std::ptr::null(),
                ..rp
            },
            S::L4C_ERR_INVALID_ARGUMENT,
        ),
        (
            "null k",
            norm,
            sys::l4c_rope_params {
                k: std::ptr::null_mut(),
                ..rp
            },
            S::L4C_ERR_INVALID_ARGUMENT,
        ),
        (
            "q stride too small",
            rope,
            sys::l4c_rope_params {
                q_token_stride: 31,
                ..rp
            },
            S::L4C_ERR_INVALID_ARGUMENT,
        ),
        (
            "negative eps",
            norm,
            sys::l4c_rope_params { eps: -1.0, ..rp },
            S::L4C_ERR_INVALID_ARGUMENT,
        ),
        (
            "head_dim too large",
            fused,
            sys::l4c_rope_params {
                head_dim: 8192,
                q_token_stride: 1 << 15,
                k_token_stride: 1 << 14,
                ..rp
            },
            S::L4C_ERR_UNSUPPORTED,
        ),
        (
            "RoPE on half pairs",
            rope,
            sys::l4c_rope_params {
                q: 0x1002usize as *mut c_void,
                ..rp
            },
            S::L4C_ERR_INVALID_ARGUMENT,
        ),
        (
            "f8 dtype",
            norm,
            sys::l4c_rope_params {
                dtype: D::L4C_DTYPE_F8E5M2,
                ..rp
            },
            S::L4C_ERR_UNSUPPORTED_DTYPE,
        ),
        (
            "0 tokens launches nothing",
            fused,
            sys::l4c_rope_params {
                tokens: 0,
                q: std::ptr::null_mut(),
                ..rp
            },
            S::L4C_OK,
        ),
    ];
    for (what, f, p, want) in rope_cases {
        // SAFETY: params that fail host validation (or launch nothing); no pointer is dereferenced.
        assert_eq!(unsafe { f(&p, null_stream) }, want, "rope family: {what}");
    }
    for f in [rope, norm, fused] {
        // SAFETY: a null params pointer must be rejected.
        assert_eq!(
            unsafe { f(std::ptr::null(), null_stream) },
            S::L4C_ERR_INVALID_ARGUMENT
        );
    }
}
