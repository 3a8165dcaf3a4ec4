//! GPU MoE gating (kernels/moe_gate.cu): router logits -> top-k ids, sigmoid scores, per-expert
//! counts, (padded) offsets, the stable expert-sorted slot order and its inverse; the contract of
//! [`crate::reference::moe::top_k_gating`] (equal to it exactly when `pad == 1`).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use super::{float_dtype, launch, to_i64};
use crate::device::{DeviceElem, DriverResultExt};
use crate::error::{check_len, Error, Result};
use crate::reference::moe::MAX_TOP_K;
use crate::sys;

/// Device outputs and scratch of [`moe_gate`] for one (tokens, experts, k, pad) shape.
pub struct MoeGateBuffers {
    /// `[tokens * k]` expert of each slot, best first.
    pub topk_ids: CudaSlice<u32>,
    /// `[tokens * k]` sigmoid of the chosen logit.
    pub topk_scores: CudaSlice<f32>,
    /// `[experts]` slots per expert (not padded).
    pub counts: CudaSlice<u32>,
    /// `[experts + 1]` start of each expert's group, each rounded up to a multiple of `pad`.
    pub offsets: CudaSlice<u32>,
    /// `[tokens * k + experts * (pad - 1)]` slots in expert order; padding holds `u32::MAX`, entries
    /// from `offsets[experts]` on are not written.
    pub sorted_slots: CudaSlice<u32>,
    /// `[tokens * k]` position of each slot in `sorted_slots`.
    pub inverse: CudaSlice<u32>,
    workspace: CudaSlice<u8>,
    shape: (usize, usize, usize, usize),
}

impl MoeGateBuffers {
    /// Allocates buffers for `tokens` tokens, `experts` experts, `k` choices, groups padded to `pad`.
    pub fn new(
        stream: &Arc<CudaStream>,
        tokens: usize,
        experts: usize,
        k: usize,
        pad: usize,
    ) -> Result<Self> {
        const OP: &str = "MoeGateBuffers::new";
        check_shape(OP, tokens, experts, k, pad)?;
        let ws = workspace_bytes(tokens, experts)?;
        let slots = tokens * k;
        // cudarc cannot allocate zero elements: keep at least one.
        let alloc_u32 = |n: usize| stream.alloc_zeros::<u32>(n.max(1)).op(OP);
        Ok(Self {
            topk_ids: alloc_u32(slots)?,
            topk_scores: stream.alloc_zeros::<f32>(slots.max(1)).op(OP)?,
            counts: alloc_u32(experts)?,
            offsets: alloc_u32(experts + 1)?,
            sorted_slots: alloc_u32(slots + experts * (pad - 1))?,
            inverse: alloc_u32(slots)?,
            workspace: stream.alloc_zeros::<u8>(ws.max(4)).op(OP)?,
            shape: (tokens, experts, k, pad),
        })
    }

    /// (tokens, experts, k, pad) these buffers were made for.
    pub fn shape(&self) -> (usize, usize, usize, usize) {
        self.shape
    }
}

/// Fails unless the shape is one the kernel takes (see `l4c_moe_gate` in the header).
fn check_shape(
    op: &'static str,
    tokens: usize,
    experts: usize,
    k: usize,
    pad: usize,
) -> Result<()> {
    if experts == 0 || experts > 8192 {
        return Err(Error::invalid(
            op,
            format!("{experts} experts (need 1 to 8192)"),
        ));
    }
    if k == 0 || k > MAX_TOP_K.min(experts) {
        return Err(Error::invalid(
            op,
            format!("k = {k}: need 1 <= k <= min({MAX_TOP_K}, experts = {experts})"),
        ));
    }
    if pad == 0 || pad > 1024 {
        return Err(Error::invalid(op, format!("pad = {pad} (need 1 to 1024)")));
    }
    let total = (tokens as u128) * (k as u128) + (experts as u128) * (pad as u128 - 1);
    if total >= u32::MAX as u128 {
        return Err(Error::invalid(
            op,
            format!("tokens {tokens} x k {k} + padding exceeds the u32 slot range"),
        ));
    }
    Ok(())
}

