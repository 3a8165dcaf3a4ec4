//! The MoE block on the GPU: device routing (`moe_gate`), grouped expert GEMMs with the router score
//! and SwiGLU fused (kernels/moe_grouped_gemm.cu), combine with the shared expert.
//!
//! CONTRACT (owner: helper A); the CPU specification is [`crate::reference::moe::moe_block`].
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;

use crate::error::Result;
use crate::ops::gemm::{GpuBf16Weight, GpuLinear};
use crate::quant::DenseWeight;
use crate::reference::moe::SwiGlu;

/// One SwiGLU MLP on the GPU (an expert or the shared expert).
pub struct GpuExpert {
    pub gate: GpuLinear,
    pub up: GpuLinear,
    pub down: GpuLinear,
}

/// A MoE block resident on the GPU.
pub struct GpuMoe {
    _private: (),
}

impl GpuMoe {
    /// Assembles a block from weights already on the device (all routed experts in one format).
    pub fn new(
        stream: &Arc<CudaStream>,
        router: GpuBf16Weight,
        experts: Vec<GpuExpert>,
        shared: GpuExpert,
    ) -> Result<Self> {
        let _ = (stream, router, experts, shared);
        todo!("helper A")
    }
    /// Uploads host weights (each [`crate::quant::Weight`] in its own format).
    pub fn upload(
        stream: &Arc<CudaStream>,
        router: &DenseWeight,
        experts: &[SwiGlu],
        shared: &SwiGlu,
    ) -> Result<Self> {
        let _ = (stream, router, experts, shared);
        todo!("helper A")
    }
}

/// Reusable device scratch of the MoE block (routing buffers, expert activations).
#[derive(Default)]
pub struct MoeScratch {
    _private: (),
}

/// `out[tokens, hidden] = shared(x) + Σ_j expert_{e_j}(x * score_j)` with top-`top_k` routing, no host
/// synchronisation (CUDA-graph capturable).
pub fn moe_block(
    stream: &Arc<CudaStream>,
    x: &CudaSlice<bf16>,
    tokens: usize,
    moe: &GpuMoe,
    top_k: usize,
    out: &mut CudaSlice<bf16>,
    scratch: &mut MoeScratch,
) -> Result<()> {
    let _ = (stream, x, tokens, moe, top_k, out, scratch);
    todo!("helper A")
}
