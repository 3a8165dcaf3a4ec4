//! Next-token choice as the GPU sampler (kernels/sample.cu, `ops::sample`) makes it: the kernel's
//! specification. Same distribution as the host sampler ([`crate::model::sampling`]): the same kept
//! set (the smallest most-likely prefix reaching `top_p`, ties to lower ids) and the same
//! probabilities, but the uniform number comes from a counter-based hash of (seed, step, row) instead of
//! a sequential stream, and it is mapped through the kept set in **index** order (inverse CDF) instead
//! of sorted order: any fixed order gives the same distribution, and index order needs no sort.
//!
//! The kernel computes the weights in f32 (CUDA `expf`, within 2 ulp) and sums them as 64-bit
//! fixed-point masses (`w * 2^(63 - bitlen(vocab))`, rounded; weights below half a unit are never
//! kept); this reference works in f64. They agree except where a rounding moves a threshold, or
//! makes two weights less than an f32 ulp apart equal (logits one f32 ulp apart: the kernel then
//! keeps the lower id of the tie where this reference keeps the larger, a ~1e-8 mass): see
//! tests/gpu_sample.rs for the tolerance.
use crate::error::{Error, Result};

/// splitmix64's output function of `z + 0x9e3779b97f4a7c15` (one step of the generator from state z).
pub fn mix(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 64 random bits of row `row` at step `step`: `mix(mix(mix(seed) ^ step) ^ row)`.
pub fn draw_bits(seed: u64, step: u64, row: u64) -> u64 {
    mix(mix(mix(seed) ^ step) ^ row)
}

/// The uniform number in [0, 1) of (seed, step, row): the top 53 bits of [`draw_bits`] over 2^53.
pub fn uniform(seed: u64, step: u64, row: u64) -> f64 {
    (draw_bits(seed, step, row) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Fails on an empty row, a NaN or a +inf logit (as the host sampler does; -inf is a valid logit).
pub fn check_logits(logits: &[f32]) -> Result<()> {
    if logits.is_empty() {
        return Err(Error::invalid("sample", "empty logits (vocab 0)"));
    }
    match logits
        .iter()
        .position(|x| x.is_nan() || *x == f32::INFINITY)
    {
        Some(i) => Err(Error::invalid(
            "sample",
            format!("logit {i} is {}", logits[i]),
        )),
        None => Ok(()),
    }
}

/// Fails unless temperature is finite and >= 0 and top_p is in (0, 1].
pub fn check_params(temperature: f32, top_p: f32) -> Result<()> {
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(Error::invalid(
            "sample",
            format!("temperature must be finite and >= 0, got {temperature}"),
        ));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(Error::invalid(
            "sample",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    Ok(())
}

/// Unnormalised probabilities `exp((l - max) / t)` (all 1 when every logit is -inf), as
/// [`crate::model::sampling::nucleus`] computes them.
pub fn weights(logits: &[f32], temperature: f32) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let t = temperature as f64;
    logits
        .iter()
        .map(|&l| match max.is_finite() {
            true => ((l as f64 - max) / t).exp(),
            false => 1.0,
        })
        .collect()
}

/// The kept tokens with their unnormalised weights, in index order (`temperature > 0`).
///
/// The threshold rule the kernel implements: W = the sum of all weights, target = top_p * W; w* = the
/// largest weight whose mass of weights >= w* reaches target; A = the mass of weights > w*. Kept:
/// every token with w > w*, plus the c lowest-index tokens with w == w*, c = min(ties, max(1,
/// ceil((target - A) / w*))). This is the sorted prefix of `nucleus`, found without sorting.
pub fn kept(logits: &[f32], temperature: f32, top_p: f32) -> Result<Vec<(u32, f64)>> {
    check_params(temperature, top_p)?;
    check_logits(logits)?;
    if temperature == 0.0 {
        return Err(Error::invalid(
            "sample",
            "temperature 0 is greedy: no kept set",
        ));
    }
    let w = weights(logits, temperature);
    // Distinct positive weights, largest first, with their counts (a zero weight is never kept).
    let mut levels: Vec<f64> = w.iter().copied().filter(|&x| x > 0.0).collect();
    levels.sort_by(|a, b| b.total_cmp(a));
    let mut groups: Vec<(f64, usize)> = Vec::new();
    for x in levels {
        match groups.last_mut() {
            Some((v, n)) if *v == x => *n += 1,
            _ => groups.push((x, 1)),
        }
    }
    let total: f64 = groups.iter().map(|&(v, n)| v * n as f64).sum();
    let target = top_p as f64 * total;
    let (mut wstar, mut c) = (0.0, usize::MAX);
    let mut above = 0.0;
    for &(v, n) in &groups {
        if above + v * n as f64 >= target {
            wstar = v;
            c = (((target - above) / v).ceil() as usize).clamp(1, n);
            break;
        }
        above += v * n as f64;
    }
    let mut ties = 0;
    Ok(w.iter()
        .enumerate()
        .filter(|&(_, &x)| {
            if x == wstar && x > 0.0 {
                ties += 1;
                ties <= c
            } else {
                x > wstar
            }
        })
        .map(|(i, &x)| (i as u32, x))
        .collect())
}

/// The token the kernel picks for this row, temperature, top_p and uniform `u` in [0, 1).
///
/// Temperature 0: argmax, ties to the lowest index (an all -inf row gives 0). Otherwise: K = the kept
/// mass, the first kept token in index order whose inclusive prefix mass exceeds `u * K`.
pub fn pick(logits: &[f32], temperature: f32, top_p: f32, u: f64) -> Result<u32> {
    check_params(temperature, top_p)?;
    check_logits(logits)?;
    if !(0.0..1.0).contains(&u) {
        return Err(Error::invalid(
            "sample",
            format!("u = {u} is not in [0, 1)"),
        ));
    }
    if temperature == 0.0 {
        return Ok(crate::model::sampling::argmax(logits));
    }
    let kept = kept(logits, temperature, top_p)?;
    let total: f64 = kept.iter().map(|&(_, w)| w).sum();
    let r = u * total;
    let mut acc = 0.0;
    for &(id, w) in &kept {
        acc += w;
        if r < acc {
            return Ok(id);
        }
    }
    // Rounding left r at the very end: the last kept token.
    Ok(kept.last().map_or(0, |&(id, _)| id))
}

/// Whether a sampler that chose `id` for uniform `u` agrees with this specification up to `tol`: for
/// the kept set at top_p or at top_p -+ tol (a rounding may move the threshold across one token),
/// `id` is kept and its interval of the index-order CDF contains u widened by `tol` at each end. The
/// GPU tests judge the kernel (f32 weights, fixed-point masses) with it.
pub fn consistent(logits: &[f32], temperature: f32, top_p: f32, u: f64, id: u32, tol: f64) -> bool {
    let tops = [
        top_p as f64,
        (top_p as f64 - tol).max(f64::MIN_POSITIVE),
        (top_p as f64 + tol).min(1.0),
    ];
    tops.iter().any(|&p| {
        let Ok(k) = kept(logits, temperature, p as f32) else {
            return false;
        };
        let total: f64 = k.iter().map(|x| x.1).sum();
        let mut before = 0.0;
        for &(i, w) in &k {
            if i == id {
                let (lo, hi) = (before / total, (before + w) / total);
                return lo - tol <= u && u < hi + tol;
            }
            before += w;
        }
        false
    })
}
