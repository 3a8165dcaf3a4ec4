//! Reading one resolved weight into the library's `[out, in]` layout, exactly as stored.
use super::files::{to_f32, Files};
use super::source::{Lin, MlpSrc, Part, Src};
use crate::error::{Error, Result};
use crate::quant::{DenseWeight, Fp8Weight, Int4Weight, Weight};

const OP: &str = "load checkpoint";

/// Reads a weight exactly as stored, in the library's `[out, in]` layout.
pub(crate) fn read_linear(files: &Files, lin: &Lin) -> Result<Weight> {
    let (n, k) = (lin.n, lin.k);
    let loc = |name: &str| {
        files
            .get(name)
            .ok_or_else(|| Error::checkpoint(files.listing(), format!("missing tensor `{name}`")))
    };
    let floats = |name: &str| -> Result<Vec<f32>> {
        let l = loc(name)?;
        to_f32(l.dtype, files.data(l)).ok_or_else(|| Error::DType {
            op: OP,
            msg: format!("tensor `{name}`: {}", l.dtype),
        })
    };
    let w = match &lin.src {
        Src::Float { t } => Weight::Dense(DenseWeight {
            n,
            k,
            data: floats(t)?,
        }),
        Src::Fp8 { w, scale, scaling } => Weight::Fp8(Fp8Weight {
            n,
            k,
            codes: files.data(loc(w)?).to_vec(),
            scaling: *scaling,
            scales: floats(scale)?,
        }),
        Src::Int4 {
            q,
            scales,
            zeros,
            config,
        } => Weight::Int4(Int4Weight {
            n,
            k,
            config: *config,
            packed: files.data(loc(q)?).to_vec(),
            scales: floats(scales)?,
            zeros: zeros
                .as_deref()
                .map(|z| loc(z).map(|l| files.data(l).to_vec()))
                .transpose()?,
        }),
        Src::Fused { t, expert, part } => {
            let (x, rows, cols) = fused_slab(files, t, *expert)?;
            let col0 = if *part == Part::Up { n } else { 0 };
            Weight::Dense(DenseWeight {
                n,
                k,
                data: transpose_cols(&x, rows, cols, col0, n),
            })
        }
    };
    // Stored codes, scales and zero points come from the user: check them before anything computes.
    w.validate().map_err(|e| {
        let first = lin.src.tensors()[0];
        let path = files
            .get(first)
            .map_or(files.listing(), |l| files.path_of(l));
        Error::checkpoint(path, format!("tensor `{first}`: {e}"))
    })?;
    Ok(w)
}

/// Expert `expert`'s `[rows, cols]` slab of a fused `[E, rows, cols]` tensor, as f32.
fn fused_slab(files: &Files, t: &str, expert: usize) -> Result<(Vec<f32>, usize, usize)> {
    let l = files
        .get(t)
        .ok_or_else(|| Error::checkpoint(files.listing(), format!("missing tensor `{t}`")))?;
    let (rows, cols) = (l.shape[1], l.shape[2]);
    let slab = rows * cols * (l.dtype.bitsize() / 8);
    let bytes = &files.data(l)[expert * slab..(expert + 1) * slab];
    let x = to_f32(l.dtype, bytes).ok_or_else(|| Error::DType {
        op: OP,
        msg: format!("tensor `{t}`: {}", l.dtype),
    })?;
    Ok((x, rows, cols))
}

/// Reads the three weights of an MLP, converting a fused gate_up slab once for both gate and up.
pub(crate) fn read_mlp(files: &Files, m: &MlpSrc) -> Result<[Weight; 3]> {
    if let (
        Src::Fused { t, expert, .. },
        Src::Fused {
            t: t2, expert: e2, ..
        },
    ) = (&m.gate.src, &m.up.src)
    {
        if t == t2 && expert == e2 {
            let (x, rows, cols) = fused_slab(files, t, *expert)?;
            let (n, k) = (m.gate.n, m.gate.k);
            let gate = Weight::Dense(DenseWeight {
                n,
                k,
                data: transpose_cols(&x, rows, cols, 0, n),
            });
            let up = Weight::Dense(DenseWeight {
                n,
                k,
                data: transpose_cols(&x, rows, cols, n, n),
            });
            return Ok([gate, up, read_linear(files, &m.down)?]);
        }
    }
    Ok([
        read_linear(files, &m.gate)?,
        read_linear(files, &m.up)?,
        read_linear(files, &m.down)?,
    ])
}

/// Reads a norm vector.
pub(crate) fn read_vector(files: &Files, full: &str) -> Result<Vec<f32>> {
    let l = files
        .get(full)
        .ok_or_else(|| Error::checkpoint(files.listing(), format!("missing tensor `{full}`")))?;
    to_f32(l.dtype, files.data(l)).ok_or_else(|| Error::DType {
        op: OP,
        msg: format!("tensor `{full}`: {}", l.dtype),
    })
}

/// Columns `col0..col0 + ncols` of a row-major `[rows, stride]` matrix, transposed to `[ncols, rows]`.
pub(crate) fn transpose_cols(
    x: &[f32],
    rows: usize,
    stride: usize,
    col0: usize,
    ncols: usize,
) -> Vec<f32> {
    const T: usize = 32;
    let mut out = vec![0f32; ncols * rows];
    for r0 in (0..rows).step_by(T) {
        for c0 in (0..ncols).step_by(T) {
            for r in r0..(r0 + T).min(rows) {
                for c in c0..(c0 + T).min(ncols) {
                    out[c * rows + r] = x[r * stride + col0 + c];
                }
            }
        }
    }
    out
}
