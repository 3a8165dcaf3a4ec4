//! The grouped expert GEMM through the C ABI with the path chosen by hand (`l4c_moe_grouped_gemm`,
//! path = PREFILL), which `moe_block` cannot do (its plan picks the path from the shape): fp8 experts
//! (W8A16) with ONE token among E = 128 (127 empty experts, one 128-row tile, 127 rows of padding),
//! 5 tokens with k = 2 over 128 experts, and 300 tokens with k = 2 over 8; gate_up with SwiGLU and
//! the router score, then down on the GPU's own h, against reference::moe::{grouped_gemm_swiglu,
//! grouped_gemm_sorted}. Padding positions must stay unwritten (NaN). GPU-only: prints a skip line
//! without a device or kernels.
// Position-indexed loops mirror the padded layout.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{rel_err, vary_rows, Rng};

/// The GPU's only roundings against the f32 reference are the bf16 store of each output (2^-9
/// relative to that element, so <= 2^-9 of max|ref|) and the f32 summation order (~1e-6); the fp8
/// codes and scales and the bf16 x are the same values on both sides. 8e-3 leaves 2x margin over a
/// half-ulp bf16 store; a wrong row, expert, scale or k slab is O(1).
const TOL: f64 = 8e-3;

#[test]
fn fp8_prefill_path_forced() {
    let Some(dev) = llama4_cuda::device::device_for_test("fp8_prefill_path_forced") else {
        return;
    };
    #[cfg(not(llama4_kernels))]
    drop(dev);
    #[cfg(llama4_kernels)]
    for (tokens, experts, k, hidden, inter) in [
        (1, 128, 1, 208, 144),
        (5, 128, 2, 128, 80),
        (300, 8, 2, 208, 144),
    ] {
        forced::run(&dev, tokens, experts, k, hidden, inter);
    }
}

#[cfg(llama4_kernels)]
mod forced {
    use std::ffi::c_void;
    use std::sync::Arc;

    use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
    use half::bf16;
    use llama4_cuda::device::Device;
    use llama4_cuda::quant::{Fp8Scaling, Fp8Weight, Weight};
    use llama4_cuda::reference::moe::{grouped_gemm_sorted, grouped_gemm_swiglu, Routing};
    use llama4_cuda::sys;

    use super::{rel_err, vary_rows, Rng, TOL};

    const PAD: usize = 128;

    fn fp8(rng: &mut Rng, n: usize, k: usize) -> Fp8Weight {
        let mut w = rng.vec(n * k, 1.0 / (k as f32).sqrt());
        vary_rows(&mut w, k); // per-channel scales that differ: the wrong row's scale must show
        Fp8Weight::quantize(&w, n, k, Fp8Scaling::PerChannel).expect("fp8 quantize")
    }

    /// Device copies of `ws` and the ABI's pointer tables over them (the copies must outlive the
    /// launches: they are returned).
    struct Tables {
        _codes: Vec<CudaSlice<u8>>,
        _scales: Vec<CudaSlice<f32>>,
        data: CudaSlice<u64>,
        scale_ptrs: CudaSlice<u64>,
    }
    fn tables(s: &Arc<CudaStream>, ws: &[Weight]) -> Tables {
        let (mut codes, mut scales, mut dp, mut sp) = (vec![], vec![], vec![], vec![]);
        for w in ws {
            let Weight::Fp8(f) = w else {
                unreachable!("fp8 experts only")
            };
            let c = s.clone_htod(&f.codes).expect("codes");
            let sc = s.clone_htod(&f.scales).expect("scales");
            dp.push(c.device_ptr(s).0);
            sp.push(sc.device_ptr(s).0);
            codes.push(c);
            scales.push(sc);
        }
        Tables {
            data: s.clone_htod(&dp).expect("table"),
            scale_ptrs: s.clone_htod(&sp).expect("table"),
            _codes: codes,
            _scales: scales,
        }
    }
    fn abi(s: &Arc<CudaStream>, t: &Tables) -> sys::l4c_moe_expert_weights {
        sys::l4c_moe_expert_weights {
            data: t.data.device_ptr(s).0 as usize as *const *const c_void,
            scales: t.scale_ptrs.device_ptr(s).0 as usize as *const *const c_void,
            zero_bias: std::ptr::null(),
        }
    }

