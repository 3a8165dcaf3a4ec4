//! What gets quantized, and `llama4 quantize`: a streaming checkpoint-to-checkpoint quantizer.
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::Dtype;

use crate::error::{Error, Result};
use crate::model::checkpoint::{
    encode_weight, finish, our_config, progress_bar, read_linear, write_json, write_units,
    Checkpoint, FfnSrc, Files, Lin, MlpSrc, Naming, Planned, Role, Src, Stored, Unit,
};
use crate::model::weights::{Ffn, Weights};
use crate::quant::{Fp8Scaling, Fp8Weight, Int4Config, Int4Weight, Weight};
use crate::reference::moe::SwiGlu;

/// The quantized format of the weights a [`QuantizeSpec`] selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantFormat {
    /// Group-wise int4 along K (Meta's recipe: group 128, symmetric, bf16 scales).
    Int4(Int4Config),
    /// fp8 e4m3, one scale per output channel.
    Fp8,
}

/// Which weights are quantized, and to what. Everything not selected stays dense (f32 on the CPU).
/// The router and the embeddings are never quantized (the router's logits pick the experts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantizeSpec {
    pub format: QuantFormat,
    /// The routed experts of MoE layers.
    pub routed_experts: bool,
    /// The shared expert of MoE layers.
    pub shared_expert: bool,
    /// The dense SwiGLU MLP of non-MoE layers (Maverick's even layers).
    pub dense_mlp: bool,
    /// q, k, v, o projections.
    pub attention: bool,
    /// The output projection.
    pub lm_head: bool,
}

impl QuantizeSpec {
    /// Meta's recipe: routed and shared experts quantized; attention, router, dense MLP, embeddings,
    /// norms and lm_head dense.
    pub fn meta(format: QuantFormat) -> Self {
        QuantizeSpec {
            format,
            routed_experts: true,
            shared_expert: true,
            dense_mlp: false,
            attention: false,
            lm_head: false,
        }
    }
    /// Meta's recipe in int4 (group 128, symmetric, bf16 scales).
    pub fn int4() -> Self {
        Self::meta(QuantFormat::Int4(Int4Config::default()))
    }
    /// Meta's recipe in fp8 (per output channel).
    pub fn fp8() -> Self {
        Self::meta(QuantFormat::Fp8)
    }
    /// `"int4"` or `"fp8"` (Meta's recipe), as the command line spells them.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "int4" => Ok(Self::int4()),
            "fp8" => Ok(Self::fp8()),
            other => Err(Error::invalid(
                "quantize",
                format!("unknown format `{other}` (expected int4 or fp8)"),
            )),
        }
    }
}

impl QuantizeSpec {
    /// Whether this spec quantizes weights of `role`.
    pub(crate) fn selects(&self, role: Role) -> bool {
        match role {
            Role::RoutedExpert => self.routed_experts,
            Role::SharedExpert => self.shared_expert,
            Role::DenseMlp => self.dense_mlp,
            Role::Attention => self.attention,
            Role::LmHead => self.lm_head,
            Role::Embed | Role::Router => false,
        }
    }
}

impl QuantFormat {
    /// Whether `w` is already in this format (int4 with the same config; fp8 with any scaling), so
    /// quantize-on-load keeps it as it is.
    pub(crate) fn holds(&self, w: &Weight) -> bool {
        match (self, w) {
            (QuantFormat::Int4(c), Weight::Int4(q)) => q.config == *c,
            (QuantFormat::Fp8, Weight::Fp8(_)) => true,
            _ => false,
        }
    }

    /// Whether a weight stored as `src` is already in this format (see [`QuantFormat::holds`]).
    fn holds_src(&self, src: &Src) -> bool {
        match (self, src) {
            (QuantFormat::Int4(c), Src::Int4 { config, .. }) => config == c,
            (QuantFormat::Fp8, Src::Fp8 { .. }) => true,
            _ => false,
        }
    }
}

/// Quantize-on-load's rule for one weight of `role`: quantized into `spec.format` when `spec` selects
/// the role and `w` is not already in that format (a quantized weight of another format is
/// dequantized first); otherwise left as it is.
pub(crate) fn apply_spec(spec: &QuantizeSpec, role: Role, w: &mut Weight) -> Result<()> {
    if !spec.selects(role) || spec.format.holds(w) {
        return Ok(());
    }
    let q = match &*w {
        Weight::Dense(d) => quantize_weight(&d.data, d.n, d.k, &spec.format)?,
        other => quantize_weight(&other.dequantize(), other.n(), other.k(), &spec.format)?,
    };
    *w = q;
    Ok(())
}

