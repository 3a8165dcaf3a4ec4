//! The chunked paged KV cache (CPU side): fixed-size chunks (pages) from a pool, a chunk table per
//! sequence, 64-bit (`usize`) offsets throughout. The GPU cache mirrors this layout and these rules.
//!
//! # Layout
//! K and V live in two arenas of `chunks` chunks each. One chunk holds `chunk_tokens` tokens as
//! `[kv_heads, chunk_tokens, head_dim]` (head-major, "HND"): the keys of one KV head inside a chunk
//! are one contiguous `chunk_tokens * head_dim` run. A GPU decode kernel gives each (sequence, KV head)
//! its own thread blocks, so this is what it reads: whole contiguous runs of one head's keys (fully
//! coalesced, one TMA / `cp.async` tile per chunk), never a strided gather across the other heads.
//! Element `(chunk, head, slot, d)` is at `((chunk * kv_heads + head) * chunk_tokens + slot) * head_dim + d`,
//! computed in `usize` (64-bit): see [`KvLayout::row_offset`].
//!
//! # fp8 e4m3 scales
//! One f32 scale per (chunk, KV head) for K and one for V: stored value = `e4m3_decode(code) * scale`.
//! The scale is always a power of two and is the smallest power of two `s >= 2^-126` with
//! `amax / s <= 448`, `amax` the largest `|x|` ever appended to that (chunk, head). A chunk is filled
//! incrementally (decode appends one token at a time), so the scale can only grow: when a new token
//! needs a larger scale, the (chunk, head)'s existing codes are re-encoded at the new scale. Because
//! the ratio is a power of two this re-encoding is exact for every value that stays in e4m3's normal
//! range; only values that fall into the subnormal range are rounded again. Nothing ever saturates.
//! The resulting bound, for every stored element against the f32 that was appended:
//! `|x_hat - x| <= 2^-4 |x| + 2^-9 s` (the first term is e4m3's half-ulp for normals, the second the
//! sum of subnormal half-steps `2^-10 s` over a geometric series of rescales), with
//! `s <= max(2 amax / 448, 2^-126)`. Alternatives rejected: a scale fixed at the first write
//! saturates any later, larger token (unbounded error); a scale per token costs 4 bytes per
//! (token, head) and an extra load per key in the decode kernel.
//!
//! # Retention
//! [`Retention::All`] keeps every token. [`Retention::CurrentAttentionChunk`] (chunked-local layers,
//! attention chunk `C`, required to be a multiple of `chunk_tokens`) frees, at the start of each
//! append, the chunks wholly before `floor(s / C) * C`, `s` the first position being appended: no
//! query at a position `>= s` can see them. Queries must therefore be run for positions at or after
//! the start of the latest append (the model appends a token's K/V, then attends for it). An append
//! whose tokens cross an attention-chunk boundary keeps the older attention chunk until the next
//! append; append a long prompt in pieces aligned to `C` to bound the memory of a chunked layer.

pub mod gpu;
mod storage;
mod view;

pub use view::{KvRow, SeqView};

use crate::error::{Error, Result};
use std::collections::HashMap;
use storage::Storage;

const OP: &str = "kv_cache";

/// Element type of stored K/V.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDType {
    F32,
    /// bf16, rounded to nearest even from the appended f32.
    BF16,
    /// e4m3fn with one power-of-two f32 scale per chunk and KV head (see the module docs).
    Fp8E4M3,
}

impl KvDType {
    /// Bytes per stored element (scales not counted).
    pub fn bytes(self) -> usize {
        match self {
            KvDType::F32 => 4,
            KvDType::BF16 => 2,
            KvDType::Fp8E4M3 => 1,
        }
    }
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

impl KvLayout {
    /// Elements of one chunk of K (or of V): `kv_heads * chunk_tokens * head_dim`.
    pub fn chunk_elems(&self) -> usize {
        self.kv_heads * self.chunk_tokens * self.head_dim
    }
    /// Element offset of row `(chunk, head, slot)` in the K (or V) arena; the row's `head_dim`
    /// elements follow contiguously, and so do the next slots of the same head.
    pub fn row_offset(&self, chunk: usize, head: usize, slot: usize) -> usize {
        ((chunk * self.kv_heads + head) * self.chunk_tokens + slot) * self.head_dim
    }
    fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("kv_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("chunk_tokens", self.chunk_tokens),
        ] {
            if v == 0 {
                return Err(Error::invalid(
                    OP,
                    format!("layout {name} must be positive"),
                ));
            }
        }
        self.kv_heads
            .checked_mul(self.chunk_tokens)
            .and_then(|x| x.checked_mul(self.head_dim))
            .map(|_| ())
            .ok_or_else(|| Error::invalid(OP, format!("chunk size overflows usize: {self:?}")))
    }
}

