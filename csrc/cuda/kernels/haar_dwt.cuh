// One level of the orthonormal 2-D Haar DWT (pytorch_wavelets' layout), its adjoint, and its
// inverse. Torch-free. An odd height or width is extended by one row/column: zeros for mode "zero",
// a copy of the last row/column for "symmetric" and "periodization" (for a length-2 filter the two
// agree), exactly as ddpm_pa_fast/reference.py's _pad_to_even.
#pragma once

#include "ddpm_pa_math.h"
#include "common.cuh"

namespace ddpm_pa {
namespace cuda {

// Strides of the (N, C, 3, h, w) detail bands.
struct BandStrides {
  int64_t n, c, band, h, w;
};

__device__ __forceinline__ int64_t band_offset(const BandStrides& s, int64_t n, int64_t c, int64_t band, int64_t h,
                                               int64_t w) {
  return n * s.n + c * s.c + band * s.band + h * s.h + w * s.w;
}

struct HaarDwtForwardParams {
  const void* x;  // (n, c, height, width), strides x_strides
  void* yl;       // (n, c, ceil(height / 2), ceil(width / 2)), contiguous
  void* yh;       // (n, c, 3, ceil(height / 2), ceil(width / 2)), contiguous
  Strides4d x_strides;
  int64_t n, c, height, width;
  bool replicate_edge;  // false: "zero"; true: "symmetric" / "periodization"
};

// A pixel of the input extended to even size.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t padded_pixel(const HaarDwtForwardParams& p, const scalar_t* x, int64_t n, int64_t ch,
                                              int64_t row, int64_t col) {
  if (row >= p.height || col >= p.width) {
    if (!p.replicate_edge) return acc_t(0);
    row = row < p.height ? row : p.height - 1;
    col = col < p.width ? col : p.width - 1;
  }
  return to_acc(x[offset4d(p.x_strides, n, ch, row, col)]);
}

// One thread per 2x2 block: reads its four pixels, writes its four coefficients.
template <typename scalar_t, typename acc_t>
__global__ void haar_dwt_forward_kernel(HaarDwtForwardParams p) {
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  scalar_t* yl = static_cast<scalar_t*>(p.yl);
  scalar_t* yh = static_cast<scalar_t*>(p.yh);
  const int64_t out_h = (p.height + 1) / 2, out_w = (p.width + 1) / 2;
  const int64_t plane = out_h * out_w;
  const int64_t numel = p.n * p.c * plane;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < numel;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = idx % out_w;
    const int64_t i = (idx / out_w) % out_h;
    const int64_t nc = idx / plane;  // n * c + ch
    const int64_t ch = nc % p.c;
    const int64_t n = nc / p.c;
    const acc_t a = padded_pixel<scalar_t, acc_t>(p, x, n, ch, 2 * i, 2 * j);
    const acc_t b = padded_pixel<scalar_t, acc_t>(p, x, n, ch, 2 * i, 2 * j + 1);
    const acc_t c = padded_pixel<scalar_t, acc_t>(p, x, n, ch, 2 * i + 1, 2 * j);
    const acc_t d = padded_pixel<scalar_t, acc_t>(p, x, n, ch, 2 * i + 1, 2 * j + 1);
    acc_t ll, band1, band2, band3;
    haar_analysis<acc_t>(a, b, c, d, ll, band1, band2, band3);
    store(yl + idx, ll);
    scalar_t* bands = yh + nc * 3 * plane + i * out_w + j;
    store(bands, band1);
    store(bands + plane, band2);
    store(bands + 2 * plane, band3);
  }
}

template <typename scalar_t, typename acc_t>
void launch_haar_dwt_forward(const HaarDwtForwardParams& p, cudaStream_t stream) {
  const int64_t numel = p.n * p.c * ((p.height + 1) / 2) * ((p.width + 1) / 2);
  haar_dwt_forward_kernel<scalar_t, acc_t><<<elementwise_blocks(numel), kThreadsPerBlock, 0, stream>>>(p);
}

struct HaarDwtBackwardParams {
  const void* grad_yl;  // (n, c, ceil(height / 2), ceil(width / 2)), strides grad_yl_strides
  const void* grad_yh;  // (n, c, 3, ceil(height / 2), ceil(width / 2)), strides grad_yh_strides
  void* grad_x;         // (n, c, height, width), contiguous
  Strides4d grad_yl_strides;
  BandStrides grad_yh_strides;
  int64_t n, c, height, width;
  bool replicate_edge;
};

