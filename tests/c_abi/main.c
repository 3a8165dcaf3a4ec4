/* Links the static kernel library from C (and, compiled with -x c++, from C++) and checks the ABI
 * contract that holds without a GPU: version, status strings, and launchers rejecting bad params
 * with the right status before touching CUDA. Built and run by tests/c_abi.rs. */
#include <stdio.h>
#include <string.h>

#include "llama4_cuda.h"

static int checks, failures;

#define EXPECT(cond)                                                         \
    do {                                                                     \
        ++checks;                                                            \
        if (!(cond)) {                                                       \
            ++failures;                                                      \
            fprintf(stderr, "c_abi: FAILED line %d: %s\n", __LINE__, #cond); \
        }                                                                    \
    } while (0)

#define EXPECT_STATUS(call, want) EXPECT((call) == (want))

/* A non-null address that must never be dereferenced: every call using it fails validation first. */
#define FAKE ((void *)0x1000)

int main(void) {
    l4c_status all[] = {L4C_OK, L4C_ERR_INVALID_ARGUMENT, L4C_ERR_UNSUPPORTED_DTYPE, L4C_ERR_UNSUPPORTED_ARCH,
                        L4C_ERR_OUT_OF_MEMORY, L4C_ERR_LAUNCH_FAILED, L4C_ERR_CUDA, L4C_ERR_UNSUPPORTED};
    size_t i, j, n = sizeof all / sizeof all[0];
    const char *name = "x", *message = "x";

    EXPECT(l4c_version() == L4C_VERSION);
    EXPECT(strcmp(l4c_status_string(L4C_OK), "ok") == 0);
    for (i = 0; i < n; ++i) {
        EXPECT(l4c_status_string(all[i]) != NULL && l4c_status_string(all[i])[0] != '\0');
        for (j = 0; j < i; ++j) EXPECT(strcmp(l4c_status_string(all[i]), l4c_status_string(all[j])) != 0);
    }
    EXPECT(strcmp(l4c_status_string((l4c_status)999), "unknown status") == 0);

    {
        l4c_residual_add_params p = {FAKE, FAKE, 16, L4C_DTYPE_F32, L4C_DTYPE_BF16};
        EXPECT_STATUS(l4c_residual_add(NULL, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.n = -1;
        EXPECT_STATUS(l4c_residual_add(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.n = 16;
        p.a = NULL;
        EXPECT_STATUS(l4c_residual_add(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.a = FAKE;
        p.b_dtype = L4C_DTYPE_F8E4M3;
        EXPECT_STATUS(l4c_residual_add(&p, NULL), L4C_ERR_UNSUPPORTED_DTYPE);
        p.b_dtype = (l4c_dtype)77;
        EXPECT_STATUS(l4c_residual_add(&p, NULL), L4C_ERR_UNSUPPORTED_DTYPE);
        /* Zero elements: nothing to do, null pointers allowed, no CUDA call. */
        p.b_dtype = L4C_DTYPE_F16;
        p.n = 0;
        p.a = NULL;
        p.b = NULL;
        EXPECT_STATUS(l4c_residual_add(&p, NULL), L4C_OK);
    }
    {
        l4c_cast_params p = {FAKE, NULL, 5, L4C_DTYPE_BF16, L4C_DTYPE_F32};
        EXPECT_STATUS(l4c_cast(NULL, NULL), L4C_ERR_INVALID_ARGUMENT);
        EXPECT_STATUS(l4c_cast(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.src = FAKE;
        p.n = -5;
        EXPECT_STATUS(l4c_cast(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.n = 5;
        p.dst_dtype = L4C_DTYPE_F8E5M2;
        EXPECT_STATUS(l4c_cast(&p, NULL), L4C_ERR_UNSUPPORTED_DTYPE);
    }
    {
        l4c_silu_mul_params p = {FAKE, FAKE, FAKE, 3, 8, 8, 16, 16, L4C_DTYPE_BF16, L4C_DTYPE_BF16};
        EXPECT_STATUS(l4c_silu_mul(NULL, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.rows = -3;
        EXPECT_STATUS(l4c_silu_mul(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.rows = 3;
        p.cols = -8;
        EXPECT_STATUS(l4c_silu_mul(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.cols = 8;
        p.gate_row_stride = 7; /* shorter than a row */
        EXPECT_STATUS(l4c_silu_mul(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.gate_row_stride = 16;
        p.up_row_stride = (int64_t)1 << 62; /* (rows - 1) * stride overflows int64 */
        EXPECT_STATUS(l4c_silu_mul(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.up_row_stride = 16;
        p.up = NULL;
        EXPECT_STATUS(l4c_silu_mul(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.up = FAKE;
        p.in_dtype = (l4c_dtype)-1;
        EXPECT_STATUS(l4c_silu_mul(&p, NULL), L4C_ERR_UNSUPPORTED_DTYPE);
    }
    {
        l4c_embedding_params p = {FAKE, FAKE, (const uint32_t *)FAKE, NULL, 4, 0, 64, L4C_DTYPE_F32, L4C_DTYPE_BF16};
        EXPECT_STATUS(l4c_embedding(NULL, NULL), L4C_ERR_INVALID_ARGUMENT);
        EXPECT_STATUS(l4c_embedding(&p, NULL), L4C_ERR_INVALID_ARGUMENT); /* empty vocabulary */
        p.vocab = 1000;
        p.dim = -64;
        EXPECT_STATUS(l4c_embedding(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.dim = 64;
        p.ids = NULL;
        EXPECT_STATUS(l4c_embedding(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.ids = (const uint32_t *)FAKE;
        p.vocab = (int64_t)1 << 60; /* vocab * dim overflows int64 */
        EXPECT_STATUS(l4c_embedding(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.vocab = 1000;
        p.table_dtype = L4C_DTYPE_F8E4M3;
        EXPECT_STATUS(l4c_embedding(&p, NULL), L4C_ERR_UNSUPPORTED_DTYPE);
    }

    {
        l4c_sample_params p;
        memset(&p, 0, sizeof p);
        p.logits = FAKE;
        p.ids = (uint32_t *)FAKE;
        p.step = (uint64_t *)FAKE;
        p.status = (uint32_t *)FAKE;
        p.rows = 4;
        p.vocab = 202048;
        p.logits_row_stride = 202048;
        p.temperature = 0.6f;
        p.top_p = 0.9f;
        p.logits_dtype = L4C_DTYPE_BF16;
        EXPECT_STATUS(l4c_sample(NULL, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.temperature = -1.0f;
        EXPECT_STATUS(l4c_sample(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.temperature = 0.6f;
        p.top_p = 0.0f;
        EXPECT_STATUS(l4c_sample(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.top_p = 1.5f;
        EXPECT_STATUS(l4c_sample(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.top_p = 0.9f;
        p.logits_row_stride = 202047; /* < vocab */
        EXPECT_STATUS(l4c_sample(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.logits_row_stride = 202048;
        p.vocab = 0;
        EXPECT_STATUS(l4c_sample(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.vocab = 202048;
        p.step = NULL;
        EXPECT_STATUS(l4c_sample(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.step = (uint64_t *)FAKE;
        p.history = (uint32_t *)FAKE; /* history_len 0 */
        EXPECT_STATUS(l4c_sample(&p, NULL), L4C_ERR_INVALID_ARGUMENT);
        p.history = NULL;
        p.logits_dtype = L4C_DTYPE_F8E4M3;
        EXPECT_STATUS(l4c_sample(&p, NULL), L4C_ERR_UNSUPPORTED_DTYPE);
        p.rows = 0; /* nothing to do, nothing launched */
        EXPECT_STATUS(l4c_sample(&p, NULL), L4C_OK);
    }

    /* Nothing above reached CUDA: there is no CUDA error to report. */
    EXPECT(l4c_last_cuda_error(&name, &message) == 0);
    EXPECT(name[0] == '\0' && message[0] == '\0');
    EXPECT(l4c_last_cuda_error(NULL, NULL) == 0);

    if (failures) {
        fprintf(stderr, "c_abi: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("c_abi: all %d checks passed\n", checks);
    return 0;
}
