//! The backend-neutral ops layer: [`crate::model::Model`] runs every op of the decoder through a
//! [`Backend`]. [`CpuBackend`] calls the CPU reference (`crate::reference::*`); a CUDA backend plugs in
//! as a second implementation with device tensors, device weights and a device KV cache, and the model
//! code does not change.
//!
//! Weights are handed over once, by value, through the `prepare_*` methods (the CPU keeps them, a GPU
//! backend uploads or repacks them). Activations stay in `Backend::Tensor` from the embedding to the
//! logits; only the logits come back to the host.
use crate::error::{Error, Result};
use crate::kv_cache::{KvLayout, Retention};
use crate::quant::{DenseWeight, Weight};
use crate::reference::attention::AttnParams;
use crate::reference::moe::SwiGlu;

/// Head geometry of one attention layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Every op the Llama 4 decoder needs, over backend-owned tensors, weights and KV caches.
pub trait Backend {
    /// Activations `[rows, cols]`, row-major, f32 semantics (a backend may store them narrower).
    type Tensor;
    /// A linear layer's weight `[out, in]` in any [`Weight`] format, prepared for this backend.
    type Linear;
    /// An f32 vector: norm weights, RoPE inverse frequencies.
    type Vector;
    /// An embedding table `[vocab, hidden]`.
    type Table;
    /// A SwiGLU MLP (dense layers' MLP).
    type Mlp;
    /// A MoE block: router, routed experts, unweighted shared expert.
    type Moe;
    /// One layer's K/V for one sequence.
    type Kv;

    /// A short name for messages ("cpu", "cuda:0").
    fn name(&self) -> String;

    fn prepare_linear(&self, w: Weight) -> Result<Self::Linear>;
    fn prepare_vector(&self, v: Vec<f32>) -> Result<Self::Vector>;
    fn prepare_table(&self, t: DenseWeight) -> Result<Self::Table>;
    fn prepare_mlp(&self, mlp: SwiGlu) -> Result<Self::Mlp>;
    fn prepare_moe(
        &self,
        router: DenseWeight,
        experts: Vec<SwiGlu>,
        shared: SwiGlu,
    ) -> Result<Self::Moe>;

    /// An empty cache for one layer of one sequence, able to take positions `0 .. max_tokens`.
    fn new_kv(&self, layout: KvLayout, retention: Retention, max_tokens: usize)
        -> Result<Self::Kv>;
    /// Tokens appended so far (= the next absolute position).
    fn kv_len(&self, kv: &Self::Kv) -> usize;

    /// Rows of a tensor.
    fn rows(&self, x: &Self::Tensor) -> usize;
    /// The last row as a `[1, cols]` tensor.
    fn last_row(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// Copies a tensor to the host, row-major f32.
    fn to_host(&self, x: &Self::Tensor) -> Result<Vec<f32>>;

    /// Rows `ids` of the table; an id outside the vocabulary is an error.
    fn embedding(&self, table: &Self::Table, ids: &[u32]) -> Result<Self::Tensor>;
    /// RMSNorm of every row, times `weight`.
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Vector, eps: f32) -> Result<Self::Tensor>;
    /// `x · Wᵀ`.
    fn linear(&self, x: &Self::Tensor, w: &Self::Linear) -> Result<Self::Tensor>;
    /// Interleaved RoPE on q `[t, heads*head_dim]` and k `[t, kv_heads*head_dim]`, row r at absolute
    /// position `start + r`; then, with `qk_norm_eps`, the weightless RMS norm over each head.
    fn rope_qk_norm(
        &self,
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        shape: HeadShape,
        start: usize,
        inv_freq: &Self::Vector,
        qk_norm_eps: Option<f32>,
    ) -> Result<()>;
    /// Appends k/v (`[t, kv_heads*head_dim]`) at positions `start ..` (`start` must equal the cache
    /// length) and attends the queries q `[t, heads*head_dim]` at those positions to the cache, with
    /// the mask and temperature tuning of `p`. Returns `[t, heads*head_dim]`.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        kv: &mut Self::Kv,
        start: usize,
        p: &AttnParams,
    ) -> Result<Self::Tensor>;
    /// `down(silu(gate(x)) * up(x))`.
    fn swiglu(&self, x: &Self::Tensor, mlp: &Self::Mlp) -> Result<Self::Tensor>;
    /// The Llama 4 MoE block with `top_k` experts per token.
    fn moe(&self, x: &Self::Tensor, moe: &Self::Moe, top_k: usize) -> Result<Self::Tensor>;
    /// `x += y`.
    fn residual_add(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;
    /// `x · lm_headᵀ`, on the host as `[rows, vocab]`.
    fn logits(&self, x: &Self::Tensor, lm_head: &Self::Linear) -> Result<Vec<f32>> {
        self.to_host(&self.linear(x, lm_head)?)
    }
}

/// A host tensor `[rows, cols]`, row-major f32.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl CpuTensor {
    /// Fails unless `data.len() == rows * cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        crate::error::check_len("tensor", "data", data.len(), rows * cols)?;
        Ok(CpuTensor { rows, cols, data })
    }
    /// Wraps an op's output of `rows` rows, checking that it divides evenly.
    fn from_rows(op: &'static str, rows: usize, data: Vec<f32>) -> Result<Self> {
        if rows == 0 || data.len() % rows != 0 {
            return Err(Error::shape(
                op,
                format!("{} elements do not form {rows} rows", data.len()),
            ));
        }
        let cols = data.len() / rows;
        Ok(CpuTensor { rows, cols, data })
    }
}

/// The MoE weights as the CPU reference takes them.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuMoe {
    pub router: Weight,
    pub experts: Vec<SwiGlu>,
    pub shared: SwiGlu,
}

