//! Where every weight of the model is stored, resolved and checked against the config (present,
//! shape, dtype) before any data is read.
use std::collections::HashSet;

use safetensors::tensor::Dtype;

use super::files::{is_float, Files, TensorLoc};
use super::names::{self, Naming, ATTN_PARTS, MLP_PARTS};
use super::qconfig::StoredQuant;
use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::quant::{Fp8Scaling, Int4Config, ScaleDType};

const OP: &str = "load checkpoint";

/// What a linear weight is, for [`crate::model::quantize::QuantizeSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Embed,
    Attention,
    Router,
    RoutedExpert,
    SharedExpert,
    DenseMlp,
    LmHead,
}

/// Which slice of a fused Hugging Face experts tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Gate,
    Up,
    Down,
}

/// How a linear weight is stored (full tensor names).
#[derive(Clone, Debug)]
pub(crate) enum Src {
    /// A bf16 / f16 / f32 `[n, k]` tensor.
    Float { t: String },
    /// fp8 e4m3 codes `[n, k]` and their scale (`[n, 1]` / `[n]` per channel, `[1]` / `[]` per tensor).
    Fp8 {
        w: String,
        scale: String,
        scaling: Fp8Scaling,
    },
    /// This library's int4: `.qweight` u8 `[n, ceil(k/2)]`, `.scales` `[n, groups]`, `.zeros` (asymmetric).
    Int4 {
        q: String,
        scales: String,
        zeros: Option<String>,
        config: Int4Config,
    },
    /// Expert `expert` of a fused `experts.gate_up_proj` `[E, hidden, 2*inter]` or
    /// `experts.down_proj` `[E, inter, hidden]` (x @ W layout).
    Fused {
        t: String,
        expert: usize,
        part: Part,
    },
}

impl Src {
    /// The stored tensors (for copying them verbatim).
    pub fn tensors(&self) -> Vec<&str> {
        match self {
            Src::Float { t } | Src::Fused { t, .. } => vec![t],
            Src::Fp8 { w, scale, .. } => vec![w, scale],
            Src::Int4 {
                q, scales, zeros, ..
            } => {
                let mut v = vec![q.as_str(), scales.as_str()];
                v.extend(zeros.as_deref());
                v
            }
        }
    }
}

/// A linear weight `[n, k]`: its canonical base name (no `.weight`), role and storage.
#[derive(Clone, Debug)]
pub(crate) struct Lin {
    pub canon: String,
    pub role: Role,
    pub n: usize,
    pub k: usize,
    pub src: Src,
}

#[derive(Clone, Debug)]
pub(crate) struct MlpSrc {
    pub gate: Lin,
    pub up: Lin,
    pub down: Lin,
}

