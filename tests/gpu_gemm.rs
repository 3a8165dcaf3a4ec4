//! GPU quantized GEMMs against the CPU reference (`reference::gemm`), on random inputs fresh per
//! case. Without a CUDA device (or without compiled kernels) every test prints one "skipped" line.
//!
//! Error metric: `max |out - ref| / max |ref|` over the checked rows. Every output is poisoned with
//! NaN (bf16 0x7fc0) before the launch and every element is checked to be written.

mod common;

use common::gpu::poisoned;
use common::{rel_err, vary_rows, Rng};
use cudarc::driver::CudaSlice;
use half::{bf16, f16};
use llama4_cuda::device::{device_for_test, Device};
use llama4_cuda::error::{Error, Result};
use llama4_cuda::ops::gemm::{
    self, Fp8Mode, GemmPath, GemmPlan, GemmScratch, GpuBf16Weight, GpuFp8Weight, GpuInt4Weight,
    GpuLinear,
};
use llama4_cuda::quant::repack::{repack_int4, unpack_int4, Act16};
use llama4_cuda::quant::{
    fp8, DenseWeight, Fp8Scaling, Fp8Weight, Int4Config, Int4Weight, ScaleDType, Weight,
};
use llama4_cuda::reference::gemm as reference;

/// bf16 operands and bf16 output: the weight rounds to bf16 once ((q - z) * s, 2^-9 relative), the
/// output rounds once (2^-9), f32 accumulation differs only in order. 1e-2 leaves a 2.5x margin over
/// the worst case of the two roundings stacked, and is far below what a wrong index produces (O(1)).
const TOL_W4A16: f64 = 1e-2;
/// fp8 x fp8 (or fp8 x bf16) products are exact in f32; only summation order and the final bf16
/// rounding (2^-9 relative) differ from the reference.
const TOL_FP8: f64 = 5e-3;
/// W8A8 prefill on sm_90 (QGMMA, `gemm_fp8_prefill`): Hopper's fp8 wgmma keeps ~13-14 mantissa bits
/// (truncated) in its accumulator (DeepSeek-V3 report: up to ~2% at k = 4096 unpromoted), so the
/// kernel sums each 128-k stage in the wgmma accumulator and adds it into f32 registers. At k = 8192:
/// 64 partials, each within ~2^-13 of its own magnitude (<= max|ref|), on top of the bf16 output
/// rounding (2^-9): worst case ~64 * 1.2e-4 * (partial / max|ref|) + 2e-3, so 1e-2. Unpromoted
/// accumulation (~1.5% at k = 8192) or a wrong row, column, k stage or scale (O(1)) fails it.
const TOL_FP8_WGMMA: f64 = 1e-2;

/// Rounds to the activation dtype; returns (bits for the GPU, the rounded values for the reference).
fn to_act(x: &[f32], act: Act16) -> (Vec<u16>, Vec<f32>) {
    let bits: Vec<u16> = x.iter().map(|&v| act.to_bits(v)).collect();
    let vals = bits.iter().map(|&b| act.from_bits(b)).collect();
    (bits, vals)
}

fn as_bf16(bits: &[u16]) -> Vec<bf16> {
    bits.iter().map(|&b| bf16::from_bits(b)).collect()
}

/// Rows of the output checked against the reference: all of them for small m, else 16 sampled
/// (always including the first and the last).
fn check_rows(m: usize, rng: &mut Rng) -> Vec<usize> {
    if m <= 64 {
        return (0..m).collect();
    }
    let mut rows: Vec<usize> = (0..14).map(|_| rng.below(m)).collect();
    rows.extend([0, m - 1]);
    rows.sort_unstable();
    rows.dedup();
    rows
}

