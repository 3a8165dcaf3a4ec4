//! The Llama 4 text decoder (LLAMA4.md "Forward pass"), generic over the [`Backend`] that runs its ops.
//! Scout and Maverick are the same code with different [`Config`]s.
use super::backend::{Backend, CpuBackend, HeadShape};
use super::cache::{Cache, CacheOptions};
use super::config::{Config, LayerKind};
use super::weights::{Ffn, LayerWeights, Weights};
use crate::error::{Error, Result};
use crate::quant::Weight;
use crate::reference::attention::{AttnParams, MaskKind, TempTuning};
use crate::reference::moe::SwiGlu;
use crate::reference::rope::inv_freq;

/// Which positions' logits a forward returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Every position: `[tokens, vocab]`.
    All,
    /// The last position only: `[1, vocab]` (generation).
    Last,
}

/// A layer's feed-forward part, prepared for a backend.
pub enum LayerFfn<B: Backend> {
    Dense(B::Mlp),
    Moe(B::Moe),
}

/// One decoder layer's weights, prepared for a backend (what [`Model::from_prepared`] takes when the
/// weights were made on the device, e.g. `synthetic_gpu`).
pub struct Layer<B: Backend> {
    pub kind: LayerKind,
    pub input_norm: B::Vector,
    pub post_attention_norm: B::Vector,
    pub q: B::Linear,
    pub k: B::Linear,
    pub v: B::Linear,
    pub o: B::Linear,
    pub ffn: LayerFfn<B>,
}

/// A Llama 4 text model on a backend.
pub struct Model<B: Backend = CpuBackend> {
    config: Config,
    backend: B,
    embed: B::Table,
    layers: Vec<Layer<B>>,
    norm: B::Vector,
    lm_head: B::Linear,
    inv_freq: B::Vector,
}

impl<B: Backend> Model<B> {
    /// Checks every weight's shape against the config, then hands the weights to the backend.
    pub fn new(config: Config, weights: Weights, backend: B) -> Result<Self> {
        config.validate()?;
        check_weights(&config, &weights)?;
        let Weights {
            embed,
            layers,
            norm,
            lm_head,
        } = weights;
        let layers = layers
            .into_iter()
            .zip(&config.layers)
            .map(|(l, &kind)| prepare_layer(&backend, kind, l))
            .collect::<Result<Vec<_>>>()?;
        let embed = backend.prepare_table(embed)?;
        let norm = backend.prepare_vector(norm)?;
        let lm_head = backend.prepare_linear(lm_head)?;
        Self::from_prepared(config, backend, embed, layers, norm, lm_head)
    }

