//! Split-KV flash decoding over the paged KV cache (kernels/attn_decode.cu).
//!
//! The CPU specification is [`crate::reference::attention::attention`].
//! Design and the split policy: docs/ATTENTION-DECODE.md.
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;

use super::{launch, to_i64};
use crate::device::DriverResultExt;
use crate::error::{Error, Result};
use crate::kv_cache::gpu::GpuKvLayer;
use crate::kv_cache::Retention;
use crate::reference::attention::{AttnParams, MaskKind};
use crate::sys;

const OP: &str = "attn_decode";

/// head_dim the decode kernel is built for.
pub const HEAD_DIM: usize = 128;
/// Most query heads per KV head (the tensor-core N of the kernel).
pub const MAX_GROUP: usize = 8;
/// Keys per warp step of the kernel; a split covers a multiple of it.
pub const KEY_TILE: usize = 16;
/// Thread blocks the split policy aims for per SM (4 resident blocks of 4 warps: one full wave).
pub const BLOCKS_PER_SM: usize = 4;
/// Fewest keys a split is given (4 warps x 4 tiles): shorter splits cost more in merging than they save.
pub const MIN_SPLIT_KEYS: usize = 256;

/// Reusable device scratch of the split-KV partials (grows on demand; one per stream).
#[derive(Default)]
pub struct AttnScratch {
    workspace: Option<CudaSlice<u8>>,
    sms: Option<usize>,
}

impl AttnScratch {
    /// Sizes the scratch for decoding `kv` with `p` now, so that a later call (e.g. inside CUDA-graph
    /// capture, where allocating is not allowed) does not allocate.
    pub fn reserve(
        &mut self,
        stream: &Arc<CudaStream>,
        kv: &GpuKvLayer,
        p: &AttnParams,
    ) -> Result<()> {
        let splits = self.splits(stream, kv, p)?;
        self.workspace(stream, kv.batch(), p.heads, splits)
            .map(|_| ())
    }

    fn splits(
        &mut self,
        stream: &Arc<CudaStream>,
        kv: &GpuKvLayer,
        p: &AttnParams,
    ) -> Result<usize> {
        let sms = match self.sms {
            Some(n) => n,
            None => {
                let n = stream
                    .context()
                    .attribute(
                        cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                    )
                    .op(OP)?;
                let n = usize::try_from(n).unwrap_or(1).max(1);
                self.sms = Some(n);
                n
            }
        };
        Ok(decode_splits(
            kv.batch(),
            p.kv_heads,
            max_visible(p.mask, kv.max_tokens()),
            sms,
        ))
    }

    /// The workspace for this shape, grown when too small; None when one split needs none.
    fn workspace(
        &mut self,
        stream: &Arc<CudaStream>,
        batch: usize,
        heads: usize,
        splits: usize,
    ) -> Result<Option<&mut CudaSlice<u8>>> {
        let bytes = workspace_bytes(batch, heads, splits)?;
        if bytes == 0 {
            return Ok(None);
        }
        if self.workspace.as_ref().map_or(true, |w| w.len() < bytes) {
            self.workspace = None;
            let w =
                stream.alloc_zeros::<u8>(bytes).map_err(|e| {
                    match crate::device::driver_error(OP, e) {
                        Error::OutOfMemory { op, .. } => Error::OutOfMemory {
                            op,
                            needed: bytes,
                            free: stream.context().mem_get_info().map_or(0, |(f, _)| f),
                        },
                        other => other,
                    }
                })?;
            self.workspace = Some(w);
        }
        Ok(self.workspace.as_mut())
    }
}

/// Keys a query can see at most, given the cache's position bound.
pub fn max_visible(mask: MaskKind, max_tokens: usize) -> usize {
    match mask {
        MaskKind::Causal => max_tokens,
        MaskKind::ChunkedLocal { chunk } => chunk.max(1).min(max_tokens),
    }
}

