//! Safe entry points: validate, then launch on the GPU. OWNER: kernels helper.

pub mod gemm;
