//! Batched decode on the GPU with no host synchronisation inside a step, replayable as a CUDA graph,
//! and chunked prefill of one sequence of the batch.
//!
//! A step reads everything that changes from one step to the next from the device: the token ids
//! (`[batch]`, written by the caller between steps, or by the step's own device sampler when
//! [`BatchDecoder::sample_on_device`] is on: then a replayed graph runs from ids to ids), the RoPE positions (copied on the device from
//! layer 0's `seq_lens` before the step appends), and the KV lengths (`append_step` and
//! `attn_decode` read and advance `seq_lens` on the device). Every buffer a step touches is allocated
//! once, here, so the captured graph's pointers stay valid across replays.
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice, DevicePtrMut};
use half::bf16;

use super::{chunk_pieces, CudaBackend, Scratch};
use crate::device::DriverResultExt;
use crate::error::{Error, Result};
use crate::kv_cache::gpu::GpuKvLayer;
use crate::kv_cache::KvDType;
use crate::model::cache::{layout, retention, CacheOptions};
use crate::model::forward::{LayerFfn, Model};
use crate::model::gpu_plan::GpuPlan;
use crate::model::sampling::SamplingParams;
use crate::ops::attn_decode::attn_decode;
use crate::ops::attn_prefill::attn_prefill;
use crate::ops::moe::moe_block;
use crate::ops::norm_rope::{positions_on_device, rms_norm, rope, rope_qk_norm};
use crate::ops::sample::{sample, LogitsShape, SampleState};
use crate::ops::{residual_add, silu_mul};

/// Activations of one pass over `rows` tokens, each buffer exactly its size.
struct Bufs {
    rows: usize,
    x: CudaSlice<bf16>,
    h: CudaSlice<bf16>,
    q: CudaSlice<bf16>,
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
    attn: CudaSlice<bf16>,
    tmp: CudaSlice<bf16>,
    /// Dense-MLP gate, up and SiLU product (`[rows, intermediate_size_mlp]`; one element when the
    /// model has no dense layer).
    gate: CudaSlice<bf16>,
    up: CudaSlice<bf16>,
    act: CudaSlice<bf16>,
}

impl Bufs {
    fn new(be: &CudaBackend, m: &Model<CudaBackend>, rows: usize) -> Result<Self> {
        let c = m.config();
        let (h, qd, kvd) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let inter = if c.num_moe_layers() < c.layers.len() {
            c.intermediate_size_mlp
        } else {
            0
        };
        let a = |n: usize| be.alloc_bf16("BatchDecoder", rows * n);
        Ok(Bufs {
            rows,
            x: a(h)?,
            h: a(h)?,
            q: a(qd)?,
            k: a(kvd)?,
            v: a(kvd)?,
            attn: a(qd)?,
            tmp: a(h)?,
            gate: a(inter)?,
            up: a(inter)?,
            act: a(inter)?,
        })
    }
}

/// How a pass attends.
#[derive(Clone, Copy)]
enum Attend {
    /// One token of every sequence (`rows == batch`), positions from the device.
    Step,
    /// `rows` tokens of sequence `b` at positions `start ..`.
    Prefill { b: usize, start: usize },
}

/// Next-token sampling at the end of every step ([`BatchDecoder::sample_on_device`]).
struct DeviceSampling {
    params: SamplingParams,
    state: SampleState,
    /// `[steps, batch]` ring of every sampled step's ids, indexed by the device step counter.
    history: CudaSlice<u32>,
    steps: usize,
    /// Sampling steps enqueued (eager or replayed) since sampling was switched on: the device counter.
    taken: u64,
}

/// A batch of sequences decoding together on one GPU.
pub struct BatchDecoder<'m> {
    model: &'m Model<CudaBackend>,
    batch: usize,
    max_tokens: usize,
    kv: Vec<GpuKvLayer>,
    step: Bufs,
    ids: CudaSlice<u32>,
    positions: CudaSlice<i64>,
    normed: CudaSlice<bf16>,
    logits: CudaSlice<bf16>,
    /// The decoder's own op scratch: a captured graph holds its pointers, so nothing outside this
    /// decoder may grow (reallocate) it.
    scratch: Scratch,
    graph: Option<CudaGraph>,
    sampling: Option<DeviceSampling>,
}

