//! Next-token choice: greedy, temperature, top-p (nucleus), from a seeded generator so runs repeat.
use crate::error::{Error, Result};
use crate::model::config::GenerationConfig;

/// LLAMA4.md's default sampling temperature.
pub const DEFAULT_TEMPERATURE: f32 = 0.6;
/// LLAMA4.md's default nucleus mass.
pub const DEFAULT_TOP_P: f32 = 0.9;
/// The default seed: fixed so that two runs with the same arguments print the same tokens.
pub const DEFAULT_SEED: u64 = 0x1a3a_4c0d;

/// SplitMix64: a tiny, well-tested generator (Steele, Lea, Flood 2014). Deterministic from its seed;
/// used for sampling and for the synthetic model's weights. Not for cryptography.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform in [-a, a).
    pub fn uniform(&mut self, a: f32) -> f32 {
        ((self.next_f64() * 2.0 - 1.0) * a as f64) as f32
    }
}

/// How to pick the next token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax); otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; 1 = all.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: DEFAULT_TEMPERATURE,
            top_p: DEFAULT_TOP_P,
            seed: DEFAULT_SEED,
        }
    }
}

impl SamplingParams {
    /// The sampling of a run, each setting from the first that gives it: the command line
    /// (`temperature`, `top_p`), the checkpoint's generation_config.json, the built-in default
    /// (LLAMA4.md: 0.6 / 0.9). generation_config's `do_sample: false` means greedy (as in Hugging
    /// Face) unless the command line gives a temperature. Values are checked by [`Sampler::new`].
    pub fn resolve(
        temperature: Option<f32>,
        top_p: Option<f32>,
        seed: u64,
        generation: Option<&GenerationConfig>,
    ) -> Self {
        let g = generation.cloned().unwrap_or_default();
        let config_temperature = match g.do_sample {
            Some(false) => Some(0.0),
            _ => g.temperature,
        };
        SamplingParams {
            temperature: temperature
                .or(config_temperature)
                .unwrap_or(DEFAULT_TEMPERATURE),
            top_p: top_p.or(g.top_p).unwrap_or(DEFAULT_TOP_P),
            seed,
        }
    }

    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }
}

/// Samples tokens one after another from a seeded stream.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    /// Fails on a negative or non-finite temperature, or top_p outside (0, 1].
    pub fn new(params: SamplingParams) -> Result<Self> {
        if !(params.temperature.is_finite() && params.temperature >= 0.0) {
            return Err(Error::invalid(
                "sampling",
                format!("temperature must be >= 0, got {}", params.temperature),
            ));
        }
        if !(params.top_p > 0.0 && params.top_p <= 1.0) {
            return Err(Error::invalid(
                "sampling",
                format!("top_p must be in (0, 1], got {}", params.top_p),
            ));
        }
        Ok(Sampler {
            params,
            rng: Rng::new(params.seed),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::invalid("sampling", "empty logits"));
        }
        if let Some(i) = logits
            .iter()
            .position(|x| x.is_nan() || *x == f32::INFINITY)
        {
            return Err(Error::invalid(
                "sampling",
                format!("logit {i} is {}", logits[i]),
            ));
        }
        if self.params.temperature == 0.0 {
            return Ok(argmax(logits));
        }
        let probs = nucleus(logits, self.params.temperature, self.params.top_p);
        let total: f64 = probs.iter().map(|&(_, p)| p).sum();
        let mut u = self.rng.next_f64() * total;
        for &(id, p) in &probs {
            if u < p {
                return Ok(id);
            }
            u -= p;
        }
        // Rounding left u just past the last mass: the last kept token.
        Ok(probs.last().map_or(0, |&(id, _)| id))
    }
}