/// Downloads `out`, checks every element was written, and compares `rows` with `want` (the
/// reference of those rows) by [`rel_err`].
fn compare(
    what: &str,
    dev: &Device,
    out: &CudaSlice<bf16>,
    n: usize,
    rows: &[usize],
    want: &[f32],
    tol: f64,
) {
    let got: Vec<f32> = dev
        .stream()
        .clone_dtoh(out)
        .expect("download")
        .iter()
        .map(|v| v.to_f32())
        .collect();
    let unwritten = got.iter().filter(|v| v.is_nan()).count();
    assert_eq!(
        unwritten, 0,
        "{what}: {unwritten} outputs not written (still NaN)"
    );
    let rel = rel_err(&gather_rows(&got, n, rows), want);
    assert!(
        rel <= tol,
        "{what}: max|out-ref|/max|ref| = {rel:.3e} > {tol:e}"
    );
}

/// One case's random data (weight values `w`, activations rounded to `act`, an optional bf16
/// residual, drawn in that order from a fresh [`Rng`]), its device buffers (x is left to the case:
/// its type depends on `act`) and a NaN-poisoned output.
struct Case<'a> {
    dev: &'a Device,
    what: String,
    rng: Rng,
    mnk: (usize, usize, usize),
    w: Vec<f32>,
    xbits: Vec<u16>,
    xvals: Vec<f32>,
    res: Option<Vec<f32>>,
    gr: Option<CudaSlice<bf16>>,
    out: CudaSlice<bf16>,
    scratch: GemmScratch,
}

impl<'a> Case<'a> {
    fn new(
        dev: &'a Device,
        label: String,
        (m, n, k): (usize, usize, usize),
        act: Act16,
        with_residual: bool,
    ) -> Self {
        let (mut rng, seed) = Rng::fresh();
        // Rows of different magnitude: a per-channel, per-token or group scale taken from the wrong
        // row must show (uniform random rows would share one amax).
        let mut w = rng.vec(n * k, 0.05);
        vary_rows(&mut w, k);
        let mut x = rng.vec(m * k, 1.0);
        vary_rows(&mut x, k);
        let (xbits, xvals) = to_act(&x, act);
        let res = with_residual.then(|| to_act(&rng.vec(m * n, 1.0), Act16::BF16));
        let gr = res
            .as_ref()
            .map(|r| dev.stream().clone_htod(&as_bf16(&r.0)).expect("residual"));
        Case {
            dev,
            what: format!("{label} seed={seed}"),
            rng,
            mnk: (m, n, k),
            w,
            xbits,
            xvals,
            res: res.map(|r| r.1),
            gr,
            out: poisoned::<bf16>(dev, m * n),
            scratch: GemmScratch::new(),
        }
    }

    /// x as bf16 on the device.
    fn x_bf16(&self) -> CudaSlice<bf16> {
        self.dev
            .stream()
            .clone_htod(&as_bf16(&self.xbits))
            .expect("x")
    }

    /// The end of every case: skips (None) without kernels, else waits for the launch, checks the
    /// sampled rows of `out` against `reference(x rows, rows)` plus the residual, returns the path.
    fn finish(
        mut self,
        run: Result<GemmPlan>,
        reference: impl FnOnce(&[f32], usize) -> Result<Vec<f32>>,
        tol: f64,
    ) -> Option<GemmPath> {
        let what = &self.what;
        let (m, n, k) = self.mnk;
        let plan = match run {
            Err(Error::KernelsNotBuilt(why)) => {
                println!("skipped: kernels not built ({why})");
                return None;
            }
            r => r.expect(what),
        };
        self.dev.stream().synchronize().expect(what);
        let rows = check_rows(m, &mut self.rng);
        let mut want =
            reference(&gather_rows(&self.xvals, k, &rows), rows.len()).expect("reference");
        if let Some(rv) = &self.res {
            for (i, &r) in rows.iter().enumerate() {
                for j in 0..n {
                    want[i * n + j] += rv[r * n + j];
                }
            }
        }
        let what = format!("{what} [{plan}]");
        compare(&what, self.dev, &self.out, n, &rows, &want, tol);
        Some(plan.path)
    }
}