impl<'m> BatchDecoder<'m> {
    /// KV caches for `batch` sequences of up to `max_tokens` positions (`kv_dtype` BF16 or Fp8E4M3),
    /// with each layer's device budget from `plan` (everything on the device when `None`).
    pub fn new(
        model: &'m Model<CudaBackend>,
        batch: usize,
        max_tokens: usize,
        kv_dtype: KvDType,
        plan: Option<&GpuPlan>,
    ) -> Result<Self> {
        if batch == 0 || max_tokens == 0 {
            return Err(Error::invalid(
                "BatchDecoder",
                format!("batch {batch} and max_tokens {max_tokens} must be at least 1"),
            ));
        }
        let (be, c) = (model.backend(), model.config());
        c.validate_for_gpu()?;
        if max_tokens > c.max_position_embeddings {
            return Err(Error::ContextTooLong {
                needed: max_tokens,
                limit: c.max_position_embeddings,
            });
        }
        let lay = layout(
            c,
            &CacheOptions {
                page_tokens: None,
                dtype: kv_dtype,
            },
        )?;
        let kv = c
            .layers
            .iter()
            .map(|&kind| {
                let budget = plan.map_or(usize::MAX, |p| p.kv_device_budget(c, !kind.rope));
                GpuKvLayer::new(
                    be.stream(),
                    lay,
                    retention(c, kind),
                    batch,
                    max_tokens,
                    budget,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let st = be.stream();
        Ok(BatchDecoder {
            step: Bufs::new(be, model, batch)?,
            ids: st.alloc_zeros::<u32>(batch).op("BatchDecoder")?,
            positions: st.alloc_zeros::<i64>(batch).op("BatchDecoder")?,
            normed: be.alloc_bf16("BatchDecoder", batch * c.hidden_size)?,
            logits: be.alloc_bf16("BatchDecoder", batch * c.vocab_size)?,
            model,
            batch,
            max_tokens,
            kv,
            scratch: Scratch::default(),
            graph: None,
            sampling: None,
        })
    }

    /// Sequences.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// The per-layer caches.
    pub fn kv(&self) -> &[GpuKvLayer] {
        &self.kv
    }

    /// Runs `tokens` of sequence `b` through the model in pieces of at most `piece` tokens that never
    /// cross an attention-chunk boundary (so a chunked layer's ring never drops a page a query of the
    /// same piece sees), appending to its caches. Returns the last position's logits when `logits`.
    pub fn prefill(
        &mut self,
        b: usize,
        tokens: &[u32],
        piece: usize,
        logits: bool,
    ) -> Result<Option<Vec<f32>>> {
        let (m, c) = (self.model, self.model.config());
        if b >= self.batch || tokens.is_empty() || piece == 0 {
            return Err(Error::invalid(
                "prefill",
                format!(
                    "sequence {b} of {}, {} tokens, pieces of {piece}",
                    self.batch,
                    tokens.len()
                ),
            ));
        }
        m.check_tokens(tokens)?;
        let start = self.kv[0].len(b);
        if start + tokens.len() > self.max_tokens {
            return Err(Error::ContextTooLong {
                needed: start + tokens.len(),
                limit: self.max_tokens,
            });
        }
        let chunk = c.attention_chunk_size;
        let mut last = None;
        for (r, n) in chunk_pieces(start, tokens.len(), piece, chunk) {
            let pos = start + r;
            let mut bufs = Bufs::new(m.backend(), m, n)?;
            crate::ops::embedding_host_ids(
                m.backend().stream(),
                &m.embed().data,
                c.hidden_size,
                &tokens[r..r + n],
                &mut bufs.x,
            )?;
            let positions: Vec<usize> = (pos..pos + n).collect();
            let dev_pos = positions_on_device(m.backend().stream(), &positions)?;
            let how = Attend::Prefill { b, start: pos };
            run_layers(m, &mut self.kv, &mut bufs, &dev_pos, how, &mut self.scratch)?;
            if logits && r + n == tokens.len() {
                last = Some(self.last_logits(&bufs)?);
            }
        }
        Ok(last)
    }

    /// Appends `tokens` positions of synthetic K/V (uniform values) to every sequence without running
    /// the model: a benchmark's way to decode at a long context in seconds.
    pub fn fill_kv(&mut self, tokens: usize, seed: u64) -> Result<()> {
        let (be, c) = (self.model.backend(), self.model.config());
        let kvd = c.num_key_value_heads * c.head_dim;
        let chunk = c.attention_chunk_size;
        let piece = chunk.min(tokens.max(1));
        let mut src = be.alloc_bf16("fill_kv", piece * kvd)?;
        let amp = crate::ops::synthetic::Synth::Uniform { amp: 1.0 };
        crate::ops::synthetic::synthetic_fill(be.stream(), &mut src, amp, seed, u64::MAX)?;
        for b in 0..self.batch {
            let start = self.kv[0].len(b);
            for (_, n) in chunk_pieces(start, tokens, piece, chunk) {
                let part;
                let s = if n == piece {
                    &src
                } else {
                    part = be
                        .stream()
                        .clone_dtod(&src.slice(..n * kvd))
                        .op("fill_kv")?;
                    &part
                };
                for kv in &mut self.kv {
                    kv.append(be.stream(), b, s, s, n)?;
                }
            }
        }
        Ok(())
    }

    /// Sets the token ids of the next step (one per sequence); copied to the device on the stream.
    pub fn set_ids(&mut self, ids: &[u32]) -> Result<()> {
        crate::error::check_len("set_ids", "ids", ids.len(), self.batch)?;
        self.model.check_tokens(ids)?;
        self.model
            .backend()
            .stream()
            .memcpy_htod(ids, &mut self.ids)
            .op("set_ids")
    }

    /// Ends every step by sampling each sequence's next token on the device into the step's input ids
    /// (so the next step, eager or replayed, reads them with no host copy) and into a ring of the last
    /// `history_steps` steps' ids ([`Self::sampled_ids`]). Temperature 0 is greedy (argmax, ties to the
    /// lowest id); otherwise top-p as the host sampler, with draws from (seed, step, sequence), the step
    /// counted from 0 here: the same distribution as `model::sampling::Sampler`, not the same draws
    /// (see `reference::sample`). Call before [`Self::capture`] (the graph records the sampler).
    pub fn sample_on_device(&mut self, params: SamplingParams, history_steps: usize) -> Result<()> {
        const OP: &str = "BatchDecoder::sample_on_device";
        crate::reference::sample::check_params(params.temperature, params.top_p)?;
        if history_steps == 0 {
            return Err(Error::invalid(OP, "history_steps must be at least 1"));
        }
        if self.graph.is_some() {
            return Err(Error::invalid(
                OP,
                "a graph is already captured without sampling: switch sampling on before capture()",
            ));
        }
        let st = self.model.backend().stream();
        self.sampling = Some(DeviceSampling {
            params,
            state: SampleState::new(st, 0)?,
            history: st.alloc_zeros::<u32>(history_steps * self.batch).op(OP)?,
            steps: history_steps,
            taken: 0,
        });
        Ok(())
    }

    /// Sampling steps run (eager or replayed) since [`Self::sample_on_device`].
    pub fn sampled_steps(&self) -> u64 {
        self.sampling.as_ref().map_or(0, |s| s.taken)
    }

    /// The ids sampled by the last `min(sampled_steps, history_steps)` steps, oldest first, each
    /// `[batch]` (one download; synchronises). Fails unless sampling is on.
    pub fn sampled_ids(&self) -> Result<Vec<Vec<u32>>> {
        let s = self.sampling.as_ref().ok_or_else(|| {
            Error::invalid("BatchDecoder::sampled_ids", "sampling on the device is off")
        })?;
        let ring = self
            .model
            .backend()
            .stream()
            .clone_dtoh(&s.history)
            .op("BatchDecoder::sampled_ids")?;
        let n = s.taken.min(s.steps as u64);
        Ok((s.taken - n..s.taken)
            .map(|step| {
                let at = (step % s.steps as u64) as usize * self.batch;
                ring[at..at + self.batch].to_vec()
            })
            .collect())
    }

    /// The next step's input ids (`[batch]`; after a sampling step, the sampled ids). Synchronises.
    pub fn next_ids(&self) -> Result<Vec<u32>> {
        self.model
            .backend()
            .stream()
            .clone_dtoh(&self.ids)
            .op("BatchDecoder::next_ids")
    }

    /// Fails when a sampling step since the last check met a NaN or +inf logit (that sequence's id was
    /// set to 0), and clears the flag. Synchronises. Ok when sampling is off.
    pub fn check_sampling(&mut self) -> Result<()> {
        let st = self.model.backend().stream();
        match &mut self.sampling {
            Some(s) => s.state.check(st),
            None => Ok(()),
        }
    }

    /// Enqueues one decode step of every sequence (eagerly, no host synchronisation), ending with the
    /// device sampler when it is on.
    pub fn step(&mut self) -> Result<()> {
        self.enqueue_step()?;
        if let Some(s) = &mut self.sampling {
            s.taken += 1;
        }
        Ok(())
    }

    fn enqueue_step(&mut self) -> Result<()> {
        let (m, c) = (self.model, self.model.config());
        let st = m.backend().stream();
        crate::ops::embedding(
            st,
            &m.embed().data,
            c.hidden_size,
            &self.ids,
            &mut self.step.x,
            None,
        )?;
        // RoPE positions = the lengths before this step's appends (layer 0's, all layers agree).
        let seq_lens = self.kv[0].pages().seq_lens as u64;
        {
            let (dst, _g) = self.positions.device_ptr_mut(st);
            // SAFETY: seq_lens is layer 0's device array of `batch` int64 (l4c_kv_pages), alive while
            // self.kv lives; positions holds `batch` int64; both on this stream's context.
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(
                    dst,
                    seq_lens,
                    self.batch * std::mem::size_of::<i64>(),
                    st.cu_stream(),
                )
            }
            .op("BatchDecoder::step")?;
        }
        run_layers(
            m,
            &mut self.kv,
            &mut self.step,
            &self.positions,
            Attend::Step,
            &mut self.scratch,
        )?;
        let eps = c.rms_norm_eps;
        rms_norm(
            st,
            &self.step.x,
            c.hidden_size,
            m.final_norm(),
            eps,
            &mut self.normed,
        )?;
        m.lm_head().gemm(
            st,
            &self.normed,
            self.batch,
            None,
            &mut self.logits,
            &mut self.scratch.gemm,
        )?;
        if let Some(s) = &mut self.sampling {
            sample(
                st,
                &self.logits,
                LogitsShape::dense(self.batch, c.vocab_size),
                &s.params,
                &mut s.state,
                &mut self.ids,
                Some(&mut s.history),
            )?;
        }
        Ok(())
    }

    /// Captures one step as a CUDA graph (nothing runs during the capture; the caller should have run
    /// one eager [`Self::step`] first so every scratch buffer has reached its size: a capture must not
    /// allocate).
    pub fn capture(&mut self) -> Result<()> {
        let be = self.model.backend();
        let st = be.stream().clone();
        let ctx = st.context().clone();
        // SAFETY: every buffer the step touches is used on this one stream only, so cudarc's
        // cross-stream events are not needed; recording them inside a capture would be illegal.
        unsafe { ctx.disable_event_tracking() };
        let r = st
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .op("BatchDecoder::capture");
        let stepped = r.and_then(|()| self.enqueue_step());
        let graph = st
            .end_capture(CUgraphInstantiate_flags(0))
            .op("BatchDecoder::capture");
        // SAFETY: restores the default; no capture is active any more.
        unsafe { ctx.enable_event_tracking() };
        // The captured step advanced the caches' host mirrors without running: reload them.
        for kv in &mut self.kv {
            kv.sync_lens(&st)?;
        }
        stepped?;
        let graph = graph?.ok_or_else(|| {
            Error::invalid("BatchDecoder::capture", "the capture recorded no work")
        })?;
        graph.upload().op("BatchDecoder::capture")?;
        self.graph = Some(graph);
        Ok(())
    }

    /// Replays the captured step ([`Self::capture`] first). Fails with [`Error::CacheFull`], running
    /// nothing, when a sequence has no room for one more token. With device sampling the step reads the
    /// ids the previous step sampled and writes the next ones: N replays decode N tokens with no host
    /// copy at all.
    pub fn replay(&mut self) -> Result<()> {
        let graph = self
            .graph
            .as_ref()
            .ok_or_else(|| Error::invalid("BatchDecoder::replay", "no graph captured"))?;
        // The graph advances the device lengths; the host mirrors are told first (this checks room
        // and changes nothing on failure). The layers' lengths move together, so a failure can only
        // come from the first layer.
        for kv in &mut self.kv {
            kv.note_replayed_steps(1)?;
        }
        graph.launch().op("BatchDecoder::replay")?;
        if let Some(s) = &mut self.sampling {
            s.taken += 1;
        }
        Ok(())
    }

    /// The last step's logits, `[batch, vocab]` (synchronises).
    pub fn logits(&self) -> Result<Vec<f32>> {
        let h = self
            .model
            .backend()
            .stream()
            .clone_dtoh(&self.logits)
            .op("BatchDecoder::logits")?;
        Ok(h.iter().map(|v| v.to_f32()).collect())
    }

    fn last_logits(&mut self, bufs: &Bufs) -> Result<Vec<f32>> {
        let (m, c) = (self.model, self.model.config());
        let (be, st) = (m.backend(), m.backend().stream());
        let h = c.hidden_size;
        let last = st
            .clone_dtod(&bufs.x.slice((bufs.rows - 1) * h..bufs.rows * h))
            .op("prefill")?;
        let mut normed = be.alloc_bf16("prefill", h)?;
        rms_norm(st, &last, h, m.final_norm(), c.rms_norm_eps, &mut normed)?;
        let mut out = be.alloc_bf16("prefill", c.vocab_size)?;
        m.lm_head()
            .gemm(st, &normed, 1, None, &mut out, &mut self.scratch.gemm)?;
        let h = st.clone_dtoh(&out).op("prefill")?;
        Ok(h.iter().map(|v| v.to_f32()).collect())
    }
}

/// Every decoder layer of `m` over `bufs.x` in place, with `kvs` the layers' caches.
fn run_layers(
    m: &Model<CudaBackend>,
    kvs: &mut [GpuKvLayer],
    bufs: &mut Bufs,
    positions: &CudaSlice<i64>,
    how: Attend,
    scratch: &mut Scratch,
) -> Result<()> {
    let c = m.config();
    let st = m.backend().stream();
    let (rows, eps, hidden) = (bufs.rows, c.rms_norm_eps, c.hidden_size);
    let (heads, kvh, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    for (i, layer) in m.layers().iter().enumerate() {
        rms_norm(st, &bufs.x, hidden, &layer.input_norm, eps, &mut bufs.h)?;
        {
            let g = &mut scratch.gemm;
            layer.q.gemm(st, &bufs.h, rows, None, &mut bufs.q, g)?;
            layer.k.gemm(st, &bufs.h, rows, None, &mut bufs.k, g)?;
            layer.v.gemm(st, &bufs.h, rows, None, &mut bufs.v, g)?;
        }
        if layer.kind.rope {
            let (q, k, f) = (&mut bufs.q, &mut bufs.k, m.inv_freq());
            match c.use_qk_norm {
                true => rope_qk_norm(st, q, heads, k, kvh, hd, positions, f, eps)?,
                false => rope(st, q, heads, k, kvh, hd, positions, f)?,
            }
        }
        let p = m.attn_params(layer.kind);
        let kv = &mut kvs[i];
        match how {
            Attend::Step => {
                kv.append_step(st, &bufs.k, &bufs.v)?;
                attn_decode(st, &bufs.q, kv, &p, &mut bufs.attn, &mut scratch.attn)?;
            }
            Attend::Prefill { b, start } => {
                kv.append(st, b, &bufs.k, &bufs.v, rows)?;
                attn_prefill(st, &bufs.q, rows, start, kv, b, &p, &mut bufs.attn)?;
            }
        }
        layer
            .o
            .gemm(st, &bufs.attn, rows, None, &mut bufs.tmp, &mut scratch.gemm)?;
        residual_add(st, &mut bufs.x, &bufs.tmp)?;
        rms_norm(
            st,
            &bufs.x,
            hidden,
            &layer.post_attention_norm,
            eps,
            &mut bufs.h,
        )?;
        match &layer.ffn {
            LayerFfn::Dense(mlp) => {
                let g = &mut scratch.gemm;
                mlp.gate.gemm(st, &bufs.h, rows, None, &mut bufs.gate, g)?;
                mlp.up.gemm(st, &bufs.h, rows, None, &mut bufs.up, g)?;
                silu_mul(st, &bufs.gate, &bufs.up, &mut bufs.act)?;
                mlp.down.gemm(st, &bufs.act, rows, None, &mut bufs.tmp, g)?;
            }
            LayerFfn::Moe(moe) => {
                let s = &mut scratch.moe;
                moe_block(
                    st,
                    &bufs.h,
                    rows,
                    moe,
                    c.num_experts_per_tok,
                    &mut bufs.tmp,
                    s,
                )?;
            }
        }
        residual_add(st, &mut bufs.x, &bufs.tmp)?;
    }
    Ok(())
}
