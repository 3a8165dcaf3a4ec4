//! The `quantization_config` of config.json: Meta's FP8 (compressed-tensors, or fbgemm_fp8), this
//! library's own format, or none. It says which linear modules are stored quantized; the loader checks
//! each stored tensor's dtype against it.
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::config::Obj;
use crate::quant::{Int4Config, ScaleDType};

/// This library's `quant_method`.
pub(crate) const OUR_METHOD: &str = "llama4-cuda";

/// A compressed-tensors name matcher: `re:<python regex>` (matched at the start, as `re.match`),
/// the class name `Linear` (every linear module), or an exact module name.
#[derive(Debug)]
pub(crate) enum Matcher {
    Linear,
    Regex(regex::Regex),
    Exact(String),
}

impl Matcher {
    fn parse(key: &str, s: &str) -> Result<Matcher> {
        if s == "Linear" {
            Ok(Matcher::Linear)
        } else if let Some(re) = s.strip_prefix("re:") {
            regex::Regex::new(&format!("^(?:{re})"))
                .map(Matcher::Regex)
                .map_err(|e| Error::config(key, s, format!("bad regex: {e}")))
        } else {
            Ok(Matcher::Exact(s.to_string()))
        }
    }
    fn matches(&self, module: &str) -> bool {
        match self {
            Matcher::Linear => true,
            Matcher::Regex(r) => r.is_match(module),
            Matcher::Exact(s) => s == module,
        }
    }
}

/// How a checkpoint says its weights are stored.
#[derive(Debug)]
pub(crate) enum StoredQuant {
    /// No quantization_config: every linear weight is a float tensor (a stored fp8 or int4 tensor is
    /// still read, by its dtype and companions).
    None,
    /// compressed-tensors `float-quantized`: linear modules matching `targets` and not `ignore` are fp8.
    CompressedTensors {
        targets: Vec<Matcher>,
        ignore: Vec<Matcher>,
    },
    /// fbgemm_fp8: linear modules whose name contains none of `modules_to_not_convert` are fp8.
    Fbgemm { not_convert: Vec<String> },
    /// This library's format (docs/FORMATS.md): each tensor's dtype says what it is; int4 parameters here.
    Ours { int4: Option<Int4Config> },
}

impl StoredQuant {
    /// Reads `quantization_config` from the top of config.json (or from `text_config`).
    pub fn parse(config: &Value) -> Result<StoredQuant> {
        let qc = config
            .get("quantization_config")
            .or_else(|| {
                config
                    .get("text_config")
                    .and_then(|t| t.get("quantization_config"))
            })
            .filter(|v| !v.is_null());
        let Some(qc) = qc else {
            return Ok(StoredQuant::None);
        };
        let map = qc
            .as_object()
            .ok_or_else(|| Error::config("quantization_config", qc, "expected an object"))?;
        let o = Obj {
            map,
            path: "quantization_config",
        };
        let method = o.str_opt("quant_method")?.unwrap_or("");
        match method {
            "compressed-tensors" => parse_compressed_tensors(&o),
            "fbgemm_fp8" => {
                let not_convert = string_list(&o, "modules_to_not_convert")?;
                Ok(StoredQuant::Fbgemm { not_convert })
            }
            OUR_METHOD => {
                let int4 = match o.obj_opt("int4")? {
                    None => None,
                    Some(m) => {
                        let p = Obj {
                            map: m,
                            path: "quantization_config.int4",
                        };
                        let group_size = p.usize_or("group_size", 0)?;
                        if group_size == 0 {
                            return Err(Error::config(
                                p.name("group_size"),
                                "missing or 0",
                                "a positive group size is required",
                            ));
                        }
                        let scale_dtype = match p.str_opt("scale_dtype")?.unwrap_or("bf16") {
                            "bf16" => ScaleDType::BF16,
                            "f32" => ScaleDType::F32,
                            other => {
                                return Err(Error::config(
                                    p.name("scale_dtype"),
                                    other,
                                    "expected bf16 or f32",
                                ))
                            }
                        };
                        let c = Int4Config {
                            group_size,
                            symmetric: p.bool_or("symmetric", true)?,
                            scale_dtype,
                        };
                        c.validate().map_err(|e| {
                            Error::config(p.name("group_size"), group_size, e.to_string())
                        })?;
                        Some(c)
                    }
                };
                Ok(StoredQuant::Ours { int4 })
            }
            other => Err(Error::config(
                "quantization_config.quant_method",
                other,
                "unsupported (expected compressed-tensors fp8, fbgemm_fp8 or llama4-cuda)",
            )),
        }
    }

