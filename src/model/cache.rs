//! Per-sequence decoding state: one KV cache per layer, with what it retains chosen by the layer's kind
//! (every token on NoPE / global layers, only the current attention chunk on chunked RoPE layers).
use super::backend::Backend;
use super::config::{Config, LayerKind};
use crate::error::{Error, Result};
use crate::kv_cache::{ChunkPool, KvDType, KvLayout, Retention, SeqId};
use crate::reference::attention::{attention, AttnParams};

/// Largest default page: 256 tokens.
pub const PAGE_TOKENS: usize = 256;

/// How a sequence's caches store K/V.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheOptions {
    /// Tokens per page; must divide attention_chunk_size. `None`: the chunk itself when it is at most
    /// [`PAGE_TOKENS`], else the largest power of two up to [`PAGE_TOKENS`] that divides it.
    pub page_tokens: Option<usize>,
    /// Stored element type (f32 by default: exact against the reference).
    pub dtype: KvDType,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            page_tokens: None,
            dtype: KvDType::F32,
        }
    }
}

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

/// The page layout of every layer.
pub fn layout(config: &Config, opts: &CacheOptions) -> Result<KvLayout> {
    let chunk = config.attention_chunk_size;
    let page = match opts.page_tokens {
        Some(p) if p == 0 || chunk % p != 0 => {
            return Err(Error::config(
                "page_tokens",
                p,
                format!("must divide attention_chunk_size = {chunk}"),
            ))
        }
        Some(p) => p,
        None if chunk <= PAGE_TOKENS => chunk,
        None => 1 << chunk.trailing_zeros().min(PAGE_TOKENS.trailing_zeros()),
    };
    Ok(KvLayout {
        kv_heads: config.num_key_value_heads,
        head_dim: config.head_dim,
        chunk_tokens: page,
        dtype: opts.dtype,
    })
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
    pub fn new(
        backend: &B,
        config: &Config,
        max_tokens: usize,
        opts: &CacheOptions,
    ) -> Result<Self> {
        if max_tokens > config.max_position_embeddings {
            return Err(Error::ContextTooLong {
                needed: max_tokens,
                limit: config.max_position_embeddings,
            });
        }
        let layout = layout(config, opts)?;
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

/// One layer's K/V on the CPU: a chunk pool of its own holding one sequence, sized for the most
/// pages the layer's retention can hold at once.
pub struct CpuKv {
    pool: ChunkPool,
    seq: SeqId,
    retention: Retention,
}

impl CpuKv {
    /// Room for positions `0 .. max_tokens`: every page for [`Retention::All`], one attention chunk's
    /// pages for [`Retention::CurrentAttentionChunk`] (appends are split at chunk boundaries).
    pub fn new(layout: KvLayout, retention: Retention, max_tokens: usize) -> Result<Self> {
        let held = match retention {
            Retention::All => max_tokens,
            Retention::CurrentAttentionChunk { chunk } => max_tokens.min(chunk),
        };
        let mut pool = ChunkPool::new(layout, held.div_ceil(layout.chunk_tokens).max(1))?;
        let seq = pool.create_seq(retention)?;
        Ok(CpuKv {
            pool,
            seq,
            retention,
        })
    }

    /// Tokens appended so far.
    pub fn len(&self) -> usize {
        self.pool.view(self.seq).map_or(0, |v| v.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `tokens` rows of k/v (`[tokens, kv_heads * head_dim]`) at `start` (== len) and
    /// attends q (`[tokens, heads * head_dim]`) at those positions. A chunked layer works one
    /// attention chunk at a time, so it never holds more than one chunk of pages.
    pub fn append_and_attend(
        &mut self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        tokens: usize,
        start: usize,
        p: &AttnParams,
    ) -> Result<Vec<f32>> {
        if start != self.len() {
            return Err(Error::invalid(
                "attention",
                format!(
                    "queries start at {start}, the cache holds {} tokens",
                    self.len()
                ),
            ));
        }
        let (qw, kw) = (p.heads * p.head_dim, p.kv_heads * p.head_dim);
        crate::error::check_len("attention", "q", q.len(), tokens * qw)?;
        crate::error::check_len("attention", "k", k.len(), tokens * kw)?;
        crate::error::check_len("attention", "v", v.len(), tokens * kw)?;
        let chunk = match self.retention {
            Retention::All => usize::MAX,
            Retention::CurrentAttentionChunk { chunk } => chunk,
        };
        let mut out = Vec::with_capacity(q.len());
        let mut t = 0;
        while t < tokens {
            let pos = start + t;
            let n = (tokens - t).min(chunk - pos % chunk);
            let (kr, qr) = (t * kw..(t + n) * kw, t * qw..(t + n) * qw);
            self.pool.append(self.seq, &k[kr.clone()], &v[kr])?;
            out.extend(attention(&q[qr], pos, &self.pool.view(self.seq)?, p)?);
            t += n;
        }
        Ok(out)
    }
}