fn gather_rows(x: &[f32], k: usize, rows: &[usize]) -> Vec<f32> {
    rows.iter()
        .flat_map(|&r| x[r * k..(r + 1) * k].iter().copied())
        .collect()
}

/// Runs one W4A16 case and checks it; returns the plan's path.
#[allow(clippy::too_many_arguments)]
fn w4a16_case(
    dev: &Device,
    m: usize,
    n: usize,
    k: usize,
    group_size: usize,
    symmetric: bool,
    act: Act16,
    with_residual: bool,
) -> Option<GemmPath> {
    let stream = dev.stream();
    let label = format!(
        "w4a16 m={m} n={n} k={k} g={group_size} sym={symmetric} {act:?} res={with_residual}"
    );
    let mut c = Case::new(dev, label, (m, n, k), act, with_residual);
    let config = Int4Config {
        group_size,
        symmetric,
        scale_dtype: ScaleDType::BF16,
    };
    let q = Int4Weight::quantize(&c.w, n, k, config).expect("quantize");
    let packed = repack_int4(&q, act).expect("repack");
    // The reference uses exactly the weight the kernel sees (scales in the activation dtype).
    let kernel_weight = Weight::Int4(unpack_int4(&packed).expect("unpack"));
    let gw = GpuInt4Weight::upload(stream, &packed).expect("upload");
    let run = match act {
        Act16::BF16 => {
            let gx = c.x_bf16();
            gemm::gemm_w4a16(
                stream,
                &gx,
                m,
                &gw,
                c.gr.as_ref(),
                &mut c.out,
                &mut c.scratch,
            )
        }
        Act16::F16 => {
            let xh: Vec<f16> = c.xbits.iter().map(|&b| f16::from_bits(b)).collect();
            let gx = stream.clone_htod(&xh).expect("x");
            gemm::gemm_w4a16(
                stream,
                &gx,
                m,
                &gw,
                c.gr.as_ref(),
                &mut c.out,
                &mut c.scratch,
            )
        }
    };
    c.finish(
        run,
        |x, rows| reference::gemm(x, rows, &kernel_weight),
        TOL_W4A16,
    )
}

/// The Llama 4 projections, sampled: every M class (decode token tiles 1/2/4 with and without
/// split-K, prefill) meets K = 5120, 8192 and 16384. N is kept <= 8192 so the CPU side stays small.
#[test]
fn w4a16_llama_shapes() {
    let Some(dev) = device_for_test("w4a16_llama_shapes") else {
        return;
    };
    let cases = [
        (1, 5120, 5120),
        (2, 1024, 5120),
        (8, 8192, 5120),
        (16, 1024, 16384),
        (32, 5120, 8192),
        (128, 1024, 5120),
        (512, 5120, 5120),
        (2048, 1024, 16384),
    ];
    for (m, n, k) in cases {
        if w4a16_case(&dev, m, n, k, 128, true, Act16::BF16, false).is_none() {
            return;
        }
    }
}

/// Odd shapes: m = 1, 3, 17, 33, 130; n one off a tile; k a group times an odd number, k not a
/// multiple of 64 or of 8 (decode fallback); every group size; asymmetric; f16; residual.
#[test]
fn w4a16_odd_shapes() {
    let Some(dev) = device_for_test("w4a16_odd_shapes") else {
        return;
    };
    let cases = [
        (1, 17, 384, 128, true, Act16::BF16, false),
        (3, 129, 320, 64, false, Act16::BF16, true),
        (17, 200, 96, 32, true, Act16::F16, false),
        (33, 15, 1000, 128, false, Act16::F16, true),
        (130, 143, 384 * 3, 128, true, Act16::BF16, true),
        (130, 257, 136, 32, false, Act16::BF16, false),
        (70, 100, 100, 32, true, Act16::BF16, false), // k % 8 != 0: decode at any m
        (257, 1, 640, 64, false, Act16::F16, false),
    ];
    for (m, n, k, g, sym, act, res) in cases {
        if w4a16_case(&dev, m, n, k, g, sym, act, res).is_none() {
            return;
        }
    }
}