    /// A model from weights already prepared for `backend` (no host copy of them exists), after
    /// checking the layer count and kinds against the config.
    pub fn from_prepared(
        config: Config,
        backend: B,
        embed: B::Table,
        layers: Vec<Layer<B>>,
        norm: B::Vector,
        lm_head: B::Linear,
    ) -> Result<Self> {
        config.validate()?;
        if layers.len() != config.layers.len()
            || layers.iter().zip(&config.layers).any(|(l, k)| l.kind != *k)
        {
            return Err(Error::shape(
                "model",
                format!(
                    "{} prepared layers do not match the config's {} layer kinds",
                    layers.len(),
                    config.layers.len()
                ),
            ));
        }
        let freqs = inv_freq(
            config.head_dim,
            config.rope_theta,
            config.rope_scaling.as_ref(),
        );
        Ok(Model {
            inv_freq: backend.prepare_vector(freqs)?,
            embed,
            layers,
            norm,
            lm_head,
            config,
            backend,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The embedding table.
    pub fn embed(&self) -> &B::Table {
        &self.embed
    }
    /// The decoder layers.
    pub fn layers(&self) -> &[Layer<B>] {
        &self.layers
    }
    /// The final norm's weight.
    pub fn final_norm(&self) -> &B::Vector {
        &self.norm
    }
    /// The output projection.
    pub fn lm_head(&self) -> &B::Linear {
        &self.lm_head
    }
    /// RoPE inverse frequencies (llama3-scaled), `[head_dim / 2]`.
    pub fn inv_freq(&self) -> &B::Vector {
        &self.inv_freq
    }
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// A fresh cache for one sequence of at most `max_tokens` tokens (f32, default pages).
    pub fn new_cache(&self, max_tokens: usize) -> Result<Cache<B>> {
        self.new_cache_with(max_tokens, &CacheOptions::default())
    }

    /// A fresh cache with explicit page size and dtype.
    pub fn new_cache_with(&self, max_tokens: usize, opts: &CacheOptions) -> Result<Cache<B>> {
        Cache::new(&self.backend, &self.config, max_tokens, opts)
    }

    /// Runs `tokens` at the next positions of `cache` (a prefill when several, a decode step when one)
    /// and returns their logits, row-major `[rows, vocab]`. On any error the cache is marked unusable.
    pub fn forward(&self, cache: &mut Cache<B>, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        cache.check_usable()?;
        let start = cache.len();
        if tokens.is_empty() {
            return Err(Error::invalid("forward", "no tokens given"));
        }
        let end = start + tokens.len();
        if end > cache.capacity() {
            return Err(Error::ContextTooLong {
                needed: end,
                limit: cache.capacity(),
            });
        }
        self.check_tokens(tokens)?;
        cache.set_poisoned(true);
        let logits = self.forward_layers(cache, tokens, start, which)?;
        cache.advance(tokens.len());
        cache.set_poisoned(false);
        Ok(logits)
    }

    /// Logits of every position of `tokens` on a fresh cache: the first `prefill` tokens (all when
    /// `None`) in one forward, then the rest one at a time.
    pub fn logits(&self, tokens: &[u32], prefill: Option<usize>) -> Result<Vec<f32>> {
        let n = prefill.unwrap_or(tokens.len());
        if n == 0 || n > tokens.len() {
            return Err(Error::invalid(
                "logits",
                format!(
                    "prefill {n} must be in 1..={} (the token count)",
                    tokens.len()
                ),
            ));
        }
        let mut cache = self.new_cache(tokens.len())?;
        let mut out = self.forward(&mut cache, &tokens[..n], Logits::All)?;
        for t in &tokens[n..] {
            out.extend(self.forward(&mut cache, std::slice::from_ref(t), Logits::All)?);
        }
        Ok(out)
    }

    /// Fails on the first token id outside the vocabulary.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let vocab = self.config.vocab_size;
        match tokens.iter().position(|&t| t as usize >= vocab) {
            Some(i) => Err(Error::invalid(
                "tokens",
                format!(
                    "token id {} (at index {i}) is outside the vocabulary of {vocab}",
                    tokens[i]
                ),
            )),
            None => Ok(()),
        }
    }

    fn forward_layers(
        &self,
        cache: &mut Cache<B>,
        tokens: &[u32],
        start: usize,
        which: Logits,
    ) -> Result<Vec<f32>> {
        let (b, c) = (&self.backend, &self.config);
        let eps = c.rms_norm_eps;
        let shape = HeadShape {
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        };
        let mut x = b.embedding(&self.embed, tokens)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = b.rms_norm(&x, &layer.input_norm, eps)?;
            let mut q = b.linear(&h, &layer.q)?;
            let mut k = b.linear(&h, &layer.k)?;
            let v = b.linear(&h, &layer.v)?;
            if layer.kind.rope {
                let qk_norm = c.use_qk_norm.then_some(eps);
                b.rope_qk_norm(&mut q, &mut k, shape, start, &self.inv_freq, qk_norm)?;
            }
            let a = b.attention(
                &q,
                &k,
                &v,
                cache.layer_mut(i)?,
                start,
                &self.attn_params(layer.kind),
            )?;
            b.residual_add(&mut x, &b.linear(&a, &layer.o)?)?;
            let h = b.rms_norm(&x, &layer.post_attention_norm, eps)?;
            let f = match &layer.ffn {
                LayerFfn::Dense(mlp) => b.swiglu(&h, mlp)?,
                LayerFfn::Moe(moe) => b.moe(&h, moe, c.num_experts_per_tok)?,
            };
            b.residual_add(&mut x, &f)?;
        }
        let x = match which {
            Logits::All => x,
            Logits::Last => b.last_row(&x)?,
        };
        b.logits(&b.rms_norm(&x, &self.norm, eps)?, &self.lm_head)
    }

    /// Chunked-local attention on RoPE layers; global causal attention with temperature tuning on NoPE
    /// layers.
    pub fn attn_params(&self, kind: LayerKind) -> AttnParams {
        let c = &self.config;
        let (mask, temp) = if kind.rope {
            (
                MaskKind::ChunkedLocal {
                    chunk: c.attention_chunk_size,
                },
                None,
            )
        } else {
            let t = TempTuning {
                floor_scale: c.floor_scale,
                attn_scale: c.attn_scale,
            };
            (MaskKind::Causal, c.attn_temperature_tuning.then_some(t))
        };
        AttnParams {
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            scale: (c.head_dim as f32).powf(-0.5),
            mask,
            temp,
        }
    }
}

fn prepare_layer<B: Backend>(b: &B, kind: LayerKind, l: LayerWeights) -> Result<Layer<B>> {
    let ffn = match l.ffn {
        Ffn::Dense(mlp) => LayerFfn::Dense(b.prepare_mlp(mlp)?),
        Ffn::Moe {
            router,
            experts,
            shared,
        } => LayerFfn::Moe(b.prepare_moe(router, experts, shared)?),
    };
    Ok(Layer {
        kind,
        input_norm: b.prepare_vector(l.input_norm)?,
        post_attention_norm: b.prepare_vector(l.post_attention_norm)?,
        q: b.prepare_linear(l.q)?,
        k: b.prepare_linear(l.k)?,
        v: b.prepare_linear(l.v)?,
        o: b.prepare_linear(l.o)?,
        ffn,
    })
}

fn check_shape(name: &str, w: &Weight, n: usize, k: usize) -> Result<()> {
    if (w.n(), w.k()) != (n, k) {
        return Err(Error::shape(
            "model",
            format!("{name} is [{}, {}], expected [{n}, {k}]", w.n(), w.k()),
        ));
    }
    Ok(())
}

fn check_mlp(name: &str, m: &SwiGlu, hidden: usize, inter: usize) -> Result<()> {
    check_shape(&format!("{name}.gate_proj"), &m.gate, inter, hidden)?;
    check_shape(&format!("{name}.up_proj"), &m.up, inter, hidden)?;
    check_shape(&format!("{name}.down_proj"), &m.down, hidden, inter)
}

fn check_vec(name: &str, v: &[f32], len: usize) -> Result<()> {
    crate::error::check_len("model", name, v.len(), len)
}

/// Every tensor's shape against the config, named as in the checkpoint.
fn check_weights(c: &Config, w: &Weights) -> Result<()> {
    let (hidden, vocab) = (c.hidden_size, c.vocab_size);
    let (qd, kvd) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    if (w.embed.n, w.embed.k) != (vocab, hidden) || w.embed.data.len() != vocab * hidden {
        return Err(Error::shape(
            "model",
            format!(
                "embed_tokens is [{}, {}], expected [{vocab}, {hidden}]",
                w.embed.n, w.embed.k
            ),
        ));
    }
    check_shape("lm_head", &w.lm_head, vocab, hidden)?;
    check_vec("norm", &w.norm, hidden)?;
    if w.layers.len() != c.num_hidden_layers {
        return Err(Error::shape(
            "model",
            format!(
                "{} layers, config has {}",
                w.layers.len(),
                c.num_hidden_layers
            ),
        ));
    }
    for (i, (l, kind)) in w.layers.iter().zip(&c.layers).enumerate() {
        let p = format!("layers.{i}");
        check_vec(&format!("{p}.input_layernorm"), &l.input_norm, hidden)?;
        check_vec(
            &format!("{p}.post_attention_layernorm"),
            &l.post_attention_norm,
            hidden,
        )?;
        check_shape(&format!("{p}.self_attn.q_proj"), &l.q, qd, hidden)?;
        check_shape(&format!("{p}.self_attn.k_proj"), &l.k, kvd, hidden)?;
        check_shape(&format!("{p}.self_attn.v_proj"), &l.v, kvd, hidden)?;
        check_shape(&format!("{p}.self_attn.o_proj"), &l.o, hidden, qd)?;
        let f = format!("{p}.feed_forward");
        match (&l.ffn, kind.moe) {
            (Ffn::Dense(m), false) => check_mlp(&f, m, hidden, c.intermediate_size_mlp)?,
            (
                Ffn::Moe {
                    router,
                    experts,
                    shared,
                },
                true,
            ) => {
                let e = c.num_local_experts;
                if (router.n, router.k) != (e, hidden) || router.data.len() != e * hidden {
                    return Err(Error::shape(
                        "model",
                        format!(
                            "{f}.router is [{}, {}], expected [{e}, {hidden}]",
                            router.n, router.k
                        ),
                    ));
                }
                if experts.len() != e {
                    return Err(Error::shape(
                        "model",
                        format!("{f}.experts has {} experts, expected {e}", experts.len()),
                    ));
                }
                for (j, x) in experts.iter().enumerate() {
                    check_mlp(&format!("{f}.experts.{j}"), x, hidden, c.intermediate_size)?;
                }
                check_mlp(
                    &format!("{f}.shared_expert"),
                    shared,
                    hidden,
                    c.intermediate_size,
                )?;
            }
            (_, moe) => {
                let want = if moe { "MoE" } else { "dense" };
                return Err(Error::shape(
                    "model",
                    format!("{f}: the config makes layer {i} {want}, the weights do not"),
                ));
            }
        }
    }
    Ok(())
}