#[derive(Clone, Debug)]
pub(crate) enum FfnSrc {
    Dense(Box<MlpSrc>),
    /// `fused`: the layer's `(gate_up_proj, down_proj)` full names when the experts are fused.
    Moe {
        router: Box<Lin>,
        experts: Vec<MlpSrc>,
        shared: Box<MlpSrc>,
        fused: Option<(String, String)>,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct LayerSrc {
    pub input_norm: String,
    pub post_norm: String,
    /// q, k, v, o.
    pub attn: [Lin; 4],
    pub ffn: FfnSrc,
}

/// Every weight of the model, resolved.
#[derive(Clone, Debug)]
pub(crate) struct ModelSrc {
    pub naming: Naming,
    pub embed: Lin,
    pub norm: String,
    pub lm_head: Lin,
    pub layers: Vec<LayerSrc>,
}

/// Resolves and checks every tensor the config needs; errors if one is missing, misshapen, of a
/// dtype that cannot be read, disagrees with quantization_config, or if a (non-vision) tensor is left
/// that the config does not account for.
pub(crate) fn resolve(files: &Files, cfg: &Config, stored: &StoredQuant) -> Result<ModelSrc> {
    let naming = Naming::detect(files.names());
    let r = Resolver {
        files,
        naming,
        stored,
        used: std::cell::RefCell::new(HashSet::new()),
    };
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let embed = r.linear(
        names::EMBED,
        Role::Embed,
        cfg.vocab_size,
        h,
        "[vocab_size, hidden_size]",
    )?;
    let norm = r.vector(names::FINAL_NORM, h)?;
    let lm_head = if cfg.tie_word_embeddings {
        // Tied: transformers ignores a stored lm_head.
        r.mark(&naming.full(&format!("{}.weight", names::LM_HEAD)));
        Lin {
            canon: names::LM_HEAD.into(),
            role: Role::LmHead,
            ..embed.clone()
        }
    } else {
        r.linear(
            names::LM_HEAD,
            Role::LmHead,
            cfg.vocab_size,
            h,
            "[vocab_size, hidden_size]",
        )?
    };
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for (l, kind) in cfg.layers.iter().enumerate() {
        let qd = cfg.num_attention_heads * hd;
        let kvd = cfg.num_key_value_heads * hd;
        let shapes = [
            (qd, h, "[num_attention_heads * head_dim, hidden_size]"),
            (kvd, h, "[num_key_value_heads * head_dim, hidden_size]"),
            (kvd, h, "[num_key_value_heads * head_dim, hidden_size]"),
            (h, qd, "[hidden_size, num_attention_heads * head_dim]"),
        ];
        let mut attn = Vec::with_capacity(4);
        for (part, (n, k, hint)) in ATTN_PARTS.iter().zip(shapes) {
            attn.push(r.linear(
                &names::layer(l, &format!("self_attn.{part}")),
                Role::Attention,
                n,
                k,
                hint,
            )?);
        }
        let attn: [Lin; 4] = attn
            .try_into()
            .map_err(|_| Error::invalid(OP, "four attention projections"))?;
        let ffn = if kind.moe {
            r.moe(cfg, l)?
        } else {
            FfnSrc::Dense(Box::new(r.mlp(
                &names::layer(l, "feed_forward"),
                Role::DenseMlp,
                cfg.intermediate_size_mlp,
                h,
                "intermediate_size_mlp",
            )?))
        };
        layers.push(LayerSrc {
            input_norm: r.vector(&names::layer(l, "input_layernorm.weight"), h)?,
            post_norm: r.vector(&names::layer(l, "post_attention_layernorm.weight"), h)?,
            attn,
            ffn,
        });
    }
    let used = r.used.borrow();
    let mut left: Vec<&str> = files
        .names()
        .filter(|n| !used.contains(*n) && !names::is_vision(n))
        .collect();
    left.sort_unstable();
    if let Some(first) = left.first() {
        let loc = files
            .get(first)
            .ok_or_else(|| Error::invalid(OP, "tensor listed but not found"))?;
        return Err(Error::checkpoint(
            files.path_of(loc),
            format!(
                "tensor `{first}` (and {} more) is not part of the model config.json describes \
                 ({} layers, MoE layers {:?}): the config disagrees with the checkpoint",
                left.len() - 1,
                cfg.num_hidden_layers,
                (0..cfg.layers.len())
                    .filter(|&i| cfg.layers[i].moe)
                    .collect::<Vec<_>>(),
            ),
        ));
    }
    Ok(ModelSrc {
        naming,
        embed,
        norm,
        lm_head,
        layers,
    })
}

struct Resolver<'a> {
    files: &'a Files,
    naming: Naming,
    stored: &'a StoredQuant,
    used: std::cell::RefCell<HashSet<String>>,
}

impl Resolver<'_> {
    fn mark(&self, full: &str) {
        self.used.borrow_mut().insert(full.to_string());
    }

    fn find(&self, full: &str) -> Option<&TensorLoc> {
        let loc = self.files.get(full)?;
        self.mark(full);
        Some(loc)
    }

    fn missing(&self, full: &str) -> Error {
        Error::checkpoint(self.files.listing(), format!("missing tensor `{full}`"))
    }

    fn check_shape(&self, full: &str, loc: &TensorLoc, want: &[usize], hint: &str) -> Result<()> {
        if loc.shape == want {
            return Ok(());
        }
        Err(Error::shape(
            OP,
            format!(
                "tensor `{full}` in {}: shape {:?}, but config.json implies {want:?} {hint}",
                self.files.path_of(loc).display(),
                loc.shape
            ),
        ))
    }

    fn dtype_error(&self, full: &str, loc: &TensorLoc, expected: &str) -> Error {
        Error::DType {
            op: OP,
            msg: format!(
                "tensor `{full}` in {}: dtype {} is not supported here (expected {expected})",
                self.files.path_of(loc).display(),
                loc.dtype
            ),
        }
    }

    fn float(&self, full: &str, want: &[usize], hint: &str) -> Result<()> {
        let loc = self.find(full).ok_or_else(|| self.missing(full))?;
        if !is_float(loc.dtype) {
            return Err(self.dtype_error(full, loc, "bf16, f16 or f32"));
        }
        self.check_shape(full, loc, want, hint)
    }

