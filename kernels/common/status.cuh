// Host-side status helpers shared by every launcher: argument checks and CUDA error mapping.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "llama4_cuda.h"

namespace l4c {

// Maps a CUDA runtime error to an l4c_status and, when it is an error, records it for
// l4c_last_cuda_error() on this thread. Defined in kernels/abi.cu.
l4c_status status_from_cuda(cudaError_t err);

// True for the three float storage dtypes every elementwise-style kernel takes.
inline bool is_float_dtype(l4c_dtype d) {
    return d == L4C_DTYPE_F32 || d == L4C_DTYPE_F16 || d == L4C_DTYPE_BF16;
}

// True when p is aligned to `bytes` (a power of two).
inline bool is_aligned(const void *p, unsigned bytes) {
    return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

// Blocks for a grid-stride loop over `items` work items: enough to fill any GPU, never past the
// 2^31 - 1 limit of gridDim.x (the kernels loop over the rest).
inline unsigned grid_for(int64_t items, int block, int64_t max_blocks = int64_t(1) << 16) {
    int64_t b = (items + block - 1) / block;
    if (b < 1) b = 1;
    return static_cast<unsigned>(b < max_blocks ? b : max_blocks);
}

}  // namespace l4c

// Validation inside an extern "C" launcher: returns L4C_ERR_INVALID_ARGUMENT unless `cond` holds.
#define L4C_REQUIRE(cond)                                  \
    do {                                                   \
        if (!(cond)) return L4C_ERR_INVALID_ARGUMENT;      \
    } while (0)

// Returns L4C_ERR_UNSUPPORTED_DTYPE unless `cond` holds.
#define L4C_REQUIRE_DTYPE(cond)                            \
    do {                                                   \
        if (!(cond)) return L4C_ERR_UNSUPPORTED_DTYPE;     \
    } while (0)

// After a <<<...>>> launch: the launch's own error (bad configuration, no kernel image for this
// device, a sticky error) as a status. Asynchronous faults surface on a later synchronisation.
#define L4C_LAUNCH_STATUS() ::l4c::status_from_cuda(cudaGetLastError())
