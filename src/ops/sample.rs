//! GPU next-token sampling (kernels/sample.cu): logits `[rows, vocab]` (row stride) -> token ids
//! `[rows]` on the device, with no host synchronisation, so a captured decode step runs from ids to
//! ids. The specification is [`crate::reference::sample`]: greedy argmax (ties to the lowest id) at
//! temperature 0, else the host sampler's top-p distribution with the uniform number drawn from
//! (seed, step, row), `step` a device counter that every call reads and advances.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use super::{float_dtype, launch, to_i64};
use crate::device::{DeviceElem, DriverResultExt};
use crate::error::{check_len, Error, Result};
use crate::model::sampling::SamplingParams;
use crate::sys;

const OP: &str = "sample";

/// The largest vocab the kernel takes (2^30: its int indices never overflow).
pub const MAX_VOCAB: usize = 1 << 30;

/// The logits a [`sample`] call reads: `rows` rows of `vocab` values, `row_stride` elements apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogitsShape {
    pub rows: usize,
    pub vocab: usize,
    pub row_stride: usize,
}

impl LogitsShape {
    /// Contiguous rows (`row_stride == vocab`).
    pub fn dense(rows: usize, vocab: usize) -> Self {
        LogitsShape {
            rows,
            vocab,
            row_stride: vocab,
        }
    }
}

/// The device words a sampler keeps between calls: the step counter (which call this is: part of
/// every draw, advanced on the device, so a replayed graph draws fresh numbers) and the sticky error
/// bits (a NaN or +inf logit).
pub struct SampleState {
    step: CudaSlice<u64>,
    status: CudaSlice<u32>,
}

impl SampleState {
    /// A counter starting at `first_step` and a clear status.
    pub fn new(stream: &Arc<CudaStream>, first_step: u64) -> Result<Self> {
        const OP: &str = "SampleState::new";
        Ok(SampleState {
            step: stream.clone_htod(&[first_step]).op(OP)?,
            status: stream.alloc_zeros::<u32>(1).op(OP)?,
        })
    }

    /// Sets the counter (enqueued on `stream`).
    pub fn set_step(&mut self, stream: &Arc<CudaStream>, step: u64) -> Result<()> {
        stream
            .memcpy_htod(&[step], &mut self.step)
            .op("SampleState::set_step")
    }

    /// The counter: the step the next call draws with (synchronises the stream).
    pub fn step(&self, stream: &Arc<CudaStream>) -> Result<u64> {
        let v = stream.clone_dtoh(&self.step).op("SampleState::step")?;
        Ok(v[0])
    }

    /// The error bits (`sys::L4C_SAMPLE_BAD_LOGIT`); synchronises the stream.
    pub fn status(&self, stream: &Arc<CudaStream>) -> Result<u32> {
        let v = stream.clone_dtoh(&self.status).op("SampleState::status")?;
        Ok(v[0])
    }

    /// Fails when a call since the last check met a NaN or +inf logit (that row got id 0), and clears
    /// the bits. Synchronises the stream.
    pub fn check(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        let s = self.status(stream)?;
        if s == 0 {
            return Ok(());
        }
        stream
            .memcpy_htod(&[0u32], &mut self.status)
            .op("SampleState::check")?;
        Err(Error::invalid(
            OP,
            format!(
                "a row of logits held a NaN or +inf (status {s:#x}); its token id was set to 0"
            ),
        ))
    }
}

/// Validates a call on the host: parameters (temperature finite and >= 0, top_p in (0, 1]), the
/// shape (vocab 1 ..= [`MAX_VOCAB`], rows <= i32::MAX, row_stride >= vocab) and the buffer lengths
/// (`logits_len` holds every row, `ids_len == rows`, a history ring a non-zero multiple of rows).
/// Returns the history ring's length in steps.
pub fn check_args(
    shape: LogitsShape,
    params: &SamplingParams,
    logits_len: usize,
    ids_len: usize,
    history_len: Option<usize>,
) -> Result<Option<usize>> {
    crate::reference::sample::check_params(params.temperature, params.top_p)?;
    let LogitsShape {
        rows,
        vocab,
        row_stride,
    } = shape;
    if vocab == 0 || vocab > MAX_VOCAB {
        return Err(Error::invalid(
            OP,
            format!("vocab = {vocab}: need 1 ..= {MAX_VOCAB}"),
        ));
    }
    if rows > i32::MAX as usize {
        return Err(Error::invalid(
            OP,
            format!("rows = {rows} exceeds {}", i32::MAX),
        ));
    }
    if row_stride < vocab {
        return Err(Error::shape(
            OP,
            format!("row stride {row_stride} is less than vocab {vocab}"),
        ));
    }
    let need = match rows {
        0 => 0,
        r => (r - 1)
            .checked_mul(row_stride)
            .and_then(|x| x.checked_add(vocab))
            .ok_or_else(|| Error::shape(OP, "rows x row stride overflows usize"))?,
    };
    if logits_len < need {
        return Err(Error::shape(
            OP,
            format!(
                "logits has {logits_len} elements; {rows} rows of {vocab} with stride {row_stride} need {need}"
            ),
        ));
    }
    check_len(OP, "ids", ids_len, rows)?;
    match history_len {
        None => Ok(None),
        Some(h) if rows > 0 && h > 0 && h % rows == 0 => Ok(Some(h / rows)),
        Some(h) => Err(Error::shape(
            OP,
            format!("history has {h} elements: need a non-zero multiple of rows = {rows}"),
        )),
    }
}

