// The compute-bound loops of the Gram and matrix-apply passes, one copy per instruction set
// (DDPM_PA_DISPATCH_BY_ISA): one definition of the maths in cpu_kernel_utils.h, several machine codes.
#include "cpu_kernel_utils.h"

namespace ddpm_pa {
namespace cpu {

DDPM_PA_DISPATCH_BY_ISA(void, add_block_gram, (const float* rows, int64_t n, int64_t stride, int64_t len, double* gram),
                        (rows, n, stride, len, gram), add_block_gram_impl)
DDPM_PA_DISPATCH_BY_ISA(void, add_block_gram, (const double* rows, int64_t n, int64_t stride, int64_t len, double* gram),
                        (rows, n, stride, len, gram), add_block_gram_impl)
DDPM_PA_DISPATCH_BY_ISA(void, apply_matrix_block,
                        (const float* m, int64_t n, const float* rows, int64_t stride, int64_t len, float* out,
                         int64_t out_stride),
                        (m, n, rows, stride, len, out, out_stride), apply_matrix_block_impl)
DDPM_PA_DISPATCH_BY_ISA(void, apply_matrix_block,
                        (const double* m, int64_t n, const double* rows, int64_t stride, int64_t len, double* out,
                         int64_t out_stride),
                        (m, n, rows, stride, len, out, out_stride), apply_matrix_block_impl)

}  // namespace cpu
}  // namespace ddpm_pa