/// Splits per (sequence, KV head), from a host upper bound on the visible keys (never the device
/// lengths, so the value is fixed for a cache and a decode step can be graph-captured): enough thread
/// blocks for one full wave of `sms` SMs, but no split under [`MIN_SPLIT_KEYS`] keys, at most 65535.
/// The kernel divides each sequence's actual keys evenly among the splits; empty ones exit.
pub fn decode_splits(batch: usize, kv_heads: usize, max_visible: usize, sms: usize) -> usize {
    let base = batch.max(1) * kv_heads.max(1);
    let fill = (BLOCKS_PER_SM * sms.max(1)).div_ceil(base);
    let most = max_visible.div_ceil(MIN_SPLIT_KEYS).max(1);
    fill.min(most).clamp(1, 65535)
}

/// Bytes of scratch for `splits` splits: `batch * heads * splits * (128 + 2) * 4`, 0 for one split
/// (the formula of `l4c_attn_decode_workspace_size`).
pub fn workspace_bytes(batch: usize, heads: usize, splits: usize) -> Result<usize> {
    if splits <= 1 {
        return Ok(0);
    }
    batch
        .checked_mul(heads)
        .and_then(|x| x.checked_mul(splits))
        .and_then(|x| x.checked_mul((HEAD_DIM + 2) * 4))
        .ok_or_else(|| Error::invalid(OP, "workspace size overflows"))
}

/// Checks everything [`attn_decode`] can check on the host; returns the attention chunk for the ABI
/// (0 = causal).
pub fn validate(kv: &GpuKvLayer, p: &AttnParams, q_len: usize, out_len: usize) -> Result<i64> {
    p.check(OP, &kv.layout())?;
    if p.head_dim != HEAD_DIM {
        return Err(Error::invalid(
            OP,
            format!(
                "head_dim {} is not supported: the decode kernel is built for {HEAD_DIM}",
                p.head_dim
            ),
        ));
    }
    if p.heads / p.kv_heads > MAX_GROUP {
        return Err(Error::invalid(
            OP,
            format!(
                "{} query heads per KV head: the decode kernel takes at most {MAX_GROUP}",
                p.heads / p.kv_heads
            ),
        ));
    }
    let chunk = match p.mask {
        MaskKind::Causal => 0,
        MaskKind::ChunkedLocal { chunk } => chunk, // > 0: checked above
    };
    if let Retention::CurrentAttentionChunk { chunk: kept } = kv.retention() {
        // A ring keeps the attention chunk of the latest append: the mask must not look further back.
        if chunk == 0 || kept % chunk != 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "the cache keeps only attention chunks of {kept} tokens (a ring), but the mask is \
                     {:?}: use ChunkedLocal with a chunk dividing {kept}",
                    p.mask
                ),
            ));
        }
    }
    let row = kv.batch() * p.heads * p.head_dim;
    for (name, n) in [("q", q_len), ("out", out_len)] {
        if n < row {
            return Err(Error::shape(
                OP,
                format!(
                    "{name} has {n} elements: batch {} x heads {} x head_dim {} = {row} needed",
                    kv.batch(),
                    p.heads,
                    p.head_dim
                ),
            ));
        }
    }
    if let Some(b) = (0..kv.batch()).find(|&b| kv.len(b) == 0) {
        return Err(Error::invalid(
            OP,
            format!("sequence {b} holds no token: append its K/V before attending"),
        ));
    }
    to_i64(OP, "attention chunk", chunk)
}