    pub fn run(dev: &Device, tokens: usize, experts: usize, k: usize, hidden: usize, inter: usize) {
        let s = dev.stream().clone();
        let (mut rng, seed) = Rng::fresh();
        let what =
            format!("tokens={tokens} E={experts} k={k} hidden={hidden} inter={inter} seed={seed}");
        // Routing: k distinct random experts per token, scores in [0.1, 1).
        let mut ids = Vec::with_capacity(tokens * k);
        for _ in 0..tokens {
            let mut mine: Vec<u32> = Vec::new();
            while mine.len() < k {
                let e = rng.below(experts) as u32;
                if !mine.contains(&e) {
                    mine.push(e);
                }
            }
            ids.extend(mine);
        }
        let scores: Vec<f32> = (0..tokens * k)
            .map(|_| rng.signed(0.1, 1.0).abs())
            .collect();
        let r = Routing::from_topk(tokens, k, experts, ids, &scores).expect("routing");
        // The padded layout moe_gate writes for pad = 128, and padded position -> unpadded position.
        let rows = tokens * k + experts * (PAD - 1);
        let mut off = vec![0u32; experts + 1];
        for e in 0..experts {
            off[e + 1] = off[e] + r.counts[e].div_ceil(PAD as u32) * PAD as u32;
        }
        let mut sorted = vec![u32::MAX; rows];
        let mut unpad = vec![None; rows];
        for e in 0..experts {
            for i in 0..r.counts[e] as usize {
                let (q, p) = (off[e] as usize + i, r.offsets[e] as usize + i);
                sorted[q] = r.sorted_slots[p];
                unpad[q] = Some(p);
            }
        }

        let x: Vec<f32> = rng
            .vec(tokens * hidden, 1.0)
            .iter()
            .map(|&v| bf16::from_f32(v).to_f32())
            .collect();
        let gate: Vec<Weight> = (0..experts)
            .map(|_| Weight::Fp8(fp8(&mut rng, inter, hidden)))
            .collect();
        let up: Vec<Weight> = (0..experts)
            .map(|_| Weight::Fp8(fp8(&mut rng, inter, hidden)))
            .collect();
        let down: Vec<Weight> = (0..experts)
            .map(|_| Weight::Fp8(fp8(&mut rng, hidden, inter)))
            .collect();
        let want_h = grouped_gemm_swiglu(&x, hidden, &r, &gate, &up, true).expect("reference h");

        let (tg, tu, td) = (tables(&s, &gate), tables(&s, &up), tables(&s, &down));
        let gx = s
            .clone_htod(&x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>())
            .expect("x");
        let g_sorted = s.clone_htod(&sorted).expect("sorted");
        let g_counts = s.clone_htod(&r.counts).expect("counts");
        let g_off = s.clone_htod(&off).expect("offsets");
        let g_scores = s.clone_htod(&scores).expect("scores");
        let poison = bf16::from_f32(f32::NAN);
        let mut h: CudaSlice<bf16> = s.clone_htod(&vec![poison; rows * inter]).expect("h");
        let mut y: CudaSlice<bf16> = s.clone_htod(&vec![poison; rows * hidden]).expect("y");

        let launch = |p: &sys::l4c_moe_grouped_gemm_params| {
            // SAFETY: every pointer in p is a live device allocation of this test sized for the
            // params (x: tokens or rows x k, out: rows x n, routing of `rows` positions, pointer
            // tables of `experts` fp8 weights [n, k] with n scales); the launcher only enqueues work.
            let st = unsafe { sys::l4c_moe_grouped_gemm(p, s.cu_stream().cast()) };
            sys::check("l4c_moe_grouped_gemm", st).unwrap_or_else(|e| panic!("{what}: {e}"));
        };
        let params = |x: *const c_void,
                      gather: bool,
                      w: sys::l4c_moe_expert_weights,
                      w2: Option<sys::l4c_moe_expert_weights>,
                      out: *mut c_void,
                      n: usize,
                      kk: usize| sys::l4c_moe_grouped_gemm_params {
            x,
            sorted_slots: g_sorted.device_ptr(&s).0 as usize as *const u32,
            scores: if gather {
                g_scores.device_ptr(&s).0 as usize as *const f32
            } else {
                std::ptr::null()
            },
            counts: g_counts.device_ptr(&s).0 as usize as *const u32,
            offsets: g_off.device_ptr(&s).0 as usize as *const u32,
            w,
            w2: w2.unwrap_or(w),
            out,
            workspace: std::ptr::null_mut(),
            rows: rows as i64,
            tokens: tokens as i64,
            topk: k as i64,
            experts: experts as i64,
            pad: PAD as i64,
            n: n as i64,
            k: kk as i64,
            ldx: kk as i64,
            ldo: n as i64,
            k_slabs: 0,
            groups: 0,
            group_size: 0,
            gather: gather as i32,
            weight_format: sys::L4C_MOE_WEIGHT_FP8 as i32,
            epilogue: (if w2.is_some() {
                sys::L4C_MOE_EPILOGUE_SWIGLU
            } else {
                sys::L4C_MOE_EPILOGUE_STORE
            }) as i32,
            path: sys::L4C_GEMM_PATH_PREFILL as i32,
            token_tiles: 1,
            split_k: 1,
            expert_begin: 0,
            expert_end: 0, // 0 / 0: every expert
        };
        let hp = h.device_ptr_mut(&s).0 as usize as *mut c_void;
        let xp = gx.device_ptr(&s).0 as usize as *const c_void;
        launch(&params(
            xp,
            true,
            abi(&s, &tg),
            Some(abi(&s, &tu)),
            hp,
            inter,
            hidden,
        ));
        let yp = y.device_ptr_mut(&s).0 as usize as *mut c_void;
        launch(&params(
            hp as *const c_void,
            false,
            abi(&s, &td),
            None,
            yp,
            hidden,
            inter,
        ));
        s.synchronize().expect("sync");

        let got_h: Vec<f32> = s
            .clone_dtoh(&h)
            .expect("h")
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let got_y: Vec<f32> = s
            .clone_dtoh(&y)
            .expect("y")
            .iter()
            .map(|v| v.to_f32())
            .collect();
        // Unpad: real positions in the reference's order; padding rows must be untouched.
        let mut h_real = vec![f32::NAN; tokens * k * inter];
        let mut y_real = vec![f32::NAN; tokens * k * hidden];
        for q in 0..rows {
            match unpad[q] {
                Some(p) => {
                    h_real[p * inter..(p + 1) * inter]
                        .copy_from_slice(&got_h[q * inter..(q + 1) * inter]);
                    y_real[p * hidden..(p + 1) * hidden]
                        .copy_from_slice(&got_y[q * hidden..(q + 1) * hidden]);
                }
                None => {
                    let untouched = got_h[q * inter..(q + 1) * inter].iter().all(|v| v.is_nan())
                        && got_y[q * hidden..(q + 1) * hidden]
                            .iter()
                            .all(|v| v.is_nan());
                    assert!(untouched, "{what}: padding position {q} was written");
                }
            }
        }
        let e = rel_err(&h_real, &want_h);
        assert!(
            e <= TOL,
            "{what}: gate_up max|h-ref|/max|ref| = {e:.3e} > {TOL:e}"
        );
        // down on the GPU's h (isolates the down GEMM from the bf16 rounding of h).
        let want_y = grouped_gemm_sorted(&h_real, inter, &r, &down).expect("reference y");
        let e = rel_err(&y_real, &want_y);
        assert!(
            e <= TOL,
            "{what}: down max|y-ref|/max|ref| = {e:.3e} > {TOL:e}"
        );
    }
}
