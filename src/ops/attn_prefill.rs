//! Flash-attention prefill over the paged KV cache (kernels/attn_prefill.cu).
//!
//! CONTRACT (owner: helper B); the CPU specification is [`crate::reference::attention::attention`].
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;

use crate::error::Result;
use crate::kv_cache::gpu::GpuKvLayer;
use crate::reference::attention::AttnParams;

/// Attends queries `q` (`[tokens, heads * head_dim]` bf16, absolute positions
/// `q_start .. q_start + tokens`) of sequence `b` to the keys of `kv` that each may see (causal, the
/// mask kind and NoPE temperature tuning of `p`). The cache must already hold positions up to
/// `q_start + tokens - 1` (append first). Writes `out` `[tokens, heads * head_dim]` bf16.
#[allow(clippy::too_many_arguments)]
pub fn attn_prefill(
    stream: &Arc<CudaStream>,
    q: &CudaSlice<bf16>,
    tokens: usize,
    q_start: usize,
    kv: &GpuKvLayer,
    b: usize,
    p: &AttnParams,
    out: &mut CudaSlice<bf16>,
) -> Result<()> {
    let _ = (stream, q, tokens, q_start, kv, b, p, out);
    todo!("helper B")
}
