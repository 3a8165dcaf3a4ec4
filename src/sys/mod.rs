//! Bindings to the C ABI (kernels/include/llama4_cuda.h) and the error-code boundary. OWNER: kernels helper.
