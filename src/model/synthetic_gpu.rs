//! Synthetic weights at any shape (the real Scout / Maverick ones included) generated directly in
//! device memory by kernels/synthetic.cu: no checkpoint and no host copy, so a 65 GB model is ready
//! in seconds and end-to-end speed is measurable. Values are random but scaled like a trained model's
//! (weights of std about 1/sqrt(in), norm weights near 1), so activations stay finite through every
//! layer; they mean nothing.
use cudarc::driver::CudaSlice;
use half::bf16;

use super::checkpoint::Role;
use super::cuda::{CudaBackend, CudaTable};
use super::forward::{Layer, LayerFfn, Model};
use super::quantize::{QuantFormat, QuantizeSpec};
use crate::device::DriverResultExt;
use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::ops::gemm::{GpuBf16Weight, GpuFp8Weight, GpuInt4Weight, GpuLinear};
use crate::ops::moe::{GpuExpert, GpuMoe};
use crate::ops::synthetic::{synthetic_fill, synthetic_u32, Synth};
use crate::quant::repack::{Act16, SLAB_K, SLAB_WORDS, TILE_ROWS};
use crate::quant::ScaleDType;

/// Standard deviation of a uniform int4 value in [-8, 7] and (about) of the synthetic e4m3 codes:
/// dividing by it gives the weights a std of about 1/sqrt(in).
const CODE_STD: f32 = 4.61;

/// Makes device tensors one after another, each from its own stream of the hash.
struct Maker<'a> {
    be: &'a CudaBackend,
    seed: u64,
    next: u64,
}

impl Maker<'_> {
    fn id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
    fn fill<T: crate::ops::synthetic::SynthElem + cudarc::driver::ValidAsZeroBits>(
        &mut self,
        len: usize,
        kind: Synth,
    ) -> Result<CudaSlice<T>> {
        let st = self.be.stream();
        let bytes = len * std::mem::size_of::<T>();
        let mut b = st
            .alloc_zeros::<T>(len.max(1))
            .map_err(|e| self.be.device().alloc_error("synthetic weights", bytes, e))?;
        let id = self.id();
        synthetic_fill(st, &mut b, kind, self.seed, id)?;
        Ok(b)
    }
    fn bf16(&mut self, n: usize, k: usize) -> Result<GpuBf16Weight> {
        let amp = (3.0 / k as f32).sqrt();
        Ok(GpuBf16Weight {
            n,
            k,
            data: self.fill(n * k, Synth::Uniform { amp })?,
        })
    }
    fn linear(&mut self, n: usize, k: usize, format: Option<&QuantFormat>) -> Result<GpuLinear> {
        let s = 1.0 / (CODE_STD * (k as f32).sqrt());
        Ok(match format {
            None => GpuLinear::Bf16(self.bf16(n, k)?),
            Some(QuantFormat::Int4(cfg)) => {
                if !cfg.symmetric || cfg.scale_dtype != ScaleDType::BF16 {
                    return Err(Error::invalid(
                        "synthetic weights",
                        "int4 synthetic weights are symmetric with bf16 scales (Meta's recipe)",
                    ));
                }
                let k_slabs = k.div_ceil(SLAB_K);
                let groups = (k_slabs * SLAB_K).div_ceil(cfg.group_size);
                let tiles = n.div_ceil(TILE_ROWS);
                let qweight = self.fill::<u32>(tiles * k_slabs * SLAB_WORDS, Synth::U32Bits)?;
                let range = Synth::Range {
                    lo: 0.5 * s,
                    hi: 1.5 * s,
                };
                let scales = self.fill::<u16>(tiles * groups * TILE_ROWS, range)?;
                GpuLinear::Int4(GpuInt4Weight {
                    n,
                    k,
                    group_size: cfg.group_size,
                    act: Act16::BF16,
                    k_slabs,
                    groups,
                    qweight,
                    scales,
                    zero_bias: None,
                })
            }
            Some(QuantFormat::Fp8) => {
                let codes = self.fill::<u8>(n * k, Synth::Fp8Codes)?;
                let scales = self
                    .be
                    .stream()
                    .clone_htod(&vec![s; n])
                    .op("synthetic weights")?;
                GpuLinear::Fp8(GpuFp8Weight {
                    n,
                    k,
                    codes,
                    scales,
                })
            }
        })
    }
    fn mlp(&mut self, h: usize, inter: usize, format: Option<&QuantFormat>) -> Result<GpuExpert> {
        Ok(GpuExpert {
            gate: self.linear(inter, h, format)?,
            up: self.linear(inter, h, format)?,
            down: self.linear(h, inter, format)?,
        })
    }
    /// Norm weights in [0.9, 1.1), from the host mirror of the hash (small).
    fn norm(&mut self, n: usize) -> Result<CudaSlice<f32>> {
        let id = self.id();
        let v: Vec<f32> = (0..n as u64)
            .map(|i| 0.9 + 0.2 * (synthetic_u32(self.seed, id, i) as f32 / 4_294_967_296.0))
            .collect();
        self.be.stream().clone_htod(&v).op("synthetic weights")
    }
}

/// A model of `config` with synthetic weights made on `backend`'s device: what `spec` selects
/// quantized to its format (Meta's recipe: routed and shared experts), everything else bf16 (`None`:
/// all bf16). Fails with [`Error::OutOfMemory`] when a tensor does not fit.
pub fn synthetic_model(
    config: Config,
    spec: Option<&QuantizeSpec>,
    backend: CudaBackend,
    seed: u64,
) -> Result<Model<CudaBackend>> {
    config.validate_for_gpu()?;
    let fmt = |role| spec.filter(|s| s.selects(role)).map(|s| s.format);
    let c = &config;
    let (h, qd, kvd) = (
        c.hidden_size,
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    let mut m = Maker {
        be: &backend,
        seed,
        next: 0,
    };
    let mut layers = Vec::with_capacity(c.layers.len());
    for &kind in &c.layers {
        let att = fmt(Role::Attention);
        let ffn = if kind.moe {
            let router = m.bf16(c.num_local_experts, h)?;
            let routed = fmt(Role::RoutedExpert);
            let experts = (0..c.num_local_experts)
                .map(|_| m.mlp(h, c.intermediate_size, routed.as_ref()))
                .collect::<Result<Vec<_>>>()?;
            let shared = m.mlp(h, c.intermediate_size, fmt(Role::SharedExpert).as_ref())?;
            LayerFfn::Moe(GpuMoe::new(backend.stream(), router, experts, shared)?)
        } else {
            LayerFfn::Dense(m.mlp(h, c.intermediate_size_mlp, fmt(Role::DenseMlp).as_ref())?)
        };
        layers.push(Layer {
            kind,
            input_norm: m.norm(h)?,
            post_attention_norm: m.norm(h)?,
            q: m.linear(qd, h, att.as_ref())?,
            k: m.linear(kvd, h, att.as_ref())?,
            v: m.linear(kvd, h, att.as_ref())?,
            o: m.linear(h, qd, att.as_ref())?,
            ffn,
        });
    }
    let embed = CudaTable {
        vocab: c.vocab_size,
        dim: h,
        data: m.fill::<bf16>(c.vocab_size * h, Synth::Uniform { amp: 1.0 })?,
    };
    let norm = m.norm(h)?;
    let lm_head = m.linear(c.vocab_size, h, fmt(Role::LmHead).as_ref())?;
    Model::from_prepared(config, backend, embed, layers, norm, lm_head)
}
