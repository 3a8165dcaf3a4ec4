//! GPU entry points of the norm / RoPE family (kernels/norm_rope.cu): RMSNorm, the weightless qk norm,
//! interleaved RoPE and RoPE + qk norm fused, on the caller's cudarc stream and buffers. Same
//! semantics as `reference::norm` and `reference::rope`; math is f32, rounded once on store.
//!
//! RoPE takes the frequency table from the host ([`inv_freq_on_device`] uploads
//! `reference::rope::inv_freq`) and positions as i64 on the device ([`positions_on_device`]).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use super::{float_dtype, launch, to_i64};
use crate::device::{DeviceElem, DriverResultExt};
use crate::error::{check_len, Error, Result};
use crate::reference::norm::check_rms_args;
use crate::reference::rope::{check_rope_args, inv_freq, Llama3Scaling};
use crate::sys;

/// `out = x * rsqrt(mean(x^2) + eps) * weight` over rows of `dim` (`reference::norm::rms_norm`);
/// `weight` is f32 or the dtype of `x`. Rows = `x.len() / dim`; `out` has `x.len()` elements.
pub fn rms_norm<O: DeviceElem, X: DeviceElem, W: DeviceElem>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<X>,
    dim: usize,
    weight: &impl DevicePtr<W>,
    eps: f32,
    out: &mut impl DevicePtrMut<O>,
) -> Result<()> {
    const OP: &str = "rms_norm";
    let w_dtype = float_dtype::<W>(OP, "weight")?;
    if W::DTYPE != crate::DType::F32 && W::DTYPE != X::DTYPE {
        return Err(Error::DType {
            op: OP,
            msg: format!("weight is {}; expected f32 or x's {}", W::DTYPE, X::DTYPE),
        });
    }
    rms_norm_impl(stream, x, dim, Some((weight, w_dtype)), eps, out)
}

/// The weightless RMS norm (`reference::norm::rms_norm` with no weight) over rows of `dim`.
pub fn rms_norm_unweighted<O: DeviceElem, X: DeviceElem>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<X>,
    dim: usize,
    eps: f32,
    out: &mut impl DevicePtrMut<O>,
) -> Result<()> {
    rms_norm_impl::<O, X, f32, CudaSlice<f32>>(stream, x, dim, None, eps, out)
}

fn rms_norm_impl<O: DeviceElem, X: DeviceElem, W: DeviceElem, P: DevicePtr<W>>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<X>,
    dim: usize,
    weight: Option<(&P, sys::l4c_dtype)>,
    eps: f32,
    out: &mut impl DevicePtrMut<O>,
) -> Result<()> {
    const OP: &str = "rms_norm";
    let rows = check_rms_args(x.len(), dim, weight.map(|(w, _)| w.len()), eps)?;
    check_len(OP, "out", out.len(), x.len())?;
    let (out_dtype, x_dtype) = (float_dtype::<O>(OP, "out")?, float_dtype::<X>(OP, "x")?);
    let (rows, dim) = (to_i64(OP, "rows", rows)?, to_i64(OP, "dim", dim)?);
    launch(OP, stream, |s| {
        let (po, _go) = out.device_ptr_mut(stream);
        let (px, _gx) = x.device_ptr(stream);
        let w = weight.map(|(w, dt)| (w.device_ptr(stream), dt));
        let p = sys::l4c_rmsnorm_params {
            out: po as *mut c_void,
            x: px as *const c_void,
            weight: w
                .as_ref()
                .map_or(std::ptr::null(), |((pw, _), _)| *pw as *const c_void),
            rows,
            dim,
            out_row_stride: dim,
            x_row_stride: dim,
            eps,
            out_dtype,
            x_dtype,
            weight_dtype: w
                .as_ref()
                .map_or(sys::l4c_dtype::L4C_DTYPE_F32, |(_, dt)| *dt),
        };
        // SAFETY: x and out are live device buffers of rows * dim elements of the declared dtypes
        // (distinct by Rust's borrow rules), the weight (when given) holds dim elements; the guards
        // keep cudarc's stream ordering until the launch is enqueued.
        unsafe { sys::l4c_rmsnorm(&p, s) }
    })
}

