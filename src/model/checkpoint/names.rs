//! Canonical (text-only Hugging Face) tensor names, and the prefixes released checkpoints add.

/// How a checkpoint prefixes the text model's tensor names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Naming {
    /// `model.layers.0...`, `lm_head.weight` (text-only export).
    Plain,
    /// `language_model.model.layers.0...`, `language_model.lm_head.weight` (released multimodal).
    LanguageModel,
    /// `model.language_model.layers.0...`, `lm_head.weight` (multimodal saved by transformers >= 4.52).
    ModelLanguageModel,
}

impl Naming {
    /// Detects the prefix from the names present.
    pub fn detect<'a>(mut names: impl Iterator<Item = &'a str>) -> Naming {
        let mut found = Naming::Plain;
        for n in names.by_ref() {
            if n.starts_with("language_model.") {
                return Naming::LanguageModel;
            }
            if n.starts_with("model.language_model.") {
                found = Naming::ModelLanguageModel;
            }
        }
        found
    }

    /// The stored name of a canonical one.
    pub fn full(self, canon: &str) -> String {
        match self {
            Naming::Plain => canon.to_string(),
            Naming::LanguageModel => format!("language_model.{canon}"),
            Naming::ModelLanguageModel => match canon.strip_prefix("model.") {
                Some(rest) => format!("model.language_model.{rest}"),
                None => canon.to_string(),
            },
        }
    }

    /// The canonical name of a stored one (inverse of [`Naming::full`]).
    pub fn canon(self, full: &str) -> String {
        match self {
            Naming::Plain => full.to_string(),
            Naming::LanguageModel => full
                .strip_prefix("language_model.")
                .unwrap_or(full)
                .to_string(),
            Naming::ModelLanguageModel => match full.strip_prefix("model.language_model.") {
                Some(rest) => format!("model.{rest}"),
                None => full.to_string(),
            },
        }
    }
}

/// Vision-tower tensors, skipped.
pub(crate) fn is_vision(name: &str) -> bool {
    let name = name.strip_prefix("model.").unwrap_or(name);
    name.starts_with("vision_model.") || name.starts_with("multi_modal_projector.")
}

pub(crate) const EMBED: &str = "model.embed_tokens";
pub(crate) const FINAL_NORM: &str = "model.norm.weight";
pub(crate) const LM_HEAD: &str = "lm_head";

/// `model.layers.{l}.{rest}`.
pub(crate) fn layer(l: usize, rest: &str) -> String {
    format!("model.layers.{l}.{rest}")
}

/// The three projections of a SwiGLU MLP, in load / write order.
pub(crate) const MLP_PARTS: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];
/// Attention projections.
pub(crate) const ATTN_PARTS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];
