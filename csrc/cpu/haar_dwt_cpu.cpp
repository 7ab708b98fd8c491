// One level of the orthonormal 2D Haar DWT (pytorch_wavelets' layout) and its inverse on CPU. The
// Python layer loops over levels. An odd height or width is extended by one row/column exactly as
// reference._pad_to_even does: zeros for mode "zero", a copy of the last row/column otherwise; the
// backward folds the gradient of such a copy back onto the sample it copied.
#include <torch/library.h>

#include "cpu_kernel_utils.h"

namespace ddpm_pa {
namespace cpu {
namespace {

// Synthesis of `count` 2x2 blocks from one row of each band into a top and a bottom output row: the
// inverse DWT, and the DWT's backward wherever no padded row or column needs folding. The top row is
// written whole before the bottom one (the bands' rows come back from L1): writing both rows side by
// side makes two interleaved output streams, which the hardware prefetchers follow worse (see the HF
// adjoint). Lanes in the same order of operations as haar_synthesis, so the same bits.
template <int kBytes, typename scalar_t>
DDPM_PA_ALWAYS_INLINE void synthesise_rows_impl(const scalar_t* ll, const scalar_t* b1, const scalar_t* b2,
                                                const scalar_t* b3, int64_t count, scalar_t* top, scalar_t* bottom) {
  using acc_t = acc_type<scalar_t>;
  using vec = typename Vec<acc_t, kBytes>::type;
  constexpr int64_t kLanes = Vec<acc_t, kBytes>::lanes;
  const vec half = vec{} + acc_t(0.5);
  for (int row = 0; row < 2; ++row) {
    scalar_t* out = row == 0 ? top : bottom;
    int64_t j = 0;
    for (; j + kLanes <= count; j += kLanes) {
      const vec l = load_as_vec<kBytes, acc_t>(ll + j), v1 = load_as_vec<kBytes, acc_t>(b1 + j);
      const vec v2 = load_as_vec<kBytes, acc_t>(b2 + j), v3 = load_as_vec<kBytes, acc_t>(b3 + j);
      // haar_synthesis: a, b on the top row, c, d on the bottom one.
      const vec left = row == 0 ? (l + v1 + v2 + v3) * half : (l - v1 + v2 - v3) * half;
      const vec right = row == 0 ? (l + v1 - v2 - v3) * half : (l - v1 - v2 + v3) * half;
      store_vec_as(out + 2 * j, interleave(left, right, 0));
      store_vec_as(out + 2 * j + kLanes, interleave(left, right, 1));
    }
    for (; j < count; ++j) {
      acc_t a, b, c, d;
      haar_synthesis<acc_t>(ll[j], b1[j], b2[j], b3[j], a, b, c, d);
      out[2 * j] = static_cast<scalar_t>(row == 0 ? a : c);
      out[2 * j + 1] = static_cast<scalar_t>(row == 0 ? b : d);
    }
  }
}

#define DDPM_PA_SYNTHESISE_ROWS(scalar_t)                                                                  \
  DDPM_PA_DISPATCH_BY_ISA(void, synthesise_rows,                                                           \
                          (const scalar_t* ll, const scalar_t* b1, const scalar_t* b2, const scalar_t* b3, \
                           int64_t count, scalar_t* top, scalar_t* bottom),                                \
                          (ll, b1, b2, b3, count, top, bottom), synthesise_rows_impl)
DDPM_PA_SYNTHESISE_ROWS(float)
DDPM_PA_SYNTHESISE_ROWS(double)
DDPM_PA_SYNTHESISE_ROWS(c10::Half)
DDPM_PA_SYNTHESISE_ROWS(c10::BFloat16)
#undef DDPM_PA_SYNTHESISE_ROWS

// Analysis of `count` 2x2 blocks of a top and a bottom input row into one row of each band. The top
// row is read whole first, into its blocks' sums and differences (a + b, a - b) in `partial` (2 count
// values), then the bottom row: reading both rows side by side halved the fused loss's read bandwidth
// (two interleaved streams). Lanes in the same order of operations as haar_analysis (a + b first),
// so the same bits.
template <int kBytes, typename scalar_t>
DDPM_PA_ALWAYS_INLINE void analyse_rows_impl(const scalar_t* top, const scalar_t* bottom, int64_t count,
                                             acc_type<scalar_t>* partial, scalar_t* ll, scalar_t* b1,
                                             scalar_t* b2, scalar_t* b3) {
  using acc_t = acc_type<scalar_t>;
  using vec = typename Vec<acc_t, kBytes>::type;
  constexpr int64_t kLanes = Vec<acc_t, kBytes>::lanes;
  const vec half = vec{} + acc_t(0.5);
  acc_t* sum = partial;
  acc_t* diff = partial + count;
  int64_t j = 0;
  for (; j + kLanes <= count; j += kLanes) {
    const vec v0 = load_as_vec<kBytes, acc_t>(top + 2 * j), v1 = load_as_vec<kBytes, acc_t>(top + 2 * j + kLanes);
    const vec a = even_lanes(v0, v1), b = odd_lanes(v0, v1);
    store_vec(sum + j, a + b);
    store_vec(diff + j, a - b);
  }
  for (; j < count; ++j) {
    sum[j] = static_cast<acc_t>(top[2 * j]) + static_cast<acc_t>(top[2 * j + 1]);
    diff[j] = static_cast<acc_t>(top[2 * j]) - static_cast<acc_t>(top[2 * j + 1]);
  }
  j = 0;
  for (; j + kLanes <= count; j += kLanes) {
    const vec v0 = load_as_vec<kBytes, acc_t>(bottom + 2 * j);
    const vec v1 = load_as_vec<kBytes, acc_t>(bottom + 2 * j + kLanes);
    const vec c = even_lanes(v0, v1), d = odd_lanes(v0, v1);
    const vec s = load_vec<kBytes>(sum + j), t = load_vec<kBytes>(diff + j);
    store_vec_as(ll + j, (s + c + d) * half);
    store_vec_as(b1 + j, (s - c - d) * half);
    store_vec_as(b2 + j, (t + c - d) * half);
    store_vec_as(b3 + j, (t - c + d) * half);
  }
  for (; j < count; ++j) {
    const acc_t c = bottom[2 * j], d = bottom[2 * j + 1];
    ll[j] = static_cast<scalar_t>((sum[j] + c + d) * acc_t(0.5));
    b1[j] = static_cast<scalar_t>((sum[j] - c - d) * acc_t(0.5));
    b2[j] = static_cast<scalar_t>((diff[j] + c - d) * acc_t(0.5));
    b3[j] = static_cast<scalar_t>((diff[j] - c + d) * acc_t(0.5));
  }
}

#define DDPM_PA_ANALYSE_ROWS(scalar_t)                                                                         \
  DDPM_PA_DISPATCH_BY_ISA(void, analyse_rows,                                                                  \
                          (const scalar_t* top, const scalar_t* bottom, int64_t count,                         \
                           acc_type<scalar_t>* partial, scalar_t* ll, scalar_t* b1, scalar_t* b2, scalar_t* b3), \
                          (top, bottom, count, partial, ll, b1, b2, b3), analyse_rows_impl)
DDPM_PA_ANALYSE_ROWS(float)
DDPM_PA_ANALYSE_ROWS(double)
DDPM_PA_ANALYSE_ROWS(c10::Half)
DDPM_PA_ANALYSE_ROWS(c10::BFloat16)
#undef DDPM_PA_ANALYSE_ROWS

std::tuple<at::Tensor, at::Tensor> haar_dwt2d_cpu(const at::Tensor& x, c10::string_view mode) {
  TORCH_CHECK(x.dim() == 4, "x must be a 4-D (N, C, H, W) tensor, got shape ", x.sizes());
  check_floating(x, "x");
  const bool zero_pad = dwt_pads_with_zeros(std::string(mode));
  const at::Tensor input = x.contiguous();
  const int64_t planes = x.size(0) * x.size(1), height = x.size(2), width = x.size(3);
  const int64_t h = (height + 1) / 2, w = (width + 1) / 2, full_w = width / 2;
  at::Tensor yl = at::empty({x.size(0), x.size(1), h, w}, x.options());
  at::Tensor yh = at::empty({x.size(0), x.size(1), 3, h, w}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "haar_dwt2d_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* ll_out = yl.mutable_data_ptr<scalar_t>();
    scalar_t* bands_out = yh.mutable_data_ptr<scalar_t>();
    const std::vector<scalar_t> zero_row(width, scalar_t(0));
    at::parallel_for(0, planes * h, rows_per_task(2 * width), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> partial(2 * full_w);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t plane = r / h, i = r % h;
        const scalar_t* top = in + plane * height * width + 2 * i * width;
        const scalar_t* bottom = 2 * i + 1 < height ? top + width : (zero_pad ? zero_row.data() : top);
        scalar_t* ll = ll_out + r * w;
        scalar_t* b1 = bands_out + (plane * 3 * h + i) * w;
        scalar_t* b2 = b1 + h * w;
        scalar_t* b3 = b2 + h * w;
        analyse_rows(top, bottom, full_w, partial.data(), ll, b1, b2, b3);
        if (width % 2) {
          const acc_t a = top[width - 1], c = bottom[width - 1];
          acc_t v0, v1, v2, v3;
          haar_analysis<acc_t>(a, zero_pad ? acc_t(0) : a, c, zero_pad ? acc_t(0) : c, v0, v1, v2, v3);
          ll[full_w] = static_cast<scalar_t>(v0);
          b1[full_w] = static_cast<scalar_t>(v1);
          b2[full_w] = static_cast<scalar_t>(v2);
          b3[full_w] = static_cast<scalar_t>(v3);
        }
      }
    });
  });
  return {yl, yh};
}

