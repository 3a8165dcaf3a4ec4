//! The chunked paged KV cache (CPU side): fixed-size chunks from a pool, a chunk table per sequence,
//! 64-bit offsets throughout. OWNER: attention helper. Signatures are the contract.
use crate::error::Result;

/// Element type of stored K/V.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDType {
    F32,
    BF16,
    /// e4m3 with one f32 scale per chunk and KV head.
    Fp8E4M3,
}

/// Shape of one layer's cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Tokens per chunk (page).
    pub chunk_tokens: usize,
    pub dtype: KvDType,
}

/// What a sequence keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Every token (NoPE / global layers).
    All,
    /// Only the current attention chunk of `chunk` tokens (chunked-local layers): older chunks go back
    /// to the pool once no future query can see them.
    CurrentAttentionChunk { chunk: usize },
}

/// A sequence handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqId(pub u32);

/// The chunk pool of one layer.
pub struct ChunkPool {
    _todo: (),
}

/// Read access to one sequence's K/V.
pub struct SeqView<'a> {
    _pool: &'a ChunkPool,
}

impl ChunkPool {
    pub fn new(layout: KvLayout, chunks: usize) -> Result<Self> {
        let _ = (layout, chunks);
        todo!("attention helper")
    }
}

impl SeqView<'_> {
    /// Tokens appended so far (= the next position).
    pub fn len(&self) -> usize {
        todo!("attention helper")
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