/// The CPU reference as a backend: every op is a call into `crate::reference`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

pub use super::cache::CpuKv;

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Linear = Weight;
    type Vector = Vec<f32>;
    type Table = DenseWeight;
    type Mlp = SwiGlu;
    type Moe = CpuMoe;
    type Kv = CpuKv;

    fn name(&self) -> String {
        "cpu".into()
    }

    fn prepare_linear(&self, w: Weight) -> Result<Weight> {
        Ok(w)
    }
    fn prepare_vector(&self, v: Vec<f32>) -> Result<Vec<f32>> {
        Ok(v)
    }
    fn prepare_table(&self, t: DenseWeight) -> Result<DenseWeight> {
        crate::error::check_len("embedding", "embed_tokens", t.data.len(), t.n * t.k)?;
        Ok(t)
    }
    fn prepare_mlp(&self, mlp: SwiGlu) -> Result<SwiGlu> {
        Ok(mlp)
    }
    fn prepare_moe(
        &self,
        router: DenseWeight,
        experts: Vec<SwiGlu>,
        shared: SwiGlu,
    ) -> Result<CpuMoe> {
        Ok(CpuMoe {
            router: Weight::Dense(router),
            experts,
            shared,
        })
    }

    fn new_kv(&self, layout: KvLayout, retention: Retention, max_tokens: usize) -> Result<CpuKv> {
        CpuKv::new(layout, retention, max_tokens)
    }
    fn kv_len(&self, kv: &CpuKv) -> usize {
        kv.len()
    }

    fn rows(&self, x: &CpuTensor) -> usize {
        x.rows
    }
    fn last_row(&self, x: &CpuTensor) -> Result<CpuTensor> {
        if x.rows == 0 {
            return Err(Error::shape("last_row", "tensor has no rows"));
        }
        let s = (x.rows - 1) * x.cols;
        Ok(CpuTensor {
            rows: 1,
            cols: x.cols,
            data: x.data[s..].to_vec(),
        })
    }
    fn to_host(&self, x: &CpuTensor) -> Result<Vec<f32>> {
        Ok(x.data.clone())
    }

    fn embedding(&self, table: &DenseWeight, ids: &[u32]) -> Result<CpuTensor> {
        let data = crate::reference::elementwise::embedding(&table.data, table.k, ids)?;
        CpuTensor::new(ids.len(), table.k, data)
    }
    fn rms_norm(&self, x: &CpuTensor, weight: &Vec<f32>, eps: f32) -> Result<CpuTensor> {
        let data = crate::reference::norm::rms_norm(&x.data, x.cols, Some(weight), eps)?;
        CpuTensor::new(x.rows, x.cols, data)
    }
    fn linear(&self, x: &CpuTensor, w: &Weight) -> Result<CpuTensor> {
        if x.cols != w.k() {
            return Err(Error::shape(
                "linear",
                format!("input has {} features, weight takes {}", x.cols, w.k()),
            ));
        }
        let data = crate::reference::gemm::gemm(&x.data, x.rows, w)?;
        CpuTensor::new(x.rows, w.n(), data)
    }
    fn rope_qk_norm(
        &self,
        q: &mut CpuTensor,
        k: &mut CpuTensor,
        s: HeadShape,
        start: usize,
        inv_freq: &Vec<f32>,
        qk_norm_eps: Option<f32>,
    ) -> Result<()> {
        let positions = rope_positions(q.rows, k.rows, start)?;
        crate::reference::rope::apply_rope(&mut q.data, s.heads, s.head_dim, &positions, inv_freq)?;
        crate::reference::rope::apply_rope(
            &mut k.data,
            s.kv_heads,
            s.head_dim,
            &positions,
            inv_freq,
        )?;
        if let Some(eps) = qk_norm_eps {
            q.data = crate::reference::norm::rms_norm(&q.data, s.head_dim, None, eps)?;
            k.data = crate::reference::norm::rms_norm(&k.data, s.head_dim, None, eps)?;
        }
        Ok(())
    }
    fn attention(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        kv: &mut CpuKv,
        start: usize,
        p: &AttnParams,
    ) -> Result<CpuTensor> {
        let data = kv.append_and_attend(&q.data, &k.data, &v.data, q.rows, start, p)?;
        CpuTensor::new(q.rows, p.heads * p.head_dim, data)
    }
    fn swiglu(&self, x: &CpuTensor, mlp: &SwiGlu) -> Result<CpuTensor> {
        let data = crate::reference::moe::swiglu(&x.data, x.rows, mlp)?;
        CpuTensor::from_rows("swiglu", x.rows, data)
    }
    fn moe(&self, x: &CpuTensor, moe: &CpuMoe, top_k: usize) -> Result<CpuTensor> {
        let data = crate::reference::moe::moe_block(
            &x.data,
            x.rows,
            &moe.router,
            &moe.experts,
            Some(&moe.shared),
            top_k,
        )?;
        CpuTensor::new(x.rows, x.cols, data)
    }
    fn residual_add(&self, x: &mut CpuTensor, y: &CpuTensor) -> Result<()> {
        crate::reference::elementwise::residual_add(&mut x.data, &y.data)
    }
}

/// The absolute positions of `q_rows` rows starting at `start`, for RoPE on q and k (which must have
/// as many rows).
pub(crate) fn rope_positions(q_rows: usize, k_rows: usize, start: usize) -> Result<Vec<usize>> {
    if q_rows != k_rows {
        return Err(Error::shape(
            "rope",
            format!("q has {q_rows} rows, k has {k_rows}"),
        ));
    }
    Ok((start..start + q_rows).collect())
}
