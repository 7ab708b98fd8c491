// CUDA kernels of ddpm_pa_high_frequency and its backward: checks, parameter structs, launches.
#include <torch/library.h>

#include "kernels/high_frequency.cuh"
#include "op_utils.h"

namespace ddpm_pa {
namespace cuda {
namespace {

at::Tensor high_frequency_forward_cuda(const at::Tensor& x) {
  constexpr const char* op = "ddpm_pa_high_frequency";
  check_cuda_tensor(x, op, "x", 4);
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, op, ": x must be at least 2x2 in its last two dimensions, got shape ",
              x.sizes());
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = at::empty({x.size(0), x.size(1), x.size(2) / 2, x.size(3) / 2}, x.options());
  if (out.numel() == 0) return out;
  const HighFrequencyForwardParams params{x.data_ptr(), out.data_ptr(), strides4d(x), x.size(0), x.size(1),
                                          x.size(2), x.size(3)};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_float_types(x.scalar_type(), op, "x", [&](auto types) {
    using T = decltype(types);
    launch_high_frequency_forward<typename T::scalar_t, typename T::acc_t>(params, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor high_frequency_backward_cuda(const at::Tensor& grad_hf, int64_t height, int64_t width) {
  constexpr const char* op = "ddpm_pa_high_frequency_backward";
  check_cuda_tensor(grad_hf, op, "grad_hf", 4);
  TORCH_CHECK(grad_hf.size(2) == height / 2 && grad_hf.size(3) == width / 2, op, ": grad_hf must have spatial size (",
              height / 2, ", ", width / 2, ") for an input of size (", height, ", ", width, "), got shape ",
              grad_hf.sizes());
  const c10::cuda::CUDAGuard device_guard(grad_hf.device());
  at::Tensor grad_x = at::empty({grad_hf.size(0), grad_hf.size(1), height, width}, grad_hf.options());
  if (grad_x.numel() == 0) return grad_x;
  const HighFrequencyBackwardParams params{grad_hf.data_ptr(), grad_x.data_ptr(), strides4d(grad_hf),
                                           grad_hf.size(0), grad_hf.size(1), height, width};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_float_types(grad_hf.scalar_type(), op, "grad_hf", [&](auto types) {
    using T = decltype(types);
    launch_high_frequency_backward<typename T::scalar_t, typename T::acc_t>(params, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

}  // namespace
}  // namespace cuda
}  // namespace ddpm_pa

TORCH_LIBRARY_IMPL(ddpm_pa_fast, CUDA, m) {
  m.impl("ddpm_pa_high_frequency", &ddpm_pa::cuda::high_frequency_forward_cuda);
  m.impl("ddpm_pa_high_frequency_backward", &ddpm_pa::cuda::high_frequency_backward_cuda);
}