/// Split-K partials are reduced in a fixed order: two runs give identical bits.
#[test]
fn w4a16_split_k_is_deterministic() {
    let Some(dev) = device_for_test("w4a16_split_k_is_deterministic") else {
        return;
    };
    let stream = dev.stream().clone();
    let (m, n, k) = (4, 1024, 16384);
    let (mut rng, _) = Rng::fresh();
    let w = rng.vec(n * k, 0.05);
    let q = Int4Weight::quantize(&w, n, k, Int4Config::default()).expect("quantize");
    let gw = GpuInt4Weight::upload(&stream, &repack_int4(&q, Act16::BF16).expect("repack"))
        .expect("upload");
    let gx = stream
        .clone_htod(&as_bf16(&to_act(&rng.vec(m * k, 1.0), Act16::BF16).0))
        .expect("x");
    let mut runs = Vec::new();
    let mut scratch = GemmScratch::new();
    for _ in 0..2 {
        let mut out = poisoned::<bf16>(&dev, m * n);
        match gemm::gemm_w4a16(&stream, &gx, m, &gw, None, &mut out, &mut scratch) {
            Err(Error::KernelsNotBuilt(_)) => return println!("skipped: kernels not built"),
            r => assert!(
                matches!(r.expect("gemm").path, GemmPath::Decode { split_k, .. } if split_k > 1)
            ),
        }
        runs.push(stream.clone_dtoh(&out).expect("download"));
    }
    assert_eq!(runs[0], runs[1]);
}

/// The GPU quantizer is bit-exact with `quant::fp8::quantize_per_token` (codes and scales), on
/// rows with mixed magnitudes, a row of zeros and k not a multiple of 16 (zero padding).
#[test]
fn fp8_quantize_bit_exact() {
    let Some(dev) = device_for_test("fp8_quantize_bit_exact") else {
        return;
    };
    let stream = dev.stream().clone();
    let (mut rng, _) = Rng::fresh();
    for (m, k) in [(1, 5120), (7, 100), (33, 4096)] {
        let mut x = rng.vec(m * k, 1.0);
        for (i, v) in x.iter_mut().enumerate() {
            *v *= [1e-3, 1.0, 300.0][(i / k) % 3];
        }
        if m > 2 {
            x[k..2 * k].iter_mut().for_each(|v| *v = 0.0);
        }
        let (bits, vals) = to_act(&x, Act16::BF16);
        let gx = stream.clone_htod(&as_bf16(&bits)).expect("x");
        let (codes, scales) = match gemm::fp8_quantize_per_token(&stream, &gx, m, k) {
            Err(Error::KernelsNotBuilt(_)) => return println!("skipped: kernels not built"),
            r => r.expect("quantize"),
        };
        let (want_codes, want_scales) = fp8::quantize_per_token(&vals, m, k).expect("reference");
        let codes = stream.clone_dtoh(&codes).expect("codes");
        let scales = stream.clone_dtoh(&scales).expect("scales");
        let ldc = k.div_ceil(16) * 16;
        for r in 0..m {
            assert_eq!(
                scales[r].to_bits(),
                want_scales[r].to_bits(),
                "m={m} k={k} row {r} scale"
            );
            assert_eq!(
                &codes[r * ldc..r * ldc + k],
                &want_codes[r * k..(r + 1) * k],
                "m={m} k={k} row {r}"
            );
            assert!(
                codes[r * ldc + k..(r + 1) * ldc].iter().all(|&c| c == 0),
                "padding not zeroed"
            );
        }
    }
}