/// One query per sequence: row b of `q` (`[batch, heads * head_dim]` bf16) sits at position
/// `seq_lens[b] - 1` of sequence b (its K/V already appended; the position is read on the device,
/// so the call is CUDA-graph capturable). Writes `out` `[batch, heads * head_dim]` bf16.
pub fn attn_decode(
    stream: &Arc<CudaStream>,
    q: &CudaSlice<bf16>,
    kv: &GpuKvLayer,
    p: &AttnParams,
    out: &mut CudaSlice<bf16>,
    scratch: &mut AttnScratch,
) -> Result<()> {
    let attn_chunk = validate(kv, p, q.len(), out.len())?;
    let splits = scratch.splits(stream, kv, p)?;
    let (heads, row) = (p.heads, p.heads * p.head_dim);
    let (floor_scale, attn_scale) = p.temp.map_or((0.0, 0.0), |t| (t.floor_scale, t.attn_scale));
    let mut params = sys::l4c_attn_decode_params {
        kv: kv.pages(),
        q: std::ptr::null(),
        out: std::ptr::null_mut(),
        workspace: std::ptr::null_mut(),
        workspace_bytes: 0,
        heads: to_i64(OP, "heads", heads)?,
        q_row_stride: to_i64(OP, "q row", row)?,
        out_row_stride: to_i64(OP, "out row", row)?,
        attn_chunk,
        num_splits: to_i64(OP, "splits", splits)?,
        scale: p.scale,
        temp_floor_scale: floor_scale,
        temp_attn_scale: attn_scale,
    };
    let ws = scratch.workspace(stream, kv.batch(), heads, splits)?;
    launch(OP, stream, |s| {
        let (pq, _gq) = q.device_ptr(stream);
        let (po, _go) = out.device_ptr_mut(stream);
        params.q = pq as *const std::ffi::c_void;
        params.out = po as *mut std::ffi::c_void;
        let _gw = ws.map(|w| {
            params.workspace_bytes = w.len() as i64;
            let (pw, g) = w.device_ptr_mut(stream);
            params.workspace = pw as *mut std::ffi::c_void;
            g
        });
        // SAFETY: the view belongs to the live `kv` (tables, arenas and seq_lens stay allocated while
        // it is borrowed); q and out hold batch x heads x 128 bf16 (validated); the workspace was sized
        // by workspace_bytes for this split count; guards keep cudarc's stream ordering.
        unsafe { sys::l4c_attn_decode(&params, s) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_policy_fills_one_wave_and_keeps_splits_long() {
        // Llama 4 NoPE layer, batch 1, H100 (132 SMs): 528 blocks / 8 heads = 66 splits at 10M tokens.
        assert_eq!(decode_splits(1, 8, 10_000_000, 132), 66);
        // Short contexts: no split under MIN_SPLIT_KEYS keys.
        assert_eq!(decode_splits(1, 8, 4096, 132), 16);
        assert_eq!(decode_splits(1, 8, 1, 132), 1);
        assert_eq!(decode_splits(1, 8, 300, 132), 2);
        // Large batches fill the GPU on their own.
        assert_eq!(decode_splits(64, 8, 1_000_000, 132), 2);
        assert_eq!(decode_splits(1024, 8, 1_000_000, 132), 1);
        // Never 0, never past the grid limit.
        assert_eq!(decode_splits(0, 0, 0, 0), 1);
        assert!(decode_splits(1, 1, usize::MAX, 1 << 20) <= 65535);
    }

    #[test]
    fn visible_keys_follow_the_mask() {
        assert_eq!(max_visible(MaskKind::Causal, 70_000), 70_000);
        assert_eq!(
            max_visible(MaskKind::ChunkedLocal { chunk: 8192 }, 70_000),
            8192
        );
        assert_eq!(
            max_visible(MaskKind::ChunkedLocal { chunk: 8192 }, 100),
            100
        );
    }

    #[test]
    fn workspace_formula() {
        assert_eq!(workspace_bytes(3, 40, 1).unwrap(), 0);
        assert_eq!(workspace_bytes(3, 40, 5).unwrap(), 3 * 40 * 5 * 130 * 4);
        assert!(workspace_bytes(usize::MAX, 2, 2).is_err());
    }
}

/// The C launchers' host-side checks (they return before any CUDA call, so these run without a GPU).
#[cfg(all(test, llama4_kernels))]
mod abi_tests {
    use super::workspace_bytes;
    use crate::sys::{self, l4c_dtype, l4c_status};

    // Addresses the host code only checks (non-null, aligned); nothing is launched in these cases.
    const FAKE: usize = 0x10_0000;

    fn view(dtype: l4c_dtype, head_dim: i64, chunk_tokens: i64) -> sys::l4c_kv_pages {
        sys::l4c_kv_pages {
            k_pages: FAKE as *const u64,
            v_pages: FAKE as *const u64,
            page_indptr: FAKE as *const i64,
            seq_lens: FAKE as *mut i64,
            batch: 2,
            kv_heads: 8,
            head_dim,
            chunk_tokens,
            dtype,
        }
    }

    fn decode_params() -> sys::l4c_attn_decode_params {
        sys::l4c_attn_decode_params {
            kv: view(l4c_dtype::L4C_DTYPE_BF16, 128, 64),
            q: FAKE as *const std::ffi::c_void,
            out: FAKE as *mut std::ffi::c_void,
            workspace: std::ptr::null_mut(),
            workspace_bytes: 0,
            heads: 40,
            q_row_stride: 5120,
            out_row_stride: 5120,
            attn_chunk: 0,
            num_splits: 1,
            scale: 0.088,
            temp_floor_scale: 0.0,
            temp_attn_scale: 0.0,
        }
    }

    fn decode(p: &sys::l4c_attn_decode_params) -> l4c_status {
        // SAFETY: every case below fails host validation (or has batch 0), so nothing dereferences
        // the fake addresses and no kernel is launched.
        unsafe { sys::l4c_attn_decode(p, std::ptr::null_mut()) }
    }

    #[test]
    fn decode_launcher_rejects_bad_params() {
        use l4c_status as S;
        // SAFETY: a null params pointer is a documented error, checked first.
        assert_eq!(
            unsafe { sys::l4c_attn_decode(std::ptr::null(), std::ptr::null_mut()) },
            S::L4C_ERR_INVALID_ARGUMENT
        );
        let ok = decode_params();
        let cases: Vec<(sys::l4c_attn_decode_params, l4c_status)> = vec![
            (
                sys::l4c_attn_decode_params {
                    kv: view(l4c_dtype::L4C_DTYPE_F32, 128, 64),
                    ..ok
                },
                S::L4C_ERR_UNSUPPORTED_DTYPE,
            ),
            (
                sys::l4c_attn_decode_params {
                    kv: view(l4c_dtype::L4C_DTYPE_BF16, 64, 64),
                    ..ok
                },
                S::L4C_ERR_UNSUPPORTED,
            ),
            (
                sys::l4c_attn_decode_params {
                    kv: view(l4c_dtype::L4C_DTYPE_BF16, 128, 24),
                    ..ok
                },
                S::L4C_ERR_UNSUPPORTED,
            ),
            (
                sys::l4c_attn_decode_params {
                    heads: 72,
                    q_row_stride: 72 * 128,
                    out_row_stride: 72 * 128,
                    ..ok
                },
                S::L4C_ERR_UNSUPPORTED,
            ),
            (
                sys::l4c_attn_decode_params { heads: 41, ..ok },
                S::L4C_ERR_INVALID_ARGUMENT,
            ),
            (
                sys::l4c_attn_decode_params {
                    num_splits: 0,
                    ..ok
                },
                S::L4C_ERR_INVALID_ARGUMENT,
            ),
            (
                sys::l4c_attn_decode_params {
                    num_splits: 70_000,
                    ..ok
                },
                S::L4C_ERR_INVALID_ARGUMENT,
            ),
            (
                sys::l4c_attn_decode_params {
                    num_splits: 2,
                    ..ok
                },
                S::L4C_ERR_INVALID_ARGUMENT,
            ),
            (
                sys::l4c_attn_decode_params {
                    scale: f32::NAN,
                    ..ok
                },
                S::L4C_ERR_INVALID_ARGUMENT,
            ),
            (
                sys::l4c_attn_decode_params {
                    temp_floor_scale: -1.0,
                    ..ok
                },
                S::L4C_ERR_INVALID_ARGUMENT,
            ),
            (
                sys::l4c_attn_decode_params {
                    q_row_stride: 100,
                    ..ok
                },
                S::L4C_ERR_INVALID_ARGUMENT,
            ),
            (
                sys::l4c_attn_decode_params {
                    q: std::ptr::null(),
                    ..ok
                },
                S::L4C_ERR_INVALID_ARGUMENT,
            ),
            (
                sys::l4c_attn_decode_params {
                    attn_chunk: -1,
                    ..ok
                },
                S::L4C_ERR_INVALID_ARGUMENT,
            ),
        ];
        for (i, (p, want)) in cases.iter().enumerate() {
            assert_eq!(decode(p), *want, "case {i}");
        }
        // Nothing to do is OK.
        let mut empty = ok;
        empty.kv.batch = 0;
        assert_eq!(decode(&empty), S::L4C_OK);
    }

    #[test]
    fn append_launcher_rejects_bad_params() {
        use l4c_status as S;
        let ok = sys::l4c_kv_append_params {
            kv: view(l4c_dtype::L4C_DTYPE_F8E4M3, 128, 64),
            k: FAKE as *const std::ffi::c_void,
            v: FAKE as *const std::ffi::c_void,
            k_row_stride: 1024,
            v_row_stride: 1024,
            tokens: 10,
            seq: 1,
            start: 0,
            max_tokens: 100,
        };
        let cases: Vec<(sys::l4c_kv_append_params, l4c_status)> = vec![
            (
                sys::l4c_kv_append_params { tokens: -1, ..ok },
                S::L4C_ERR_INVALID_ARGUMENT,
            ),
            (
                sys::l4c_kv_append_params { seq: -1, ..ok },
                S::L4C_ERR_INVALID_ARGUMENT,
            ),
            (
                sys::l4c_kv_append_params { seq: 2, ..ok },
                S::L4C_ERR_INVALID_ARGUMENT,
            ),
            (
                sys::l4c_kv_append_params { start: 95, ..ok },
                S::L4C_ERR_INVALID_ARGUMENT,
            ),
            (
                sys::l4c_kv_append_params {
                    k: (FAKE + 2) as *const std::ffi::c_void,
                    ..ok
                },
                S::L4C_ERR_INVALID_ARGUMENT,
            ),
            (
                sys::l4c_kv_append_params {
                    k_row_stride: 1000,
                    ..ok
                },
                S::L4C_ERR_INVALID_ARGUMENT,
            ),
            (
                sys::l4c_kv_append_params {
                    kv: view(l4c_dtype::L4C_DTYPE_F16, 128, 64),
                    ..ok
                },
                S::L4C_ERR_UNSUPPORTED_DTYPE,
            ),
            (
                sys::l4c_kv_append_params {
                    kv: view(l4c_dtype::L4C_DTYPE_BF16, 128, 40),
                    ..ok
                },
                S::L4C_ERR_UNSUPPORTED,
            ),
            (sys::l4c_kv_append_params { tokens: 0, ..ok }, S::L4C_OK),
        ];
        for (i, (p, want)) in cases.iter().enumerate() {
            // SAFETY: every case fails host validation or appends nothing: no launch, no dereference.
            assert_eq!(
                unsafe { sys::l4c_kv_append(p, std::ptr::null_mut()) },
                *want,
                "case {i}"
            );
        }
    }

    #[test]
    fn workspace_size_matches_the_rust_formula() {
        for (b, h, s) in [
            (1usize, 40usize, 66usize),
            (3, 8, 2),
            (7, 40, 1),
            (64, 40, 65535),
        ] {
            let mut bytes = -1i64;
            // SAFETY: plain host function; `bytes` is valid for writes.
            let st = unsafe {
                sys::l4c_attn_decode_workspace_size(b as i64, h as i64, 128, s as i64, &mut bytes)
            };
            assert_eq!(st, l4c_status::L4C_OK);
            assert_eq!(bytes as usize, workspace_bytes(b, h, s).unwrap());
        }
        let mut bytes = 0i64;
        // SAFETY: as above.
        let st = unsafe { sys::l4c_attn_decode_workspace_size(1, 1, 128, 0, &mut bytes) };
        assert_eq!(st, l4c_status::L4C_ERR_INVALID_ARGUMENT);
    }
}
