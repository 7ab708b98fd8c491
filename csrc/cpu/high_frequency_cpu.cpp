// DDPM-PA's high-frequency map (LH + HL + HH) and its adjoint on CPU: one pass, one 2x2 block per
// output value, rows of blocks spread over threads (no reduction, so any split gives the same bits).
#include <torch/library.h>

#include "cpu_kernel_utils.h"

namespace ddpm_pa {
namespace cpu {
namespace {

// Rows [begin, end) of HF maps: row r is row r % h of plane r / h. Compiled per instruction set
// (DDPM_PA_DISPATCH_BY_ISA): the 2x2 gathers and scatters below vectorise into shuffles, which the
// baseline x86-64 build does in SSE2 at a quarter of AVX-512's width. The compiler picks the vector
// width (kBytes is unused).
template <int kBytes, typename scalar_t>
DDPM_PA_ALWAYS_INLINE void high_frequency_rows_impl(const scalar_t* in, scalar_t* hf, int64_t height, int64_t width,
                                                    int64_t begin, int64_t end) {
  using acc_t = acc_type<scalar_t>;
  const int64_t h = height / 2, w = width / 2;
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* DDPM_PA_RESTRICT top = in + (r / h) * height * width + 2 * (r % h) * width;
    const scalar_t* DDPM_PA_RESTRICT bottom = top + width;
    scalar_t* DDPM_PA_RESTRICT dst = hf + r * w;
    DDPM_PA_SIMD
    for (int64_t j = 0; j < w; ++j) {
      dst[j] = static_cast<scalar_t>(
          high_frequency<acc_t>(top[2 * j], top[2 * j + 1], bottom[2 * j], bottom[2 * j + 1]));
    }
  }
}

// Row pairs [begin, end) of the adjoint: pair r is rows 2 (r % row_pairs) and the next of plane
// r / row_pairs of the (height, width) gradient. Each row is written in column order, the top row
// before the bottom one: writing both rows of a pair side by side makes two interleaved streams,
// which the hardware prefetchers follow worse (the fused loss's reads lost half their bandwidth so).
template <int kBytes, typename scalar_t>
DDPM_PA_ALWAYS_INLINE void high_frequency_adjoint_rows_impl(const scalar_t* g, scalar_t* gx, int64_t height,
                                                            int64_t width, int64_t begin, int64_t end) {
  using acc_t = acc_type<scalar_t>;
  using vec = typename Vec<acc_t, kBytes>::type;
  constexpr int64_t kLanes = Vec<acc_t, kBytes>::lanes;
  const HighFrequencyLanes<vec> hf_lanes;
  const int64_t h = height / 2, w = width / 2, row_pairs = (height + 1) / 2;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t plane = r / row_pairs, i = r % row_pairs;
    scalar_t* top = gx + plane * height * width + 2 * i * width;
    if (i == h) {  // the odd last row is dropped by the forward: no gradient
      std::fill(top, top + width, scalar_t(0));
      continue;
    }
    const scalar_t* src = g + (plane * h + i) * w;
    for (int row = 0; row < 2; ++row) {
      scalar_t* dst = top + row * width;
      int64_t c = 0;
      for (; c + 2 * kLanes <= 2 * w; c += 2 * kLanes) {
        const vec block_grad = load_as_vec<kBytes, acc_t>(src + c / 2);
        store_vec_as(dst + c, hf_lanes.spread(block_grad, row, 0));
        store_vec_as(dst + c + kLanes, hf_lanes.spread(block_grad, row, 1));
      }
      for (; c < 2 * w; ++c) dst[c] = static_cast<scalar_t>(hf_lanes.weight(row, c) * static_cast<acc_t>(src[c / 2]));
      if (width % 2) dst[width - 1] = scalar_t(0);
    }
  }
}

#define DDPM_PA_HIGH_FREQUENCY_ROWS(scalar_t)                                                                 \
  DDPM_PA_DISPATCH_BY_ISA(void, high_frequency_rows,                                                          \
                          (const scalar_t* in, scalar_t* hf, int64_t height, int64_t width, int64_t begin,    \
                           int64_t end),                                                                      \
                          (in, hf, height, width, begin, end), high_frequency_rows_impl)                      \
  DDPM_PA_DISPATCH_BY_ISA(void, high_frequency_adjoint_rows,                                                  \
                          (const scalar_t* g, scalar_t* gx, int64_t height, int64_t width, int64_t begin,     \
                           int64_t end),                                                                      \
                          (g, gx, height, width, begin, end), high_frequency_adjoint_rows_impl)
DDPM_PA_HIGH_FREQUENCY_ROWS(float)
DDPM_PA_HIGH_FREQUENCY_ROWS(double)
DDPM_PA_HIGH_FREQUENCY_ROWS(c10::Half)
DDPM_PA_HIGH_FREQUENCY_ROWS(c10::BFloat16)
#undef DDPM_PA_HIGH_FREQUENCY_ROWS

at::Tensor high_frequency_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "x must be a 4-D (N, C, H, W) tensor, got shape ", x.sizes());
  check_floating(x, "x");
  const at::Tensor input = x.contiguous();
  const int64_t planes = x.size(0) * x.size(1), height = x.size(2), width = x.size(3);
  const int64_t h = height / 2, w = width / 2;
  at::Tensor out = at::empty({x.size(0), x.size(1), h, w}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ddpm_pa_high_frequency_cpu", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* hf = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes * h, rows_per_task(2 * width), [&](int64_t begin, int64_t end) {
      high_frequency_rows(in, hf, height, width, begin, end);
    });
  });
  return out;
}

at::Tensor high_frequency_backward_cpu(const at::Tensor& grad_hf, int64_t height, int64_t width) {
  TORCH_CHECK(grad_hf.dim() == 4, "grad_hf must be a 4-D (N, C, H // 2, W // 2) tensor, got shape ",
              grad_hf.sizes());
  check_floating(grad_hf, "grad_hf");
  TORCH_CHECK(height >= 0 && width >= 0 && grad_hf.size(2) == height / 2 && grad_hf.size(3) == width / 2,
              "grad_hf must have spatial size (height // 2, width // 2) = (", height / 2, ", ", width / 2,
              ") for height=", height, ", width=", width, "; got ", grad_hf.sizes());
  const at::Tensor grad = grad_hf.contiguous();
  const int64_t planes = grad.size(0) * grad.size(1), row_pairs = (height + 1) / 2;
  at::Tensor out = at::empty({grad.size(0), grad.size(1), height, width}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "ddpm_pa_high_frequency_backward_cpu", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* gx = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes * row_pairs, rows_per_task(2 * width), [&](int64_t begin, int64_t end) {
      high_frequency_adjoint_rows(g, gx, height, width, begin, end);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_pa_fast, CPU, m) {
  m.impl("ddpm_pa_high_frequency", &high_frequency_cpu);
  m.impl("ddpm_pa_high_frequency_backward", &high_frequency_backward_cpu);
}

}  // namespace cpu
}  // namespace ddpm_pa