/// What a sequence keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Every token (NoPE / global layers).
    All,
    /// Only the current attention chunk of `chunk` tokens (chunked-local layers): older chunks go back
    /// to the pool once no future query can see them. `chunk` must be a multiple of `chunk_tokens`.
    CurrentAttentionChunk { chunk: usize },
}

/// Which of the two tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvPart {
    Key,
    Value,
}

/// A sequence handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqId(pub u32);

/// One sequence's chunk table.
#[derive(Clone, Debug)]
struct SeqState {
    retention: Retention,
    /// Tokens appended so far (= the next position).
    len: usize,
    /// Page index (`position / chunk_tokens`) of `pages[0]`; pages before it were dropped.
    first_page: usize,
    /// Chunk ids of pages `first_page ..`; covers every position in `first_page * chunk_tokens .. len`.
    pages: Vec<u32>,
}

/// The chunk pool of one layer (or of several layers with the same layout) and its sequences.
pub struct ChunkPool {
    layout: KvLayout,
    chunks: usize,
    k: Storage,
    v: Storage,
    /// Free chunk ids, popped from the back (lowest id first on a fresh pool).
    free: Vec<u32>,
    seqs: HashMap<SeqId, SeqState>,
    next_seq: u32,
}

impl ChunkPool {
    /// A pool of `chunks` chunks of `layout`. K and V arenas are allocated zeroed (committed lazily by
    /// the OS), so a large pool costs memory only as it fills.
    pub fn new(layout: KvLayout, chunks: usize) -> Result<Self> {
        layout.validate()?;
        if chunks == 0 || chunks > u32::MAX as usize {
            return Err(Error::invalid(
                OP,
                format!("chunks = {chunks}: must be in 1..=2^32-1"),
            ));
        }
        let elems = chunks.checked_mul(layout.chunk_elems());
        let elems = elems
            .filter(|e| e.checked_mul(layout.dtype.bytes()).is_some())
            .ok_or_else(|| {
                Error::invalid(OP, format!("{chunks} chunks of {layout:?} overflow usize"))
            })?;
        Ok(ChunkPool {
            layout,
            chunks,
            k: Storage::new(layout, chunks, elems),
            v: Storage::new(layout, chunks, elems),
            free: (0..chunks as u32).rev().collect(),
            seqs: HashMap::new(),
            next_seq: 0,
        })
    }

    /// The pool's layout.
    pub fn layout(&self) -> KvLayout {
        self.layout
    }
    /// Chunks in the pool.
    pub fn total_chunks(&self) -> usize {
        self.chunks
    }
    /// Chunks not held by any sequence.
    pub fn free_chunks(&self) -> usize {
        self.free.len()
    }

