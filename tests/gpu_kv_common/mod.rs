//! Shared by the GPU KV-cache and decode tests: a CPU [`ChunkPool`] (the specification) and a
//! [`GpuKvLayer`] fed the same bf16 K/V, byte comparison of their pages, and the reference decode.
#![allow(dead_code)]

use crate::attn_common::Rng;
use half::bf16;
use llama4_cuda::device::Device;
use llama4_cuda::kv_cache::gpu::GpuKvLayer;
use llama4_cuda::kv_cache::{ChunkPool, KvDType, KvLayout, KvPart, KvRow, Retention, SeqId};
use llama4_cuda::reference::attention::{attention, AttnParams};

/// `n` bf16 values uniform in [-amp, amp) (never all zero).
pub fn bf16_vec(rng: &mut Rng, n: usize, amp: f32) -> Vec<bf16> {
    rng.vec(n, amp).into_iter().map(bf16::from_f32).collect()
}

/// bf16 -> f32 (exact).
pub fn to_f32(x: &[bf16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

/// One layer's cache on the GPU and on the CPU, with the same appends.
pub struct Twin {
    pub gpu: GpuKvLayer,
    pub cpu: ChunkPool,
    pub seqs: Vec<SeqId>,
    pub layout: KvLayout,
}

impl Twin {
    pub fn new(
        dev: &Device,
        layout: KvLayout,
        retention: Retention,
        batch: usize,
        max_tokens: usize,
        budget: usize,
    ) -> Self {
        let gpu = GpuKvLayer::new(dev.stream(), layout, retention, batch, max_tokens, budget)
            .expect("GpuKvLayer::new");
        let chunks = batch * (max_tokens.div_ceil(layout.chunk_tokens) + 2);
        let mut cpu = ChunkPool::new(layout, chunks).expect("ChunkPool::new");
        let seqs = (0..batch)
            .map(|_| cpu.create_seq(retention).expect("create_seq"))
            .collect();
        Twin {
            gpu,
            cpu,
            seqs,
            layout,
        }
    }

    fn row(&self) -> usize {
        self.layout.kv_heads * self.layout.head_dim
    }

    /// Appends `n` random tokens (amplitude `amp`) to sequence `b` of both, one call each.
    pub fn append(&mut self, dev: &Device, rng: &mut Rng, b: usize, n: usize, amp: f32) {
        let k = bf16_vec(rng, n * self.row(), amp);
        let v = bf16_vec(rng, n * self.row(), amp);
        self.append_rows(dev, b, &k, &v);
    }

    /// [`Twin::append`] with magnitudes that differ by (page, KV head): element of head h at
    /// position pos is scaled by 1, 1/4, 3, 1/2 or 2 ((h + pos / chunk_tokens) mod 5), so the fp8
    /// scales differ between heads and pages and a kernel reading the wrong one fails.
    pub fn append_varied(&mut self, dev: &Device, rng: &mut Rng, b: usize, n: usize) {
        const F: [f32; 5] = [1.0, 0.25, 3.0, 0.5, 2.0];
        let (row, d, page) = (self.row(), self.layout.head_dim, self.layout.chunk_tokens);
        let start = self.gpu.len(b);
        let mut k = to_f32(&bf16_vec(rng, n * row, 1.0));
        let mut v = to_f32(&bf16_vec(rng, n * row, 1.0));
        for x in [&mut k, &mut v] {
            for (i, r) in x.chunks_mut(row).enumerate() {
                for (h, head) in r.chunks_mut(d).enumerate() {
                    head.iter_mut()
                        .for_each(|e| *e *= F[(h + (start + i) / page) % 5]);
                }
            }
        }
        let to_bf16 = |x: &[f32]| x.iter().map(|&e| bf16::from_f32(e)).collect::<Vec<_>>();
        self.append_rows(dev, b, &to_bf16(&k), &to_bf16(&v));
    }

    /// Appends the given `[n, kv_heads * head_dim]` rows to sequence `b` of both.
    pub fn append_rows(&mut self, dev: &Device, b: usize, k: &[bf16], v: &[bf16]) {
        let n = k.len() / self.row();
        let (kd, vd) = (dev.upload(k).unwrap(), dev.upload(v).unwrap());
        self.gpu
            .append(dev.stream(), b, &kd, &vd, n)
            .expect("gpu append");
        self.cpu
            .append(self.seqs[b], &to_f32(k), &to_f32(v))
            .expect("cpu append");
    }

    /// One token to every sequence through `append_step`; row b of k / v has amplitude `amps[b]`.
    pub fn step(&mut self, dev: &Device, rng: &mut Rng, amps: &[f32]) {
        let row = self.row();
        let mut k = Vec::new();
        let mut v = Vec::new();
        for &a in amps {
            k.extend(bf16_vec(rng, row, a));
            v.extend(bf16_vec(rng, row, a));
        }
        let (kd, vd) = (dev.upload(&k).unwrap(), dev.upload(&v).unwrap());
        self.gpu
            .append_step(dev.stream(), &kd, &vd)
            .expect("append_step");
        for (b, &s) in self.seqs.iter().enumerate() {
            self.cpu
                .append(
                    s,
                    &to_f32(&k[b * row..][..row]),
                    &to_f32(&v[b * row..][..row]),
                )
                .expect("cpu append");
        }
    }

    /// Asserts that every held row (and fp8 scale) of sequence `b` has the same bytes on both.
    pub fn assert_same_bytes(&self, dev: &Device, b: usize) {
        let view = self.cpu.view(self.seqs[b]).unwrap();
        let l = self.layout;
        let (p, d, h_n) = (l.chunk_tokens, l.head_dim, l.kv_heads);
        assert_eq!(self.gpu.len(b), view.len(), "lengths of sequence {b}");
        let first = view.start() / p;
        for page in first..view.len().div_ceil(p) {
            for part in [KvPart::Key, KvPart::Value] {
                let bytes = self.gpu.read_page(dev.stream(), part, b, page).unwrap();
                let slots = (view.len() - page * p).min(p);
                for h in 0..h_n {
                    for slot in 0..slots {
                        let pos = page * p + slot;
                        let off = (h * p + slot) * d;
                        match view.row(part, pos, h).unwrap() {
                            KvRow::BF16(x) => {
                                let got: Vec<u16> = bytes[2 * off..2 * (off + d)]
                                    .chunks_exact(2)
                                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                                    .collect();
                                let want: Vec<u16> = x.iter().map(|v| v.to_bits()).collect();
                                assert_eq!(got, want, "seq {b} {part:?} pos {pos} head {h}");
                            }
                            KvRow::Fp8 { codes, scale } => {
                                assert_eq!(
                                    &bytes[off..off + d],
                                    codes,
                                    "seq {b} {part:?} pos {pos} head {h} codes"
                                );
                                let so = h_n * p * d + 4 * h;
                                let s = f32::from_le_bytes(bytes[so..so + 4].try_into().unwrap());
                                assert_eq!(
                                    s.to_bits(),
                                    scale.to_bits(),
                                    "seq {b} {part:?} page {page} head {h} scale"
                                );
                            }
                            KvRow::F32(_) => unreachable!("the GPU cache is bf16 or fp8"),
                        }
                    }
                }
            }
        }
    }

    /// The reference decode of sequence `b` for the query row `q` (`[heads, head_dim]` f32) at
    /// position `len(b) - 1`.
    pub fn reference(&self, b: usize, q: &[f32], p: &AttnParams) -> Vec<f32> {
        let view = self.cpu.view(self.seqs[b]).unwrap();
        attention(q, view.len() - 1, &view, p).expect("reference attention")
    }
}

/// A Llama-4-shaped layout: 8 KV heads x 128.
pub fn layout(dtype: KvDType, chunk_tokens: usize) -> KvLayout {
    KvLayout {
        kv_heads: 8,
        head_dim: 128,
        chunk_tokens,
        dtype,
    }
}