fn fp8_case(
    dev: &Device,
    m: usize,
    n: usize,
    k: usize,
    mode: Fp8Mode,
    with_residual: bool,
) -> Option<GemmPath> {
    let label = format!("fp8 {mode:?} m={m} n={n} k={k} res={with_residual}");
    // The plan takes QGMMA (fp8 accumulator, TOL_FP8_WGMMA) for W8A8 above DECODE_MAX_M on sm_90.
    let qgmma = mode == Fp8Mode::W8A8
        && m > gemm::DECODE_MAX_M
        && gemm::device_info(dev.stream()).is_ok_and(|d| d.cc == (9, 0));
    let tol = if qgmma { TOL_FP8_WGMMA } else { TOL_FP8 };
    let mut c = Case::new(dev, label, (m, n, k), Act16::BF16, with_residual);
    let q = Fp8Weight::quantize(&c.w, n, k, Fp8Scaling::PerChannel).expect("quantize");
    let gw = GpuFp8Weight::upload(dev.stream(), &q).expect("upload");
    let gx = c.x_bf16();
    let run = gemm::gemm_fp8(
        dev.stream(),
        &gx,
        m,
        &gw,
        mode,
        c.gr.as_ref(),
        &mut c.out,
        &mut c.scratch,
    );
    c.finish(
        run,
        |x, rows| match mode {
            Fp8Mode::W8A16 => reference::gemm(x, rows, &Weight::Fp8(q.clone())),
            Fp8Mode::W8A8 => reference::gemm_w8a8(x, rows, &q),
        },
        tol,
    )
}

/// W8A8 on decode (quantize + GEMV) and prefill (wgmma / mma.sync) shapes, W8A16 decode, odd shapes.
#[test]
fn fp8_shapes() {
    let Some(dev) = device_for_test("fp8_shapes") else {
        return;
    };
    let cases = [
        (1, 5120, 5120, Fp8Mode::W8A8, false),
        (4, 1024, 16384, Fp8Mode::W8A8, true),
        (32, 8192, 5120, Fp8Mode::W8A8, false),
        (128, 1024, 5120, Fp8Mode::W8A8, true),
        (2048, 5120, 8192, Fp8Mode::W8A8, false),
        (1, 5120, 5120, Fp8Mode::W8A16, false),
        (16, 1024, 8192, Fp8Mode::W8A16, true),
        (3, 129, 16 * 33, Fp8Mode::W8A8, false),
        (17, 200, 16 * 5, Fp8Mode::W8A16, false),
        (130, 143, 16 * 71, Fp8Mode::W8A8, true),
        (33, 17, 48, Fp8Mode::W8A16, true),
    ];
    for (m, n, k, mode, res) in cases {
        if fp8_case(&dev, m, n, k, mode, res).is_none() {
            return;
        }
    }
}

/// bf16 x bf16 products are exact in f32; the weight is bf16-rounded on both sides, so only the
/// summation order and the final bf16 rounding (2^-9 relative) differ from the reference.
const TOL_BF16: f64 = 5e-3;

/// One gemm_bf16 case (through `GpuLinear` half of the time, which must pick the same kernel).
fn bf16_case(dev: &Device, m: usize, n: usize, k: usize, with_residual: bool) -> Option<GemmPath> {
    let stream = dev.stream();
    let label = format!("bf16 m={m} n={n} k={k} res={with_residual}");
    let mut c = Case::new(dev, label, (m, n, k), Act16::BF16, with_residual);
    let (_, wvals) = to_act(&c.w, Act16::BF16);
    let dense = DenseWeight { n, k, data: wvals };
    let gx = c.x_bf16();
    let run = if c.rng.below(2) == 0 {
        let gw = GpuBf16Weight::upload(stream, &dense).expect("upload");
        gemm::gemm_bf16(
            stream,
            &gx,
            m,
            &gw,
            c.gr.as_ref(),
            &mut c.out,
            &mut c.scratch,
        )
    } else {
        let gl = GpuLinear::upload(stream, &Weight::Dense(dense.clone())).expect("upload");
        assert_eq!((gl.n(), gl.k()), (n, k));
        gl.gemm(stream, &gx, m, c.gr.as_ref(), &mut c.out, &mut c.scratch)
    };
    c.finish(
        run,
        |x, rows| reference::gemm(x, rows, &Weight::Dense(dense)),
        TOL_BF16,
    )
}

