//! Generation on the GPU through [`BatchDecoder`] (batch 1): one chunked prefill, the first new token
//! sampled on the host from the prefill's logits (the same draw as [`crate::model::generate`]), then
//! every later token from a replayed CUDA graph that runs from ids to ids with the device sampler
//! ([`BatchDecoder::sample_on_device`]); one id is downloaded per step to report it and check for a
//! stop token. The device draws follow the host sampler's distribution, not its stream: the same seed
//! repeats the same tokens on the GPU, but not the CPU path's tokens.
use std::time::Instant;

use super::decode::BatchDecoder;
use super::CudaBackend;
use crate::error::{Error, Result};
use crate::kv_cache::KvDType;
use crate::model::forward::Model;
use crate::model::generate::{GenerateOptions, Generation};
use crate::model::gpu_plan::{plan_kv, GpuPlanRequest};

/// Prompt tokens per prefill piece (pieces never cross an attention chunk either).
const PREFILL_PIECE: usize = 2048;

/// [`crate::model::generate::generate`] on the GPU with device sampling; the same checks, options and
/// result. `on_token` sees each new token as soon as it is known.
pub fn generate_on_device(
    model: &Model<CudaBackend>,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> Result<Generation> {
    let (mut out, mut sampler) = Generation::begin(model, prompt, opts)?;
    if opts.max_new_tokens == 0 {
        return Ok(out);
    }
    // The last new token is never fed back: the cache needs one position less than prompt + new.
    let max_tokens = prompt.len() + opts.max_new_tokens - 1;
    // The KV from what is free now (the weights are loaded): a run that cannot fit fails here with
    // the plan's numbers (needed, free) before anything is allocated. No host tier: generation keeps
    // the whole cache on the device.
    let (free, _) = model.backend().device().memory()?;
    let plan = plan_kv(
        model.config(),
        GpuPlanRequest {
            batch: 1,
            context: max_tokens,
            kv_dtype: KvDType::BF16,
            free_bytes: free as u64,
            host_bytes: 0,
        },
    )?;
    let mut d = BatchDecoder::new(model, 1, max_tokens, KvDType::BF16, Some(&plan))?;
    let t0 = Instant::now();
    let logits = d
        .prefill(0, prompt, PREFILL_PIECE, true)?
        .ok_or_else(|| Error::invalid("generate", "the prefill returned no logits"))?;
    let mut next = sampler.sample(&logits)?;
    out.prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut stepped = false;
    while out.push(next, opts, &mut on_token) {
        if stepped {
            d.replay()?;
        } else {
            // One eager step (scratch reaches its size, the sampler writes the next ids), then the
            // capture that every later step replays.
            d.sample_on_device(opts.sampling, 1)?;
            d.set_ids(&[next])?;
            d.step()?;
            d.capture()?;
            stepped = true;
        }
        d.check_sampling()?;
        next = d.next_ids()?[0];
    }
    out.decode_secs = t1.elapsed().as_secs_f64();
    Ok(out)
}