/// Quantizes in-memory weights as `spec` selects, by the rule of quantize-on-load
/// ([`LoadOptions::quantize`](crate::model::checkpoint::LoadOptions)): the router, embeddings and
/// norms are never quantized.
pub fn quantize_weights(mut w: Weights, spec: &QuantizeSpec) -> Result<Weights> {
    let mlp = |m: &mut SwiGlu, role: Role| -> Result<()> {
        for x in [&mut m.gate, &mut m.up, &mut m.down] {
            apply_spec(spec, role, x)?;
        }
        Ok(())
    };
    for l in &mut w.layers {
        for x in [&mut l.q, &mut l.k, &mut l.v, &mut l.o] {
            apply_spec(spec, Role::Attention, x)?;
        }
        match &mut l.ffn {
            Ffn::Dense(m) => mlp(m, Role::DenseMlp)?,
            Ffn::Moe {
                experts, shared, ..
            } => {
                for e in experts.iter_mut() {
                    mlp(e, Role::RoutedExpert)?;
                }
                mlp(shared, Role::SharedExpert)?;
            }
        }
    }
    apply_spec(spec, Role::LmHead, &mut w.lm_head)?;
    Ok(w)
}

/// Quantizes a dense f32 `[n, k]` weight into `format`.
pub fn quantize_weight(w: &[f32], n: usize, k: usize, format: &QuantFormat) -> Result<Weight> {
    Ok(match format {
        QuantFormat::Int4(cfg) => Weight::Int4(Int4Weight::quantize(w, n, k, *cfg)?),
        QuantFormat::Fp8 => Weight::Fp8(Fp8Weight::quantize(w, n, k, Fp8Scaling::PerChannel)?),
    })
}

/// Options of [`quantize_checkpoint`].
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub spec: QuantizeSpec,
    /// Largest shard written, in bytes (a tensor larger than this gets a shard of its own).
    pub shard_bytes: u64,
    /// Show an indicatif progress bar on stderr.
    pub progress: bool,
}

impl QuantizeOptions {
    /// Default shard size: 4 GiB.
    pub const DEFAULT_SHARD_BYTES: u64 = 4 << 30;
    pub fn new(spec: QuantizeSpec) -> Self {
        QuantizeOptions {
            spec,
            shard_bytes: Self::DEFAULT_SHARD_BYTES,
            progress: false,
        }
    }
}