/// gemm_bf16: decode (token tiles 1/2/4, split-K) and prefill (wgmma / mma.sync) on Llama shapes
/// (the router 16/128 x 5120 included) and odd ones (n not a multiple of 16 or 128, m = 1/3/17/33/130).
#[test]
fn bf16_shapes() {
    let Some(dev) = device_for_test("bf16_shapes") else {
        return;
    };
    let cases = [
        (1, 5120, 5120, false),
        (1, 16, 5120, false),
        (7, 128, 5120, false),
        (16, 1024, 8192, true),
        (32, 5120, 16384, false),
        (130, 1024, 5120, true),
        (2048, 5120, 8192, false),
        (3, 129, 16 * 33, true),
        (17, 200, 16 * 5, false),
        (33, 17, 48, true),
        (257, 143, 16 * 71, false),
    ];
    for (m, n, k, res) in cases {
        let Some(path) = bf16_case(&dev, m, n, k, res) else {
            return;
        };
        assert_eq!(matches!(path, GemmPath::Decode { .. }), m <= 32, "m={m}");
    }
}

/// Bad input is a typed error before anything is launched.
#[test]
fn rejects_bad_shapes() {
    let Some(dev) = device_for_test("rejects_bad_shapes") else {
        return;
    };
    let stream = dev.stream().clone();
    let w = Int4Weight::quantize(
        &Rng::fresh().0.vec(32 * 128, 0.1),
        32,
        128,
        Int4Config::default(),
    )
    .expect("quantize");
    let gw = GpuInt4Weight::upload(&stream, &repack_int4(&w, Act16::BF16).expect("repack"))
        .expect("upload");
    let gx = stream.clone_htod(&vec![bf16::ONE; 2 * 128]).expect("x");
    let mut out = poisoned::<bf16>(&dev, 2 * 32);
    let mut scratch = GemmScratch::new();
    // x too short for m = 3.
    assert!(matches!(
        gemm::gemm_w4a16(&stream, &gx, 3, &gw, None, &mut out, &mut scratch),
        Err(Error::Shape { .. })
    ));
    let fw = Fp8Weight::quantize(
        &Rng::fresh().0.vec(32 * 40, 0.1),
        32,
        40,
        Fp8Scaling::PerChannel,
    )
    .expect("quantize");
    let gfw = GpuFp8Weight::upload(&stream, &fw).expect("upload");
    let gx = stream.clone_htod(&vec![bf16::ONE; 2 * 40]).expect("x");
    // k = 40 is not a multiple of 16.
    assert!(matches!(
        gemm::gemm_fp8(
            &stream,
            &gx,
            2,
            &gfw,
            Fp8Mode::W8A8,
            None,
            &mut out,
            &mut scratch
        ),
        Err(Error::InvalidArgument { .. }) | Err(Error::KernelsNotBuilt(_))
    ));
    // bf16: k = 40 is not a multiple of 16; x too short.
    let bw = GpuBf16Weight::upload(
        &stream,
        &DenseWeight {
            n: 32,
            k: 40,
            data: Rng::fresh().0.vec(32 * 40, 0.1),
        },
    )
    .expect("upload");
    assert!(matches!(
        gemm::gemm_bf16(&stream, &gx, 2, &bw, None, &mut out, &mut scratch),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        gemm::gemm_bf16(&stream, &gx, 3, &bw, None, &mut out, &mut scratch),
        Err(Error::Shape { .. })
    ));
}