    /// A norm weight `[n]`.
    fn vector(&self, canon: &str, n: usize) -> Result<String> {
        let full = self.naming.full(canon);
        self.float(&full, &[n], "[hidden_size]")?;
        Ok(full)
    }

    /// A linear weight stored any supported way.
    fn linear(&self, canon: &str, role: Role, n: usize, k: usize, hint: &str) -> Result<Lin> {
        let base = self.naming.full(canon);
        let src = if let Some(q) = self.find(&format!("{base}.qweight")) {
            self.int4(&base, q, n, k)?
        } else {
            let wname = format!("{base}.weight");
            let w = self.find(&wname).ok_or_else(|| self.missing(&wname))?;
            let src = match w.dtype {
                d if is_float(d) => {
                    self.check_shape(&wname, w, &[n, k], hint)?;
                    Src::Float { t: wname.clone() }
                }
                Dtype::F8_E4M3 => self.fp8(&base, w, n, k, hint)?,
                _ => {
                    return Err(self.dtype_error(
                        &wname,
                        w,
                        "bf16, f16, f32 or f8_e4m3 with a weight_scale",
                    ))
                }
            };
            // The embedding table is an nn.Embedding, never a quantization target.
            let expected = if role == Role::Embed {
                None
            } else {
                self.stored.expects_fp8(&base)
            };
            if let Some(want_fp8) = expected {
                let is_fp8 = matches!(src, Src::Fp8 { .. });
                if want_fp8 != is_fp8 {
                    return Err(Error::config(
                        "quantization_config",
                        &base,
                        format!(
                            "module `{base}` is stored as {} in {} but quantization_config says it is {}",
                            w.dtype,
                            self.files.path_of(w).display(),
                            if want_fp8 { "fp8 (not in `ignore`)" } else { "not quantized (in `ignore`)" }
                        ),
                    ));
                }
            }
            src
        };
        Ok(Lin {
            canon: canon.to_string(),
            role,
            n,
            k,
            src,
        })
    }

    fn fp8(&self, base: &str, w: &TensorLoc, n: usize, k: usize, hint: &str) -> Result<Src> {
        let wname = format!("{base}.weight");
        self.check_shape(&wname, w, &[n, k], hint)?;
        let sname = format!("{base}.weight_scale");
        let s = self.find(&sname).ok_or_else(|| self.missing(&sname))?;
        if !is_float(s.dtype) {
            return Err(self.dtype_error(&sname, s, "bf16, f16 or f32"));
        }
        let scaling = match s.shape.as_slice() {
            [m, 1] | [m] if *m == n => Fp8Scaling::PerChannel,
            [] | [1] | [1, 1] => Fp8Scaling::PerTensor,
            _ => {
                return Err(Error::shape(
                    OP,
                    format!(
                        "tensor `{sname}` in {}: shape {:?}, expected [{n}, 1] (per channel) or [1] (per tensor)",
                        self.files.path_of(s).display(),
                        s.shape
                    ),
                ))
            }
        };
        Ok(Src::Fp8 {
            w: wname,
            scale: sname,
            scaling,
        })
    }

    fn int4(&self, base: &str, q: &TensorLoc, n: usize, k: usize) -> Result<Src> {
        let qname = format!("{base}.qweight");
        let mut config = self.stored.int4().ok_or_else(|| {
            Error::config(
                "quantization_config.int4",
                "missing",
                format!("tensor `{qname}` is int4 but config.json gives no int4 parameters"),
            )
        })?;
        if q.dtype != Dtype::U8 {
            return Err(self.dtype_error(&qname, q, "u8 (two int4 per byte)"));
        }
        self.check_shape(&qname, q, &[n, k.div_ceil(2)], "[out, ceil(in / 2)]")?;
        let groups = k.div_ceil(config.group_size);
        let sname = format!("{base}.scales");
        let s = self.find(&sname).ok_or_else(|| self.missing(&sname))?;
        let scale_dtype = match s.dtype {
            Dtype::BF16 => ScaleDType::BF16,
            Dtype::F32 => ScaleDType::F32,
            _ => return Err(self.dtype_error(&sname, s, "bf16 or f32")),
        };
        if scale_dtype != config.scale_dtype {
            return Err(Error::config(
                "quantization_config.int4.scale_dtype",
                format!("{:?}", config.scale_dtype),
                format!("tensor `{sname}` is {}", s.dtype),
            ));
        }
        self.check_shape(&sname, s, &[n, groups], "[out, ceil(in / group_size)]")?;
        let zname = format!("{base}.zeros");
        let zeros = match (self.find(&zname), config.symmetric) {
            (None, true) => None,
            (Some(z), false) => {
                if z.dtype != Dtype::U8 {
                    return Err(self.dtype_error(&zname, z, "u8"));
                }
                self.check_shape(&zname, z, &[n, groups], "[out, ceil(in / group_size)]")?;
                Some(zname)
            }
            (None, false) => return Err(self.missing(&zname)),
            (Some(_), true) => {
                return Err(Error::config(
                    "quantization_config.int4.symmetric",
                    true,
                    format!("but the checkpoint has zero points `{zname}`"),
                ))
            }
        };
        config.scale_dtype = scale_dtype;
        Ok(Src::Int4 {
            q: qname,
            scales: sname,
            zeros,
            config,
        })
    }

