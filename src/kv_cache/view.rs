//! Read access to one sequence through its chunk table.
use super::storage::e4m3_lut;
use super::{ChunkPool, KvLayout, KvPart, SeqId, SeqState, OP};
use crate::error::{Error, Result};
use half::bf16;
use std::ops::Range;

/// Read access to one sequence's K/V (borrowed from its [`ChunkPool`]).
#[derive(Clone, Copy)]
pub struct SeqView<'a> {
    pool: &'a ChunkPool,
    id: SeqId,
    st: &'a SeqState,
}

/// Stored elements of one or more consecutive rows of one KV head, in the cache's own format.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KvRow<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    /// Values are `e4m3_decode(code) * scale`.
    Fp8 {
        codes: &'a [u8],
        scale: f32,
    },
}

impl KvRow<'_> {
    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            KvRow::F32(x) => x.len(),
            KvRow::BF16(x) => x.len(),
            KvRow::Fp8 { codes, .. } => codes.len(),
        }
    }
    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Converts to f32 into `out` (`out.len() == self.len()`, checked).
    pub fn to_f32(&self, out: &mut [f32]) -> Result<()> {
        crate::error::check_len(OP, "row output", out.len(), self.len())?;
        match *self {
            KvRow::F32(x) => out.copy_from_slice(x),
            KvRow::BF16(x) => out.iter_mut().zip(x).for_each(|(o, x)| *o = x.to_f32()),
            KvRow::Fp8 { codes, scale } => {
                let lut = e4m3_lut();
                out.iter_mut()
                    .zip(codes)
                    .for_each(|(o, &c)| *o = lut[c as usize] * scale);
            }
        }
        Ok(())
    }
    /// The values as f32.
    pub fn to_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.len()];
        // Cannot fail: `out` has the right length.
        let _ = self.to_f32(&mut out);
        out
    }
}

impl<'a> SeqView<'a> {
    pub(super) fn new(pool: &'a ChunkPool, id: SeqId, st: &'a SeqState) -> Self {
        SeqView { pool, id, st }
    }
    /// The sequence.
    pub fn id(&self) -> SeqId {
        self.id
    }
    /// Tokens appended so far (= the next position).
    pub fn len(&self) -> usize {
        self.st.len
    }
    /// No token appended yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The first position still held (0 unless retention dropped chunks; a multiple of chunk_tokens).
    pub fn start(&self) -> usize {
        (self.st.first_page * self.pool.layout.chunk_tokens).min(self.st.len)
    }
    /// The cache layout.
    pub fn layout(&self) -> KvLayout {
        self.pool.layout
    }
    /// Page index (`position / chunk_tokens`) of `chunk_table()[0]`.
    pub fn first_page(&self) -> usize {
        self.st.first_page
    }
    /// Chunk ids holding pages `first_page() ..`, in position order (what a GPU kernel is given).
    pub fn chunk_table(&self) -> &'a [u32] {
        &self.st.pages
    }

    /// Row `(pos, head)` of K or V.
    pub fn row(&self, part: KvPart, pos: usize, head: usize) -> Result<KvRow<'a>> {
        self.check(head, pos..pos.saturating_add(1))?;
        let (chunk, slot) = self.locate(pos);
        Ok(self
            .arena(part)
            .rows(self.pool.layout, chunk, head, slot, 1))
    }

    /// K or V of `head` for `positions` into `out` (`[positions.len(), head_dim]` f32), chunk by chunk.
    pub fn read(
        &self,
        part: KvPart,
        head: usize,
        positions: Range<usize>,
        out: &mut [f32],
    ) -> Result<()> {
        self.check(head, positions.clone())?;
        let (l, d) = (self.pool.layout, self.pool.layout.head_dim);
        crate::error::check_len(OP, "read output", out.len(), positions.len() * d)?;
        let mut pos = positions.start;
        while pos < positions.end {
            let (chunk, slot) = self.locate(pos);
            let m = (l.chunk_tokens - slot).min(positions.end - pos);
            let o = (pos - positions.start) * d;
            self.arena(part)
                .rows(l, chunk, head, slot, m)
                .to_f32(&mut out[o..o + m * d])?;
            pos += m;
        }
        Ok(())
    }

    /// K or V of every head for `positions` as `[positions.len(), kv_heads, head_dim]` f32.
    pub fn read_all(&self, part: KvPart, positions: Range<usize>) -> Result<Vec<f32>> {
        let (h, d, n) = (
            self.pool.layout.kv_heads,
            self.pool.layout.head_dim,
            positions.len(),
        );
        let mut out = vec![0.0; n * h * d];
        let mut buf = vec![0.0; n * d];
        for head in 0..h {
            self.read(part, head, positions.clone(), &mut buf)?;
            for (t, row) in buf.chunks_exact(d).enumerate() {
                out[(t * h + head) * d..][..d].copy_from_slice(row);
            }
        }
        Ok(out)
    }

    fn check(&self, head: usize, positions: Range<usize>) -> Result<()> {
        if head >= self.pool.layout.kv_heads {
            return Err(Error::invalid(
                OP,
                format!(
                    "kv head {head} out of range: the cache has {}",
                    self.pool.layout.kv_heads
                ),
            ));
        }
        if positions.start > positions.end
            || positions.start < self.start()
            || positions.end > self.st.len
        {
            return Err(Error::invalid(
                OP,
                format!(
                    "positions {}..{} not in the cache of sequence {}: it holds {}..{}",
                    positions.start,
                    positions.end,
                    self.id.0,
                    self.start(),
                    self.st.len
                ),
            ));
        }
        Ok(())
    }

    /// (chunk id, slot) of a position already checked to be held.
    fn locate(&self, pos: usize) -> (usize, usize) {
        let p = self.pool.layout.chunk_tokens;
        (
            self.st.pages[pos / p - self.st.first_page] as usize,
            pos % p,
        )
    }

    fn arena(&self, part: KvPart) -> &'a super::Storage {
        match part {
            KvPart::Key => &self.pool.k,
            KvPart::Value => &self.pool.v,
        }
    }
}
