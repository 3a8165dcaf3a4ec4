//! Quantized GEMMs on the GPU: `Y[m, n] = X[m, k] · Wᵀ (+ residual)`, bf16 out.
//!
//! * W4A16: int4 group-wise weights ([`crate::quant::repack::RepackedInt4`]), bf16 or f16 X.
//! * FP8: e4m3 weights with per-output-channel scales; W8A16 (bf16 X) or W8A8 (X quantized per
//!   token on the GPU, bit-exact with [`crate::quant::fp8::quantize_per_token`]).
//!
//! Every entry point validates shapes on the host, picks a [`GemmPlan`] from M and the device,
//! launches on the given stream and returns the plan. Activations are `CudaSlice<bf16>` (or
//! `CudaSlice<f16>` for an f16 int4 weight), outputs and residuals `CudaSlice<bf16>`. Without
//! compiled kernels every call returns [`Error::KernelsNotBuilt`].
//! The CPU specification is [`crate::reference::gemm`]; docs/GEMM.md has the design.

pub mod plan;

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;

pub use plan::{DeviceInfo, GemmKind, GemmPath, GemmPlan, DECODE_MAX_M};

use crate::device::{DeviceElem, DriverResultExt};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::quant::repack::{Act16, RepackedInt4};
use crate::quant::{Fp8Scaling, Fp8Weight};

/// An int4 weight resident on the GPU in the kernels' layout.
pub struct GpuInt4Weight {
    pub n: usize,
    pub k: usize,
    pub group_size: usize,
    pub act: Act16,
    pub k_slabs: usize,
    pub groups: usize,
    pub qweight: CudaSlice<u32>,
    pub scales: CudaSlice<u16>,
    pub zero_bias: Option<CudaSlice<u16>>,
}

/// An fp8 e4m3 weight `[n, k]` on the GPU with per-output-channel f32 scales (a per-tensor scale
/// is expanded to every channel on upload).
pub struct GpuFp8Weight {
    pub n: usize,
    pub k: usize,
    pub codes: CudaSlice<u8>,
    pub scales: CudaSlice<f32>,
}

/// How an fp8 GEMM treats the activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Mode {
    /// bf16 activations times fp8 weights (decode format; matches `reference::gemm`).
    W8A16,
    /// Activations quantized per token to e4m3 (matches `reference::gemm_w8a8`).
    W8A8,
}

/// Compute capability and SM count of the stream's device.
pub fn device_info(stream: &Arc<CudaStream>) -> Result<DeviceInfo> {
    use cudarc::driver::sys::CUdevice_attribute as A;
    let ctx = stream.context();
    let (major, minor) = ctx.compute_capability().op("device_info")?;
    let sms = ctx
        .attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .op("device_info")?;
    Ok(DeviceInfo {
        cc: (major as u32, minor as u32),
        sm_count: sms as u32,
    })
}

impl GpuInt4Weight {
    /// Copies a repacked weight to the device.
    pub fn upload(stream: &Arc<CudaStream>, r: &RepackedInt4) -> Result<Self> {
        let op = "GpuInt4Weight::upload";
        Ok(GpuInt4Weight {
            n: r.n,
            k: r.k,
            group_size: r.config.group_size,
            act: r.act,
            k_slabs: r.k_slabs,
            groups: r.groups,
            qweight: stream.clone_htod(&r.qweight).op(op)?,
            scales: stream.clone_htod(&r.scales).op(op)?,
            zero_bias: r
                .zero_bias
                .as_ref()
                .map(|z| stream.clone_htod(z))
                .transpose()
                .op(op)?,
        })
    }
}

impl GpuInt4Weight {
    /// The buffer lengths agree with (n, k, group size): the kernels index by these.
    fn check(&self) -> Result<()> {
        const OP: &str = "gemm_w4a16";
        use crate::quant::repack::{SLAB_K, SLAB_WORDS, TILE_ROWS};
        if self.n == 0 || self.k == 0 || !matches!(self.group_size, 32 | 64 | 128) {
            return Err(Error::invalid(
                OP,
                format!("weight [{}, {}] group {}", self.n, self.k, self.group_size),
            ));
        }
        if self.k_slabs != self.k.div_ceil(SLAB_K)
            || self.groups != (self.k_slabs * SLAB_K).div_ceil(self.group_size)
        {
            return Err(Error::invalid(
                OP,
                format!(
                    "k_slabs {} / groups {} do not match k {}",
                    self.k_slabs, self.groups, self.k
                ),
            ));
        }
        let tiles = self.n.div_ceil(TILE_ROWS);
        crate::error::check_len(
            OP,
            "qweight",
            self.qweight.len(),
            tiles * self.k_slabs * SLAB_WORDS,
        )?;
        crate::error::check_len(
            OP,
            "scales",
            self.scales.len(),
            tiles * self.groups * TILE_ROWS,
        )?;
        if let Some(z) = &self.zero_bias {
            crate::error::check_len(OP, "zero_bias", z.len(), self.scales.len())?;
        }
        Ok(())
    }
}

