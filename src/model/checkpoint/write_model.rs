//! [`super::write_checkpoint`]: a whole in-memory model as a checkpoint directory.
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::Dtype;

use super::writer::{self, encode_weight, write_json, write_units, Planned, Stored, Unit};
use super::{names, our_config, progress_bar, read, WriteOptions};
use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::weights::{Ffn, Weights};
use crate::quant::{Int4Config, Weight};
use crate::reference::moe::SwiGlu;

/// What one unit of [`write_model`] encodes.
enum Job<'a> {
    Weight(&'a Weight, Dtype),
    /// Dense f32 data (norms, router, embeddings).
    Vector(&'a [f32], Dtype),
    /// `[E, hidden, 2*inter]` from the experts' gate and up (x @ W layout).
    FusedGateUp(&'a [SwiGlu], Dtype),
    /// `[E, inter, hidden]` from the experts' down.
    FusedDown(&'a [SwiGlu], Dtype),
}

/// The units and jobs of a [`write_model`].
#[derive(Default)]
struct WritePlan<'a> {
    units: Vec<Unit>,
    jobs: Vec<Job<'a>>,
    int4: Option<Int4Config>,
    fp8: bool,
}

impl<'a> WritePlan<'a> {
    fn weight(&mut self, base: &str, w: &'a Weight) -> Result<()> {
        let dense = match w {
            Weight::Dense(d) => writer::exact_dtype(std::iter::once(d.data.as_slice())),
            Weight::Int4(q) => {
                if self.int4.is_some_and(|c| c != q.config) {
                    return Err(Error::invalid(
                        "write checkpoint",
                        format!(
                            "`{base}`: int4 config {:?} differs from another weight's {:?}",
                            q.config, self.int4
                        ),
                    ));
                }
                self.int4 = Some(q.config);
                Dtype::F32
            }
            Weight::Fp8(_) => {
                self.fp8 = true;
                Dtype::F32
            }
        };
        self.units.push(Unit {
            tensors: Stored::of(w, dense).plan(base, w.n(), w.k()),
        });
        self.jobs.push(Job::Weight(w, dense));
        Ok(())
    }

    /// A dense tensor of any shape (norms, the router, the embeddings).
    fn dense(&mut self, name: &str, v: &'a [f32], shape: Vec<usize>) {
        let dt = writer::exact_dtype(std::iter::once(v));
        self.units.push(Unit {
            tensors: vec![Planned::new(name, dt, shape)],
        });
        self.jobs.push(Job::Vector(v, dt));
    }

    fn mlp(&mut self, prefix: &str, m: &'a SwiGlu) -> Result<()> {
        for (part, w) in names::MLP_PARTS.iter().zip([&m.gate, &m.up, &m.down]) {
            self.weight(&format!("{prefix}.{part}"), w)?;
        }
        Ok(())
    }

    /// Routed experts: fused Hugging Face tensors when all are dense, else one set per expert.
    fn experts(
        &mut self,
        l: usize,
        experts: &'a [SwiGlu],
        hidden: usize,
        inter: usize,
    ) -> Result<()> {
        let all_dense = experts.iter().all(|m| {
            [&m.gate, &m.up, &m.down]
                .iter()
                .all(|w| matches!(w, Weight::Dense(_)))
        });
        if !all_dense {
            for (e, m) in experts.iter().enumerate() {
                self.mlp(&names::layer(l, &format!("feed_forward.experts.{e}")), m)?;
            }
            return Ok(());
        }
        let data = |w: &'a Weight| match w {
            Weight::Dense(d) => d.data.as_slice(),
            _ => &[],
        };
        let e = experts.len();
        let gu = writer::exact_dtype(experts.iter().flat_map(|m| [data(&m.gate), data(&m.up)]));
        let dn = writer::exact_dtype(experts.iter().map(|m| data(&m.down)));
        let name = names::layer(l, "feed_forward.experts.gate_up_proj");
        self.units.push(Unit {
            tensors: vec![Planned::new(name, gu, vec![e, hidden, 2 * inter])],
        });
        self.jobs.push(Job::FusedGateUp(experts, gu));
        let name = names::layer(l, "feed_forward.experts.down_proj");
        self.units.push(Unit {
            tensors: vec![Planned::new(name, dn, vec![e, inter, hidden])],
        });
        self.jobs.push(Job::FusedDown(experts, dn));
        Ok(())
    }
}

/// Plans and writes a whole model (see [`super::write_checkpoint`]).
pub(super) fn write_model(
    dir: &Path,
    config: &Config,
    weights: &Weights,
    opts: &WriteOptions,
) -> Result<()> {
    config.validate()?;
    check_weights(config, weights)?;
    let (h, inter) = (config.hidden_size, config.intermediate_size);
    let mut plan = WritePlan::default();
    let e = &weights.embed;
    plan.dense(&format!("{}.weight", names::EMBED), &e.data, vec![e.n, e.k]);
    for (l, lw) in weights.layers.iter().enumerate() {
        plan.dense(
            &names::layer(l, "input_layernorm.weight"),
            &lw.input_norm,
            vec![h],
        );
        plan.dense(
            &names::layer(l, "post_attention_layernorm.weight"),
            &lw.post_attention_norm,
            vec![h],
        );
        for (part, w) in names::ATTN_PARTS.iter().zip([&lw.q, &lw.k, &lw.v, &lw.o]) {
            plan.weight(&names::layer(l, &format!("self_attn.{part}")), w)?;
        }
        match &lw.ffn {
            Ffn::Dense(m) => plan.mlp(&names::layer(l, "feed_forward"), m)?,
            Ffn::Moe {
                router,
                experts,
                shared,
            } => {
                plan.dense(
                    &names::layer(l, "feed_forward.router.weight"),
                    &router.data,
                    vec![router.n, router.k],
                );
                plan.experts(l, experts, h, inter)?;
                plan.mlp(&names::layer(l, "feed_forward.shared_expert"), shared)?;
            }
        }
    }
    plan.dense(names::FINAL_NORM, &weights.norm, vec![h]);
    if !config.tie_word_embeddings {
        plan.weight(names::LM_HEAD, &weights.lm_head)?;
    }

    let mut json = config.to_json();
    if plan.int4.is_some() || plan.fp8 {
        json["quantization_config"] = our_config(plan.int4, plan.fp8, None);
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_json(&dir.join("config.json"), &json)?;
    let metadata = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("producer".into(), "llama4-cuda".into()),
    ]);
    let bar = progress_bar(opts.progress, plan.units.len() as u64, "writing");
    let produce = |u: usize| -> Result<Vec<Cow<'static, [u8]>>> {
        let bytes = match &plan.jobs[u] {
            Job::Weight(w, dt) => encode_weight(w, *dt),
            Job::Vector(v, dt) => vec![writer::encode_f32(v, *dt)],
            Job::FusedGateUp(ex, dt) => vec![writer::encode_f32(&fuse(ex, h, inter, true), *dt)],
            Job::FusedDown(ex, dt) => vec![writer::encode_f32(&fuse(ex, h, inter, false), *dt)],
        };
        Ok(bytes.into_iter().map(Cow::Owned).collect())
    };
    write_units(dir, &plan.units, &metadata, opts.shard_bytes, &bar, produce)?;
    bar.finish_and_clear();
    Ok(())
}

