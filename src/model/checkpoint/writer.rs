//! Writing checkpoints: weights encoded as safetensors tensors (docs/FORMATS.md), streamed unit by
//! unit into shards whose headers are planned before any data is produced.
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use indicatif::ProgressBar;
use rayon::prelude::*;
use safetensors::tensor::Dtype;
use serde_json::{json, Map, Value};

use super::files::{INDEX_FILE, SINGLE_FILE};
use crate::error::{Error, Result};
use crate::quant::{Fp8Scaling, Int4Config, ScaleDType, Weight};

const OP: &str = "write checkpoint";

/// A tensor to be written.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Planned {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl Planned {
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>) -> Self {
        Planned {
            name: name.into(),
            dtype,
            shape,
        }
    }
    pub fn nbytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * (self.dtype.bitsize() / 8) as u64
    }
}

/// How a linear weight is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stored {
    /// `<base>.weight` in a float dtype.
    Dense(Dtype),
    /// `<base>.qweight` u8 `[n, ceil(k/2)]`, `<base>.scales` `[n, groups]`, `<base>.zeros` u8 when asymmetric.
    Int4(Int4Config),
    /// `<base>.weight` f8_e4m3 `[n, k]`, `<base>.weight_scale` f32 `[n, 1]` (per channel) or `[1]`.
    Fp8(Fp8Scaling),
}

impl Stored {
    /// How `w` is stored; dense weights in `dense`.
    pub fn of(w: &Weight, dense: Dtype) -> Stored {
        match w {
            Weight::Dense(_) => Stored::Dense(dense),
            Weight::Int4(q) => Stored::Int4(q.config),
            Weight::Fp8(q) => Stored::Fp8(q.scaling),
        }
    }

    /// The tensors of an `[n, k]` weight named `base` (no `.weight`).
    pub fn plan(self, base: &str, n: usize, k: usize) -> Vec<Planned> {
        match self {
            Stored::Dense(dt) => vec![Planned::new(format!("{base}.weight"), dt, vec![n, k])],
            Stored::Int4(c) => {
                let groups = k.div_ceil(c.group_size);
                let sdt = match c.scale_dtype {
                    ScaleDType::BF16 => Dtype::BF16,
                    ScaleDType::F32 => Dtype::F32,
                };
                let mut v = vec![
                    Planned::new(format!("{base}.qweight"), Dtype::U8, vec![n, k.div_ceil(2)]),
                    Planned::new(format!("{base}.scales"), sdt, vec![n, groups]),
                ];
                if !c.symmetric {
                    v.push(Planned::new(
                        format!("{base}.zeros"),
                        Dtype::U8,
                        vec![n, groups],
                    ));
                }
                v
            }
            Stored::Fp8(s) => {
                let sshape = match s {
                    Fp8Scaling::PerChannel => vec![n, 1],
                    Fp8Scaling::PerTensor => vec![1],
                };
                vec![
                    Planned::new(format!("{base}.weight"), Dtype::F8_E4M3, vec![n, k]),
                    Planned::new(format!("{base}.weight_scale"), Dtype::F32, sshape),
                ]
            }
        }
    }
}

/// The bytes of `w`'s tensors, in [`Stored::plan`] order; dense weights in `dense`.
pub(crate) fn encode_weight(w: &Weight, dense: Dtype) -> Vec<Vec<u8>> {
    match w {
        Weight::Dense(d) => vec![encode_f32(&d.data, dense)],
        Weight::Int4(q) => {
            let sdt = match q.config.scale_dtype {
                ScaleDType::BF16 => Dtype::BF16,
                ScaleDType::F32 => Dtype::F32,
            };
            let mut v = vec![q.packed.clone(), encode_f32(&q.scales, sdt)];
            v.extend(q.zeros.clone());
            v
        }
        Weight::Fp8(q) => vec![q.codes.clone(), encode_f32(&q.scales, Dtype::F32)],
    }
}

/// f32 values as little-endian bf16 / f16 / f32 bytes (round to nearest even).
pub(crate) fn encode_f32(x: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::BF16 => x
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::F16 => x
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// bf16 when every value is exactly a bf16 (so nothing is lost), else f32.
pub(crate) fn exact_dtype<'a>(mut values: impl Iterator<Item = &'a [f32]>) -> Dtype {
    let exact = values.all(|x| {
        x.iter()
            .all(|v| half::bf16::from_f32(*v).to_f32().to_bits() == v.to_bits())
    });
    if exact {
        Dtype::BF16
    } else {
        Dtype::F32
    }
}