impl GpuFp8Weight {
    /// Copies an fp8 weight to the device.
    pub fn upload(stream: &Arc<CudaStream>, w: &Fp8Weight) -> Result<Self> {
        let op = "GpuFp8Weight::upload";
        crate::error::check_len(op, "codes", w.codes.len(), w.n * w.k)?;
        let scales = match w.scaling {
            Fp8Scaling::PerChannel => {
                crate::error::check_len(op, "scales", w.scales.len(), w.n)?;
                w.scales.clone()
            }
            Fp8Scaling::PerTensor => {
                crate::error::check_len(op, "scales", w.scales.len(), 1)?;
                vec![w.scales[0]; w.n]
            }
        };
        Ok(GpuFp8Weight {
            n: w.n,
            k: w.k,
            codes: stream.clone_htod(&w.codes).op(op)?,
            scales: stream.clone_htod(&scales).op(op)?,
        })
    }
}

/// Checks the lengths of X, out and the residual against (m, n, k).
fn check_io(
    op: &'static str,
    x_len: usize,
    m: usize,
    n: usize,
    k: usize,
    out_len: usize,
    residual: Option<&CudaSlice<bf16>>,
) -> Result<()> {
    if x_len < m * k {
        return Err(Error::shape(
            op,
            format!("x has {x_len} elements, [m={m}, k={k}] needs {}", m * k),
        ));
    }
    if out_len < m * n {
        return Err(Error::shape(
            op,
            format!("out has {out_len} elements, [m={m}, n={n}] needs {}", m * n),
        ));
    }
    if let Some(r) = residual.map(|r| r.len()) {
        if r < m * n {
            return Err(Error::shape(
                op,
                format!("residual has {r} elements, [m={m}, n={n}] needs {}", m * n),
            ));
        }
    }
    Ok(())
}

/// Reusable device scratch of the GEMMs (split-K partials, W8A8 activation codes and scales) and the
/// device's [`DeviceInfo`]; buffers grow on demand and are reused, so steady-state calls allocate
/// nothing. One per stream.
#[derive(Default)]
#[cfg_attr(not(llama4_kernels), allow(dead_code))] // the buffers are used by launches only
pub struct GemmScratch {
    dev: Option<DeviceInfo>,
    partials: Option<CudaSlice<f32>>,
    codes: Option<CudaSlice<u8>>,
    x_scales: Option<CudaSlice<f32>>,
    decoded: Option<CudaSlice<bf16>>,
}

impl GemmScratch {
    /// An empty scratch.
    pub fn new() -> Self {
        Self::default()
    }
    /// The plan of one call on the stream's device (queried once per scratch).
    fn plan(
        &mut self,
        stream: &Arc<CudaStream>,
        kind: GemmKind,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<GemmPlan> {
        GemmPlan::new(kind, m, n, k, self.device(stream)?)
    }
    fn device(&mut self, stream: &Arc<CudaStream>) -> Result<DeviceInfo> {
        match self.dev {
            Some(d) => Ok(d),
            None => {
                let d = device_info(stream)?;
                self.dev = Some(d);
                Ok(d)
            }
        }
    }
}

/// Makes `slot` hold at least `len` elements (zeroed when newly allocated).
#[cfg(llama4_kernels)]
fn grow<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    slot: &mut Option<CudaSlice<T>>,
    stream: &Arc<CudaStream>,
    len: usize,
    op: &'static str,
) -> Result<()> {
    if !matches!(slot, Some(b) if b.len() >= len) {
        *slot = Some(stream.alloc_zeros::<T>(len.max(1)).op(op)?);
    }
    Ok(())
}

