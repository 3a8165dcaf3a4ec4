//! GPU entry points of the elementwise family (kernels/elementwise.cu). Element types are the
//! buffers' own (f32, `half::f16`, `half::bf16`), mixed freely; math is f32, rounded once on store.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use super::{float_dtype, launch, to_i64};
use crate::device::{DeviceElem, DriverResultExt};
use crate::error::{check_len, Error, Result};
use crate::sys;

/// `a += b` elementwise (the residual connection); `a` and `b` have the same length.
pub fn residual_add<A: DeviceElem, B: DeviceElem>(
    stream: &Arc<CudaStream>,
    a: &mut impl DevicePtrMut<A>,
    b: &impl DevicePtr<B>,
) -> Result<()> {
    const OP: &str = "residual_add";
    check_len(OP, "b", b.len(), a.len())?;
    let (a_dtype, b_dtype) = (float_dtype::<A>(OP, "a")?, float_dtype::<B>(OP, "b")?);
    let n = to_i64(OP, "a.len()", a.len())?;
    launch(OP, stream, |s| {
        let (pa, _ga) = a.device_ptr_mut(stream);
        let (pb, _gb) = b.device_ptr(stream);
        let p = sys::l4c_residual_add_params {
            a: pa as *mut c_void,
            b: pb as *const c_void,
            n,
            a_dtype,
            b_dtype,
        };
        // SAFETY: a and b are live device buffers of n elements of the declared dtypes on the stream's
        // context, distinct by Rust's borrow rules; the guards keep cudarc's stream ordering until after
        // the launch is enqueued.
        unsafe { sys::l4c_residual_add(&p, s) }
    })
}

/// `dst = src` converted to `dst`'s dtype (round to nearest even); same length.
pub fn cast<D: DeviceElem, S: DeviceElem>(
    stream: &Arc<CudaStream>,
    src: &impl DevicePtr<S>,
    dst: &mut impl DevicePtrMut<D>,
) -> Result<()> {
    const OP: &str = "cast";
    check_len(OP, "dst", dst.len(), src.len())?;
    let (dst_dtype, src_dtype) = (float_dtype::<D>(OP, "dst")?, float_dtype::<S>(OP, "src")?);
    let n = to_i64(OP, "src.len()", src.len())?;
    launch(OP, stream, |s| {
        let (pd, _gd) = dst.device_ptr_mut(stream);
        let (ps, _gs) = src.device_ptr(stream);
        let p = sys::l4c_cast_params {
            dst: pd as *mut c_void,
            src: ps as *const c_void,
            n,
            dst_dtype,
            src_dtype,
        };
        // SAFETY: dst and src are distinct live device buffers of n elements of the declared dtypes.
        unsafe { sys::l4c_cast(&p, s) }
    })
}

/// `out = silu(gate) * up` elementwise, silu(x) = x / (1 + e^-x) in f32; all three the same length.
pub fn silu_mul<O: DeviceElem, I: DeviceElem>(
    stream: &Arc<CudaStream>,
    gate: &impl DevicePtr<I>,
    up: &impl DevicePtr<I>,
    out: &mut impl DevicePtrMut<O>,
) -> Result<()> {
    const OP: &str = "silu_mul";
    check_len(OP, "up", up.len(), gate.len())?;
    check_len(OP, "out", out.len(), gate.len())?;
    let (out_dtype, in_dtype) = (
        float_dtype::<O>(OP, "out")?,
        float_dtype::<I>(OP, "gate/up")?,
    );
    let n = to_i64(OP, "gate.len()", gate.len())?;
    launch(OP, stream, |s| {
        let (po, _go) = out.device_ptr_mut(stream);
        let (pg, _gg) = gate.device_ptr(stream);
        let (pu, _gu) = up.device_ptr(stream);
        let p = sys::l4c_silu_mul_params {
            out: po as *mut c_void,
            gate: pg as *const c_void,
            up: pu as *const c_void,
            rows: 1,
            cols: n,
            out_row_stride: n,
            gate_row_stride: n,
            up_row_stride: n,
            out_dtype,
            in_dtype,
        };
        // SAFETY: three live device buffers of n elements each; out is distinct from the inputs.
        unsafe { sys::l4c_silu_mul(&p, s) }
    })
}

