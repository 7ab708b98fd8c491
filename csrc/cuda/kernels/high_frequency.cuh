// DDPM-PA's high-frequency map HF and its adjoint, one thread per output element. Torch-free.
#pragma once

#include "ddpm_pa_math.h"
#include "common.cuh"

namespace ddpm_pa {
namespace cuda {

struct HighFrequencyForwardParams {
  const void* x;      // (n, c, height, width), strides x_strides
  void* out;          // (n, c, height / 2, width / 2), contiguous
  Strides4d x_strides;
  int64_t n, c, height, width;
};

template <typename scalar_t, typename acc_t>
__global__ void high_frequency_forward_kernel(HighFrequencyForwardParams p) {
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  scalar_t* out = static_cast<scalar_t*>(p.out);
  const int64_t out_h = p.height / 2, out_w = p.width / 2;
  const int64_t numel = p.n * p.c * out_h * out_w;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < numel;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const auto [n, ch, i, j] = unflatten_nchw(idx, p.c, out_h, out_w);
    const acc_t a = to_acc(x[offset4d(p.x_strides, n, ch, 2 * i, 2 * j)]);
    const acc_t b = to_acc(x[offset4d(p.x_strides, n, ch, 2 * i, 2 * j + 1)]);
    const acc_t c = to_acc(x[offset4d(p.x_strides, n, ch, 2 * i + 1, 2 * j)]);
    const acc_t d = to_acc(x[offset4d(p.x_strides, n, ch, 2 * i + 1, 2 * j + 1)]);
    store(out + idx, high_frequency<acc_t>(a, b, c, d));
  }
}

template <typename scalar_t, typename acc_t>
void launch_high_frequency_forward(const HighFrequencyForwardParams& p, cudaStream_t stream) {
  const int64_t numel = p.n * p.c * (p.height / 2) * (p.width / 2);
  high_frequency_forward_kernel<scalar_t, acc_t><<<elementwise_blocks(numel), kThreadsPerBlock, 0, stream>>>(p);
}

struct HighFrequencyBackwardParams {
  const void* grad_hf;  // (n, c, height / 2, width / 2), strides grad_strides
  void* grad_x;         // (n, c, height, width), contiguous
  Strides4d grad_strides;
  int64_t n, c, height, width;
};

// One thread per input pixel, so each gradient is written once: the pixel takes its share of its
// block's gradient, or zero in a dropped odd last row or column.
template <typename scalar_t, typename acc_t>
__global__ void high_frequency_backward_kernel(HighFrequencyBackwardParams p) {
  const scalar_t* grad_hf = static_cast<const scalar_t*>(p.grad_hf);
  scalar_t* grad_x = static_cast<scalar_t*>(p.grad_x);
  const int64_t out_h = p.height / 2, out_w = p.width / 2;
  const int64_t numel = p.n * p.c * p.height * p.width;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < numel;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const auto [n, ch, row, col] = unflatten_nchw(idx, p.c, p.height, p.width);
    const int64_t i = row / 2, j = col / 2;
    acc_t value = acc_t(0);
    if (i < out_h && j < out_w) {
      acc_t ga, gb, gc, gd;
      high_frequency_adjoint<acc_t>(to_acc(grad_hf[offset4d(p.grad_strides, n, ch, i, j)]), ga, gb, gc, gd);
      value = at_parity(ga, gb, gc, gd, row % 2, col % 2);
    }
    store(grad_x + idx, value);
  }
}

template <typename scalar_t, typename acc_t>
void launch_high_frequency_backward(const HighFrequencyBackwardParams& p, cudaStream_t stream) {
  const int64_t numel = p.n * p.c * p.height * p.width;
  high_frequency_backward_kernel<scalar_t, acc_t><<<elementwise_blocks(numel), kThreadsPerBlock, 0, stream>>>(p);
}

}  // namespace cuda
}  // namespace ddpm_pa
