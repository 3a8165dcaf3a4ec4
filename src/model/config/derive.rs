//! What config.json may leave out, derived as transformers 5.x does: RoPE parameters from either
//! spelling, and per-layer kinds from `no_rope_layers` / `layer_types` / `moe_layers`.
use serde_json::Value;

use super::json::{self, Obj};
use super::LayerKind;
use crate::error::{Error, Result};
use crate::reference::rope::Llama3Scaling;

/// `(rope_theta, llama3 scaling)` from `rope_parameters` (transformers 5.x) or `rope_theta` +
/// `rope_scaling` (released checkpoints).
pub(super) fn read_rope(tc: &Obj) -> Result<(f32, Option<Llama3Scaling>)> {
    let top_theta = tc.f32_or("rope_theta", 500000.0)?;
    let (params, path) = match tc.obj_opt("rope_parameters")? {
        Some(m) => (Some(m), tc.name("rope_parameters")),
        None => (tc.obj_opt("rope_scaling")?, tc.name("rope_scaling")),
    };
    let Some(mut params) = params else {
        return Ok((top_theta, None));
    };
    let mut path = path;
    // Per-layer-type parameters ({"full_attention": {...}, "chunked_attention": {...}}): one set of
    // frequencies serves both layer kinds here, so they must agree.
    let nested: Vec<(&String, &Value)> = params.iter().filter(|(_, v)| v.is_object()).collect();
    if let Some(&(first_key, first)) = nested.first() {
        if let Some((k, v)) = nested.iter().find(|(_, v)| *v != first) {
            return Err(Error::config(
                format!("{path}.{k}"),
                v,
                format!("differs from {path}.{first_key}: per-layer-type RoPE parameters are not supported"),
            ));
        }
        path = format!("{path}.{first_key}");
        params = first
            .as_object()
            .ok_or_else(|| Error::config(&path, first, "expected an object"))?;
    }
    let p = Obj {
        map: params,
        path: &path,
    };
    let theta = p.f32_or("rope_theta", top_theta)?;
    let (key, ty) = match p.str_opt("rope_type")? {
        Some(t) => ("rope_type", t),
        None => ("type", p.str_opt("type")?.unwrap_or("default")),
    };
    match ty {
        "default" => Ok((theta, None)),
        "llama3" => Ok((
            theta,
            Some(Llama3Scaling {
                factor: p.f32_req("factor")?,
                low_freq_factor: p.f32_req("low_freq_factor")?,
                high_freq_factor: p.f32_req("high_freq_factor")?,
                original_max_position_embeddings: p.f32_req("original_max_position_embeddings")?,
            }),
        )),
        other => Err(Error::config(
            p.name(key),
            other,
            "unsupported rope type (expected default or llama3)",
        )),
    }
}

/// Per-layer kinds from `no_rope_layers` / `layer_types` / `moe_layers` (or their derivations).
pub(super) fn read_layers(tc: &Obj, n: usize) -> Result<Vec<LayerKind>> {
    let check_len = |key: &str, len: usize| -> Result<()> {
        if len == n {
            Ok(())
        } else {
            Err(Error::config(
                tc.name(key),
                format!("a list of {len}"),
                format!("expected one entry per layer ({n})"),
            ))
        }
    };
    // no_rope_layers: 1 = uses RoPE; missing or empty = NoPE every `no_rope_layer_interval`-th layer.
    let rope: Vec<bool> = match tc.list_opt("no_rope_layers")? {
        Some(list) if !list.is_empty() => {
            check_len("no_rope_layers", list.len())?;
            list.iter()
                .enumerate()
                .map(|(i, v)| match json::as_usize(v) {
                    Some(0) => Ok(false),
                    Some(1) => Ok(true),
                    _ => Err(Error::config(
                        format!("{}[{i}]", tc.name("no_rope_layers")),
                        v,
                        "expected 0 or 1",
                    )),
                })
                .collect::<Result<_>>()?
        }
        _ => {
            let interval = tc.usize_or("no_rope_layer_interval", 4)?;
            if interval == 0 {
                return Err(Error::config(
                    tc.name("no_rope_layer_interval"),
                    0,
                    "must be positive",
                ));
            }
            (0..n).map(|i| (i + 1) % interval != 0).collect()
        }
    };
    if let Some(types) = tc.list_opt("layer_types")? {
        check_len("layer_types", types.len())?;
        for (i, t) in types.iter().enumerate() {
            let key = format!("{}[{i}]", tc.name("layer_types"));
            let chunked = match t.as_str() {
                Some("chunked_attention") => true,
                Some("full_attention") => false,
                _ => {
                    return Err(Error::config(
                        key,
                        t,
                        "expected chunked_attention or full_attention",
                    ))
                }
            };
            if chunked != rope[i] {
                return Err(Error::config(
                    key,
                    t,
                    format!("disagrees with no_rope_layers[{i}] = {} (RoPE layers are the chunked ones)", u8::from(rope[i])),
                ));
            }
        }
    }
    let mut moe = vec![false; n];
    match tc.list_opt("moe_layers")? {
        Some(list) => {
            for v in list {
                match json::as_usize(v) {
                    Some(i) if i < n => moe[i] = true,
                    _ => {
                        return Err(Error::config(
                            tc.name("moe_layers"),
                            v,
                            format!("expected layer indices below {n}"),
                        ))
                    }
                }
            }
        }
        None => {
            let step = tc.usize_or("interleave_moe_layer_step", 1)?;
            if step == 0 {
                return Err(Error::config(
                    tc.name("interleave_moe_layer_step"),
                    0,
                    "must be positive",
                ));
            }
            for (i, m) in moe.iter_mut().enumerate() {
                *m = (i + 1) % step == 0;
            }
        }
    }
    Ok(rope
        .into_iter()
        .zip(moe)
        .map(|(rope, moe)| LayerKind { rope, moe })
        .collect())
}