    /// Starts an empty sequence.
    pub fn create_seq(&mut self, retention: Retention) -> Result<SeqId> {
        if let Retention::CurrentAttentionChunk { chunk } = retention {
            if chunk == 0 || chunk % self.layout.chunk_tokens != 0 {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "attention chunk {chunk} must be a positive multiple of chunk_tokens {}",
                        self.layout.chunk_tokens
                    ),
                ));
            }
        }
        let id = SeqId(self.next_seq);
        self.next_seq = self
            .next_seq
            .checked_add(1)
            .ok_or_else(|| Error::invalid(OP, "sequence ids exhausted (2^32 created)"))?;
        self.seqs.insert(
            id,
            SeqState {
                retention,
                len: 0,
                first_page: 0,
                pages: Vec::new(),
            },
        );
        Ok(id)
    }

    /// Ends a sequence and returns its chunks to the pool.
    pub fn release(&mut self, seq: SeqId) -> Result<()> {
        let st = self.seqs.remove(&seq).ok_or_else(|| unknown(seq))?;
        self.free.extend(st.pages.iter().rev());
        Ok(())
    }

    /// Read access to a sequence.
    pub fn view(&self, seq: SeqId) -> Result<SeqView<'_>> {
        let st = self.seqs.get(&seq).ok_or_else(|| unknown(seq))?;
        Ok(SeqView::new(self, seq, st))
    }

    /// Appends `n` tokens: `k` and `v` are `[n, kv_heads, head_dim]` f32, converted to the pool's
    /// dtype. All-or-nothing: on any error (shape, non-finite value, [`Error::CacheFull`]) the pool
    /// and every sequence are exactly as before.
    pub fn append(&mut self, seq: SeqId, k: &[f32], v: &[f32]) -> Result<()> {
        let n = self.check_rows(seq, "k", k.len(), "v", v.len())?;
        if n == 0 {
            return Ok(());
        }
        // bf16 rounds the largest f32 values up to infinity: reject those too.
        let bf16 = self.layout.dtype == KvDType::BF16;
        for (name, x) in [("k", k), ("v", v)] {
            let bad = |x: &f32| !x.is_finite() || (bf16 && !half::bf16::from_f32(*x).is_finite());
            if let Some(i) = x.iter().position(bad) {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "{name}[{i}] = {} is not finite in {:?}",
                        x[i], self.layout.dtype
                    ),
                ));
            }
        }
        let start = self.reserve(seq, n)?;
        let (layout, st) = (self.layout, &self.seqs[&seq]);
        for seg in segments(layout, st, start, n) {
            for h in 0..layout.kv_heads {
                self.k
                    .write_f32(layout, seg.chunk, h, seg.slot, &gather(layout, k, &seg, h));
                self.v
                    .write_f32(layout, seg.chunk, h, seg.slot, &gather(layout, v, &seg, h));
            }
        }
        Ok(())
    }

    /// Appends `n` tokens already encoded as e4m3 (the bulk path: copying from another cache, or
    /// filling a large test cache without encoding 10^10 values): `k_codes`, `v_codes` are
    /// `[n, kv_heads, head_dim]`, token values `e4m3_decode(code) * scale[head]`. Scales must be
    /// positive powers of two; NaN codes (0x7f, 0xff) are rejected. When a chunk's scale differs, the
    /// codes are re-encoded as in [`ChunkPool::append`] (a plain copy when it is equal). Only for
    /// [`KvDType::Fp8E4M3`] pools. All-or-nothing like [`ChunkPool::append`].
    pub fn append_fp8(
        &mut self,
        seq: SeqId,
        k_codes: &[u8],
        k_scales: &[f32],
        v_codes: &[u8],
        v_scales: &[f32],
    ) -> Result<()> {
        if self.layout.dtype != KvDType::Fp8E4M3 {
            return Err(Error::DType {
                op: OP,
                msg: format!("append_fp8 on a {:?} cache", self.layout.dtype),
            });
        }
        let n = self.check_rows(seq, "k_codes", k_codes.len(), "v_codes", v_codes.len())?;
        for (name, s) in [("k_scales", k_scales), ("v_scales", v_scales)] {
            crate::error::check_len(OP, name, s.len(), self.layout.kv_heads)?;
            if let Some(x) = s.iter().find(|x| !storage::is_pow2(**x)) {
                return Err(Error::invalid(
                    OP,
                    format!("{name}: {x} is not a positive power of two"),
                ));
            }
        }
        for (name, c) in [("k_codes", k_codes), ("v_codes", v_codes)] {
            if let Some(i) = c.iter().position(|&c| c & 0x7f == 0x7f) {
                return Err(Error::invalid(
                    OP,
                    format!("{name}[{i}] = {:#04x} is e4m3 NaN", c[i]),
                ));
            }
        }
        if n == 0 {
            return Ok(());
        }
        let start = self.reserve(seq, n)?;
        let (layout, st) = (self.layout, &self.seqs[&seq]);
        for seg in segments(layout, st, start, n) {
            for h in 0..layout.kv_heads {
                let (kc, vc) = (
                    gather(layout, k_codes, &seg, h),
                    gather(layout, v_codes, &seg, h),
                );
                self.k
                    .write_fp8(layout, seg.chunk, h, seg.slot, &kc, k_scales[h]);
                self.v
                    .write_fp8(layout, seg.chunk, h, seg.slot, &vc, v_scales[h]);
            }
        }
        Ok(())
    }

    /// Checks the sequence and two `[n, kv_heads, head_dim]` buffers; returns `n`.
    fn check_rows(
        &self,
        seq: SeqId,
        a: &str,
        a_len: usize,
        b: &str,
        b_len: usize,
    ) -> Result<usize> {
        if !self.seqs.contains_key(&seq) {
            return Err(unknown(seq));
        }
        let row = self.layout.kv_heads * self.layout.head_dim;
        if a_len % row != 0 || a_len != b_len {
            return Err(Error::shape(
                OP,
                format!(
                    "{a} has {a_len} and {b} {b_len} elements: both must be n * kv_heads({}) * head_dim({})",
                    self.layout.kv_heads, self.layout.head_dim
                ),
            ));
        }
        Ok(a_len / row)
    }

    /// Applies retention and takes the chunks for `n` more tokens, or fails with nothing changed.
    /// Returns the first new position.
    fn reserve(&mut self, seq: SeqId, n: usize) -> Result<usize> {
        let p = self.layout.chunk_tokens;
        let st = self.seqs.get_mut(&seq).ok_or_else(|| unknown(seq))?;
        let start = st.len;
        let end = start
            .checked_add(n)
            .ok_or_else(|| Error::invalid(OP, "position overflow"))?;
        // Pages wholly before the attention chunk of `start` are invisible to every later query.
        let keep_page = match st.retention {
            Retention::All => st.first_page,
            Retention::CurrentAttentionChunk { chunk } => {
                (start / chunk * chunk / p).max(st.first_page)
            }
        };
        let drop = keep_page - st.first_page;
        let needed = end.div_ceil(p) - (st.first_page + st.pages.len()).max(keep_page);
        let free = self.free.len() + drop;
        if needed > free {
            return Err(Error::CacheFull {
                needed,
                free,
                total: self.chunks,
            });
        }
        self.free.extend(st.pages.drain(..drop).rev());
        st.first_page = keep_page;
        for _ in 0..needed {
            // Cannot fail: `needed <= free.len()` was checked above.
            let c = self
                .free
                .pop()
                .ok_or_else(|| Error::invalid(OP, "free list underflow"))?;
            self.k.reset_chunk(self.layout, c as usize);
            self.v.reset_chunk(self.layout, c as usize);
            st.pages.push(c);
        }
        st.len = end;
        Ok(start)
    }
}