/// Uploads `reference::rope::inv_freq(head_dim, theta, scaling)`: the table every RoPE launch reads,
/// computed once on the host so CPU and GPU rotate by the very same f32 frequencies.
pub fn inv_freq_on_device(
    stream: &Arc<CudaStream>,
    head_dim: usize,
    theta: f32,
    scaling: Option<&Llama3Scaling>,
) -> Result<CudaSlice<f32>> {
    const OP: &str = "inv_freq_on_device";
    if head_dim < 2 || head_dim % 2 != 0 || !(theta.is_finite() && theta > 0.0) {
        return Err(Error::invalid(
            OP,
            format!(
                "head_dim = {head_dim}, theta = {theta}: need an even head_dim >= 2 and theta > 0"
            ),
        ));
    }
    if let Some(s) = scaling {
        s.validate()?;
    }
    stream
        .clone_htod(&inv_freq(head_dim, theta, scaling))
        .op(OP)
}

/// Uploads absolute positions as the i64 the kernels read (empty input gives an error: cudarc cannot
/// allocate zero elements, and no launch needs it).
pub fn positions_on_device(
    stream: &Arc<CudaStream>,
    positions: &[usize],
) -> Result<CudaSlice<i64>> {
    const OP: &str = "positions_on_device";
    if positions.is_empty() {
        return Err(Error::invalid(OP, "no positions"));
    }
    let p = positions
        .iter()
        .map(|&p| to_i64(OP, "position", p))
        .collect::<Result<Vec<i64>>>()?;
    stream.clone_htod(&p).op(OP)
}

/// What one q/k launch does.
#[derive(Clone, Copy)]
enum QkMode {
    Rope,
    Norm(f32),
    RopeNorm(f32),
}

impl QkMode {
    fn op(self) -> &'static str {
        match self {
            QkMode::Rope => "rope",
            QkMode::Norm(_) => "qk_norm",
            QkMode::RopeNorm(_) => "rope_qk_norm",
        }
    }
    fn eps(self) -> f32 {
        match self {
            QkMode::Rope => 0.0,
            QkMode::Norm(e) | QkMode::RopeNorm(e) => e,
        }
    }
}

/// Rotates q `[tokens, q_heads, head_dim]` and k `[tokens, k_heads, head_dim]` in place
/// (`reference::rope::apply_rope` on each), tokens = `positions.len()`, `inv_freq` `[head_dim / 2]`.
#[allow(clippy::too_many_arguments)]
pub fn rope<T: DeviceElem>(
    stream: &Arc<CudaStream>,
    q: &mut impl DevicePtrMut<T>,
    q_heads: usize,
    k: &mut impl DevicePtrMut<T>,
    k_heads: usize,
    head_dim: usize,
    positions: &impl DevicePtr<i64>,
    inv_freq: &impl DevicePtr<f32>,
) -> Result<()> {
    qk_separate(
        stream,
        QkMode::Rope,
        q,
        q_heads,
        k,
        k_heads,
        head_dim,
        Some((positions, inv_freq)),
    )
}

/// [`rope`], then the weightless qk norm of every head (Llama 4 RoPE layers with use_qk_norm), in one
/// pass over q and k.
#[allow(clippy::too_many_arguments)]
pub fn rope_qk_norm<T: DeviceElem>(
    stream: &Arc<CudaStream>,
    q: &mut impl DevicePtrMut<T>,
    q_heads: usize,
    k: &mut impl DevicePtrMut<T>,
    k_heads: usize,
    head_dim: usize,
    positions: &impl DevicePtr<i64>,
    inv_freq: &impl DevicePtr<f32>,
    eps: f32,
) -> Result<()> {
    qk_separate(
        stream,
        QkMode::RopeNorm(eps),
        q,
        q_heads,
        k,
        k_heads,
        head_dim,
        Some((positions, inv_freq)),
    )
}

