//! Element types that live on the device, and a typed device tensor (shape and strides over a
//! cudarc buffer).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};

use super::DriverResultExt;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// A Rust type stored in device buffers, with the crate's [`DType`] for it.
pub trait DeviceElem:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static
{
    /// The storage dtype.
    const DTYPE: DType;
}

impl DeviceElem for f32 {
    const DTYPE: DType = DType::F32;
}
impl DeviceElem for half::f16 {
    const DTYPE: DType = DType::F16;
}
impl DeviceElem for half::bf16 {
    const DTYPE: DType = DType::BF16;
}
impl DeviceElem for u32 {
    const DTYPE: DType = DType::U32;
}
impl DeviceElem for i32 {
    const DTYPE: DType = DType::I32;
}
impl DeviceElem for u8 {
    const DTYPE: DType = DType::U8;
}

/// A device tensor: a cudarc buffer viewed with a shape and element strides (row-major when
/// contiguous). The buffer stays accessible, so ops can take `tensor.data()` directly.
#[derive(Debug)]
pub struct DeviceTensor<T> {
    data: CudaSlice<T>,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

impl<T: DeviceElem> DeviceTensor<T> {
    /// A zeroed contiguous tensor on `stream`.
    pub fn zeros(stream: &Arc<CudaStream>, shape: &[usize]) -> Result<Self> {
        let n = numel("DeviceTensor::zeros", shape)?;
        let data = stream.alloc_zeros(n).op("DeviceTensor::zeros")?;
        Ok(Self::contiguous(data, shape))
    }

    /// Uploads `host` (row-major, exactly `shape`'s element count) on `stream`.
    pub fn from_host(stream: &Arc<CudaStream>, host: &[T], shape: &[usize]) -> Result<Self> {
        crate::error::check_len(
            "DeviceTensor::from_host",
            "host data",
            host.len(),
            numel("DeviceTensor::from_host", shape)?,
        )?;
        let data = stream.clone_htod(host).op("DeviceTensor::from_host")?;
        Ok(Self::contiguous(data, shape))
    }

    /// Wraps a buffer with explicit element strides; every addressed element must lie in the buffer.
    pub fn from_parts(data: CudaSlice<T>, shape: &[usize], strides: &[usize]) -> Result<Self> {
        const OP: &str = "DeviceTensor::from_parts";
        if shape.len() != strides.len() {
            return Err(Error::shape(
                OP,
                format!("shape {shape:?} and strides {strides:?} differ in rank"),
            ));
        }
        if shape.contains(&0) {
            return Ok(Self {
                data,
                shape: shape.to_vec(),
                strides: strides.to_vec(),
            });
        }
        let mut last = 0usize;
        for (&d, &s) in shape.iter().zip(strides) {
            last = (d - 1)
                .checked_mul(s)
                .and_then(|x| x.checked_add(last))
                .ok_or_else(|| Error::shape(OP, "extent overflows"))?;
        }
        if last >= data.len() {
            return Err(Error::shape(
                OP,
                format!(
                    "shape {shape:?} strides {strides:?} reach element {last}, buffer has {}",
                    data.len()
                ),
            ));
        }
        Ok(Self {
            data,
            shape: shape.to_vec(),
            strides: strides.to_vec(),
        })
    }

    fn contiguous(data: CudaSlice<T>, shape: &[usize]) -> Self {
        Self {
            data,
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
        }
    }

    /// Copies the elements to the host in row-major order (synchronises the buffer's stream).
    pub fn to_host(&self) -> Result<Vec<T>> {
        let raw = self
            .data
            .stream()
            .clone_dtoh(&self.data)
            .op("DeviceTensor::to_host")?;
        if self.is_contiguous() {
            return Ok(raw[..self.numel()].to_vec());
        }
        let mut out = Vec::with_capacity(self.numel());
        let mut idx = vec![0usize; self.shape.len()];
        for _ in 0..self.numel() {
            out.push(
                raw[idx
                    .iter()
                    .zip(&self.strides)
                    .map(|(i, s)| i * s)
                    .sum::<usize>()],
            );
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < self.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(out)
    }

    /// The storage dtype.
    pub fn dtype(&self) -> DType {
        T::DTYPE
    }
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Element strides, one per dimension.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    /// Number of elements addressed by the shape.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// True when the strides are the row-major strides of the shape.
    pub fn is_contiguous(&self) -> bool {
        self.strides == contiguous_strides(&self.shape)
    }
    /// The underlying buffer.
    pub fn data(&self) -> &CudaSlice<T> {
        &self.data
    }
    /// The underlying buffer, mutably.
    pub fn data_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.data
    }
    /// The buffer, dropping the shape.
    pub fn into_data(self) -> CudaSlice<T> {
        self.data
    }
}

/// Element count of `shape`, or a shape error on overflow.
fn numel(op: &'static str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::shape(op, format!("{shape:?} overflows usize")))
}

/// Row-major strides of `shape`.
pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::contiguous_strides;

    #[test]
    fn strides_are_row_major() {
        assert_eq!(contiguous_strides(&[2, 3, 5]), vec![15, 5, 1]);
        assert_eq!(contiguous_strides(&[7]), vec![1]);
        assert!(contiguous_strides(&[]).is_empty());
    }
}
