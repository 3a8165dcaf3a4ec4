//! The CUDA backend: the same [`Backend`] ops as the CPU reference, on device tensors (bf16
//! activations, f32 norm weights), device weights in their own formats ([`GpuLinear`]: bf16, int4
//! repacked for bf16 activations, fp8) and a paged device KV cache ([`GpuKvLayer`], one sequence
//! per layer here; [`decode::BatchDecoder`] runs a batch and replays its step as a CUDA graph).
//!
//! Every op enqueues on the backend's one stream and returns without waiting; only [`Backend::to_host`]
//! (the logits) synchronises. Numerics differ from the CPU path by bf16 rounding of activations and
//! weights (the CPU keeps f32): see tests/gpu_model.rs for the tolerances.
pub mod decode;
pub mod generate;

use std::cell::RefCell;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;

use super::backend::{Backend, HeadShape};
use crate::device::{Device, DriverResultExt};
use crate::error::{Error, Result};
use crate::kv_cache::gpu::GpuKvLayer;
use crate::kv_cache::{KvDType, KvLayout, Retention};
use crate::ops::attn_decode::{attn_decode, AttnScratch};
use crate::ops::attn_prefill::attn_prefill;
use crate::ops::gemm::{GemmScratch, GpuLinear};
use crate::ops::moe::{moe_block, GpuExpert, GpuMoe, MoeScratch};
use crate::quant::{DenseWeight, Weight};
use crate::reference::attention::AttnParams;
use crate::reference::moe::SwiGlu;

/// Activations `[rows, cols]` on the device, bf16, row-major.
pub struct CudaTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: CudaSlice<bf16>,
}

/// An embedding table `[vocab, dim]` on the device, bf16.
pub struct CudaTable {
    pub vocab: usize,
    pub dim: usize,
    pub data: CudaSlice<bf16>,
}

/// One layer's K/V for one sequence on the device, and the attention chunk its retention keeps
/// (appends are split at chunk boundaries, as on the CPU, so a ring page is never reused while a
/// query of the same call can see it).
pub struct CudaKv {
    pub layer: GpuKvLayer,
    pub chunk: Option<usize>,
}

/// Reusable scratch of the ops (one set per stream); steady-state calls allocate nothing.
#[derive(Default)]
pub struct Scratch {
    pub gemm: GemmScratch,
    pub moe: MoeScratch,
    pub attn: AttnScratch,
}

/// The model's ops on one GPU.
pub struct CudaBackend {
    device: Device,
    kv_dtype: KvDType,
    kv_device_budget: usize,
    scratch: RefCell<Scratch>,
}

impl CudaBackend {
    /// A backend on `device` with a bf16 KV cache held entirely in device memory.
    pub fn new(device: Device) -> Self {
        CudaBackend {
            device,
            kv_dtype: KvDType::BF16,
            kv_device_budget: usize::MAX,
            scratch: RefCell::new(Scratch::default()),
        }
    }
    /// The first device ([`crate::Error::NoDevice`] when there is none).
    pub fn first() -> Result<Self> {
        Ok(Self::new(Device::first()?))
    }
    /// KV element type for caches whose layout asks for f32 (the CPU default): BF16 or Fp8E4M3.
    pub fn with_kv_dtype(mut self, dtype: KvDType) -> Result<Self> {
        if dtype == KvDType::F32 {
            return Err(Error::invalid(
                "CudaBackend",
                "the GPU KV cache stores bf16 or fp8 e4m3, not f32",
            ));
        }
        self.kv_dtype = dtype;
        Ok(self)
    }
    /// Device bytes each layer's cache may use before spilling to the pinned host tier.
    pub fn with_kv_device_budget(mut self, bytes: usize) -> Self {
        self.kv_device_budget = bytes;
        self
    }
    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The stream every op runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        self.device.stream()
    }
    /// The ops' scratch (for code that runs ops outside the [`Backend`] trait on this stream).
    pub fn scratch(&self) -> std::cell::RefMut<'_, Scratch> {
        self.scratch.borrow_mut()
    }
    /// A zeroed bf16 device buffer of `len` elements (at least one).
    pub fn alloc_bf16(&self, op: &'static str, len: usize) -> Result<CudaSlice<bf16>> {
        self.device
            .stream()
            .alloc_zeros::<bf16>(len.max(1))
            .map_err(|e| self.device.alloc_error(op, len * 2, e))
    }
    fn tensor(&self, op: &'static str, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor {
            rows,
            cols,
            data: self.alloc_bf16(op, rows * cols)?,
        })
    }
    /// A `[rows, cols]` copy of rows `r0 .. r0 + rows` of `x`.
    fn rows_of(&self, x: &CudaTensor, r0: usize, rows: usize) -> Result<CudaTensor> {
        let mut out = self.tensor("rows_of", rows, x.cols)?;
        let src = x.data.slice(r0 * x.cols..(r0 + rows) * x.cols);
        self.stream()
            .memcpy_dtod(&src, &mut out.data)
            .op("rows_of")?;
        Ok(out)
    }
    /// Uploads host f32 rows as bf16.
    pub fn upload_tensor(&self, rows: usize, cols: usize, data: &[f32]) -> Result<CudaTensor> {
        crate::error::check_len("upload_tensor", "data", data.len(), rows * cols)?;
        let h: Vec<bf16> = data.iter().map(|&v| bf16::from_f32(v)).collect();
        Ok(CudaTensor {
            rows,
            cols,
            data: self.stream().clone_htod(&h).op("upload_tensor")?,
        })
    }
}

