//! Split-KV flash decoding over the paged KV cache (kernels/attn_decode.cu).
//!
//! CONTRACT (owner: helper C); the CPU specification is [`crate::reference::attention::attention`].
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;

use crate::error::Result;
use crate::kv_cache::gpu::GpuKvLayer;
use crate::reference::attention::AttnParams;

/// Reusable device scratch of the split-KV partials (grows on demand; one per stream).
#[derive(Default)]
pub struct AttnScratch {
    _private: (),
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
    let _ = (stream, q, kv, p, out, scratch);
    todo!("helper C")
}
