//! The safetensors files of a checkpoint: one `model.safetensors` or the shards that
//! `model.safetensors.index.json` names, memory-mapped, headers parsed by the `safetensors` crate.
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::Dtype;
use safetensors::{SafeTensorError, SafeTensors};

use crate::error::{Error, Result};
use crate::model::config::read_json;

/// Single-file checkpoint name.
pub(crate) const SINGLE_FILE: &str = "model.safetensors";
/// Sharded checkpoint index name.
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";

/// Where one tensor lives.
#[derive(Clone, Debug)]
pub(crate) struct TensorLoc {
    pub file: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range inside the file's mapping.
    pub start: usize,
    pub end: usize,
}

struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// All tensors of a checkpoint by their full name.
pub(crate) struct Files {
    shards: Vec<Shard>,
    tensors: HashMap<String, TensorLoc>,
    /// The file a missing tensor is reported against: the index, or the single file.
    listing: PathBuf,
}

impl Files {
    /// Maps `dir/model.safetensors`, or every shard `dir/model.safetensors.index.json` names.
    pub fn open(dir: &Path) -> Result<Files> {
        let index = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        if index.exists() {
            Self::open_index(dir, &index)
        } else if single.exists() {
            let mut files = Files {
                shards: Vec::new(),
                tensors: HashMap::new(),
                listing: single.clone(),
            };
            files.add_shard(&single)?;
            Ok(files)
        } else {
            Err(Error::checkpoint(
                dir,
                format!("no {SINGLE_FILE} or {INDEX_FILE} in the directory"),
            ))
        }
    }

    fn open_index(dir: &Path, index: &Path) -> Result<Files> {
        let json = read_json(index)?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::checkpoint(index, "no `weight_map` object"))?;
        // Shard file -> one tensor the index puts there (for messages), in a stable order.
        let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::checkpoint(
                    index,
                    format!("weight_map entry for `{name}` is not a file name"),
                )
            })?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(Error::checkpoint(
                    index,
                    format!("weight_map entry for `{name}` names `{file}` outside the directory"),
                ));
            }
            by_shard.entry(file).or_default().push(name);
        }
        let mut files = Files {
            shards: Vec::new(),
            tensors: HashMap::new(),
            listing: index.to_path_buf(),
        };
        for (file, names) in by_shard {
            let path = dir.join(file);
            if !path.exists() {
                return Err(Error::checkpoint(
                    &path,
                    format!(
                        "shard missing: {INDEX_FILE} puts {} tensor(s) there, e.g. `{}`",
                        names.len(),
                        names[0]
                    ),
                ));
            }
            files.add_shard(&path)?;
            let shard = files.shards.len() - 1;
            for name in names {
                if files.tensors.get(name).map(|t| t.file) != Some(shard) {
                    return Err(Error::checkpoint(
                        &path,
                        format!(
                            "tensor `{name}` is not in this shard, though {INDEX_FILE} says it is"
                        ),
                    ));
                }
            }
        }
        Ok(files)
    }

    fn add_shard(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let len = file
            .metadata()
            .map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        if len < 8 {
            return Err(Error::checkpoint(
                path,
                format!("truncated: {len} bytes, shorter than the 8-byte header length"),
            ));
        }
        // SAFETY: the mapping is read-only and private to this process; safetensors checks every
        // offset against the mapping's length. Like every mmap reader, we rely on no other process
        // truncating the file while it is mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (header_len, meta) =
            SafeTensors::read_metadata(&map).map_err(|e| header_error(path, len, e))?;
        let data_start = 8 + header_len;
        let file_idx = self.shards.len();
        for (name, info) in meta.tensors() {
            if let Some(prev) = self.tensors.get(&name) {
                let other = &self.shards[prev.file].path;
                return Err(Error::checkpoint(
                    path,
                    format!("tensor `{name}` is also in {}", other.display()),
                ));
            }
            let (start, end) = info.data_offsets;
            let loc = TensorLoc {
                file: file_idx,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: data_start + start,
                end: data_start + end,
            };
            self.tensors.insert(name, loc);
        }
        self.shards.push(Shard {
            path: path.to_path_buf(),
            map,
        });
        Ok(())
    }

    /// A tensor by full name.
    pub fn get(&self, name: &str) -> Option<&TensorLoc> {
        self.tensors.get(name)
    }

    /// Every tensor name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The bytes of a tensor.
    pub fn data(&self, loc: &TensorLoc) -> &[u8] {
        &self.shards[loc.file].map[loc.start..loc.end]
    }

    /// The file holding a tensor.
    pub fn path_of(&self, loc: &TensorLoc) -> &Path {
        &self.shards[loc.file].path
    }

    /// The file a missing tensor is reported against.
    pub fn listing(&self) -> &Path {
        &self.listing
    }
}

/// A safetensors parse failure as a checkpoint error naming the file.
fn header_error(path: &Path, len: u64, e: SafeTensorError) -> Error {
    use SafeTensorError as E;
    let msg = match e {
        E::InvalidHeaderLength | E::MetadataIncompleteBuffer => {
            format!("truncated or malformed: the header's sizes disagree with the file's {len} bytes ({e})")
        }
        E::InvalidHeader(_)
        | E::InvalidHeaderStart
        | E::InvalidHeaderDeserialization(_)
        | E::JsonError(_) => {
            format!("bad header: {e}")
        }
        other => format!("bad safetensors file: {other}"),
    };
    Error::checkpoint(path, msg)
}

/// Converts a float tensor's little-endian bytes to f32 (bf16 and f16 exactly).
pub(crate) fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let conv = |out: &mut [f32], src: &[u8]| match dtype {
        Dtype::BF16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::F16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        _ => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    };
    let width = match dtype {
        Dtype::BF16 | Dtype::F16 => 2,
        Dtype::F32 => 4,
        _ => return None,
    };
    let mut out = vec![0f32; bytes.len() / width];
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(CHUNK * width))
        .for_each(|(o, s)| conv(o, s));
    Some(out)
}

/// Whether `dtype` is a float type [`to_f32`] converts.
pub(crate) fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32)
}
