//! The one seeded generator of the test suite (splitmix64); included by tests/common,
//! tests/attn_common and tests/ckpt_common.

/// splitmix64: proptest or [`Rng::fresh`] picks the seed, so every case gets fresh data and a
/// failure reproduces.
pub struct Rng(pub u64);

/// A seed for this run: `L4C_TEST_SEED` when set (to replay a failure), else the clock. Printed to
/// stderr, which the test harness shows for a failing test.
pub fn fresh_seed() -> u64 {
    let s = std::env::var("L4C_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("L4C_TEST_SEED={s}");
    s
}

impl Rng {
    /// A generator seeded by [`fresh_seed`], and the seed (for failure messages).
    pub fn fresh() -> (Self, u64) {
        let s = fresh_seed();
        (Rng(s), s)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// Uniform in [-1, 1), never exactly 0 (a 0 draw becomes 0.5).
    pub fn nonzero(&mut self) -> f32 {
        match self.uniform() {
            0.0 => 0.5,
            x => x,
        }
    }
    /// Magnitude uniform in [lo, hi), random sign: with lo > 0 never zero or tiny, so relative
    /// errors of GPU kernels stay meaningful.
    pub fn signed(&mut self, lo: f32, hi: f32) -> f32 {
        let r = self.next_u64();
        let mag = lo + (hi - lo) * ((r >> 40) as f32 / (1u64 << 24) as f32);
        if r & 1 == 0 {
            mag
        } else {
            -mag
        }
    }
    /// `len` values uniform in [-amp, amp), never all zero.
    pub fn vec(&mut self, len: usize, amp: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform() * amp).collect()
    }
    /// `len` [`Rng::nonzero`] values, rounded to bf16 when `bf16` (so a bf16 buffer or checkpoint
    /// holds them exactly).
    pub fn nonzero_vec(&mut self, len: usize, bf16: bool) -> Vec<f32> {
        (0..len)
            .map(|_| {
                let x = self.nonzero();
                if bf16 {
                    half::bf16::from_f32(x).to_f32()
                } else {
                    x
                }
            })
            .collect()
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
