//! fp8 e4m3fn and e5m2: encoding (round to nearest even, saturating), decoding, and fp8 weight /
//! activation scaling.
//!
//! Encoding is one rounding straight from f32 (never through f16), ties to even, and saturating:
//! a finite value or an infinity whose rounded magnitude exceeds the format's largest finite value
//! encodes as that value with the input's sign. NaN encodes as NaN (`sign | 0x7f` for e4m3fn,
//! `sign | 0x7e` for e5m2). This is PTX `cvt.rn.satfinite.{e4m3x2,e5m2x2}.f32`, which the GPU
//! kernels use. Negative zero keeps its sign (code 0x80).

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The two fp8 encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Format {
    /// e4m3fn: 4 exponent bits (bias 7), 3 mantissa bits, max 448, no infinities, NaN 0x7f / 0xff.
    E4M3,
    /// e5m2: 5 exponent bits (bias 15), 2 mantissa bits, max 57344, infinities 0x7c / 0xfc.
    E5M2,
}

/// Bit layout of a format, in the terms the encoder needs.
struct Layout {
    mant_bits: u32,
    bias: i32,
    max: f32,
    nan: u8,
}

impl Fp8Format {
    fn layout(self) -> Layout {
        match self {
            Fp8Format::E4M3 => Layout {
                mant_bits: 3,
                bias: 7,
                max: E4M3_MAX,
                nan: 0x7f,
            },
            Fp8Format::E5M2 => Layout {
                mant_bits: 2,
                bias: 15,
                max: E5M2_MAX,
                nan: 0x7e,
            },
        }
    }
    /// Largest finite value.
    pub fn max(self) -> f32 {
        self.layout().max
    }
    /// Round-to-nearest-even, saturating encode (see the module docs).
    pub fn encode(self, x: f32) -> u8 {
        match self {
            Fp8Format::E4M3 => e4m3_encode(x),
            Fp8Format::E5M2 => e5m2_encode(x),
        }
    }
    /// Exact decode.
    pub fn decode(self, code: u8) -> f32 {
        self.table()[code as usize]
    }
    /// The value of every code, indexed by code (built once).
    pub fn table(self) -> &'static [f32; 256] {
        static E4M3: OnceLock<[f32; 256]> = OnceLock::new();
        static E5M2: OnceLock<[f32; 256]> = OnceLock::new();
        let (cell, has_inf) = match self {
            Fp8Format::E4M3 => (&E4M3, false),
            Fp8Format::E5M2 => (&E5M2, true),
        };
        cell.get_or_init(|| {
            let l = self.layout();
            std::array::from_fn(|c| decode_bits(c as u8, &l, has_inf))
        })
    }
}

/// How an fp8 weight is scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Scaling {
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per output channel (row of `[n, k]`).
    PerChannel,
}

/// An fp8 e4m3 weight `[n, k]`: `w[i, j] = decode(codes[i*k + j]) * scale(i)` (one f32 product).
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8Weight {
    pub n: usize,
    pub k: usize,
    /// `[n, k]` e4m3fn codes, row-major.
    pub codes: Vec<u8>,
    pub scaling: Fp8Scaling,
    /// `[1]` per tensor, `[n]` per channel.
    pub scales: Vec<f32>,
}

/// Largest finite e4m3fn value.
pub const E4M3_MAX: f32 = 448.0;
/// Largest finite e5m2 value.
pub const E5M2_MAX: f32 = 57344.0;

/// Encodes `x` in the layout: one RNE rounding from f32, saturating to `max`, NaN to `nan`.
fn encode(x: f32, l: &Layout) -> u8 {
    let sign = ((x.to_bits() >> 24) & 0x80) as u8;
    if x.is_nan() {
        return sign | l.nan;
    }
    let a = x.abs();
    let min_exp = 1 - l.bias; // exponent of the smallest normal
                              // The spacing of representable values around `a`: 2^(e - mant_bits) in a normal binade, the
                              // subnormal spacing below the smallest normal. f32 subnormals take the subnormal spacing too.
    let e = if a.is_normal() {
        ((a.to_bits() >> 23) as i32 - 127).max(min_exp)
    } else {
        min_exp
    };
    if a.is_infinite() || e > l.bias + 1 {
        return sign | encode_exact(l.max, l);
    }
    let quantum = pow2(e - l.mant_bits as i32);
    // `a / quantum` is exact (a power-of-two scaling well inside f32's range), so this is one rounding.
    let rounded = (a / quantum).round_ties_even() * quantum;
    sign | encode_exact(rounded.min(l.max), l)
}