/// `out[r, c] = silu(gate_up[r, c]) * gate_up[r, cols + c]`: the fused `[rows, 2 * cols]` gate/up
/// projection output (gate first, as in the checkpoints' `gate_up_proj`), `out` is `[rows, cols]`.
pub fn silu_mul_fused<O: DeviceElem, I: DeviceElem>(
    stream: &Arc<CudaStream>,
    gate_up: &impl DevicePtr<I>,
    rows: usize,
    cols: usize,
    out: &mut impl DevicePtrMut<O>,
) -> Result<()> {
    const OP: &str = "silu_mul_fused";
    let want_in = rows.checked_mul(cols).and_then(|x| x.checked_mul(2));
    let want_in = want_in
        .ok_or_else(|| Error::shape(OP, format!("rows {rows} x 2 x cols {cols} overflows")))?;
    check_len(OP, "gate_up", gate_up.len(), want_in)?;
    check_len(OP, "out", out.len(), rows * cols)?;
    let (out_dtype, in_dtype) = (
        float_dtype::<O>(OP, "out")?,
        float_dtype::<I>(OP, "gate_up")?,
    );
    let (r, c) = (to_i64(OP, "rows", rows)?, to_i64(OP, "cols", cols)?);
    let c2 = to_i64(OP, "2 * cols", 2 * cols)?;
    launch(OP, stream, |s| {
        let (po, _go) = out.device_ptr_mut(stream);
        let (pg, _gg) = gate_up.device_ptr(stream);
        let p = sys::l4c_silu_mul_params {
            out: po as *mut c_void,
            gate: pg as *const c_void,
            // The up half starts `cols` elements into each row.
            up: (pg as usize + cols * std::mem::size_of::<I>()) as *const c_void,
            rows: r,
            cols: c,
            out_row_stride: c,
            gate_row_stride: c2,
            up_row_stride: c2,
            out_dtype,
            in_dtype,
        };
        // SAFETY: gate_up holds rows * 2 * cols elements, so both strided halves stay inside it; out
        // holds rows * cols elements and is a distinct buffer.
        unsafe { sys::l4c_silu_mul(&p, s) }
    })
}

/// `out[t, :] = table[ids[t], :]`, table `[vocab, dim]` (vocab = table.len() / dim), out
/// `[ids.len(), dim]`, ids on the device. An id >= vocab cannot be checked here: the kernel writes a
/// NaN row and sets `error_flag[0] = 1` when a flag is given (zero it before, read it after a
/// synchronisation). Use [`embedding_host_ids`] when the ids are on the host.
pub fn embedding<O: DeviceElem, T: DeviceElem>(
    stream: &Arc<CudaStream>,
    table: &impl DevicePtr<T>,
    dim: usize,
    ids: &impl DevicePtr<u32>,
    out: &mut impl DevicePtrMut<O>,
    error_flag: Option<&mut CudaSlice<u32>>,
) -> Result<()> {
    const OP: &str = "embedding";
    let vocab = vocab_of(OP, table.len(), dim)?;
    let want = ids
        .len()
        .checked_mul(dim)
        .ok_or_else(|| Error::shape(OP, "ids x dim overflows"))?;
    check_len(OP, "out", out.len(), want)?;
    if error_flag.as_ref().is_some_and(|f| f.is_empty()) {
        return Err(Error::invalid(
            OP,
            "error_flag buffer is empty; it needs one u32",
        ));
    }
    let (out_dtype, table_dtype) = (float_dtype::<O>(OP, "out")?, float_dtype::<T>(OP, "table")?);
    let (num_ids, vocab, dim) = (
        to_i64(OP, "ids.len()", ids.len())?,
        to_i64(OP, "vocab", vocab)?,
        to_i64(OP, "dim", dim)?,
    );
    launch(OP, stream, |s| {
        let (po, _go) = out.device_ptr_mut(stream);
        let (pt, _gt) = table.device_ptr(stream);
        let (pi, _gi) = ids.device_ptr(stream);
        let flag = error_flag.map(|f| f.device_ptr_mut(stream));
        let p = sys::l4c_embedding_params {
            out: po as *mut c_void,
            table: pt as *const c_void,
            ids: pi as *const u32,
            error_flag: flag
                .as_ref()
                .map_or(std::ptr::null_mut(), |(pf, _)| *pf as *mut u32),
            num_ids,
            vocab,
            dim,
            out_dtype,
            table_dtype,
        };
        // SAFETY: table holds vocab * dim elements, ids num_ids u32s, out num_ids * dim elements, the
        // flag (when given) at least one u32; out and the flag are distinct from the inputs.
        unsafe { sys::l4c_embedding(&p, s) }
    })
}

/// [`embedding`] with ids on the host: every id is checked against the vocabulary first
/// ([`Error::InvalidArgument`] naming the first bad position), then the ids are uploaded.
pub fn embedding_host_ids<O: DeviceElem, T: DeviceElem>(
    stream: &Arc<CudaStream>,
    table: &impl DevicePtr<T>,
    dim: usize,
    ids: &[u32],
    out: &mut impl DevicePtrMut<O>,
) -> Result<()> {
    const OP: &str = "embedding";
    let vocab = vocab_of(OP, table.len(), dim)?;
    if let Some((pos, id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(Error::invalid(
            OP,
            format!("token id {id} at position {pos} is outside the vocabulary of {vocab}"),
        ));
    }
    check_len(OP, "out", out.len(), ids.len().saturating_mul(dim))?;
    if !crate::sys::KERNELS_BUILT {
        return Err(Error::KernelsNotBuilt(OP));
    }
    if ids.is_empty() {
        return Ok(()); // nothing to gather; cudarc cannot upload an empty slice
    }
    let dev_ids = stream.clone_htod(ids).op(OP)?;
    embedding(stream, table, dim, &dev_ids, out, None)
}

/// Rows of a `[vocab, dim]` table of `len` elements.
fn vocab_of(op: &'static str, len: usize, dim: usize) -> Result<usize> {
    if dim == 0 {
        return Err(Error::invalid(op, "dim is 0"));
    }
    if len % dim != 0 {
        return Err(Error::shape(
            op,
            format!("table has {len} elements, not a multiple of dim {dim}"),
        ));
    }
    Ok(len / dim)
}
