//! The chunked paged KV cache on the GPU: one layer's K/V for a batch of sequences, chunks in device
//! memory and, past the device budget, in mapped pinned host memory (the overflow tier). The chunk
//! layout and the fp8 scale rule are those of the CPU cache ([`crate::kv_cache`]), bit for bit; the
//! kernels see the cache as [`crate::sys::l4c_kv_pages`] (kernels/include/llama4_cuda.h).
//!
//! # Memory
//! Every chunk is allocated at construction (no allocation while decoding, so a step can be captured
//! in a CUDA graph). Each sequence owns a table of `ring` entries: every page of `max_tokens` for
//! [`Retention::All`]; for [`Retention::CurrentAttentionChunk`] `{ chunk: C }` a ring of
//! `2 C / chunk_tokens` pages (the current attention chunk plus the previous one, which a prefill
//! piece crossing a boundary still reads), page `p` at entry `p % ring`. Entries `0 .. dev_entries` of
//! every sequence are device memory, the rest pinned host memory (mapped, so the kernels read it over
//! PCIe / C2C by address); `dev_entries` is as many as `device_budget_bytes` holds.
//!
//! # Lengths
//! The device `seq_lens` is the truth the kernels read; `len()` is the host's mirror. [`append`]
//! and [`append_step`] update both. A CUDA-graph replayer that replays `n` captured steps calls
//! [`GpuKvLayer::note_replayed_steps`]`(n)` (or [`GpuKvLayer::sync_lens`], which reads the device
//! copy) so that the mirror, and with it the host-side checks, stay right.
//!
//! [`append`]: GpuKvLayer::append
//! [`append_step`]: GpuKvLayer::append_step
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use half::bf16;

use crate::device::{driver_error, DriverResultExt};
use crate::error::{Error, Result};
use crate::kv_cache::{KvDType, KvLayout, KvPart, Retention};
use crate::sys::{self, l4c_kv_pages};

mod host;
pub mod plan;

use host::HostArena;
pub use plan::KvPlan;
use plan::OP;

/// How many tokens of each sequence fit in each tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvTiers {
    /// Tokens per sequence held in device memory.
    pub device_tokens: usize,
    /// Tokens per sequence held in pinned host memory (read by the decode over PCIe / C2C).
    pub host_tokens: usize,
}

/// One layer's K/V for `batch` sequences on the GPU.
pub struct GpuKvLayer {
    layout: KvLayout,
    retention: Retention,
    batch: usize,
    max_tokens: usize,
    plan: KvPlan,
    stream: Arc<CudaStream>,
    // Raw device addresses, taken once: the allocations below never move while `self` lives.
    k_pages_ptr: u64,
    v_pages_ptr: u64,
    indptr_ptr: u64,
    lens_ptr: u64,
    /// Host mirror of the device `seq_lens`.
    lens: Vec<usize>,
    seq_lens: CudaSlice<i64>,
    _tables: [CudaSlice<u64>; 2],
    _indptr: CudaSlice<i64>,
    dev_arena: Option<CudaSlice<u8>>,
    host_arena: Option<HostArena>,
}