at::Tensor haar_dwt2d_backward_cpu(const at::Tensor& grad_yl, const at::Tensor& grad_yh, int64_t height,
                                   int64_t width, c10::string_view mode) {
  TORCH_CHECK(grad_yl.dim() == 4, "grad_yl must be a 4-D (N, C, h, w) tensor, got shape ", grad_yl.sizes());
  check_floating(grad_yl, "grad_yl");
  const bool zero_pad = dwt_pads_with_zeros(std::string(mode));
  const int64_t h = (height + 1) / 2, w = (width + 1) / 2, full_w = width / 2;
  TORCH_CHECK(height >= 1 && width >= 1 && grad_yl.size(2) == h && grad_yl.size(3) == w,
              "grad_yl must have spatial size (ceil(height / 2), ceil(width / 2)) = (", h, ", ", w,
              ") for height=", height, ", width=", width, "; got ", grad_yl.sizes());
  TORCH_CHECK(grad_yh.dim() == 5 && grad_yh.size(0) == grad_yl.size(0) && grad_yh.size(1) == grad_yl.size(1) &&
                  grad_yh.size(2) == 3 && grad_yh.size(3) == h && grad_yh.size(4) == w,
              "grad_yh must have shape (N, C, 3, h, w) = (", grad_yl.size(0), ", ", grad_yl.size(1), ", 3, ", h,
              ", ", w, "); got ", grad_yh.sizes());
  TORCH_CHECK(grad_yh.scalar_type() == grad_yl.scalar_type(), "grad_yh must have the dtype of grad_yl (",
              grad_yl.scalar_type(), "), got ", grad_yh.scalar_type());
  const at::Tensor gl = grad_yl.contiguous(), gh = grad_yh.contiguous();
  const int64_t planes = gl.size(0) * gl.size(1);
  at::Tensor out = at::empty({gl.size(0), gl.size(1), height, width}, gl.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gl.scalar_type(), "haar_dwt2d_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* ll_in = gl.const_data_ptr<scalar_t>();
    const scalar_t* bands_in = gh.const_data_ptr<scalar_t>();
    scalar_t* gx = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes * h, rows_per_task(2 * width), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t plane = r / h, i = r % h;
        const bool has_bottom = 2 * i + 1 < height;
        // A padded bottom row is a copy of the top row (or zeros): its gradient folds onto the top row.
        const acc_t fold_rows = zero_pad ? acc_t(0) : acc_t(1);
        scalar_t* DDPM_PA_RESTRICT top = gx + plane * height * width + 2 * i * width;
        scalar_t* DDPM_PA_RESTRICT bottom = has_bottom ? top + width : nullptr;
        const scalar_t* DDPM_PA_RESTRICT ll = ll_in + r * w;
        const scalar_t* DDPM_PA_RESTRICT b1 = bands_in + (plane * 3 * h + i) * w;
        const scalar_t* DDPM_PA_RESTRICT b2 = b1 + h * w;
        const scalar_t* DDPM_PA_RESTRICT b3 = b2 + h * w;
        if (has_bottom) {
          synthesise_rows(ll, b1, b2, b3, full_w, top, bottom);
        } else {
          DDPM_PA_SIMD
          for (int64_t j = 0; j < full_w; ++j) {
            acc_t ga, gb, gc, gd;
            haar_synthesis<acc_t>(ll[j], b1[j], b2[j], b3[j], ga, gb, gc, gd);
            top[2 * j] = static_cast<scalar_t>(ga + fold_rows * gc);
            top[2 * j + 1] = static_cast<scalar_t>(gb + fold_rows * gd);
          }
        }
        if (width % 2) {
          acc_t ga, gb, gc, gd;
          haar_synthesis<acc_t>(ll[full_w], b1[full_w], b2[full_w], b3[full_w], ga, gb, gc, gd);
          // The padded right column copies the last column (or is zero): fold it the same way.
          const acc_t left_top = ga + fold_rows * gb, left_bottom = gc + fold_rows * gd;
          if (has_bottom) {
            top[width - 1] = static_cast<scalar_t>(left_top);
            bottom[width - 1] = static_cast<scalar_t>(left_bottom);
          } else {
            top[width - 1] = static_cast<scalar_t>(left_top + fold_rows * left_bottom);
          }
        }
      }
    });
  });
  return out;
}

