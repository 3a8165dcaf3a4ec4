// Runtime dtype -> template dispatch with an explicit error for dtypes a launcher does not take.
//
//     return l4c::dispatch_float(p->a_dtype, [&](auto a) {
//         using TA = typename decltype(a)::type;
//         my_kernel<TA><<<grid, block, 0, stream>>>(...);
//         return L4C_LAUNCH_STATUS();
//     });
#pragma once

#include "common/dtype.cuh"
#include "llama4_cuda.h"

namespace l4c {

// A type carried as a value, so a generic lambda can recover it with decltype.
template <typename T>
struct TypeTag {
    using type = T;
};

// Calls f(TypeTag<T>{}) with T the storage type of a float dtype (f32, f16, bf16) and returns its
// l4c_status; returns L4C_ERR_UNSUPPORTED_DTYPE for any other value.
template <typename F>
inline l4c_status dispatch_float(l4c_dtype d, F &&f) {
    switch (d) {
        case L4C_DTYPE_F32: return f(TypeTag<float>{});
        case L4C_DTYPE_F16: return f(TypeTag<f16>{});
        case L4C_DTYPE_BF16: return f(TypeTag<bf16>{});
        default: return L4C_ERR_UNSUPPORTED_DTYPE;
    }
}

// Two float dtypes at once: f(TypeTag<T1>{}, TypeTag<T2>{}), 9 instantiations.
template <typename F>
inline l4c_status dispatch_float2(l4c_dtype d1, l4c_dtype d2, F &&f) {
    return dispatch_float(d1, [&](auto t1) { return dispatch_float(d2, [&](auto t2) { return f(t1, t2); }); });
}

}  // namespace l4c
