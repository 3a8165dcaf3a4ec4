//! Interleaved RoPE with llama3 frequency scaling. OWNER: kernels helper.
use crate::error::Result;

/// llama3 rope scaling parameters (LLAMA4.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: f32,
}

/// `inv_freq[i] = theta^(-2i/head_dim)`, i < head_dim/2, then llama3 scaling when given.
pub fn inv_freq(head_dim: usize, theta: f32, scaling: Option<&Llama3Scaling>) -> Vec<f32> {
    let _ = (head_dim, theta, scaling);
    todo!("kernels helper")
}

/// Rotates interleaved pairs `(x[2i], x[2i+1])` of every head in place: x is `[tokens, heads, head_dim]`,
/// token t at absolute position `positions[t]`.
pub fn apply_rope(x: &mut [f32], heads: usize, head_dim: usize, positions: &[usize], inv_freq: &[f32]) -> Result<()> {
    let _ = (x, heads, head_dim, positions, inv_freq);
    todo!("kernels helper")
}
