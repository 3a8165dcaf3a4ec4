// Library-wide C ABI functions: version, status strings, the per-thread last CUDA error.
#include "common/status.cuh"
#include "llama4_cuda.h"

namespace {
// The CUDA error behind this thread's last failing launcher (cudaSuccess when none).
thread_local cudaError_t g_last_cuda_error = cudaSuccess;
}  // namespace

l4c_status l4c::status_from_cuda(cudaError_t err) {
    if (err == cudaSuccess) return L4C_OK;
    g_last_cuda_error = err;
    switch (err) {
        case cudaErrorNoKernelImageForDevice:
        case cudaErrorInvalidDeviceFunction:
        case cudaErrorUnsupportedPtxVersion:
        case cudaErrorInsufficientDriver: return L4C_ERR_UNSUPPORTED_ARCH;
        case cudaErrorMemoryAllocation: return L4C_ERR_OUT_OF_MEMORY;
        case cudaErrorInvalidConfiguration:
        case cudaErrorLaunchOutOfResources:
        case cudaErrorLaunchFailure: return L4C_ERR_LAUNCH_FAILED;
        default: return L4C_ERR_CUDA;
    }
}

extern "C" uint32_t l4c_version(void) { return L4C_VERSION; }

extern "C" const char *l4c_status_string(l4c_status status) {
    switch (status) {
        case L4C_OK: return "ok";
        case L4C_ERR_INVALID_ARGUMENT: return "invalid argument (null pointer, negative size or inconsistent shape)";
        case L4C_ERR_UNSUPPORTED_DTYPE: return "unsupported dtype";
        case L4C_ERR_UNSUPPORTED_ARCH: return "no kernel image for this device (needs sm_80 or newer)";
        case L4C_ERR_OUT_OF_MEMORY: return "out of GPU memory";
        case L4C_ERR_LAUNCH_FAILED: return "kernel launch failed";
        case L4C_ERR_CUDA: return "CUDA error (see l4c_last_cuda_error)";
        case L4C_ERR_UNSUPPORTED: return "not supported by this build";
    }
    return "unknown status";
}

extern "C" int32_t l4c_last_cuda_error(const char **name, const char **message) {
    const cudaError_t e = g_last_cuda_error;
    if (name) *name = e == cudaSuccess ? "" : cudaGetErrorName(e);
    if (message) *message = e == cudaSuccess ? "" : cudaGetErrorString(e);
    return static_cast<int32_t>(e);
}