/// Splits `len` tokens at positions `start ..` into `(offset, count)` pieces of at most `max_piece`
/// tokens that never cross a multiple of `chunk` (the attention chunk): the unit of every append on
/// a chunked layer, whose ring of pages only ever holds the current chunk.
pub fn chunk_pieces(
    start: usize,
    len: usize,
    max_piece: usize,
    chunk: usize,
) -> impl Iterator<Item = (usize, usize)> {
    let (max_piece, chunk) = (max_piece.max(1), chunk.max(1));
    let mut r = 0;
    std::iter::from_fn(move || {
        if r >= len {
            return None;
        }
        let pos = start + r;
        let n = (len - r).min(max_piece).min(chunk - pos % chunk);
        r += n;
        Some((r - n, n))
    })
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Linear = GpuLinear;
    type Vector = CudaSlice<f32>;
    type Table = CudaTable;
    type Mlp = GpuExpert;
    type Moe = GpuMoe;
    type Kv = CudaKv;

    fn name(&self) -> String {
        format!("cuda:{}", self.device.context().ordinal())
    }

    fn prepare_linear(&self, w: Weight) -> Result<GpuLinear> {
        GpuLinear::upload(self.stream(), &w)
    }
    fn prepare_vector(&self, v: Vec<f32>) -> Result<CudaSlice<f32>> {
        if v.is_empty() {
            return Err(Error::invalid("prepare_vector", "empty vector"));
        }
        self.stream().clone_htod(&v).op("prepare_vector")
    }
    fn prepare_table(&self, t: DenseWeight) -> Result<CudaTable> {
        crate::error::check_len("embedding", "embed_tokens", t.data.len(), t.n * t.k)?;
        let h: Vec<bf16> = t.data.iter().map(|&v| bf16::from_f32(v)).collect();
        Ok(CudaTable {
            vocab: t.n,
            dim: t.k,
            data: self.stream().clone_htod(&h).op("prepare_table")?,
        })
    }
    fn prepare_mlp(&self, mlp: SwiGlu) -> Result<GpuExpert> {
        Ok(GpuExpert {
            gate: GpuLinear::upload(self.stream(), &mlp.gate)?,
            up: GpuLinear::upload(self.stream(), &mlp.up)?,
            down: GpuLinear::upload(self.stream(), &mlp.down)?,
        })
    }
    fn prepare_moe(
        &self,
        router: DenseWeight,
        experts: Vec<SwiGlu>,
        shared: SwiGlu,
    ) -> Result<GpuMoe> {
        GpuMoe::upload(self.stream(), &router, &experts, &shared)
    }

    fn new_kv(&self, layout: KvLayout, retention: Retention, max_tokens: usize) -> Result<CudaKv> {
        let dtype = match layout.dtype {
            KvDType::F32 => self.kv_dtype,
            d => d,
        };
        let layout = KvLayout { dtype, ..layout };
        let layer = GpuKvLayer::new(
            self.stream(),
            layout,
            retention,
            1,
            max_tokens,
            self.kv_device_budget,
        )?;
        let chunk = match retention {
            Retention::All => None,
            Retention::CurrentAttentionChunk { chunk } => Some(chunk),
        };
        Ok(CudaKv { layer, chunk })
    }
    fn kv_len(&self, kv: &CudaKv) -> usize {
        kv.layer.len(0)
    }

    fn rows(&self, x: &CudaTensor) -> usize {
        x.rows
    }
    fn last_row(&self, x: &CudaTensor) -> Result<CudaTensor> {
        if x.rows == 0 {
            return Err(Error::shape("last_row", "tensor has no rows"));
        }
        self.rows_of(x, x.rows - 1, 1)
    }
    fn to_host(&self, x: &CudaTensor) -> Result<Vec<f32>> {
        let h = self.stream().clone_dtoh(&x.data).op("to_host")?;
        Ok(h[..x.rows * x.cols].iter().map(|v| v.to_f32()).collect())
    }

    fn embedding(&self, table: &CudaTable, ids: &[u32]) -> Result<CudaTensor> {
        let mut out = self.tensor("embedding", ids.len(), table.dim)?;
        crate::ops::embedding_host_ids(self.stream(), &table.data, table.dim, ids, &mut out.data)?;
        Ok(out)
    }
    fn rms_norm(&self, x: &CudaTensor, weight: &CudaSlice<f32>, eps: f32) -> Result<CudaTensor> {
        let mut out = self.tensor("rms_norm", x.rows, x.cols)?;
        crate::ops::norm_rope::rms_norm(
            self.stream(),
            &x.data,
            x.cols,
            weight,
            eps,
            &mut out.data,
        )?;
        Ok(out)
    }
    fn linear(&self, x: &CudaTensor, w: &GpuLinear) -> Result<CudaTensor> {
        if x.cols != w.k() {
            return Err(Error::shape(
                "linear",
                format!("input has {} features, weight takes {}", x.cols, w.k()),
            ));
        }
        let mut out = self.tensor("linear", x.rows, w.n())?;
        let mut s = self.scratch.borrow_mut();
        w.gemm(
            self.stream(),
            &x.data,
            x.rows,
            None,
            &mut out.data,
            &mut s.gemm,
        )?;
        Ok(out)
    }
    fn rope_qk_norm(
        &self,
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        s: HeadShape,
        start: usize,
        inv_freq: &CudaSlice<f32>,
        qk_norm_eps: Option<f32>,
    ) -> Result<()> {
        let positions = super::backend::rope_positions(q.rows, k.rows, start)?;
        let pos = crate::ops::norm_rope::positions_on_device(self.stream(), &positions)?;
        let st = self.stream();
        match qk_norm_eps {
            Some(eps) => crate::ops::norm_rope::rope_qk_norm(
                st,
                &mut q.data,
                s.heads,
                &mut k.data,
                s.kv_heads,
                s.head_dim,
                &pos,
                inv_freq,
                eps,
            ),
            None => crate::ops::norm_rope::rope(
                st,
                &mut q.data,
                s.heads,
                &mut k.data,
                s.kv_heads,
                s.head_dim,
                &pos,
                inv_freq,
            ),
        }
    }
    fn attention(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        kv: &mut CudaKv,
        start: usize,
        p: &AttnParams,
    ) -> Result<CudaTensor> {
        let len = kv.layer.len(0);
        if start != len {
            return Err(Error::invalid(
                "attention",
                format!("queries start at {start}, the cache holds {len} tokens"),
            ));
        }
        let (qw, kw) = (p.heads * p.head_dim, p.kv_heads * p.head_dim);
        let t = q.rows;
        for (name, x, w) in [("q", q, qw), ("k", k, kw), ("v", v, kw)] {
            if (x.rows, x.cols) != (t, w) {
                return Err(Error::shape(
                    "attention",
                    format!("{name} is [{}, {}], expected [{t}, {w}]", x.rows, x.cols),
                ));
            }
        }
        let chunk = kv.chunk.unwrap_or(usize::MAX);
        let whole = t <= chunk - start % chunk;
        let mut out = self.tensor("attention", t, qw)?;
        for (r, n) in chunk_pieces(start, t, usize::MAX, chunk) {
            let pos = start + r;
            let pieces;
            let (qp, kp, vp) = if whole {
                (q, k, v)
            } else {
                pieces = (
                    self.rows_of(q, r, n)?,
                    self.rows_of(k, r, n)?,
                    self.rows_of(v, r, n)?,
                );
                (&pieces.0, &pieces.1, &pieces.2)
            };
            kv.layer.append(self.stream(), 0, &kp.data, &vp.data, n)?;
            let mut o = if whole {
                None
            } else {
                Some(self.tensor("attention", n, qw)?)
            };
            let dst = match o.as_mut() {
                Some(o) => &mut o.data,
                None => &mut out.data,
            };
            let mut s = self.scratch.borrow_mut();
            if n == 1 {
                attn_decode(self.stream(), &qp.data, &kv.layer, p, dst, &mut s.attn)?;
            } else {
                attn_prefill(self.stream(), &qp.data, n, pos, &kv.layer, 0, p, dst)?;
            }
            if let Some(o) = o {
                let mut view = out.data.slice_mut(r * qw..(r + n) * qw);
                self.stream()
                    .memcpy_dtod(&o.data, &mut view)
                    .op("attention")?;
            }
        }
        Ok(out)
    }
    fn swiglu(&self, x: &CudaTensor, mlp: &GpuExpert) -> Result<CudaTensor> {
        let gate = self.linear(x, &mlp.gate)?;
        let up = self.linear(x, &mlp.up)?;
        let mut act = self.tensor("swiglu", x.rows, gate.cols)?;
        crate::ops::silu_mul(self.stream(), &gate.data, &up.data, &mut act.data)?;
        self.linear(&act, &mlp.down)
    }
    fn moe(&self, x: &CudaTensor, moe: &GpuMoe, top_k: usize) -> Result<CudaTensor> {
        let mut out = self.tensor("moe", x.rows, x.cols)?;
        let mut s = self.scratch.borrow_mut();
        moe_block(
            self.stream(),
            &x.data,
            x.rows,
            moe,
            top_k,
            &mut out.data,
            &mut s.moe,
        )?;
        Ok(out)
    }
    fn residual_add(&self, x: &mut CudaTensor, y: &CudaTensor) -> Result<()> {
        crate::ops::residual_add(self.stream(), &mut x.data, &y.data)
    }
}