/// Index of the largest logit, ties to the lowest index.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The kept tokens with unnormalised probabilities `exp((l - max) / t)`, most likely first (ties to the
/// lower id): the smallest prefix whose share of the total reaches `top_p`, never empty.
pub fn nucleus(logits: &[f32], temperature: f32, top_p: f32) -> Vec<(u32, f64)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let t = temperature as f64;
    let mut p: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            (
                i as u32,
                if max.is_finite() {
                    ((l as f64 - max) / t).exp()
                } else {
                    1.0
                },
            )
        })
        .collect();
    p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: f64 = p.iter().map(|x| x.1).sum();
    let target = top_p as f64 * total;
    let mut acc = 0.0;
    let mut keep = p.len();
    for (i, &(_, q)) in p.iter().enumerate() {
        acc += q;
        if acc >= target {
            keep = i + 1;
            break;
        }
    }
    p.truncate(keep.max(1));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_logits(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.uniform(4.0)).collect()
    }

    #[test]
    fn greedy_is_argmax_ties_low() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&[1.0, 3.0, 3.0, -1.0]).unwrap(), 1);
        let mut rng = Rng::new(7);
        for n in [1, 2, 17, 1000] {
            let l = random_logits(&mut rng, n);
            let best = l
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            assert_eq!(s.sample(&l).unwrap() as usize, best);
        }
    }

    #[test]
    fn same_seed_same_tokens_other_seed_differs() {
        let mut rng = Rng::new(3);
        let rows: Vec<Vec<f32>> = (0..64).map(|_| random_logits(&mut rng, 50)).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                top_p: 1.0,
                seed,
            })
            .unwrap();
            rows.iter()
                .map(|r| s.sample(r).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // Probabilities 0.5, 0.3, 0.2 (temperature 1): top_p 0.7 keeps two, 0.8 keeps two, 0.81 three.
        let l: Vec<f32> = [0.2f64, 0.5, 0.3].iter().map(|p| p.ln() as f32).collect();
        let ids = |p| nucleus(&l, 1.0, p).iter().map(|x| x.0).collect::<Vec<_>>();
        assert_eq!(ids(0.4), vec![1]);
        assert_eq!(ids(0.7), vec![1, 2]);
        assert_eq!(ids(0.81), vec![1, 2, 0]);
        // Sampling never leaves the nucleus.
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.7,
            seed: 5,
        })
        .unwrap();
        let mut seen = [0usize; 3];
        for _ in 0..2000 {
            seen[s.sample(&l).unwrap() as usize] += 1;
        }
        assert_eq!(seen[0], 0);
        // Renormalised 0.5/0.8 = 0.625: 2000 draws put 1250 +- 4 sigma (87) on token 1.
        assert!((seen[1] as i64 - 1250).abs() < 90, "{seen:?}");
    }

    #[test]
    fn temperature_sharpens_distribution() {
        let l = [0.0f32, 1.0];
        let share = |t| {
            let p = nucleus(&l, t, 1.0);
            p[0].1 / (p[0].1 + p[1].1)
        };
        // p(top) = 1 / (1 + e^(-1/t)).
        assert!((share(1.0) - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-12);
        assert!((share(0.5) - 1.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-12);
    }

    #[test]
    fn command_line_then_generation_config_then_defaults() {
        let g = GenerationConfig {
            temperature: Some(0.3),
            top_p: Some(0.5),
            ..Default::default()
        };
        let r = |t, p, g| SamplingParams::resolve(t, p, 7, g);
        let both = |t: f32, p: f32| SamplingParams {
            temperature: t,
            top_p: p,
            seed: 7,
        };
        // Nothing given anywhere: LLAMA4.md's defaults.
        assert_eq!(
            r(None, None, None),
            both(DEFAULT_TEMPERATURE, DEFAULT_TOP_P)
        );
        let empty = GenerationConfig::default();
        assert_eq!(r(None, None, Some(&empty)), both(0.6, 0.9));
        // generation_config fills what the command line leaves out, setting by setting.
        assert_eq!(r(None, None, Some(&g)), both(0.3, 0.5));
        assert_eq!(r(Some(1.0), None, Some(&g)), both(1.0, 0.5));
        assert_eq!(r(None, Some(0.95), Some(&g)), both(0.3, 0.95));
        assert_eq!(r(Some(0.0), Some(1.0), Some(&g)), both(0.0, 1.0));
        let only_t = GenerationConfig {
            temperature: Some(0.8),
            ..Default::default()
        };
        assert_eq!(r(None, None, Some(&only_t)), both(0.8, DEFAULT_TOP_P));
        // do_sample: false is greedy unless the command line sets a temperature.
        let greedy = GenerationConfig {
            do_sample: Some(false),
            ..g.clone()
        };
        assert_eq!(r(None, None, Some(&greedy)), both(0.0, 0.5));
        assert_eq!(r(Some(0.7), None, Some(&greedy)), both(0.7, 0.5));
        let sample = GenerationConfig {
            do_sample: Some(true),
            ..g.clone()
        };
        assert_eq!(r(None, None, Some(&sample)), both(0.3, 0.5));
    }

    #[test]
    fn bad_params_and_nan_are_errors() {
        assert!(Sampler::new(SamplingParams {
            temperature: -1.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplingParams {
            top_p: 0.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplingParams {
            top_p: 1.5,
            ..Default::default()
        })
        .is_err());
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        let e = s.sample(&[0.0, f32::NAN]).unwrap_err().to_string();
        assert!(e.contains("NaN"), "{e}");
    }
}