/// Reads the checkpoint in `src`, quantizes it tensor by tensor as `opts.spec` says and writes a
/// checkpoint in `dst` (docs/FORMATS.md) that [`crate::model::checkpoint::load_model`] reads back
/// into exactly the weights quantize-on-load gives. Weights the spec leaves alone (and weights already
/// in the target format) are copied byte for byte under their text-only Hugging Face names; only one
/// weight at a time per worker thread is held in memory. `dst` must be empty or absent.
/// Returns the bytes of tensor data written.
pub fn quantize_checkpoint(src: &Path, dst: &Path, opts: &QuantizeOptions) -> Result<u64> {
    let ck = Checkpoint::open(src)?;
    check_output_dir(src, dst)?;
    let (files, ms, spec) = (ck.files(), ck.sources(), &opts.spec);
    let target = match spec.format {
        QuantFormat::Int4(c) => Stored::Int4(c),
        QuantFormat::Fp8 => Stored::Fp8(Fp8Scaling::PerChannel),
    };
    let mut plan = Plan {
        files,
        naming: ms.naming,
        units: Vec::new(),
        jobs: Vec::new(),
        int4: None,
        fp8: false,
    };
    plan.lin(&ms.embed, spec, target)?;
    for layer in &ms.layers {
        plan.copy(vec![&layer.input_norm])?;
        plan.copy(vec![&layer.post_norm])?;
        for lin in &layer.attn {
            plan.lin(lin, spec, target)?;
        }
        match &layer.ffn {
            FfnSrc::Dense(m) => plan.mlp(m, spec, target)?,
            FfnSrc::Moe {
                router,
                experts,
                shared,
                fused,
            } => {
                plan.lin(router, spec, target)?;
                match fused {
                    Some((gu, dn)) if !spec.selects(Role::RoutedExpert) => {
                        plan.copy(vec![gu])?;
                        plan.copy(vec![dn])?;
                    }
                    _ => {
                        for m in experts {
                            plan.mlp(m, spec, target)?;
                        }
                    }
                }
                plan.mlp(shared, spec, target)?;
            }
        }
    }
    plan.copy(vec![&ms.norm])?;
    if !ck.config().tie_word_embeddings {
        plan.lin(&ms.lm_head, spec, target)?;
    }

    let mut json = ck.config().to_json();
    json["quantization_config"] = our_config(plan.int4, plan.fp8, Some(spec));
    write_json(&dst.join("config.json"), &json)?;
    for aux in AUX_FILES {
        let from = src.join(aux);
        if from.is_file() {
            std::fs::copy(&from, dst.join(aux)).map_err(|source| Error::Io {
                path: from.clone(),
                source,
            })?;
        }
    }
    let metadata = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("producer".into(), "llama4-cuda".into()),
        ("llama4_cuda.quantization".into(), format!("{:?}", spec)),
    ]);
    let bar = progress_bar(opts.progress, plan.units.len() as u64, "quantizing");
    let produce = |u: usize| -> Result<Vec<Cow<'_, [u8]>>> {
        match &plan.jobs[u] {
            Job::Copy(names) => names
                .iter()
                .map(|n| plan.loc(n).map(|l| Cow::Borrowed(files.data(l))))
                .collect(),
            Job::Encode(lin) => {
                let w = finish(read_linear(files, lin)?, lin.role, Some(spec))?;
                if Stored::of(&w, Dtype::F32) != target {
                    return Err(Error::invalid(
                        "quantize",
                        format!("`{}` did not quantize to {target:?}", lin.canon),
                    ));
                }
                Ok(encode_weight(&w, Dtype::F32)
                    .into_iter()
                    .map(Cow::Owned)
                    .collect())
            }
        }
    };
    let total = write_units(dst, &plan.units, &metadata, opts.shard_bytes, &bar, produce)?;
    bar.finish_and_clear();
    Ok(total)
}

/// Small files a checkpoint directory carries besides the weights, copied as they are.
const AUX_FILES: [&str; 7] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
];

/// Refuses to write into the source or into a non-empty directory; creates `dst`.
fn check_output_dir(src: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        let same = match (src.canonicalize(), dst.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            return Err(Error::invalid(
                "quantize",
                format!("--out {} is the source checkpoint", dst.display()),
            ));
        }
        let mut entries = std::fs::read_dir(dst).map_err(|source| Error::Io {
            path: dst.to_path_buf(),
            source,
        })?;
        if entries.next().is_some() {
            return Err(Error::invalid(
                "quantize",
                format!("--out {} exists and is not empty", dst.display()),
            ));
        }
    }
    std::fs::create_dir_all(dst).map_err(|source| Error::Io {
        path: dst.to_path_buf(),
        source,
    })
}

/// One unit of the output: tensors copied verbatim, or one weight read, quantized and encoded.
enum Job<'a> {
    Copy(Vec<&'a str>),
    Encode(&'a Lin),
}

struct Plan<'a> {
    files: &'a Files,
    naming: Naming,
    units: Vec<Unit>,
    jobs: Vec<Job<'a>>,
    /// The int4 config of the int4 tensors written, if any.
    int4: Option<Int4Config>,
    fp8: bool,
}