/// The code of a non-negative value that the format represents exactly (and no larger than `max`).
fn encode_exact(v: f32, l: &Layout) -> u8 {
    let min_exp = 1 - l.bias;
    if v < pow2(min_exp) {
        // Subnormal (or zero): v = m * 2^(min_exp - mant_bits).
        return (v / pow2(min_exp - l.mant_bits as i32)) as u8;
    }
    let e = (v.to_bits() >> 23) as i32 - 127;
    let mant = (v / pow2(e - l.mant_bits as i32)) as u32 - (1 << l.mant_bits);
    (((e + l.bias) as u32) << l.mant_bits | mant) as u8
}

/// 2^e for the small exponents fp8 needs (normal f32 range).
fn pow2(e: i32) -> f32 {
    f32::from_bits(((e + 127) as u32) << 23)
}

/// Decodes one code by its bit fields (used to build the tables).
fn decode_bits(code: u8, l: &Layout, has_inf: bool) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp_field = ((code & 0x7f) >> l.mant_bits) as i32;
    let mant = (code & ((1 << l.mant_bits) - 1)) as f32;
    let max_field: i32 = 0x7f >> l.mant_bits;
    let scale = pow2(-(l.mant_bits as i32));
    if has_inf && exp_field == max_field {
        return if mant == 0.0 {
            sign * f32::INFINITY
        } else {
            f32::NAN
        };
    }
    if !has_inf && code & 0x7f == 0x7f {
        return f32::NAN;
    }
    if exp_field == 0 {
        sign * mant * scale * pow2(1 - l.bias)
    } else {
        sign * (1.0 + mant * scale) * pow2(exp_field - l.bias)
    }
}

/// f32 -> e4m3fn, round to nearest even, saturating to ±448; NaN -> `sign | 0x7f`.
pub fn e4m3_encode(x: f32) -> u8 {
    encode(x, &Fp8Format::E4M3.layout())
}
/// e4m3fn -> f32 (exact); 0x7f and 0xff are NaN.
pub fn e4m3_decode(code: u8) -> f32 {
    Fp8Format::E4M3.decode(code)
}
/// f32 -> e5m2, round to nearest even, saturating to ±57344 (infinities too); NaN -> `sign | 0x7e`.
pub fn e5m2_encode(x: f32) -> u8 {
    encode(x, &Fp8Format::E5M2.layout())
}
/// e5m2 -> f32 (exact); 0x7c / 0xfc are ±inf, 0x7d..=0x7f and 0xfd..=0xff NaN.
pub fn e5m2_decode(code: u8) -> f32 {
    Fp8Format::E5M2.decode(code)
}

/// The symmetric scale of a block with largest magnitude `absmax`: `absmax / 448`, or 1 for an
/// all-zero block (its codes are all zero either way, and 1 keeps every later division finite).
fn scale_for(absmax: f32) -> f32 {
    if absmax > 0.0 {
        absmax / E4M3_MAX
    } else {
        1.0
    }
}

/// Largest magnitude of `xs`, or an error naming the first non-finite element.
fn finite_absmax(op: &'static str, what: &str, xs: &[f32], base: usize) -> Result<f32> {
    xs.iter().enumerate().try_fold(0.0f32, |m, (i, &v)| {
        if v.is_finite() {
            Ok(m.max(v.abs()))
        } else {
            Err(Error::invalid(
                op,
                format!("{what}[{}] = {v} is not finite", base + i),
            ))
        }
    })
}

/// Encodes `x / scale` (a true f32 division, as the kernels do) for each element.
fn encode_scaled(xs: &[f32], scale: f32, out: &mut Vec<u8>) {
    out.extend(xs.iter().map(|&v| e4m3_encode(v / scale)));
}