/// `out[m, n] = x[m, k] · Wᵀ (+ residual)` for an int4 weight; `x` holds `w.act` bits, `out` and
/// `residual` bf16 bits, all row-major and contiguous. Returns the plan it ran.
pub fn gemm_w4a16<T: DeviceElem>(
    stream: &Arc<CudaStream>,
    x: &CudaSlice<T>,
    m: usize,
    w: &GpuInt4Weight,
    residual: Option<&CudaSlice<bf16>>,
    out: &mut CudaSlice<bf16>,
    scratch: &mut GemmScratch,
) -> Result<GemmPlan> {
    const OP: &str = "gemm_w4a16";
    check_io(OP, x.len(), m, w.n, w.k, out.len(), residual)?;
    w.check()?;
    let want = match w.act {
        Act16::BF16 => DType::BF16,
        Act16::F16 => DType::F16,
    };
    if T::DTYPE != want {
        return Err(Error::DType {
            op: OP,
            msg: format!(
                "x is {}, the weight was repacked for {want} activations",
                T::DTYPE
            ),
        });
    }
    let kind = GemmKind::W4A16 {
        act: w.act,
        group_size: w.group_size,
    };
    let plan = scratch.plan(stream, kind, m, w.n, w.k)?;
    if m == 0 {
        return Ok(plan);
    }
    launch::w4a16(stream, x, m, w, residual, out, &plan, scratch)?;
    Ok(plan)
}

/// `out[m, n] = x[m, k] · Wᵀ (+ residual)` for an fp8 weight; `x`, `out`, `residual` bf16 bits.
/// W8A8 first quantizes `x` per token on the stream. Returns the plan it ran.
// The inputs of one linear layer call; a params struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn gemm_fp8(
    stream: &Arc<CudaStream>,
    x: &CudaSlice<bf16>,
    m: usize,
    w: &GpuFp8Weight,
    mode: Fp8Mode,
    residual: Option<&CudaSlice<bf16>>,
    out: &mut CudaSlice<bf16>,
    scratch: &mut GemmScratch,
) -> Result<GemmPlan> {
    const OP: &str = "gemm_fp8";
    check_io(OP, x.len(), m, w.n, w.k, out.len(), residual)?;
    crate::error::check_len(OP, "weight codes", w.codes.len(), w.n * w.k)?;
    crate::error::check_len(OP, "weight scales", w.scales.len(), w.n)?;
    let kind = match mode {
        Fp8Mode::W8A16 => GemmKind::Fp8W8A16,
        Fp8Mode::W8A8 => GemmKind::Fp8W8A8,
    };
    let plan = scratch.plan(stream, kind, m, w.n, w.k)?;
    if m == 0 {
        return Ok(plan);
    }
    launch::fp8(stream, x, m, w, mode, residual, out, &plan, scratch)?;
    Ok(plan)
}

/// Per-token e4m3 quantization of bf16 `x[m, k]` on the GPU: (codes `[m, round_up(k, 16)]` with zero
/// padding, scales `[m]`). Bit-exact with [`crate::quant::fp8::quantize_per_token`] on the same
/// (bf16-valued) input.
pub fn fp8_quantize_per_token(
    stream: &Arc<CudaStream>,
    x: &CudaSlice<bf16>,
    m: usize,
    k: usize,
) -> Result<(CudaSlice<u8>, CudaSlice<f32>)> {
    const OP: &str = "fp8_quantize_per_token";
    if k == 0 {
        return Err(Error::shape(OP, "k = 0"));
    }
    if x.len() < m * k {
        return Err(Error::shape(
            OP,
            format!("x has {} elements, [m={m}, k={k}] needs {}", x.len(), m * k),
        ));
    }
    launch::quantize(stream, x, m, k)
}

#[cfg(not(llama4_kernels))]
mod launch {
    //! Without compiled kernels every launch is a typed error.
    use super::*;
    const WHY: &str = "built without nvcc";