/// Writes the next token of every row of `logits` into `ids` (and into `history`, a ring of
/// `[steps, rows]` ids indexed by the step counter, when given), then advances `state`'s counter.
/// Enqueued on `stream`; no host synchronisation. A NaN or +inf logit is reported by
/// [`SampleState::check`] later (the row gets id 0, never an out-of-range id). `rows == 0` does
/// nothing.
pub fn sample<T: DeviceElem>(
    stream: &Arc<CudaStream>,
    logits: &impl DevicePtr<T>,
    shape: LogitsShape,
    params: &SamplingParams,
    state: &mut SampleState,
    ids: &mut impl DevicePtrMut<u32>,
    history: Option<&mut CudaSlice<u32>>,
) -> Result<()> {
    let steps = check_args(
        shape,
        params,
        logits.len(),
        ids.len(),
        history.as_ref().map(|h| h.len()),
    )?;
    let logits_dtype = float_dtype::<T>(OP, "logits")?;
    if shape.rows == 0 {
        return Ok(());
    }
    let i = |what: &str, n: usize| to_i64(OP, what, n);
    let (rows, vocab, stride) = (
        i("rows", shape.rows)?,
        i("vocab", shape.vocab)?,
        i("row_stride", shape.row_stride)?,
    );
    let history_len = i("history steps", steps.unwrap_or(0))?;
    launch(OP, stream, |s| {
        let (pl, _gl) = logits.device_ptr(stream);
        let (pi, _gi) = ids.device_ptr_mut(stream);
        let (pstep, _gstep) = state.step.device_ptr_mut(stream);
        let (pstat, _gstat) = state.status.device_ptr_mut(stream);
        let (ph, _gh) = match history {
            Some(h) => {
                let (p, g) = h.device_ptr_mut(stream);
                (p as *mut u32, Some(g))
            }
            None => (std::ptr::null_mut(), None),
        };
        let p = sys::l4c_sample_params {
            logits: pl as *const c_void,
            ids: pi as *mut u32,
            history: ph,
            step: pstep as *mut u64,
            status: pstat as *mut u32,
            rows,
            vocab,
            logits_row_stride: stride,
            history_len,
            temperature: params.temperature,
            top_p: params.top_p,
            seed: params.seed,
            logits_dtype,
        };
        // SAFETY: logits holds (rows - 1) * stride + vocab elements of the declared dtype, ids rows
        // u32, history (when given) history_len * rows u32, step one u64 and status one u32 (all
        // checked above or allocated by SampleState); outputs are distinct from logits by Rust's
        // borrow rules, and the guards keep cudarc's stream ordering until the launches are enqueued.
        unsafe { sys::l4c_sample(&p, s) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(temperature: f32, top_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            seed: 1,
        }
    }

    fn err(r: Result<Option<usize>>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn host_validation_names_the_problem() {
        let s = LogitsShape::dense(4, 10);
        assert_eq!(check_args(s, &p(0.6, 0.9), 40, 4, None).unwrap(), None);
        assert_eq!(
            check_args(s, &p(0.0, 1.0), 40, 4, Some(12)).unwrap(),
            Some(3)
        );
        let e = err(check_args(s, &p(-0.1, 0.9), 40, 4, None));
        assert!(e.contains("temperature"), "{e}");
        let e = err(check_args(s, &p(f32::NAN, 0.9), 40, 4, None));
        assert!(e.contains("temperature"), "{e}");
        let e = err(check_args(s, &p(f32::INFINITY, 0.9), 40, 4, None));
        assert!(e.contains("temperature"), "{e}");
        for bad in [0.0, -0.5, 1.0001, f32::NAN] {
            let e = err(check_args(s, &p(0.6, bad), 40, 4, None));
            assert!(e.contains("top_p"), "{bad}: {e}");
        }
        let e = err(check_args(
            LogitsShape::dense(4, 0),
            &p(0.6, 0.9),
            0,
            4,
            None,
        ));
        assert!(e.contains("vocab = 0"), "{e}");
        let strided = LogitsShape {
            rows: 4,
            vocab: 10,
            row_stride: 9,
        };
        let e = err(check_args(strided, &p(0.6, 0.9), 40, 4, None));
        assert!(e.contains("row stride 9"), "{e}");
        // Stride 16: the last row needs 3 * 16 + 10 = 58 elements, not 64.
        let strided = LogitsShape {
            row_stride: 16,
            ..strided
        };
        assert!(check_args(strided, &p(0.6, 0.9), 58, 4, None).is_ok());
        let e = err(check_args(strided, &p(0.6, 0.9), 57, 4, None));
        assert!(e.contains("need 58"), "{e}");
        let e = err(check_args(s, &p(0.6, 0.9), 40, 5, None));
        assert!(e.contains("ids has 5"), "{e}");
        for h in [0, 6] {
            let e = err(check_args(s, &p(0.6, 0.9), 40, 4, Some(h)));
            assert!(e.contains("history has"), "{h}: {e}");
        }
        let e = err(check_args(
            LogitsShape::dense(1 << 31, 1),
            &p(0.6, 0.9),
            1 << 31,
            1 << 31,
            None,
        ));
        assert!(e.contains("rows ="), "{e}");
        let e = err(check_args(
            LogitsShape::dense(1, MAX_VOCAB + 1),
            &p(0.6, 0.9),
            MAX_VOCAB + 1,
            1,
            None,
        ));
        assert!(e.contains("vocab = 1073741825"), "{e}");
        // Zero rows: nothing to check but the parameters.
        assert!(check_args(LogitsShape::dense(0, 10), &p(0.6, 0.9), 0, 0, None).is_ok());
    }
}