impl Fp8Weight {
    /// Quantize a dense `[n, k]` f32 weight, symmetric: `scale = absmax / 448` over the tensor or the
    /// row (1 for an all-zero one), `code = e4m3_encode(w / scale)`. Non-finite weights are an error.
    pub fn quantize(w: &[f32], n: usize, k: usize, scaling: Fp8Scaling) -> Result<Self> {
        const OP: &str = "Fp8Weight::quantize";
        crate::error::check_len(OP, "weight", w.len(), n * k)?;
        let mut codes = Vec::with_capacity(n * k);
        let scales = match scaling {
            Fp8Scaling::PerTensor => {
                let s = scale_for(finite_absmax(OP, "weight", w, 0)?);
                encode_scaled(w, s, &mut codes);
                vec![s]
            }
            Fp8Scaling::PerChannel => (0..n)
                .map(|i| {
                    let row = &w[i * k..(i + 1) * k];
                    let s = scale_for(finite_absmax(OP, "weight", row, i * k)?);
                    encode_scaled(row, s, &mut codes);
                    Ok(s)
                })
                .collect::<Result<Vec<f32>>>()?,
        };
        Ok(Fp8Weight {
            n,
            k,
            codes,
            scaling,
            scales,
        })
    }

    /// Checks the fields agree (lengths, finite scales, no NaN code): a loader that fills the public
    /// fields itself calls this; [`crate::reference::gemm`] calls it before reading the weight.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "Fp8Weight";
        crate::error::check_len(OP, "codes", self.codes.len(), self.n * self.k)?;
        let want = match self.scaling {
            Fp8Scaling::PerTensor => 1,
            Fp8Scaling::PerChannel => self.n,
        };
        crate::error::check_len(OP, "scales", self.scales.len(), want)?;
        if let Some(i) = self.scales.iter().position(|s| !s.is_finite()) {
            return Err(Error::invalid(
                OP,
                format!("scales[{i}] = {} is not finite", self.scales[i]),
            ));
        }
        if let Some(i) = self.codes.iter().position(|&c| c & 0x7f == 0x7f) {
            return Err(Error::invalid(
                OP,
                format!("codes[{i}] = {:#04x} is NaN", self.codes[i]),
            ));
        }
        Ok(())
    }

    /// The scale of output row `i`.
    pub fn scale(&self, i: usize) -> f32 {
        match self.scaling {
            Fp8Scaling::PerTensor => self.scales[0],
            Fp8Scaling::PerChannel => self.scales[i],
        }
    }

    /// Row `i` dequantized into `out[..k]`. Expects a valid weight ([`Self::validate`]).
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        let (s, table) = (self.scale(i), Fp8Format::E4M3.table());
        let codes = &self.codes[i * self.k..(i + 1) * self.k];
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = table[c as usize] * s;
        }
    }

    /// Dense f32 `[n, k]`. Expects a valid weight ([`Self::validate`]).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.n * self.k];
        if self.k > 0 {
            for (i, row) in out.chunks_exact_mut(self.k).enumerate() {
                self.dequantize_row(i, row);
            }
        }
        out
    }

    /// Bytes of codes plus f32 scales.
    pub fn nbytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len()
    }
}

/// Dynamic per-token activation quantization of `x[m, k]`: returns (e4m3 codes `[m, k]`, scales `[m]`),
/// scale = absmax(row) / 448 (a zero row gets scale 1), `code = e4m3_encode(x / scale)`.
/// Non-finite activations are an error.
pub fn quantize_per_token(x: &[f32], m: usize, k: usize) -> Result<(Vec<u8>, Vec<f32>)> {
    const OP: &str = "quantize_per_token";
    crate::error::check_len(OP, "activations", x.len(), m * k)?;
    let mut codes = Vec::with_capacity(m * k);
    let scales = (0..m)
        .map(|i| {
            let row = &x[i * k..(i + 1) * k];
            let s = scale_for(finite_absmax(OP, "activations", row, i * k)?);
            encode_scaled(row, s, &mut codes);
            Ok(s)
        })
        .collect::<Result<Vec<f32>>>()?;
    Ok((codes, scales))
}