    #[allow(clippy::too_many_arguments)]
    pub(super) fn w4a16<T: DeviceElem>(
        _: &Arc<CudaStream>,
        _: &CudaSlice<T>,
        _: usize,
        _: &GpuInt4Weight,
        _: Option<&CudaSlice<bf16>>,
        _: &mut CudaSlice<bf16>,
        _: &GemmPlan,
        _: &mut GemmScratch,
    ) -> Result<()> {
        Err(Error::KernelsNotBuilt(WHY))
    }
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fp8(
        _: &Arc<CudaStream>,
        _: &CudaSlice<bf16>,
        _: usize,
        _: &GpuFp8Weight,
        _: Fp8Mode,
        _: Option<&CudaSlice<bf16>>,
        _: &mut CudaSlice<bf16>,
        _: &GemmPlan,
        _: &mut GemmScratch,
    ) -> Result<()> {
        Err(Error::KernelsNotBuilt(WHY))
    }
    pub(super) fn quantize(
        _: &Arc<CudaStream>,
        _: &CudaSlice<bf16>,
        _: usize,
        _: usize,
    ) -> Result<(CudaSlice<u8>, CudaSlice<f32>)> {
        Err(Error::KernelsNotBuilt(WHY))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn bf16(
        _: &Arc<CudaStream>,
        _: &CudaSlice<bf16>,
        _: usize,
        _: &GpuBf16Weight,
        _: Option<&CudaSlice<bf16>>,
        _: &mut CudaSlice<bf16>,
        _: &GemmPlan,
        _: &mut GemmScratch,
    ) -> Result<()> {
        Err(Error::KernelsNotBuilt(WHY))
    }
}

#[cfg(llama4_kernels)]
mod launch {
    //! Fills the C ABI's params structs and calls the launchers.
    use cudarc::driver::{DevicePtr, DevicePtrMut};

    use super::*;
    use crate::ops::{launch, or_null, or_null_mut};
    use crate::sys;

