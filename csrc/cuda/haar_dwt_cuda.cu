// CUDA kernels of haar_dwt2d, its backward, and haar_idwt2d: checks, parameter structs, launches.
#include <torch/library.h>

#include <string>
#include <tuple>

#include "kernels/haar_dwt.cuh"
#include "op_utils.h"

namespace ddpm_pa {
namespace cuda {
namespace {

BandStrides band_strides(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3), t.stride(4)};
}

std::tuple<at::Tensor, at::Tensor> haar_dwt_forward_cuda(const at::Tensor& x, c10::string_view mode) {
  constexpr const char* op = "haar_dwt2d";
  check_cuda_tensor(x, op, "x", 4);
  const bool replicate_edge = parse_replicate_edge(std::string(mode), op);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t out_h = (x.size(2) + 1) / 2, out_w = (x.size(3) + 1) / 2;
  at::Tensor yl = at::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
  at::Tensor yh = at::empty({x.size(0), x.size(1), 3, out_h, out_w}, x.options());
  if (yl.numel() == 0) return {yl, yh};
  const HaarDwtForwardParams params{x.data_ptr(), yl.data_ptr(), yh.data_ptr(), strides4d(x),
                                    x.size(0),    x.size(1),     x.size(2),     x.size(3),
                                    replicate_edge};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_float_types(x.scalar_type(), op, "x", [&](auto types) {
    using T = decltype(types);
    launch_haar_dwt_forward<typename T::scalar_t, typename T::acc_t>(params, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {yl, yh};
}

at::Tensor haar_dwt_backward_cuda(const at::Tensor& grad_yl, const at::Tensor& grad_yh, int64_t height, int64_t width,
                                  c10::string_view mode) {
  constexpr const char* op = "haar_dwt2d_backward";
  check_cuda_tensor(grad_yl, op, "grad_yl", 4);
  check_cuda_tensor(grad_yh, op, "grad_yh", 5);
  check_same_device_dtype(grad_yl, "grad_yl", grad_yh, op, "grad_yh");
  const bool replicate_edge = parse_replicate_edge(std::string(mode), op);
  const int64_t n = grad_yl.size(0), c = grad_yl.size(1);
  const int64_t out_h = (height + 1) / 2, out_w = (width + 1) / 2;
  TORCH_CHECK(grad_yl.size(2) == out_h && grad_yl.size(3) == out_w, op, ": grad_yl must have spatial size (", out_h,
              ", ", out_w, ") for an input of size (", height, ", ", width, "), got shape ", grad_yl.sizes());
  TORCH_CHECK(grad_yh.sizes() == at::IntArrayRef({n, c, 3, out_h, out_w}), op, ": grad_yh must have shape (", n, ", ",
              c, ", 3, ", out_h, ", ", out_w, "), got ", grad_yh.sizes());
  const c10::cuda::CUDAGuard device_guard(grad_yl.device());
  at::Tensor grad_x = at::empty({n, c, height, width}, grad_yl.options());
  if (grad_x.numel() == 0) return grad_x;
  const HaarDwtBackwardParams params{grad_yl.data_ptr(), grad_yh.data_ptr(), grad_x.data_ptr(),
                                     strides4d(grad_yl), band_strides(grad_yh), n, c, height, width,
                                     replicate_edge};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_float_types(grad_yl.scalar_type(), op, "grad_yl", [&](auto types) {
    using T = decltype(types);
    launch_haar_dwt_backward<typename T::scalar_t, typename T::acc_t>(params, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

at::Tensor haar_idwt_cuda(const at::Tensor& yl, const at::Tensor& yh) {
  constexpr const char* op = "haar_idwt2d";
  check_cuda_tensor(yl, op, "yl", 4);
  check_cuda_tensor(yh, op, "yh", 5);
  check_same_device_dtype(yl, "yl", yh, op, "yh");
  const int64_t n = yl.size(0), c = yl.size(1), h = yl.size(2), w = yl.size(3);
  TORCH_CHECK(yh.sizes() == at::IntArrayRef({n, c, 3, h, w}), op, ": yh must have shape (", n, ", ", c, ", 3, ", h,
              ", ", w, ") to match yl ", yl.sizes(), ", got ", yh.sizes());
  const c10::cuda::CUDAGuard device_guard(yl.device());
  at::Tensor out = at::empty({n, c, 2 * h, 2 * w}, yl.options());
  if (out.numel() == 0) return out;
  const HaarIdwtParams params{yl.data_ptr(), yh.data_ptr(), out.data_ptr(), strides4d(yl), band_strides(yh),
                              n, c, h, w};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_float_types(yl.scalar_type(), op, "yl", [&](auto types) {
    using T = decltype(types);
    launch_haar_idwt<typename T::scalar_t, typename T::acc_t>(params, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace ddpm_pa

TORCH_LIBRARY_IMPL(ddpm_pa_fast, CUDA, m) {
  m.impl("haar_dwt2d", &ddpm_pa::cuda::haar_dwt_forward_cuda);
  m.impl("haar_dwt2d_backward", &ddpm_pa::cuda::haar_dwt_backward_cuda);
  m.impl("haar_idwt2d", &ddpm_pa::cuda::haar_idwt_cuda);
}
