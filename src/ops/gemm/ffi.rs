//! The quantized-GEMM part of the C ABI (kernels/include/llama4_cuda.h), mirrored by hand until the
//! bindgen output in `crate::sys` carries these declarations; the layout tests pin every offset.
#![allow(non_camel_case_types)]

use std::ffi::{c_void, CStr};
use std::os::raw::c_char;

use crate::error::{Error, Result};

pub type l4c_status = i32;
pub type l4c_dtype = i32;
pub type l4c_stream_t = *mut c_void;

pub const L4C_OK: l4c_status = 0;
pub const L4C_DTYPE_F16: l4c_dtype = 1;
pub const L4C_DTYPE_BF16: l4c_dtype = 2;

#[repr(C)]
pub struct l4c_gemm_w4a16_params {
    pub x: *const c_void,
    pub qweight: *const u32,
    pub scales: *const c_void,
    pub zero_bias: *const c_void,
    pub residual: *const c_void,
    pub out: *mut c_void,
    pub workspace: *mut f32,
    pub m: i64,
    pub n: i64,
    pub k: i64,
    pub ldx: i64,
    pub ldo: i64,
    pub ldr: i64,
    pub k_slabs: i64,
    pub groups: i64,
    pub group_size: i32,
    pub act_dtype: l4c_dtype,
    pub path: i32,
    pub token_tiles: i32,
    pub split_k: i32,
}

#[repr(C)]
pub struct l4c_fp8_quantize_params {
    pub x: *const c_void,
    pub codes: *mut u8,
    pub scales: *mut f32,
    pub decoded: *mut c_void,
    pub m: i64,
    pub k: i64,
    pub ldx: i64,
    pub ldc: i64,
}

#[repr(C)]
pub struct l4c_gemm_fp8_params {
    pub x: *const c_void,
    pub x_scales: *const f32,
    pub w: *const u8,
    pub w_scales: *const f32,
    pub residual: *const c_void,
    pub out: *mut c_void,
    pub workspace: *mut f32,
    pub m: i64,
    pub n: i64,
    pub k: i64,
    pub ldx: i64,
    pub ldw: i64,
    pub ldo: i64,
    pub ldr: i64,
    pub path: i32,
    pub token_tiles: i32,
    pub split_k: i32,
}

extern "C" {
    pub fn l4c_gemm_w4a16(p: *const l4c_gemm_w4a16_params, stream: l4c_stream_t) -> l4c_status;
    pub fn l4c_fp8_quantize_per_token(
        p: *const l4c_fp8_quantize_params,
        stream: l4c_stream_t,
    ) -> l4c_status;
    pub fn l4c_gemm_fp8(p: *const l4c_gemm_fp8_params, stream: l4c_stream_t) -> l4c_status;
    fn l4c_status_string(status: l4c_status) -> *const c_char;
    fn l4c_last_cuda_error(name: *mut *const c_char, message: *mut *const c_char) -> i32;
}

/// A launcher's status as a typed error.
pub fn check(op: &'static str, st: l4c_status) -> Result<()> {
    if st == L4C_OK {
        return Ok(());
    }
    // SAFETY: l4c_status_string returns a static NUL-terminated string for any value.
    let what = unsafe { CStr::from_ptr(l4c_status_string(st)) }
        .to_string_lossy()
        .into_owned();
    match st {
        1 => Err(Error::invalid(op, what)),
        2 => Err(Error::DType { op, msg: what }),
        _ => {
            let (mut name, mut msg) = (std::ptr::null(), std::ptr::null());
            // SAFETY: both out-pointers are valid; the library stores static strings (or "") there.
            let code = unsafe { l4c_last_cuda_error(&mut name, &mut msg) };
            let read = |p: *const c_char| {
                if p.is_null() {
                    String::new()
                } else {
                    // SAFETY: non-null pointers from l4c_last_cuda_error are static C strings.
                    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
                }
            };
            Err(Error::Cuda {
                op,
                name: format!("{} ({code})", read(name)),
                message: format!("{what}: {}", read(msg)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_the_header() {
        assert_eq!(
            size_of::<l4c_gemm_w4a16_params>(),
            7 * 8 + 8 * 8 + 5 * 4 + 4
        );
        assert_eq!(offset_of!(l4c_gemm_w4a16_params, m), 56);
        assert_eq!(offset_of!(l4c_gemm_w4a16_params, group_size), 120);
        assert_eq!(offset_of!(l4c_gemm_w4a16_params, split_k), 136);
        assert_eq!(size_of::<l4c_fp8_quantize_params>(), 64);
        assert_eq!(size_of::<l4c_gemm_fp8_params>(), 7 * 8 + 7 * 8 + 3 * 4 + 4);
        assert_eq!(offset_of!(l4c_gemm_fp8_params, path), 112);
    }
}