    #[allow(clippy::too_many_arguments)]
    pub(super) fn w4a16<T: DeviceElem>(
        stream: &Arc<CudaStream>,
        x: &CudaSlice<T>,
        m: usize,
        w: &GpuInt4Weight,
        residual: Option<&CudaSlice<bf16>>,
        out: &mut CudaSlice<bf16>,
        plan: &GemmPlan,
        scratch: &mut GemmScratch,
    ) -> Result<()> {
        const OP: &str = "gemm_w4a16";
        let ws = workspace(&mut scratch.partials, stream, plan, OP)?;
        let (token_tiles, split_k) = decode_tiles(plan);
        let (xp, _gx) = x.device_ptr(stream);
        let (qp, _gq) = w.qweight.device_ptr(stream);
        let (sp, _gs) = w.scales.device_ptr(stream);
        let zb = w.zero_bias.as_ref().map(|z| z.device_ptr(stream));
        let rp = residual.map(|r| r.device_ptr(stream));
        let wsp = ws.map(|b| b.device_ptr_mut(stream));
        let (op_, _go) = out.device_ptr_mut(stream);
        let p = sys::l4c_gemm_w4a16_params {
            x: xp as usize as *const _,
            qweight: qp as usize as *const u32,
            scales: sp as usize as *const _,
            zero_bias: or_null(&zb),
            residual: or_null(&rp),
            out: op_ as usize as *mut _,
            workspace: or_null_mut(&wsp),
            m: m as i64,
            n: w.n as i64,
            k: w.k as i64,
            ldx: w.k as i64,
            ldo: w.n as i64,
            ldr: w.n as i64,
            k_slabs: w.k_slabs as i64,
            groups: w.groups as i64,
            group_size: w.group_size as i32,
            act_dtype: match w.act {
                Act16::BF16 => sys::l4c_dtype::L4C_DTYPE_BF16,
                Act16::F16 => sys::l4c_dtype::L4C_DTYPE_F16,
            },
            path: plan.path_code(),
            token_tiles,
            split_k,
        };
        launch(OP, stream, |st| {
            // SAFETY: every pointer comes from a live CudaSlice on this stream whose length was checked
            // against (m, n, k) by the caller (check_io) or sized by the repack (qweight, scales,
            // zero_bias) or by the plan (workspace); the guards keep them alive until after the launch
            // is enqueued, and the launcher only enqueues work on `stream`.
            unsafe { sys::l4c_gemm_w4a16(&p, st) }
        })
        // `ws` is freed on the stream after the kernels that use it (stream-ordered free).
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn fp8(
        stream: &Arc<CudaStream>,
        x: &CudaSlice<bf16>,
        m: usize,
        w: &GpuFp8Weight,
        mode: Fp8Mode,
        residual: Option<&CudaSlice<bf16>>,
        out: &mut CudaSlice<bf16>,
        plan: &GemmPlan,
        scratch: &mut GemmScratch,
    ) -> Result<()> {
        const OP: &str = "gemm_fp8";
        let decode = matches!(plan.path, GemmPath::Decode { .. });
        let (token_tiles, split_k) = decode_tiles(plan);
        let k = w.k;
        let ldc = k.div_ceil(16) * 16;
        let GemmScratch {
            partials,
            codes,
            x_scales,
            decoded,
            ..
        } = scratch;
        // W8A8: quantize X first (decoded bf16 values for the decode path, codes for prefill).
        let w8a8 = mode == Fp8Mode::W8A8;
        if w8a8 {
            grow(x_scales, stream, m, OP)?;
            if decode {
                grow(decoded, stream, m * k, OP)?;
            } else {
                grow(codes, stream, m * ldc, OP)?;
            }
            let (xp, _gx) = x.device_ptr(stream);
            let (sp, _gs) = x_scales.as_mut().expect("grown").device_ptr_mut(stream);
            let cp = if decode {
                None
            } else {
                codes.as_mut().map(|c| c.device_ptr_mut(stream))
            };
            let dp = if decode {
                decoded.as_mut().map(|d| d.device_ptr_mut(stream))
            } else {
                None
            };
            let q = sys::l4c_fp8_quantize_params {
                x: xp as usize as *const _,
                codes: or_null_mut(&cp),
                scales: sp as usize as *mut f32,
                decoded: or_null_mut(&dp),
                m: m as i64,
                k: k as i64,
                ldx: k as i64,
                ldc: ldc as i64,
            };
            launch("fp8_quantize_per_token", stream, |st| {
                // SAFETY: x holds m*k bf16 (checked), the scratch holds >= m scales and >= m*ldc codes
                // or >= m*k decoded values (grown above), all alive on this stream through the guards;
                // the launcher only enqueues work.
                unsafe { sys::l4c_fp8_quantize_per_token(&q, st) }
            })?;
        }
        let ws = workspace(partials, stream, plan, OP)?;
        let (xg, _gxg) = match (w8a8, decode) {
            (true, false) => codes.as_ref().expect("grown").device_ptr(stream),
            (true, true) => decoded.as_ref().expect("grown").device_ptr(stream),
            (false, _) => x.device_ptr(stream),
        };
        let ldx = if w8a8 && !decode { ldc } else { k };
        let xs = if w8a8 {
            x_scales.as_ref().map(|s| s.device_ptr(stream))
        } else {
            None
        };
        let (wp, _gw) = w.codes.device_ptr(stream);
        let (wsc, _gws) = w.scales.device_ptr(stream);
        let rp = residual.map(|r| r.device_ptr(stream));
        let wsp = ws.map(|b| b.device_ptr_mut(stream));
        let (op_, _go) = out.device_ptr_mut(stream);
        let p = sys::l4c_gemm_fp8_params {
            x: xg as usize as *const _,
            x_scales: or_null(&xs),
            w: wp as usize as *const u8,
            w_scales: wsc as usize as *const f32,
            residual: or_null(&rp),
            out: op_ as usize as *mut _,
            workspace: or_null_mut(&wsp),
            m: m as i64,
            n: w.n as i64,
            k: k as i64,
            ldx: ldx as i64,
            ldw: k as i64,
            ldo: w.n as i64,
            ldr: w.n as i64,
            path: plan.path_code(),
            token_tiles,
            split_k,
        };
        launch(OP, stream, |st| {
            // SAFETY: as in w4a16: live, length-checked buffers on this stream (x / out / residual by
            // check_io, the weight by gemm_fp8, the scratch grown above to what the plan needs).
            unsafe { sys::l4c_gemm_fp8(&p, st) }
        })
    }

    pub(super) fn quantize(
        stream: &Arc<CudaStream>,
        x: &CudaSlice<bf16>,
        m: usize,
        k: usize,
    ) -> Result<(CudaSlice<u8>, CudaSlice<f32>)> {
        const OP: &str = "fp8_quantize_per_token";
        let ldc = k.div_ceil(16) * 16;
        let mut codes = stream.alloc_zeros::<u8>(m * ldc).op(OP)?;
        let mut scales = stream.alloc_zeros::<f32>(m).op(OP)?;
        {
            let (xp, _gx) = x.device_ptr(stream);
            let (cp, _gc) = codes.device_ptr_mut(stream);
            let (sp, _gs) = scales.device_ptr_mut(stream);
            let q = sys::l4c_fp8_quantize_params {
                x: xp as usize as *const _,
                codes: cp as usize as *mut u8,
                scales: sp as usize as *mut f32,
                decoded: std::ptr::null_mut(),
                m: m as i64,
                k: k as i64,
                ldx: k as i64,
                ldc: ldc as i64,
            };
            launch(OP, stream, |st| {
                // SAFETY: x holds m*k bf16 (checked by the caller), codes m*ldc bytes, scales m floats.
                unsafe { sys::l4c_fp8_quantize_per_token(&q, st) }
            })?;
        }
        Ok((codes, scales))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn bf16(
        stream: &Arc<CudaStream>,
        x: &CudaSlice<bf16>,
        m: usize,
        w: &GpuBf16Weight,
        residual: Option<&CudaSlice<bf16>>,
        out: &mut CudaSlice<bf16>,
        plan: &GemmPlan,
        scratch: &mut GemmScratch,
    ) -> Result<()> {
        const OP: &str = "gemm_bf16";
        let ws = workspace(&mut scratch.partials, stream, plan, OP)?;
        let (token_tiles, split_k) = decode_tiles(plan);
        let (xp, _gx) = x.device_ptr(stream);
        let (wp, _gw) = w.data.device_ptr(stream);
        let rp = residual.map(|r| r.device_ptr(stream));
        let wsp = ws.map(|b| b.device_ptr_mut(stream));
        let (op_, _go) = out.device_ptr_mut(stream);
        let p = sys::l4c_gemm_bf16_params {
            x: xp as usize as *const _,
            w: wp as usize as *const _,
            residual: or_null(&rp),
            out: op_ as usize as *mut _,
            workspace: or_null_mut(&wsp),
            m: m as i64,
            n: w.n as i64,
            k: w.k as i64,
            ldx: w.k as i64,
            ldw: w.k as i64,
            ldo: w.n as i64,
            ldr: w.n as i64,
            path: plan.path_code(),
            token_tiles,
            split_k,
        };
        launch(OP, stream, |st| {
            // SAFETY: x, out and residual were length-checked against (m, n, k) by gemm_bf16, the
            // weight against (n, k), the workspace grown to the plan's size; all are live cudarc
            // allocations on this stream (the guards order them) and the launcher only enqueues work.
            unsafe { sys::l4c_gemm_bf16(&p, st) }
        })
    }

    /// The ABI's (token_tiles, split_k) of the plan: the decode path's, 1 x 1 otherwise.
    fn decode_tiles(plan: &GemmPlan) -> (i32, i32) {
        match plan.path {
            GemmPath::Decode {
                token_tiles,
                split_k,
            } => (token_tiles as i32, split_k as i32),
            _ => (1, 1),
        }
    }

    /// The split-K workspace the plan needs, grown in `partials`; None when it needs none.
    fn workspace<'a>(
        partials: &'a mut Option<CudaSlice<f32>>,
        stream: &Arc<CudaStream>,
        plan: &GemmPlan,
        op: &'static str,
    ) -> Result<Option<&'a mut CudaSlice<f32>>> {
        Ok(match plan.workspace_len() {
            0 => None,
            len => {
                grow(partials, stream, len, op)?;
                partials.as_mut()
            }
        })
    }
}

/// A bf16 weight `[n, k]` on the GPU (attention projections, the router, the lm_head in Meta's int4
/// recipe), row-major.
pub struct GpuBf16Weight {
    pub n: usize,
    pub k: usize,
    pub data: CudaSlice<bf16>,
}

impl GpuBf16Weight {
    /// Rounds a dense f32 weight to bf16 and copies it to the device.
    pub fn upload(stream: &Arc<CudaStream>, w: &crate::quant::DenseWeight) -> Result<Self> {
        const OP: &str = "GpuBf16Weight::upload";
        if w.n == 0 || w.k == 0 {
            return Err(Error::shape(
                OP,
                format!("weight [{}, {}] is empty", w.n, w.k),
            ));
        }
        crate::error::check_len(OP, "data", w.data.len(), w.n * w.k)?;
        let host: Vec<bf16> = w.data.iter().map(|&v| bf16::from_f32(v)).collect();
        Ok(GpuBf16Weight {
            n: w.n,
            k: w.k,
            data: stream.clone_htod(&host).op(OP)?,
        })
    }