/// The weightless RMS norm over `head_dim` of every head of q and k, in place (no RoPE; head_dim
/// may be odd).
pub fn qk_norm<T: DeviceElem>(
    stream: &Arc<CudaStream>,
    q: &mut impl DevicePtrMut<T>,
    q_heads: usize,
    k: &mut impl DevicePtrMut<T>,
    k_heads: usize,
    head_dim: usize,
    eps: f32,
) -> Result<()> {
    qk_separate::<T, CudaSlice<i64>, CudaSlice<f32>>(
        stream,
        QkMode::Norm(eps),
        q,
        q_heads,
        k,
        k_heads,
        head_dim,
        None,
    )
}

/// RoPE, and the qk norm when `qk_norm_eps` is given, on the q and k parts of one fused projection
/// output `qkv` `[tokens, (q_heads + 2 * kv_heads) * head_dim]` (per token: q heads, k heads, v
/// heads); v is untouched. tokens = `positions.len()`.
#[allow(clippy::too_many_arguments)]
pub fn rope_qkv<T: DeviceElem>(
    stream: &Arc<CudaStream>,
    qkv: &mut impl DevicePtrMut<T>,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    positions: &impl DevicePtr<i64>,
    inv_freq: &impl DevicePtr<f32>,
    qk_norm_eps: Option<f32>,
) -> Result<()> {
    let mode = qk_norm_eps.map_or(QkMode::Rope, QkMode::RopeNorm);
    let op = mode.op();
    let tokens = positions.len();
    let width = q_heads
        .checked_add(kv_heads.saturating_mul(2))
        .ok_or_else(|| Error::shape(op, "heads overflow"))?;
    check_limits(mode, q_heads, kv_heads, head_dim)?;
    check_rope_args("qkv", qkv.len(), width, head_dim, tokens, inv_freq.len())?;
    let dtype = float_dtype::<T>(op, "qkv")?;
    let stride = width * head_dim;
    let k_offset = q_heads * head_dim * std::mem::size_of::<T>();
    let shape = QkShape::new(
        op, tokens, q_heads, kv_heads, head_dim, stride, stride, dtype,
    )?;
    launch(op, stream, |s| {
        let (pq, _gq) = qkv.device_ptr_mut(stream);
        let (pp, _gp) = positions.device_ptr(stream);
        let (pf, _gf) = inv_freq.device_ptr(stream);
        let p = shape.params(mode, pq, pq + k_offset as u64, Some((pp, pf)));
        // SAFETY: qkv holds tokens * (q_heads + 2 kv_heads) * head_dim elements, so the strided q
        // and k views lie inside it and do not overlap; positions holds tokens i64s and inv_freq
        // head_dim / 2 f32s (checked above).
        unsafe { call(mode, &p, s) }
    })
}

/// Shape of one q/k launch, already in the ABI's int64.
struct QkShape {
    tokens: i64,
    q_heads: i64,
    k_heads: i64,
    head_dim: i64,
    q_stride: i64,
    k_stride: i64,
    dtype: sys::l4c_dtype,
}

impl QkShape {
    #[allow(clippy::too_many_arguments)]
    fn new(
        op: &'static str,
        tokens: usize,
        q_heads: usize,
        k_heads: usize,
        head_dim: usize,
        q_stride: usize,
        k_stride: usize,
        dtype: sys::l4c_dtype,
    ) -> Result<Self> {
        Ok(Self {
            tokens: to_i64(op, "tokens", tokens)?,
            q_heads: to_i64(op, "q_heads", q_heads)?,
            k_heads: to_i64(op, "k_heads", k_heads)?,
            head_dim: to_i64(op, "head_dim", head_dim)?,
            q_stride: to_i64(op, "q token stride", q_stride)?,
            k_stride: to_i64(op, "k token stride", k_stride)?,
            dtype,
        })
    }

    /// The C params; `tables` are the positions and inv_freq device pointers (RoPE modes).
    fn params(
        &self,
        mode: QkMode,
        q: u64,
        k: u64,
        tables: Option<(u64, u64)>,
    ) -> sys::l4c_rope_params {
        let (pos, freq) = tables.unwrap_or((0, 0));
        sys::l4c_rope_params {
            q: q as *mut c_void,
            k: k as *mut c_void,
            positions: pos as *const i64,
            inv_freq: freq as *const f32,
            tokens: self.tokens,
            q_heads: self.q_heads,
            k_heads: self.k_heads,
            head_dim: self.head_dim,
            q_token_stride: self.q_stride,
            k_token_stride: self.k_stride,
            eps: mode.eps(),
            dtype: self.dtype,
        }
    }
}