fn unknown(seq: SeqId) -> Error {
    Error::invalid(OP, format!("unknown sequence {}", seq.0))
}

/// A run of appended tokens `first .. first + count` (indices into the append's input) that lands in
/// one chunk at slots `slot .. slot + count`.
struct Segment {
    chunk: usize,
    slot: usize,
    first: usize,
    count: usize,
}

/// Splits the append of `n` tokens at position `start` into per-chunk segments.
fn segments(layout: KvLayout, st: &SeqState, start: usize, n: usize) -> Vec<Segment> {
    let p = layout.chunk_tokens;
    let mut out = Vec::new();
    let mut t = 0;
    while t < n {
        let pos = start + t;
        let (page, slot) = (pos / p, pos % p);
        let count = (p - slot).min(n - t);
        let chunk = st.pages[page - st.first_page] as usize;
        out.push(Segment {
            chunk,
            slot,
            first: t,
            count,
        });
        t += count;
    }
    out
}

/// The rows of `seg` for KV head `h` from an `[n, kv_heads, head_dim]` input, contiguous.
fn gather<T: Copy>(layout: KvLayout, x: &[T], seg: &Segment, h: usize) -> Vec<T> {
    let d = layout.head_dim;
    let mut out = Vec::with_capacity(seg.count * d);
    for t in seg.first..seg.first + seg.count {
        let o = (t * layout.kv_heads + h) * d;
        out.extend_from_slice(&x[o..o + d]);
    }
    out
}