// One thread per input pixel. The pixel's gradient is the synthesis of its block's coefficient
// gradients at its own position; with a replicated edge, the last (odd) row/column also collects the
// gradient of the copy the extension made of it, which sits in the same block one step further.
template <typename scalar_t, typename acc_t>
__global__ void haar_dwt_backward_kernel(HaarDwtBackwardParams p) {
  const scalar_t* grad_yl = static_cast<const scalar_t*>(p.grad_yl);
  const scalar_t* grad_yh = static_cast<const scalar_t*>(p.grad_yh);
  scalar_t* grad_x = static_cast<scalar_t*>(p.grad_x);
  const int64_t numel = p.n * p.c * p.height * p.width;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < numel;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const auto [n, ch, row, col] = unflatten_nchw(idx, p.c, p.height, p.width);
    const int64_t i = row / 2, j = col / 2;
    const acc_t g_ll = to_acc(grad_yl[offset4d(p.grad_yl_strides, n, ch, i, j)]);
    const acc_t g_1 = to_acc(grad_yh[band_offset(p.grad_yh_strides, n, ch, 0, i, j)]);
    const acc_t g_2 = to_acc(grad_yh[band_offset(p.grad_yh_strides, n, ch, 1, i, j)]);
    const acc_t g_3 = to_acc(grad_yh[band_offset(p.grad_yh_strides, n, ch, 2, i, j)]);
    acc_t ga, gb, gc, gd;
    haar_synthesis<acc_t>(g_ll, g_1, g_2, g_3, ga, gb, gc, gd);
    const int64_t r = row % 2, s = col % 2;
    acc_t value = at_parity(ga, gb, gc, gd, r, s);
    if (p.replicate_edge) {
      const bool copied_row = (p.height % 2 == 1) && row == p.height - 1;  // r == 0 here
      const bool copied_col = (p.width % 2 == 1) && col == p.width - 1;    // s == 0 here
      if (copied_row) value += at_parity(ga, gb, gc, gd, 1, s);
      if (copied_col) value += at_parity(ga, gb, gc, gd, r, 1);
      if (copied_row && copied_col) value += gd;
    }
    store(grad_x + idx, value);
  }
}

template <typename scalar_t, typename acc_t>
void launch_haar_dwt_backward(const HaarDwtBackwardParams& p, cudaStream_t stream) {
  const int64_t numel = p.n * p.c * p.height * p.width;
  haar_dwt_backward_kernel<scalar_t, acc_t><<<elementwise_blocks(numel), kThreadsPerBlock, 0, stream>>>(p);
}

struct HaarIdwtParams {
  const void* yl;  // (n, c, h, w), strides yl_strides
  const void* yh;  // (n, c, 3, h, w), strides yh_strides
  void* out;       // (n, c, 2 h, 2 w), contiguous
  Strides4d yl_strides;
  BandStrides yh_strides;
  int64_t n, c, h, w;
};

// One thread per output pixel: the synthesis of its block, at its position in the block.
template <typename scalar_t, typename acc_t>
__global__ void haar_idwt_kernel(HaarIdwtParams p) {
  const scalar_t* yl = static_cast<const scalar_t*>(p.yl);
  const scalar_t* yh = static_cast<const scalar_t*>(p.yh);
  scalar_t* out = static_cast<scalar_t*>(p.out);
  const int64_t out_h = 2 * p.h, out_w = 2 * p.w;
  const int64_t numel = p.n * p.c * out_h * out_w;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < numel;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const auto [n, ch, row, col] = unflatten_nchw(idx, p.c, out_h, out_w);
    const int64_t i = row / 2, j = col / 2;
    const acc_t ll = to_acc(yl[offset4d(p.yl_strides, n, ch, i, j)]);
    const acc_t band1 = to_acc(yh[band_offset(p.yh_strides, n, ch, 0, i, j)]);
    const acc_t band2 = to_acc(yh[band_offset(p.yh_strides, n, ch, 1, i, j)]);
    const acc_t band3 = to_acc(yh[band_offset(p.yh_strides, n, ch, 2, i, j)]);
    acc_t a, b, c, d;
    haar_synthesis<acc_t>(ll, band1, band2, band3, a, b, c, d);
    store(out + idx, at_parity(a, b, c, d, row % 2, col % 2));
  }
}

template <typename scalar_t, typename acc_t>
void launch_haar_idwt(const HaarIdwtParams& p, cudaStream_t stream) {
  const int64_t numel = p.n * p.c * 4 * p.h * p.w;
  haar_idwt_kernel<scalar_t, acc_t><<<elementwise_blocks(numel), kThreadsPerBlock, 0, stream>>>(p);
}

}  // namespace cuda
}  // namespace ddpm_pa