/// The launcher of `mode`.
///
/// # Safety
/// `p` describes live device buffers as the C ABI requires.
unsafe fn call(mode: QkMode, p: &sys::l4c_rope_params, s: sys::l4c_stream_t) -> sys::l4c_status {
    // SAFETY: forwarded from the caller.
    unsafe {
        match mode {
            QkMode::Rope => sys::l4c_rope(p, s),
            QkMode::Norm(_) => sys::l4c_qk_norm(p, s),
            QkMode::RopeNorm(_) => sys::l4c_rope_qk_norm(p, s),
        }
    }
}

/// Largest head_dim the kernels take (kMaxHeadDim in kernels/norm_rope.cu).
pub const MAX_HEAD_DIM: usize = 4096;

/// The kernels' limits on heads, head_dim and eps, checked here so that they are typed errors.
fn check_limits(mode: QkMode, q_heads: usize, k_heads: usize, head_dim: usize) -> Result<()> {
    let op = mode.op();
    if q_heads == 0 || k_heads == 0 || q_heads + k_heads > 1 << 24 {
        return Err(Error::invalid(
            op,
            format!("q_heads = {q_heads}, k_heads = {k_heads}: need 1..=2^24 heads each"),
        ));
    }
    if head_dim == 0 || head_dim > MAX_HEAD_DIM {
        return Err(Error::invalid(
            op,
            format!("head_dim = {head_dim}; the kernels take 1..={MAX_HEAD_DIM}"),
        ));
    }
    let eps = mode.eps();
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid(
            op,
            format!("eps = {eps}, must be finite and >= 0"),
        ));
    }
    Ok(())
}

/// Separate q and k buffers, each packed `[tokens, heads, head_dim]`.
#[allow(clippy::too_many_arguments)]
fn qk_separate<T: DeviceElem, PP: DevicePtr<i64>, PF: DevicePtr<f32>>(
    stream: &Arc<CudaStream>,
    mode: QkMode,
    q: &mut impl DevicePtrMut<T>,
    q_heads: usize,
    k: &mut impl DevicePtrMut<T>,
    k_heads: usize,
    head_dim: usize,
    tables: Option<(&PP, &PF)>,
) -> Result<()> {
    let op = mode.op();
    check_limits(mode, q_heads, k_heads, head_dim)?;
    let tokens = match tables {
        Some((pos, freq)) => {
            check_rope_args("q", q.len(), q_heads, head_dim, pos.len(), freq.len())?;
            check_rope_args("k", k.len(), k_heads, head_dim, pos.len(), freq.len())?;
            pos.len()
        }
        None => {
            let row = q_heads * head_dim;
            if q.len() % row != 0 {
                return Err(Error::shape(
                    op,
                    format!("q has {} elements, not a multiple of q_heads {q_heads} x head_dim {head_dim}", q.len()),
                ));
            }
            let tokens = q.len() / row;
            check_len(op, "k", k.len(), tokens * k_heads * head_dim)?;
            tokens
        }
    };
    let dtype = float_dtype::<T>(op, "q/k")?;
    let shape = QkShape::new(
        op,
        tokens,
        q_heads,
        k_heads,
        head_dim,
        q_heads * head_dim,
        k_heads * head_dim,
        dtype,
    )?;
    launch(op, stream, |s| {
        let (pq, _gq) = q.device_ptr_mut(stream);
        let (pk, _gk) = k.device_ptr_mut(stream);
        let t = tables.map(|(pos, freq)| (pos.device_ptr(stream), freq.device_ptr(stream)));
        let p = shape.params(
            mode,
            pq,
            pk,
            t.as_ref().map(|((pp, _), (pf, _))| (*pp, *pf)),
        );
        // SAFETY: q and k are distinct live device buffers holding tokens x heads x head_dim elements
        // of T; positions (tokens i64s) and inv_freq (head_dim / 2 f32s) were checked above.
        unsafe { call(mode, &p, s) }
    })
}