impl GpuKvLayer {
    /// Room for `max_tokens` positions per sequence (a chunked-local retention keeps a ring of pages
    /// instead). Chunks go to device memory up to `device_budget_bytes`, the rest to pinned host
    /// memory. `layout.dtype` is BF16 or Fp8E4M3. Errors: [`crate::Error::OutOfMemory`] (needed, free)
    /// when the host tier cannot be allocated either, [`crate::Error::InvalidArgument`] on a bad layout.
    pub fn new(
        stream: &Arc<CudaStream>,
        layout: KvLayout,
        retention: Retention,
        batch: usize,
        max_tokens: usize,
        device_budget_bytes: usize,
    ) -> Result<Self> {
        let plan = KvPlan::new(&layout, retention, batch, max_tokens, device_budget_bytes)?;
        i64::try_from(max_tokens)
            .map_err(|_| Error::invalid(OP, "max_tokens exceeds the int64 range"))?;
        let ctx = stream.context().clone();
        let (dev_bytes, host_bytes) = (plan.device_bytes(batch), plan.host_bytes(batch));
        let dev_arena = if dev_bytes > 0 {
            Some(
                stream
                    .alloc_zeros::<u8>(dev_bytes)
                    .map_err(|e| alloc_error(stream, dev_bytes, e))?,
            )
        } else {
            None
        };
        let host_arena = if host_bytes > 0 {
            Some(HostArena::new(&ctx, OP, host_bytes)?)
        } else {
            None
        };
        let dev_base = dev_arena.as_ref().map_or(0, |a| raw_ptr(a, stream));
        let host_base = host_arena.as_ref().map_or(0, HostArena::device_ptr);
        let mut tables = [Vec::new(), Vec::new()];
        for b in 0..batch {
            for i in 0..plan.ring {
                for (part, t) in tables.iter_mut().enumerate() {
                    let (host, off) = plan.locate(b, i, part);
                    t.push(if host { host_base } else { dev_base } + off as u64);
                }
            }
        }
        let indptr: Vec<i64> = (0..=batch).map(|b| (b * plan.ring) as i64).collect();
        let k_pages = stream.clone_htod(&tables[0]).op(OP)?;
        let v_pages = stream.clone_htod(&tables[1]).op(OP)?;
        let indptr_d = stream.clone_htod(&indptr).op(OP)?;
        let seq_lens = stream.alloc_zeros::<i64>(batch).op(OP)?;
        Ok(GpuKvLayer {
            layout,
            retention,
            batch,
            max_tokens,
            plan,
            stream: stream.clone(),
            k_pages_ptr: raw_ptr(&k_pages, stream),
            v_pages_ptr: raw_ptr(&v_pages, stream),
            indptr_ptr: raw_ptr(&indptr_d, stream),
            lens_ptr: raw_ptr(&seq_lens, stream),
            lens: vec![0; batch],
            seq_lens,
            _tables: [k_pages, v_pages],
            _indptr: indptr_d,
            dev_arena,
            host_arena,
        })
    }
    /// The layout.
    pub fn layout(&self) -> KvLayout {
        self.layout
    }
    /// What each sequence keeps.
    pub fn retention(&self) -> Retention {
        self.retention
    }
    /// Sequences.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Tokens held by sequence `b` (the host's mirror of the device `seq_lens`); 0 for `b >= batch`.
    pub fn len(&self, b: usize) -> usize {
        self.lens.get(b).copied().unwrap_or(0)
    }
    /// True when no sequence holds a token.
    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|&l| l == 0)
    }
    /// Positions each sequence can take.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }
    /// The placement of the chunks (ring length, tiers, strides).
    pub fn plan(&self) -> KvPlan {
        self.plan
    }
    /// Tokens per sequence in each tier.
    pub fn tiers(&self) -> KvTiers {
        let (device_tokens, host_tokens) =
            plan::tier_tokens(&self.plan, &self.layout, self.max_tokens);
        KvTiers {
            device_tokens,
            host_tokens,
        }
    }

    /// Appends `tokens` rows of k and v (`[tokens, kv_heads * head_dim]`, contiguous) to sequence
    /// `b` at positions `len(b) ..`. [`crate::Error::CacheFull`] past `max_tokens`, nothing written.
    /// With a ring (chunked-local retention) one call may not reach past the attention chunk after
    /// `len(b)`'s (append at most one attention chunk at a time).
    pub fn append(
        &mut self,
        stream: &Arc<CudaStream>,
        b: usize,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
        tokens: usize,
    ) -> Result<()> {
        self.append_from(stream, b, k, v, tokens)
    }

    /// [`GpuKvLayer::append`] from any device buffer or view (e.g. rows of a larger prompt buffer).
    pub fn append_from(
        &mut self,
        stream: &Arc<CudaStream>,
        b: usize,
        k: &impl DevicePtr<bf16>,
        v: &impl DevicePtr<bf16>,
        tokens: usize,
    ) -> Result<()> {
        const OPA: &str = "GpuKvLayer::append";
        if b >= self.batch {
            return Err(Error::invalid(
                OPA,
                format!("sequence {b} out of range: the cache has {}", self.batch),
            ));
        }
        if tokens == 0 {
            return Ok(());
        }
        let row = self.layout.kv_heads * self.layout.head_dim;
        let need = tokens
            .checked_mul(row)
            .ok_or_else(|| Error::invalid(OPA, "tokens x row overflows"))?;
        for (name, x) in [("k", k.len()), ("v", v.len())] {
            if x < need {
                return Err(Error::shape(
                    OPA,
                    format!("{name} has {x} elements, {tokens} tokens need {need}"),
                ));
            }
        }
        // l4c_kv_append copies 16-byte pieces: a view must start 16-byte aligned (the launcher would
        // only say "invalid argument").
        for (name, x) in [("k", k.device_ptr(stream).0), ("v", v.device_ptr(stream).0)] {
            if x % 16 != 0 {
                return Err(Error::invalid(
                    OPA,
                    format!("{name} starts at {x:#x}, not 16-byte aligned: a view must start a multiple of 8 elements into its buffer"),
                ));
            }
        }
        let start = self.lens[b];
        let end = self.check_room(start, tokens)?;
        plan::check_ring(&self.plan, &self.layout, self.retention, start, end)?;
        let p = sys::l4c_kv_append_params {
            kv: self.pages(),
            k: std::ptr::null(),
            v: std::ptr::null(),
            k_row_stride: row as i64,
            v_row_stride: row as i64,
            tokens: tokens as i64,
            seq: b as i64,
            start: start as i64,
            max_tokens: self.max_tokens as i64,
        };
        launch_append(stream, p, k, v)?;
        self.lens[b] = end;
        Ok(())
    }

    /// Appends one token to every sequence: row b of k and v (`[batch, kv_heads * head_dim]`) goes to
    /// sequence b at its own next position. Reads and advances the device `seq_lens` only, so a
    /// decode step that calls it can be captured in a CUDA graph and replayed (see the module docs
    /// for keeping the host mirror right).
    pub fn append_step(
        &mut self,
        stream: &Arc<CudaStream>,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
    ) -> Result<()> {
        const OPS: &str = "GpuKvLayer::append_step";
        let row = self.layout.kv_heads * self.layout.head_dim;
        for (name, x) in [("k", k.len()), ("v", v.len())] {
            if x < self.batch * row {
                return Err(Error::shape(
                    OPS,
                    format!(
                        "{name} has {x} elements, batch {} x row {row} needed",
                        self.batch
                    ),
                ));
            }
        }
        for b in 0..self.batch {
            self.check_room(self.lens[b], 1)?;
        }
        let p = sys::l4c_kv_append_params {
            kv: self.pages(),
            k: std::ptr::null(),
            v: std::ptr::null(),
            k_row_stride: row as i64,
            v_row_stride: row as i64,
            tokens: self.batch as i64,
            seq: -1,
            start: 0,
            max_tokens: self.max_tokens as i64,
        };
        launch_append(stream, p, k, v)?;
        self.lens.iter_mut().for_each(|l| *l += 1);
        Ok(())
    }

    /// Tells the host mirror that `steps` captured [`GpuKvLayer::append_step`]s were replayed from a
    /// CUDA graph (the device lengths advanced without this object seeing it). Fails, changing
    /// nothing, when that would pass `max_tokens` (the device kernel stops there too).
    pub fn note_replayed_steps(&mut self, steps: usize) -> Result<()> {
        for b in 0..self.batch {
            self.check_room(self.lens[b], steps)?;
        }
        self.lens.iter_mut().for_each(|l| *l += steps);
        Ok(())
    }

    /// Reloads the host mirror from the device `seq_lens` (synchronises `stream`).
    pub fn sync_lens(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        let d = stream.clone_dtoh(&self.seq_lens).op(OP)?;
        for (m, &x) in self.lens.iter_mut().zip(&d) {
            *m = usize::try_from(x)
                .map_err(|_| Error::invalid(OP, format!("device length {x} is negative")))?;
        }
        Ok(())
    }

    /// Empties sequence `b` (device and mirror); its pages are reused from position 0.
    pub fn clear(&mut self, stream: &Arc<CudaStream>, b: usize) -> Result<()> {
        if b >= self.batch {
            return Err(Error::invalid(
                OP,
                format!("sequence {b} out of range: the cache has {}", self.batch),
            ));
        }
        let mut one = self.seq_lens.slice_mut(b..b + 1);
        stream.memcpy_htod(&[0i64], &mut one).op(OP)?;
        self.lens[b] = 0;
        Ok(())
    }

    /// The raw bytes of the chunk holding absolute page `page` of sequence `b` (K or V): `[kv_heads,
    /// chunk_tokens, head_dim]` elements, then for fp8 `kv_heads` f32 scales. For tests and
    /// debugging; synchronises `stream`. Slots not yet written hold whatever was there.
    pub fn read_page(
        &self,
        stream: &Arc<CudaStream>,
        part: KvPart,
        b: usize,
        page: usize,
    ) -> Result<Vec<u8>> {
        if b >= self.batch {
            return Err(Error::invalid(OP, format!("sequence {b} out of range")));
        }
        let entry = plan::ring_entry(&self.plan, page);
        let (host, off) = self.plan.locate(b, entry, (part == KvPart::Value) as usize);
        let mut out = vec![0u8; self.plan.chunk_bytes];
        stream.synchronize().op(OP)?;
        if host {
            self.host_arena
                .as_ref()
                .ok_or_else(|| Error::invalid(OP, "no host arena"))?
                .read(off, &mut out)?;
        } else {
            let arena = self
                .dev_arena
                .as_ref()
                .ok_or_else(|| Error::invalid(OP, "no device arena"))?;
            let view = arena.slice(off..off + out.len());
            stream.memcpy_dtoh(&view, &mut out).op(OP)?;
        }
        Ok(out)
    }

    /// The view the attention kernels take. Valid while `self` lives and is not mutated.
    pub fn pages(&self) -> l4c_kv_pages {
        l4c_kv_pages {
            k_pages: self.k_pages_ptr as *const u64,
            v_pages: self.v_pages_ptr as *const u64,
            page_indptr: self.indptr_ptr as *const i64,
            seq_lens: self.lens_ptr as *mut i64,
            batch: self.batch as i64,
            kv_heads: self.layout.kv_heads as i64,
            head_dim: self.layout.head_dim as i64,
            chunk_tokens: self.layout.chunk_tokens as i64,
            dtype: match self.layout.dtype {
                KvDType::Fp8E4M3 => sys::l4c_dtype::L4C_DTYPE_F8E4M3,
                _ => sys::l4c_dtype::L4C_DTYPE_BF16,
            },
        }
    }

    /// `start + tokens`, or [`Error::CacheFull`] when it passes `max_tokens`.
    fn check_room(&self, start: usize, tokens: usize) -> Result<usize> {
        let p = self.layout.chunk_tokens;
        match start.checked_add(tokens) {
            Some(end) if end <= self.max_tokens => Ok(end),
            end => Err(Error::CacheFull {
                needed: end.map_or(usize::MAX, |e| e.div_ceil(p)) - start.div_ceil(p),
                free: (self.max_tokens - start) / p,
                total: self.max_tokens.div_ceil(p),
            }),
        }
    }
}