impl<'a> Plan<'a> {
    fn loc(&self, full: &str) -> Result<&'a crate::model::checkpoint::TensorLoc> {
        self.files.get(full).ok_or_else(|| {
            Error::checkpoint(self.files.listing(), format!("missing tensor `{full}`"))
        })
    }

    fn note_int4(&mut self, c: Int4Config, what: &str) -> Result<()> {
        match self.int4 {
            Some(prev) if prev != c => Err(Error::invalid(
                "quantize",
                format!("`{what}` is int4 {c:?}, another weight int4 {prev:?}: one checkpoint holds one int4 config"),
            )),
            _ => {
                self.int4 = Some(c);
                Ok(())
            }
        }
    }

    /// Copies stored tensors verbatim under their canonical names.
    fn copy(&mut self, names: Vec<&'a str>) -> Result<()> {
        let mut tensors = Vec::with_capacity(names.len());
        for n in &names {
            let l = self.loc(n)?;
            tensors.push(Planned::new(self.naming.canon(n), l.dtype, l.shape.clone()));
        }
        self.units.push(Unit { tensors });
        self.jobs.push(Job::Copy(names));
        Ok(())
    }

    fn lin(&mut self, lin: &'a Lin, spec: &QuantizeSpec, target: Stored) -> Result<()> {
        if spec.selects(lin.role) && !spec.format.holds_src(&lin.src) {
            if let Stored::Int4(c) = target {
                self.note_int4(c, &lin.canon)?;
            }
            self.fp8 |= matches!(target, Stored::Fp8(_));
            self.units.push(Unit {
                tensors: target.plan(&lin.canon, lin.n, lin.k),
            });
            self.jobs.push(Job::Encode(lin));
            return Ok(());
        }
        match &lin.src {
            Src::Int4 { config, .. } => self.note_int4(*config, &lin.canon)?,
            Src::Fp8 { .. } => self.fp8 = true,
            _ => {}
        }
        self.copy(lin.src.tensors())
    }

    fn mlp(&mut self, m: &'a MlpSrc, spec: &QuantizeSpec, target: Stored) -> Result<()> {
        for lin in [&m.gate, &m.up, &m.down] {
            self.lin(lin, spec, target)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Config;
    use crate::model::synthetic::random_weights;

    /// The format of `w` as the spec should leave it: quantized iff `selected`.
    fn is(w: &Weight, selected: bool, spec: &QuantizeSpec) -> bool {
        selected == spec.format.holds(w) && (selected || matches!(w, Weight::Dense(_)))
    }

    /// Every role of a tiny model (MoE and dense layers) quantized exactly as the spec selects, and
    /// equal to quantize-on-load's rule applied weight by weight.
    #[test]
    fn quantize_weights_follows_the_spec_roles() {
        let w = random_weights(&Config::tiny(), 11);
        let all_fp8 = QuantizeSpec {
            dense_mlp: true,
            attention: true,
            lm_head: true,
            ..QuantizeSpec::fp8()
        };
        for spec in [QuantizeSpec::int4(), all_fp8] {
            let q = quantize_weights(w.clone(), &spec).unwrap();
            assert_eq!(q.embed, w.embed, "embeddings are never quantized");
            assert!(is(&q.lm_head, spec.lm_head, &spec));
            let (mut moe, mut dense) = (0, 0);
            for (l, (ql, wl)) in q.layers.iter().zip(&w.layers).enumerate() {
                for x in [&ql.q, &ql.k, &ql.v, &ql.o] {
                    assert!(is(x, spec.attention, &spec), "layer {l} attention");
                }
                assert_eq!(ql.input_norm, wl.input_norm);
                match (&ql.ffn, &wl.ffn) {
                    (
                        Ffn::Moe {
                            router,
                            experts,
                            shared,
                        },
                        Ffn::Moe {
                            router: r0,
                            experts: e0,
                            ..
                        },
                    ) => {
                        moe += 1;
                        assert_eq!(router, r0, "layer {l}: the router is never quantized");
                        for (m, m0) in experts.iter().zip(e0) {
                            for (x, x0) in
                                [(&m.gate, &m0.gate), (&m.up, &m0.up), (&m.down, &m0.down)]
                            {
                                assert!(is(x, spec.routed_experts, &spec), "layer {l} expert");
                                let mut want = x0.clone();
                                apply_spec(&spec, Role::RoutedExpert, &mut want).unwrap();
                                assert_eq!(*x, want, "layer {l}: the load rule");
                            }
                        }
                        for x in [&shared.gate, &shared.up, &shared.down] {
                            assert!(is(x, spec.shared_expert, &spec), "layer {l} shared");
                        }
                    }
                    (Ffn::Dense(m), Ffn::Dense(_)) => {
                        dense += 1;
                        for x in [&m.gate, &m.up, &m.down] {
                            assert!(is(x, spec.dense_mlp, &spec), "layer {l} dense mlp");
                        }
                    }
                    _ => panic!("layer {l}: the FFN kind changed"),
                }
            }
            assert!(moe > 0 && dense > 0, "the tiny model has both layer kinds");
        }
    }
}