/// A group of tensors produced together (one weight, one norm), always written to the same shard.
#[derive(Clone, Debug, Default)]
pub(crate) struct Unit {
    pub tensors: Vec<Planned>,
}

/// Writes `units` into `dir` as `model.safetensors`, or as `model-0000i-of-0000n.safetensors` shards of
/// at most `shard_bytes` (a larger unit gets a shard of its own) plus `model.safetensors.index.json`.
/// `produce(u)` returns unit u's tensor bytes; units are produced a few at a time, in parallel, and
/// written in order. Removes stale checkpoint files first. Returns the tensor bytes written.
pub(crate) fn write_units<'a, F>(
    dir: &Path,
    units: &[Unit],
    metadata: &BTreeMap<String, String>,
    shard_bytes: u64,
    progress: &ProgressBar,
    produce: F,
) -> Result<u64>
where
    F: Fn(usize) -> Result<Vec<Cow<'a, [u8]>>> + Sync,
{
    remove_stale(dir)?;
    let unit_bytes: Vec<u64> = units
        .iter()
        .map(|u| u.tensors.iter().map(Planned::nbytes).sum())
        .collect();
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut size = 0u64;
    for (u, &b) in unit_bytes.iter().enumerate() {
        match shards.last_mut() {
            Some(s) if size + b <= shard_bytes => s.push(u),
            _ => {
                shards.push(vec![u]);
                size = 0;
            }
        }
        size += b;
    }
    let count = shards.len().max(1);
    let file_name = |i: usize| {
        if count == 1 {
            SINGLE_FILE.to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, count)
        }
    };
    if shards.is_empty() {
        shards.push(Vec::new());
    }
    let window = rayon::current_num_threads().max(1);
    let mut weight_map = Map::new();
    let mut total = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let path = dir.join(file_name(i));
        let planned: Vec<&Planned> = shard.iter().flat_map(|&u| &units[u].tensors).collect();
        let mut out = BufWriter::with_capacity(8 << 20, create(&path)?);
        write_header(&mut out, &path, &planned, metadata)?;
        for chunk in shard.chunks(window) {
            let produced: Vec<Result<Vec<Cow<[u8]>>>> =
                chunk.par_iter().map(|&u| produce(u)).collect();
            for (&u, data) in chunk.iter().zip(produced) {
                let data = data?;
                if data.len() != units[u].tensors.len() {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "unit {u}: {} tensors produced, {} planned",
                            data.len(),
                            units[u].tensors.len()
                        ),
                    ));
                }
                for (t, bytes) in units[u].tensors.iter().zip(&data) {
                    if bytes.len() as u64 != t.nbytes() {
                        return Err(Error::invalid(
                            OP,
                            format!(
                                "tensor `{}`: {} bytes produced, {} planned",
                                t.name,
                                bytes.len(),
                                t.nbytes()
                            ),
                        ));
                    }
                    out.write_all(bytes).map_err(|source| Error::Io {
                        path: path.clone(),
                        source,
                    })?;
                    total += t.nbytes();
                    weight_map.insert(t.name.clone(), Value::from(file_name(i)));
                }
                progress.inc(1);
            }
        }
        out.flush().map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    }
    if count > 1 {
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        write_json(&dir.join(INDEX_FILE), &index)?;
    }
    Ok(total)
}

fn create(path: &Path) -> Result<File> {
    File::create(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a JSON file, pretty-printed.
pub(crate) fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::invalid(OP, e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The safetensors header: u64 length, then JSON padded with spaces to a multiple of 8.
fn write_header(
    out: &mut impl Write,
    path: &Path,
    planned: &[&Planned],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!(metadata));
    let mut offset = 0u64;
    for t in planned {
        let end = offset + t.nbytes();
        header.insert(
            t.name.clone(),
            json!({ "dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut bytes = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| Error::invalid(OP, e.to_string()))?;
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    out.write_all(&(bytes.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&bytes).map_err(io)
}

/// Removes checkpoint files a previous write may have left (`model.safetensors`, the index, shards).
fn remove_stale(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = name == SINGLE_FILE
            || name == INDEX_FILE
            || (name.starts_with("model-")
                && name.contains("-of-")
                && name.ends_with(".safetensors"));
        if stale {
            std::fs::remove_file(entry.path()).map_err(|source| Error::Io {
                path: entry.path(),
                source,
            })?;
        }
    }
    Ok(())
}