    /// The buffer length agrees with (n, k).
    fn check(&self, op: &'static str) -> Result<()> {
        if self.n == 0 || self.k == 0 {
            return Err(Error::shape(
                op,
                format!("weight [{}, {}] is empty", self.n, self.k),
            ));
        }
        crate::error::check_len(op, "weight data", self.data.len(), self.n * self.k)
    }
}

/// `out[m, n] = x[m, k] · Wᵀ (+ residual)` for a bf16 weight (tensor cores; the dense case of the
/// grouped expert GEMM: decode GEMV for m <= 32, 128 x 128 prefill tiles above). Needs
/// `k % 16 == 0`. Returns the plan it ran.
pub fn gemm_bf16(
    stream: &Arc<CudaStream>,
    x: &CudaSlice<bf16>,
    m: usize,
    w: &GpuBf16Weight,
    residual: Option<&CudaSlice<bf16>>,
    out: &mut CudaSlice<bf16>,
    scratch: &mut GemmScratch,
) -> Result<GemmPlan> {
    const OP: &str = "gemm_bf16";
    w.check(OP)?;
    check_io(OP, x.len(), m, w.n, w.k, out.len(), residual)?;
    let plan = scratch.plan(stream, GemmKind::Bf16, m, w.n, w.k)?;
    if m == 0 {
        return Ok(plan);
    }
    launch::bf16(stream, x, m, w, residual, out, &plan, scratch)?;
    Ok(plan)
}

/// A linear layer's weight on the GPU in any format.
pub enum GpuLinear {
    Bf16(GpuBf16Weight),
    Int4(GpuInt4Weight),
    Fp8(GpuFp8Weight),
}

impl GpuLinear {
    /// Uploads a host weight in its own format (int4 is repacked for bf16 activations; a dense
    /// weight is rounded to bf16).
    pub fn upload(stream: &Arc<CudaStream>, w: &crate::quant::Weight) -> Result<Self> {
        use crate::quant::Weight;
        w.validate()?;
        Ok(match w {
            Weight::Dense(d) => GpuLinear::Bf16(GpuBf16Weight::upload(stream, d)?),
            Weight::Int4(q) => GpuLinear::Int4(GpuInt4Weight::upload(
                stream,
                &crate::quant::repack::repack_int4(q, Act16::BF16)?,
            )?),
            Weight::Fp8(f) => GpuLinear::Fp8(GpuFp8Weight::upload(stream, f)?),
        })
    }
    /// Output features.
    pub fn n(&self) -> usize {
        match self {
            GpuLinear::Bf16(w) => w.n,
            GpuLinear::Int4(w) => w.n,
            GpuLinear::Fp8(w) => w.n,
        }
    }
    /// Input features.
    pub fn k(&self) -> usize {
        match self {
            GpuLinear::Bf16(w) => w.k,
            GpuLinear::Int4(w) => w.k,
            GpuLinear::Fp8(w) => w.k,
        }
    }
    /// The fp8 mode [`Self::gemm`] uses for `m` rows on `dev`: W8A8 where the device has fp8
    /// tensor cores (sm_90) and m takes the prefill path, W8A16 otherwise.
    pub fn fp8_mode(m: usize, dev: DeviceInfo) -> Fp8Mode {
        if dev.cc == (9, 0) && m > DECODE_MAX_M {
            Fp8Mode::W8A8
        } else {
            Fp8Mode::W8A16
        }
    }
    /// `out = x · Wᵀ (+ residual)` through the format's GEMM (fp8: W8A8 where the device has fp8
    /// tensor cores and m is large, W8A16 otherwise). Returns the plan it ran.
    pub fn gemm(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<bf16>,
        m: usize,
        residual: Option<&CudaSlice<bf16>>,
        out: &mut CudaSlice<bf16>,
        scratch: &mut GemmScratch,
    ) -> Result<GemmPlan> {
        match self {
            GpuLinear::Bf16(w) => gemm_bf16(stream, x, m, w, residual, out, scratch),
            GpuLinear::Int4(w) => gemm_w4a16(stream, x, m, w, residual, out, scratch),
            GpuLinear::Fp8(w) => {
                let mode = Self::fp8_mode(m, scratch.device(stream)?);
                gemm_fp8(stream, x, m, w, mode, residual, out, scratch)
            }
        }
    }
}
