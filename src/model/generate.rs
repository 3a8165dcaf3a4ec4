//! The generation loop: one prefill of the prompt, then one decode step per new token, sampling each
//! from the last position's logits, until a stop token or the token budget; timed for tokens/s.
use super::backend::Backend;
use super::config::GenerationConfig;
use super::forward::{Logits, Model};
use super::sampling::{Sampler, SamplingParams};
use crate::error::{Error, Result};
use std::time::Instant;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends after producing one of these (it is kept in the output).
    pub stop_tokens: Vec<u32>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    StopToken(u32),
    MaxNewTokens,
}

/// The generated tokens and how long they took.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub prompt_tokens: usize,
    /// New tokens only, the stop token included when one ended the run.
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    /// Prompt forward plus the first sample.
    pub prefill_secs: f64,
    /// Every later decode step.
    pub decode_secs: f64,
}

impl Generation {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_secs)
    }
    /// New tokens per second of decode (the first new token comes from the prefill).
    pub fn decode_tokens_per_sec(&self) -> f64 {
        rate(self.tokens.len().saturating_sub(1), self.decode_secs)
    }
}

fn rate(tokens: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        tokens as f64 / secs
    } else {
        0.0
    }
}

impl Generation {
    /// The checks every generator makes before any work (an empty prompt, token ids, the prompt and
    /// then the prompt plus `max_new_tokens` against max_position_embeddings, the sampling
    /// parameters), and the empty result with its sampler.
    pub(crate) fn begin<B: Backend>(
        model: &Model<B>,
        prompt: &[u32],
        opts: &GenerateOptions,
    ) -> Result<(Generation, Sampler)> {
        if prompt.is_empty() {
            return Err(Error::invalid("generate", "the prompt has no tokens"));
        }
        model.check_tokens(prompt)?;
        let limit = model.config().max_position_embeddings;
        // The prompt alone first, so that the message names its length.
        for needed in [prompt.len(), prompt.len() + opts.max_new_tokens] {
            if needed > limit {
                return Err(Error::ContextTooLong { needed, limit });
            }
        }
        let sampler = Sampler::new(opts.sampling)?;
        let out = Generation {
            prompt_tokens: prompt.len(),
            tokens: Vec::with_capacity(opts.max_new_tokens),
            stop: StopReason::MaxNewTokens,
            prefill_secs: 0.0,
            decode_secs: 0.0,
        };
        Ok((out, sampler))
    }

    /// Records and reports a chosen token; false when the run ends with it (a stop token, or
    /// `max_new_tokens` reached).
    pub(crate) fn push(
        &mut self,
        next: u32,
        opts: &GenerateOptions,
        on_token: &mut impl FnMut(u32),
    ) -> bool {
        self.tokens.push(next);
        on_token(next);
        if opts.stop_tokens.contains(&next) {
            self.stop = StopReason::StopToken(next);
            return false;
        }
        self.tokens.len() < opts.max_new_tokens
    }
}

/// Generates after `prompt`, calling `on_token` with each new token as soon as it is chosen.
/// Fails before any work when the prompt plus `max_new_tokens` exceeds max_position_embeddings.
pub fn generate<B: Backend>(
    model: &Model<B>,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> Result<Generation> {
    let (mut out, mut sampler) = Generation::begin(model, prompt, opts)?;
    if opts.max_new_tokens == 0 {
        return Ok(out);
    }
    // The last new token is never fed back, so the cache needs one position less than prompt + new.
    let mut cache = model.new_cache(prompt.len() + opts.max_new_tokens - 1)?;
    let t0 = Instant::now();
    let mut next = sampler.sample(&model.forward(&mut cache, prompt, Logits::Last)?)?;
    out.prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    while out.push(next, opts, &mut on_token) {
        next = sampler.sample(&model.forward(&mut cache, &[next], Logits::Last)?)?;
    }
    out.decode_secs = t1.elapsed().as_secs_f64();
    Ok(out)
}

/// The stop tokens of a model: the config's eos ids plus generation_config.json's, deduplicated.
pub fn stop_tokens(config_eos: &[u32], generation: Option<&GenerationConfig>) -> Vec<u32> {
    let mut ids = config_eos.to_vec();
    ids.extend(generation.map_or(&[][..], |g| &g.eos_token_ids[..]));
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_tokens_merge_config_and_generation_config() {
        let g = GenerationConfig {
            eos_token_ids: vec![200008, 200001, 200007],
            ..Default::default()
        };
        assert_eq!(
            stop_tokens(&[200001, 5], Some(&g)),
            vec![5, 200001, 200007, 200008]
        );
        assert_eq!(stop_tokens(&[9], None), vec![9]);
    }
}