    /// A SwiGLU MLP under `prefix` (`...feed_forward`, `...shared_expert`, `...experts.{e}`).
    fn mlp(
        &self,
        prefix: &str,
        role: Role,
        inter: usize,
        h: usize,
        inter_key: &str,
    ) -> Result<MlpSrc> {
        let in_hint = format!("[{inter_key}, hidden_size]");
        let out_hint = format!("[hidden_size, {inter_key}]");
        let [g, u, d] = MLP_PARTS.map(|p| format!("{prefix}.{p}"));
        Ok(MlpSrc {
            gate: self.linear(&g, role, inter, h, &in_hint)?,
            up: self.linear(&u, role, inter, h, &in_hint)?,
            down: self.linear(&d, role, h, inter, &out_hint)?,
        })
    }

    fn moe(&self, cfg: &Config, l: usize) -> Result<FfnSrc> {
        let (h, i, e) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_local_experts,
        );
        let router = self.linear(
            &names::layer(l, "feed_forward.router"),
            Role::Router,
            e,
            h,
            "[num_local_experts, hidden_size]",
        )?;
        let shared = self.mlp(
            &names::layer(l, "feed_forward.shared_expert"),
            Role::SharedExpert,
            i,
            h,
            "intermediate_size",
        )?;
        let gu_canon = names::layer(l, "feed_forward.experts.gate_up_proj");
        let gu = self.naming.full(&gu_canon);
        let (experts, fused) = if self.files.get(&gu).is_some() {
            let dn = self
                .naming
                .full(&names::layer(l, "feed_forward.experts.down_proj"));
            self.float(
                &gu,
                &[e, h, 2 * i],
                "[num_local_experts, hidden_size, 2 * intermediate_size]",
            )?;
            self.float(
                &dn,
                &[e, i, h],
                "[num_local_experts, intermediate_size, hidden_size]",
            )?;
            let lin = |ex: usize, part: Part, t: &str, n: usize, k: usize| {
                let p = match part {
                    Part::Gate => "gate_proj",
                    Part::Up => "up_proj",
                    Part::Down => "down_proj",
                };
                Lin {
                    canon: names::layer(l, &format!("feed_forward.experts.{ex}.{p}")),
                    role: Role::RoutedExpert,
                    n,
                    k,
                    src: Src::Fused {
                        t: t.to_string(),
                        expert: ex,
                        part,
                    },
                }
            };
            let experts = (0..e)
                .map(|ex| MlpSrc {
                    gate: lin(ex, Part::Gate, &gu, i, h),
                    up: lin(ex, Part::Up, &gu, i, h),
                    down: lin(ex, Part::Down, &dn, h, i),
                })
                .collect();
            (experts, Some((gu, dn)))
        } else {
            let experts = (0..e)
                .map(|ex| {
                    let prefix = names::layer(l, &format!("feed_forward.experts.{ex}"));
                    self.mlp(&prefix, Role::RoutedExpert, i, h, "intermediate_size")
                })
                .collect::<Result<Vec<_>>>()
                .map_err(|err| match err {
                    // Neither layout: name the Hugging Face one.
                    Error::Checkpoint { path, msg } if msg.contains("missing tensor") && !self.any_expert(l) => {
                        Error::checkpoint(path, format!("missing tensor `{gu}` (or per-expert `...experts.0.gate_proj.weight`)"))
                    }
                    other => other,
                })?;
            (experts, None)
        };
        Ok(FfnSrc::Moe {
            router: Box::new(router),
            experts,
            shared: Box::new(shared),
            fused,
        })
    }

    /// Whether any per-expert tensor of layer `l` exists.
    fn any_expert(&self, l: usize) -> bool {
        let prefix = self.naming.full(&names::layer(l, "feed_forward.experts."));
        self.files.names().any(|n| n.starts_with(&prefix))
    }
}