    /// Whether the linear module `module` (full name, no `.weight`) should be stored in fp8;
    /// `None` when the config says nothing about it.
    pub fn expects_fp8(&self, module: &str) -> Option<bool> {
        match self {
            StoredQuant::CompressedTensors { targets, ignore } => Some(
                targets.iter().any(|m| m.matches(module))
                    && !ignore.iter().any(|m| m.matches(module)),
            ),
            StoredQuant::Fbgemm { not_convert } => {
                Some(!not_convert.iter().any(|m| module.contains(m.as_str())))
            }
            StoredQuant::None | StoredQuant::Ours { .. } => None,
        }
    }

    /// int4 parameters (this library's format only).
    pub fn int4(&self) -> Option<Int4Config> {
        match self {
            StoredQuant::Ours { int4 } => *int4,
            _ => None,
        }
    }
}

fn string_list(o: &Obj, key: &str) -> Result<Vec<String>> {
    let Some(list) = o.list_opt(key)? else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::config(o.name(key), v, "expected a list of strings"))
        })
        .collect()
}

fn parse_compressed_tensors(o: &Obj) -> Result<StoredQuant> {
    let float_formats = ["float-quantized"];
    if let Some(fmt) = o.str_opt("format")? {
        if !float_formats.contains(&fmt) {
            return Err(Error::config(
                o.name("format"),
                fmt,
                "only float-quantized (fp8) compressed-tensors is supported",
            ));
        }
    }
    let groups = o.obj_opt("config_groups")?.ok_or_else(|| {
        Error::config(
            o.name("config_groups"),
            "missing",
            "compressed-tensors needs config_groups",
        )
    })?;
    let mut targets = Vec::new();
    for (gname, g) in groups {
        let gpath = format!("{}.{gname}", o.name("config_groups"));
        let gmap = g
            .as_object()
            .ok_or_else(|| Error::config(&gpath, g, "expected an object"))?;
        let go = Obj {
            map: gmap,
            path: &gpath,
        };
        if let Some(fmt) = go.str_opt("format")? {
            if !float_formats.contains(&fmt) {
                return Err(Error::config(
                    go.name("format"),
                    fmt,
                    "only float-quantized (fp8) is supported",
                ));
            }
        }
        let wmap = go
            .obj_opt("weights")?
            .ok_or_else(|| Error::config(go.name("weights"), "missing", "required"))?;
        let wpath = go.name("weights");
        let w = Obj {
            map: wmap,
            path: &wpath,
        };
        let bits = w.usize_or("num_bits", 0)?;
        let ty = w.str_opt("type")?.unwrap_or("");
        if bits != 8 || ty != "float" {
            return Err(Error::config(
                w.name("type"),
                format!("{ty} {bits}-bit"),
                "only 8-bit float weights are supported",
            ));
        }
        let strategy = w.str_opt("strategy")?.unwrap_or("");
        if !matches!(strategy, "channel" | "tensor") {
            return Err(Error::config(
                w.name("strategy"),
                strategy,
                "only channel or tensor fp8 scales are supported",
            ));
        }
        if !w.bool_or("symmetric", true)? {
            return Err(Error::config(
                w.name("symmetric"),
                false,
                "only symmetric fp8 is supported",
            ));
        }
        for t in string_list(&go, "targets")? {
            targets.push(Matcher::parse(&go.name("targets"), &t)?);
        }
    }
    let ignore = string_list(o, "ignore")?
        .iter()
        .map(|s| Matcher::parse(&o.name("ignore"), s))
        .collect::<Result<_>>()?;
    Ok(StoredQuant::CompressedTensors { targets, ignore })
}

/// This library's `quantization_config` for config.json (docs/FORMATS.md): the int4 parameters when
/// int4 tensors are present, `fp8` when fp8 tensors are, and what `llama4 quantize` was asked for.
pub(crate) fn our_config(
    int4: Option<Int4Config>,
    fp8: bool,
    spec: Option<&crate::model::quantize::QuantizeSpec>,
) -> Value {
    use crate::model::quantize::QuantFormat;
    let mut m = serde_json::Map::new();
    m.insert("quant_method".into(), OUR_METHOD.into());
    m.insert("format_version".into(), 1.into());
    if let Some(c) = int4 {
        let sd = match c.scale_dtype {
            ScaleDType::BF16 => "bf16",
            ScaleDType::F32 => "f32",
        };
        m.insert("int4".into(), serde_json::json!({ "group_size": c.group_size, "symmetric": c.symmetric, "scale_dtype": sd }));
    }
    if fp8 {
        m.insert("fp8".into(), serde_json::json!({ "format": "e4m3" }));
    }
    if let Some(s) = spec {
        let format = match s.format {
            QuantFormat::Int4(_) => "int4",
            QuantFormat::Fp8 => "fp8",
        };
        m.insert(
            "spec".into(),
            serde_json::json!({
                "format": format,
                "routed_experts": s.routed_experts,
                "shared_expert": s.shared_expert,
                "dense_mlp": s.dense_mlp,
                "attention": s.attention,
                "lm_head": s.lm_head,
            }),
        );
    }
    Value::Object(m)
}
