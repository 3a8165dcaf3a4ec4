//! Per-sequence decoding state: one KV cache per layer, with what it retains chosen by the layer's kind
//! (every token on NoPE / global layers, only the current attention chunk on chunked RoPE layers).
use super::backend::Backend;
use super::config::{Config, LayerKind};
use crate::error::{Error, Result};
use crate::kv_cache::{KvDType, KvLayout, Retention};

/// Tokens per cache page when the attention chunk is larger (a divisor of every power-of-two chunk).
pub const PAGE_TOKENS: usize = 256;

/// What a layer of this kind must keep: chunked-local layers never look back past their chunk.
pub fn retention(config: &Config, kind: LayerKind) -> Retention {
    if kind.rope {
        Retention::CurrentAttentionChunk {
            chunk: config.attention_chunk_size,
        }
    } else {
        Retention::All
    }
}

/// The page layout of every layer: f32 K/V (exact against the reference), pages of at most
/// [`PAGE_TOKENS`] tokens that tile the attention chunk.
pub fn layout(config: &Config) -> KvLayout {
    let chunk = config.attention_chunk_size;
    let page = if chunk % PAGE_TOKENS == 0 {
        PAGE_TOKENS
    } else {
        chunk.min(PAGE_TOKENS)
    };
    KvLayout {
        kv_heads: config.num_key_value_heads,
        head_dim: config.head_dim,
        chunk_tokens: page,
        dtype: KvDType::F32,
    }
}

/// One sequence's KV caches, one per layer, and its length.
pub struct Cache<B: Backend> {
    layers: Vec<B::Kv>,
    len: usize,
    capacity: usize,
    poisoned: bool,
}

impl<B: Backend> Cache<B> {
    /// Room for positions `0 .. max_tokens`; `max_tokens` may not exceed max_position_embeddings.
    pub fn new(backend: &B, config: &Config, max_tokens: usize) -> Result<Self> {
        if max_tokens > config.max_position_embeddings {
            return Err(Error::ContextTooLong {
                needed: max_tokens,
                limit: config.max_position_embeddings,
            });
        }
        let layout = layout(config);
        let layers = config
            .layers
            .iter()
            .map(|&kind| backend.new_kv(layout, retention(config, kind), max_tokens))
            .collect::<Result<Vec<_>>>()?;
        Ok(Cache {
            layers,
            len: 0,
            capacity: max_tokens,
            poisoned: false,
        })
    }

    /// Tokens seen so far (= the absolute position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The most tokens this cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// The per-layer caches.
    pub fn layers(&self) -> &[B::Kv] {
        &self.layers
    }

    pub(crate) fn layer_mut(&mut self, i: usize) -> Result<&mut B::Kv> {
        let n = self.layers.len();
        self.layers
            .get_mut(i)
            .ok_or_else(|| Error::invalid("cache", format!("layer {i} of a {n}-layer cache")))
    }
    pub(crate) fn advance(&mut self, tokens: usize) {
        self.len += tokens;
    }
    /// Set while a forward is running: if it fails half-way the layers disagree on their length.
    pub(crate) fn set_poisoned(&mut self, poisoned: bool) {
        self.poisoned = poisoned;
    }
    pub(crate) fn check_usable(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::invalid(
                "cache",
                "a forward on this cache failed part-way; start a new cache",
            ));
        }
        Ok(())
    }
}

/// One layer's K/V on the CPU: a chunk pool of its own holding one sequence.
pub struct CpuKv {
    _todo: (),
}

impl CpuKv {
    pub fn new(layout: KvLayout, retention: Retention, max_tokens: usize) -> Result<Self> {
        let _ = (layout, retention, max_tokens);
        todo!("wire to crate::kv_cache")
    }
    pub fn len(&self) -> usize {
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Appends `tokens` rows of k/v at `start` (== len) and attends q at those positions.
    pub fn append_and_attend(
        &mut self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        tokens: usize,
        start: usize,
        p: &crate::reference::attention::AttnParams,
    ) -> Result<Vec<f32>> {
        let _ = (q, k, v, tokens, start, p);
        todo!()
    }
}