impl Drop for GpuKvLayer {
    fn drop(&mut self) {
        // Kernels in flight may still read the host arena: wait before it is freed.
        if self.host_arena.is_some() {
            let _ = self.stream.synchronize();
        }
    }
}

/// The device address of a buffer (the guard is dropped at once: the address stays valid).
fn raw_ptr<T>(buf: &CudaSlice<T>, stream: &Arc<CudaStream>) -> u64 {
    let (p, _guard) = buf.device_ptr(stream);
    p
}

/// A device allocation failure as [`Error::OutOfMemory`] with the free memory now.
fn alloc_error(stream: &Arc<CudaStream>, needed: usize, e: cudarc::driver::DriverError) -> Error {
    match driver_error(OP, e) {
        Error::OutOfMemory { op, .. } => {
            let free = stream.context().mem_get_info().map_or(0, |(f, _)| f);
            Error::OutOfMemory { op, needed, free }
        }
        other => other,
    }
}

/// Launches l4c_kv_append with k and v filled in.
fn launch_append(
    stream: &Arc<CudaStream>,
    mut p: sys::l4c_kv_append_params,
    k: &impl DevicePtr<bf16>,
    v: &impl DevicePtr<bf16>,
) -> Result<()> {
    crate::ops::launch("kv_append", stream, |s| {
        let (pk, _gk) = k.device_ptr(stream);
        let (pv, _gv) = v.device_ptr(stream);
        p.k = pk as *const std::ffi::c_void;
        p.v = pv as *const std::ffi::c_void;
        // SAFETY: the view's tables and arenas belong to a live GpuKvLayer, k and v hold at least
        // `tokens` rows (checked by the callers), the positions were checked against max_tokens and
        // the ring rule, and the guards keep cudarc's stream ordering until the launch.
        unsafe { sys::l4c_kv_append(&p, s) }
    })
}