at::Tensor haar_idwt2d_cpu(const at::Tensor& yl, const at::Tensor& yh) {
  TORCH_CHECK(yl.dim() == 4, "yl must be a 4-D (N, C, h, w) tensor, got shape ", yl.sizes());
  check_floating(yl, "yl");
  TORCH_CHECK(yh.dim() == 5 && yh.size(0) == yl.size(0) && yh.size(1) == yl.size(1) && yh.size(2) == 3 &&
                  yh.size(3) == yl.size(2) && yh.size(4) == yl.size(3),
              "yh must have shape (N, C, 3, h, w) = (", yl.size(0), ", ", yl.size(1), ", 3, ", yl.size(2), ", ",
              yl.size(3), ") to match yl; got ", yh.sizes());
  TORCH_CHECK(yh.scalar_type() == yl.scalar_type(), "yh must have the dtype of yl (", yl.scalar_type(), "), got ",
              yh.scalar_type());
  const at::Tensor ll_in = yl.contiguous(), bands_in = yh.contiguous();
  const int64_t planes = yl.size(0) * yl.size(1), h = yl.size(2), w = yl.size(3);
  at::Tensor out = at::empty({yl.size(0), yl.size(1), 2 * h, 2 * w}, yl.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, yl.scalar_type(), "haar_idwt2d_cpu", [&] {
    const scalar_t* ll_all = ll_in.const_data_ptr<scalar_t>();
    const scalar_t* bands_all = bands_in.const_data_ptr<scalar_t>();
    scalar_t* x = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes * h, rows_per_task(4 * w), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t plane = r / h, i = r % h;
        scalar_t* DDPM_PA_RESTRICT top = x + (plane * 2 * h + 2 * i) * 2 * w;
        scalar_t* DDPM_PA_RESTRICT bottom = top + 2 * w;
        const scalar_t* DDPM_PA_RESTRICT ll = ll_all + r * w;
        const scalar_t* DDPM_PA_RESTRICT b1 = bands_all + (plane * 3 * h + i) * w;
        const scalar_t* DDPM_PA_RESTRICT b2 = b1 + h * w;
        const scalar_t* DDPM_PA_RESTRICT b3 = b2 + h * w;
        synthesise_rows(ll, b1, b2, b3, w, top, bottom);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_pa_fast, CPU, m) {
  m.impl("haar_dwt2d", &haar_dwt2d_cpu);
  m.impl("haar_dwt2d_backward", &haar_dwt2d_backward_cpu);
  m.impl("haar_idwt2d", &haar_idwt2d_cpu);
}

}  // namespace cpu
}  // namespace ddpm_pa
