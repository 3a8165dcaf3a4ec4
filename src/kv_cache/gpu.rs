//! The chunked paged KV cache on the GPU: one layer's K/V for a batch of sequences, chunks in device
//! memory and, past the device budget, in mapped pinned host memory (the overflow tier). The chunk
//! layout and the fp8 scale rule are those of the CPU cache ([`crate::kv_cache`]); the kernels see
//! the cache as [`crate::sys::l4c_kv_pages`] (kernels/include/llama4_cuda.h).
//!
//! CONTRACT (owner: helper C). Bodies are filled by the attention-decode helper; the signatures are
//! what the prefill kernel (helper B) and the CUDA model backend (helper D) are written against.
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;

use crate::error::Result;
use crate::kv_cache::{KvLayout, Retention};
use crate::sys::l4c_kv_pages;

/// How many tokens of each sequence fit in each tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvTiers {
    /// Tokens per sequence held in device memory.
    pub device_tokens: usize,
    /// Tokens per sequence held in pinned host memory (read by the decode over PCIe / C2C).
    pub host_tokens: usize,
}

/// One layer's K/V for `batch` sequences on the GPU.
pub struct GpuKvLayer {
    _private: (),
}

impl GpuKvLayer {
    /// Room for `max_tokens` positions per sequence (a chunked-local retention keeps a ring of pages
    /// instead). Chunks go to device memory up to `device_budget_bytes`, the rest to pinned host
    /// memory. `layout.dtype` is BF16 or Fp8E4M3. Errors: [`crate::Error::OutOfMemory`] (needed, free)
    /// when the host tier cannot be allocated either, [`crate::Error::InvalidArgument`] on a bad layout.
    pub fn new(
        stream: &Arc<CudaStream>,
        layout: KvLayout,
        retention: Retention,
        batch: usize,
        max_tokens: usize,
        device_budget_bytes: usize,
    ) -> Result<Self> {
        let _ = (
            stream,
            layout,
            retention,
            batch,
            max_tokens,
            device_budget_bytes,
        );
        todo!("helper C")
    }
    /// The layout.
    pub fn layout(&self) -> KvLayout {
        todo!("helper C")
    }
    /// Sequences.
    pub fn batch(&self) -> usize {
        todo!("helper C")
    }
    /// Tokens held by sequence `b` (the host's mirror of the device `seq_lens`).
    pub fn len(&self, b: usize) -> usize {
        let _ = b;
        todo!("helper C")
    }
    /// Positions each sequence can take.
    pub fn max_tokens(&self) -> usize {
        todo!("helper C")
    }
    /// Tokens per sequence in each tier.
    pub fn tiers(&self) -> KvTiers {
        todo!("helper C")
    }
    /// Appends `tokens` rows of k and v (`[tokens, kv_heads * head_dim]`, contiguous) to sequence
    /// `b` at positions `len(b) ..`. [`crate::Error::CacheFull`] past `max_tokens`, nothing written.
    pub fn append(
        &mut self,
        stream: &Arc<CudaStream>,
        b: usize,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
        tokens: usize,
    ) -> Result<()> {
        let _ = (stream, b, k, v, tokens);
        todo!("helper C")
    }
    /// Appends one token to every sequence: row b of k and v (`[batch, kv_heads * head_dim]`) goes to
    /// sequence b at its own next position. Reads and advances the device `seq_lens` only, so a
    /// decode step that calls it can be captured in a CUDA graph and replayed.
    pub fn append_step(
        &mut self,
        stream: &Arc<CudaStream>,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
    ) -> Result<()> {
        let _ = (stream, k, v);
        todo!("helper C")
    }
    /// The view the attention kernels take. Valid while `self` lives and is not mutated.
    pub fn pages(&self) -> l4c_kv_pages {
        todo!("helper C")
    }
}