/// Bytes of scratch the kernel needs for this many tokens and experts.
#[cfg(llama4_kernels)]
fn workspace_bytes(tokens: usize, experts: usize) -> Result<usize> {
    const OP: &str = "moe_gate_workspace";
    let (t, e) = (
        to_i64(OP, "tokens", tokens)?,
        to_i64(OP, "experts", experts)?,
    );
    let mut bytes = 0i64;
    // SAFETY: plain host function; `bytes` is valid for writes.
    sys::check(OP, unsafe {
        sys::l4c_moe_gate_workspace_size(t, e, &mut bytes)
    })?;
    usize::try_from(bytes).map_err(|_| Error::invalid(OP, "negative workspace size"))
}

/// Without the kernels there is no workspace to size.
#[cfg(not(llama4_kernels))]
fn workspace_bytes(_tokens: usize, _experts: usize) -> Result<usize> {
    Err(Error::KernelsNotBuilt("moe_gate"))
}

/// Routes `logits` (`[tokens, experts]` row-major, f32 / f16 / bf16) into `out`, whose shape gives
/// tokens, experts, k and pad. Enqueued on `stream`; no host synchronisation.
pub fn moe_gate<T: DeviceElem>(
    stream: &Arc<CudaStream>,
    logits: &impl DevicePtr<T>,
    out: &mut MoeGateBuffers,
) -> Result<()> {
    const OP: &str = "moe_gate";
    let (tokens, experts, k, pad) = out.shape;
    check_shape(OP, tokens, experts, k, pad)?;
    check_len(OP, "logits", logits.len(), tokens * experts)?;
    let logits_dtype = float_dtype::<T>(OP, "logits")?;
    let i = |what: &str, n: usize| to_i64(OP, what, n);
    let (t, e, kk, pd) = (
        i("tokens", tokens)?,
        i("experts", experts)?,
        i("k", k)?,
        i("pad", pad)?,
    );
    let cap = i("sorted_slots.len()", out.sorted_slots.len())?;
    let ws_bytes = i("workspace", out.workspace.len())?;
    launch(OP, stream, |s| {
        let (pl, _gl) = logits.device_ptr(stream);
        let (pi, _gi) = out.topk_ids.device_ptr_mut(stream);
        let (ps, _gs) = out.topk_scores.device_ptr_mut(stream);
        let (pc, _gc) = out.counts.device_ptr_mut(stream);
        let (po, _go) = out.offsets.device_ptr_mut(stream);
        let (pso, _gso) = out.sorted_slots.device_ptr_mut(stream);
        let (pinv, _ginv) = out.inverse.device_ptr_mut(stream);
        let (pw, _gw) = out.workspace.device_ptr_mut(stream);
        let p = sys::l4c_moe_gate_params {
            logits: pl as *const c_void,
            topk_ids: pi as *mut u32,
            topk_scores: ps as *mut f32,
            counts: pc as *mut u32,
            offsets: po as *mut u32,
            sorted_slots: pso as *mut u32,
            inverse: pinv as *mut u32,
            workspace: pw as *mut c_void,
            workspace_bytes: ws_bytes,
            tokens: t,
            experts: e,
            k: kk,
            pad: pd,
            logits_row_stride: e,
            sorted_capacity: cap,
            logits_dtype,
        };
        // SAFETY: every buffer was allocated by MoeGateBuffers::new for this shape (lengths as the
        // header requires, workspace from l4c_moe_gate_workspace_size), they are distinct allocations,
        // logits holds tokens * experts elements of the declared dtype, and the guards keep cudarc's
        // stream ordering until the launches are enqueued.
        unsafe { sys::l4c_moe_gate(&p, s) }
    })
}