/// The Hugging Face fused experts tensor (x @ W layout): `gate_up` `[E, hidden, 2*inter]` with
/// `[e, i, o] = gate[o, i]` and `[e, i, inter + o] = up[o, i]`, or down `[E, inter, hidden]` with
/// `[e, i, o] = down[o, i]`.
fn fuse(experts: &[SwiGlu], hidden: usize, inter: usize, gate_up: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity(experts.len() * hidden * inter * if gate_up { 2 } else { 1 });
    for m in experts {
        if gate_up {
            let (g, u) = (m.gate.dequantize(), m.up.dequantize());
            out.extend(
                read::transpose_cols(&g, inter, hidden, 0, hidden)
                    .chunks(inter)
                    .zip(read::transpose_cols(&u, inter, hidden, 0, hidden).chunks(inter))
                    .flat_map(|(a, b)| a.iter().chain(b).copied()),
            );
        } else {
            out.extend(read::transpose_cols(
                &m.down.dequantize(),
                hidden,
                inter,
                0,
                inter,
            ));
        }
    }
    out
}

/// Checks that `weights` has the shapes `config` describes.
fn check_weights(config: &Config, weights: &Weights) -> Result<()> {
    const OP: &str = "write checkpoint";
    let (h, hd) = (config.hidden_size, config.head_dim);
    let (qd, kvd) = (
        config.num_attention_heads * hd,
        config.num_key_value_heads * hd,
    );
    let lin = |name: &str, n: usize, k: usize, want: (usize, usize)| -> Result<()> {
        if (n, k) == want {
            Ok(())
        } else {
            Err(Error::shape(
                OP,
                format!(
                    "`{name}`: [{n}, {k}], config implies [{}, {}]",
                    want.0, want.1
                ),
            ))
        }
    };
    let w = |name: &str, w: &Weight, want| lin(name, w.n(), w.k(), want);
    let vec = |name: &str, v: &[f32]| lin(name, v.len(), 1, (h, 1));
    let mlp = |prefix: &str, m: &SwiGlu, inter: usize| -> Result<()> {
        w(&format!("{prefix}.gate_proj"), &m.gate, (inter, h))?;
        w(&format!("{prefix}.up_proj"), &m.up, (inter, h))?;
        w(&format!("{prefix}.down_proj"), &m.down, (h, inter))
    };
    let e = &weights.embed;
    lin(names::EMBED, e.n, e.k, (config.vocab_size, h))?;
    lin("model.embed_tokens data", e.data.len(), 1, (e.n * e.k, 1))?;
    if weights.layers.len() != config.num_hidden_layers {
        return Err(Error::shape(
            OP,
            format!(
                "{} layers, config has {}",
                weights.layers.len(),
                config.num_hidden_layers
            ),
        ));
    }
    for (l, (lw, kind)) in weights.layers.iter().zip(&config.layers).enumerate() {
        let p = |s: &str| names::layer(l, s);
        vec(&p("input_layernorm"), &lw.input_norm)?;
        vec(&p("post_attention_layernorm"), &lw.post_attention_norm)?;
        w(&p("self_attn.q_proj"), &lw.q, (qd, h))?;
        w(&p("self_attn.k_proj"), &lw.k, (kvd, h))?;
        w(&p("self_attn.v_proj"), &lw.v, (kvd, h))?;
        w(&p("self_attn.o_proj"), &lw.o, (h, qd))?;
        match (&lw.ffn, kind.moe) {
            (Ffn::Dense(m), false) => mlp(&p("feed_forward"), m, config.intermediate_size_mlp)?,
            (
                Ffn::Moe {
                    router,
                    experts,
                    shared,
                },
                true,
            ) => {
                lin(
                    &p("feed_forward.router"),
                    router.n,
                    router.k,
                    (config.num_local_experts, h),
                )?;
                lin(
                    &p("feed_forward.router data"),
                    router.data.len(),
                    1,
                    (router.n * router.k, 1),
                )?;
                lin(
                    &p("feed_forward.experts (count)"),
                    experts.len(),
                    1,
                    (config.num_local_experts, 1),
                )?;
                for (ex, m) in experts.iter().enumerate() {
                    mlp(
                        &p(&format!("feed_forward.experts.{ex}")),
                        m,
                        config.intermediate_size,
                    )?;
                }
                mlp(
                    &p("feed_forward.shared_expert"),
                    shared,
                    config.intermediate_size,
                )?;
            }
            (_, moe) => {
                return Err(Error::shape(
                    OP,
                    format!("layer {l}: config says moe = {moe}, the weights disagree"),
                ));
            }
        }
    }
    vec(names::FINAL_NORM, &weights.norm)?;
    w(names::LM_HEAD, &weights.lm_head, (config.vocab_size, h))
}
