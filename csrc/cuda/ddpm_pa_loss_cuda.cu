// CUDA kernels of the fused ddpm_pa_loss and its backward: checks, parameter structs, launches.
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <string>
#include <tuple>

#include "kernels/ddpm_pa_loss.cuh"
#include "op_utils.h"

namespace ddpm_pa {
namespace cuda {
namespace {

constexpr const char* kForwardOp = "ddpm_pa_loss";
constexpr const char* kBackwardOp = "ddpm_pa_loss_backward";

// x_t's checks, and every other image input must match it in shape, dtype and device.
void check_images(const at::Tensor& x_t, std::initializer_list<std::pair<const at::Tensor*, const char*>> others,
                  const char* op) {
  check_cuda_tensor(x_t, op, "x_t", 4);
  TORCH_CHECK(x_t.size(0) >= 2, op, ": x_t must hold at least 2 samples to form pairs, got shape ", x_t.sizes());
  TORCH_CHECK(x_t.size(2) >= 2 && x_t.size(3) >= 2, op,
              ": x_t must be at least 2x2 in its last two dimensions, got shape ", x_t.sizes());
  for (const auto& [t, arg] : others) {
    check_same_device_dtype(x_t, "x_t", *t, op, arg);
    check_same_shape(x_t, "x_t", *t, op, arg);
  }
}

LossGeometry loss_geometry(const at::Tensor& x_t, int64_t values_per_unit, at::ScalarType acc_dtype, const char* op) {
  return {x_t.size(0), x_t.size(1), x_t.size(2), x_t.size(3),
          checked_tile_columns(x_t.size(0), values_per_unit, acc_dtype, op, "x_t")};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> loss_forward_cuda(
    const at::Tensor& x_t, const at::Tensor& eps_ada, const at::Tensor& eps_src, const at::Tensor& noise,
    const at::Tensor& a_t, const at::Tensor& b_t, const std::optional<at::Tensor>& mse_weight,
    const std::optional<at::Tensor>& hf_mse_weight, double w_pair, double w_hf_pair, double w_hf_mse, double tau,
    c10::string_view reduction) {
  const char* op = kForwardOp;
  check_images(x_t, {{&eps_ada, "eps_ada"}, {&eps_src, "eps_src"}, {&noise, "noise"}}, op);
  TORCH_CHECK(tau > 0 && std::isfinite(tau), op, ": tau must be a finite number > 0, got ", tau);
  const int reduce = parse_reduction(std::string(reduction), /*allow_none=*/false, op);
  const c10::cuda::CUDAGuard device_guard(x_t.device());
  const at::ScalarType acc_dtype = accumulation_dtype(x_t.scalar_type());
  const at::TensorOptions acc_options = x_t.options().dtype(acc_dtype);
  const at::Tensor a = per_sample_coefficients(a_t, "a_t", x_t, acc_dtype, op);
  const at::Tensor b = per_sample_coefficients(b_t, "b_t", x_t, acc_dtype, op);
  const at::Tensor mse_w = optional_per_sample_coefficients(mse_weight, "mse_weight", x_t, acc_dtype, op);
  const at::Tensor hf_mse_w = optional_per_sample_coefficients(hf_mse_weight, "hf_mse_weight", x_t, acc_dtype, op);
  const LossGeometry geometry = loss_geometry(x_t, kForwardValuesPerUnit, acc_dtype, op);
  const int64_t n = geometry.n;

  const unsigned int blocks = reduction_blocks(geometry.num_tiles());
  LossForwardPartialsParams params{x_t.data_ptr(),
                                   eps_ada.data_ptr(),
                                   eps_src.data_ptr(),
                                   noise.data_ptr(),
                                   a.data_ptr(),
                                   b.data_ptr(),
                                   optional_data_ptr(mse_w),
                                   optional_data_ptr(hf_mse_w),
                                   /*partials=*/nullptr,
                                   strides4d(x_t),
                                   strides4d(eps_ada),
                                   strides4d(eps_src),
                                   strides4d(noise),
                                   geometry};
  at::Tensor partials = at::empty({int64_t(blocks), params.partial_stride()}, acc_options);
  params.partials = partials.data_ptr();
  at::Tensor grams = at::empty({kNumLossGrams, n, n}, acc_options);
  at::Tensor squared_errors = at::empty({kNumSquaredErrors}, acc_options);
  at::Tensor workspace = at::empty({(kNumLossGrams + 2) * n}, acc_options);
  const at::TensorOptions out_options = x_t.options();
  at::Tensor loss = at::empty({}, out_options), mse = at::empty({}, out_options),
             hf_mse = at::empty({}, out_options), pair_img = at::empty({}, out_options),
             pair_hf = at::empty({}, out_options);
  const LossForwardTermsParams terms_params{
      grams.data_ptr(), squared_errors.data_ptr(), workspace.data_ptr(), loss.data_ptr(), mse.data_ptr(),
      hf_mse.data_ptr(), pair_img.data_ptr(), pair_hf.data_ptr(), n, geometry.numel(), geometry.numel_hf(),
      w_pair, w_hf_pair, w_hf_mse, 1.0 / tau, reduce};
  const int64_t stride = params.partial_stride();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_float_types(x_t.scalar_type(), op, "x_t", [&](auto types) {
    using scalar_t = typename decltype(types)::scalar_t;
    using acc_t = typename decltype(types)::acc_t;
    launch_loss_forward_partials<scalar_t, acc_t>(params, blocks, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const acc_t* partial = partials.data_ptr<acc_t>();
    launch_reduce_partials<acc_t>({partial, grams.data_ptr<acc_t>(), blocks, stride, kNumLossGrams * n * n}, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_reduce_partials<acc_t>(
        {partial + kNumLossGrams * n * n, squared_errors.data_ptr<acc_t>(), blocks, stride, kNumSquaredErrors},
        stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_loss_forward_terms<scalar_t, acc_t>(terms_params, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, mse, hf_mse, pair_img, pair_hf, grams};
}

at::Tensor loss_backward_cuda(const at::Tensor& grad_terms, const at::Tensor& grams, const at::Tensor& x_t,
                              const at::Tensor& eps_ada, const at::Tensor& noise, const at::Tensor& a_t,
                              const at::Tensor& b_t, const std::optional<at::Tensor>& mse_weight,
                              const std::optional<at::Tensor>& hf_mse_weight, double w_pair, double w_hf_pair,
                              double w_hf_mse, double tau, c10::string_view reduction) {
  const char* op = kBackwardOp;
  check_images(x_t, {{&eps_ada, "eps_ada"}, {&noise, "noise"}}, op);
  TORCH_CHECK(tau > 0 && std::isfinite(tau), op, ": tau must be a finite number > 0, got ", tau);
  const int reduce = parse_reduction(std::string(reduction), /*allow_none=*/false, op);
  const at::ScalarType acc_dtype = accumulation_dtype(x_t.scalar_type());
  const int64_t n = x_t.size(0);
  check_cuda_tensor(grad_terms, op, "grad_terms", 1);
  TORCH_CHECK(grad_terms.size(0) == kNumLossTerms, op, ": grad_terms must have shape (", int(kNumLossTerms),
              ",), got ", grad_terms.sizes());
  TORCH_CHECK(grad_terms.device() == x_t.device(), op, ": grad_terms must be on x_t's device ", x_t.device());
  check_cuda_tensor(grams, op, "grams", 3);
  TORCH_CHECK(grams.sizes() == at::IntArrayRef({kNumLossGrams, n, n}), op, ": grams must have shape (",
              int(kNumLossGrams), ", ", n, ", ", n, "), got ", grams.sizes());
  TORCH_CHECK(grams.scalar_type() == acc_dtype, op, ": grams must have the accumulation dtype ", acc_dtype, ", got ",
              grams.scalar_type());
  TORCH_CHECK(grams.device() == x_t.device(), op, ": grams must be on x_t's device ", x_t.device());
  const c10::cuda::CUDAGuard device_guard(x_t.device());
  const at::TensorOptions acc_options = x_t.options().dtype(acc_dtype);
  const at::Tensor a = per_sample_coefficients(a_t, "a_t", x_t, acc_dtype, op);
  const at::Tensor b = per_sample_coefficients(b_t, "b_t", x_t, acc_dtype, op);
  const at::Tensor mse_w = optional_per_sample_coefficients(mse_weight, "mse_weight", x_t, acc_dtype, op);
  const at::Tensor hf_mse_w = optional_per_sample_coefficients(hf_mse_weight, "hf_mse_weight", x_t, acc_dtype, op);
  // Read on the device by the kernel: no host sync on the upstream gradients.
  const at::Tensor grad_terms_acc = grad_terms.to(acc_dtype).contiguous();
  const at::Tensor grams_c = grams.contiguous();
  const LossGeometry geometry = loss_geometry(x_t, kBackwardValuesPerUnit, acc_dtype, op);
  at::Tensor workspace = at::empty({LossBackwardWorkspace{n}.size()}, acc_options);
  at::Tensor grad_eps_ada = at::empty(x_t.sizes(), x_t.options());  // contiguous, as the kernel writes it

  const LossBackwardMatricesParams matrix_params{grad_terms_acc.data_ptr(), grams_c.data_ptr(), workspace.data_ptr(),
                                                 n, geometry.numel(), geometry.numel_hf(), w_pair, w_hf_pair,
                                                 w_hf_mse, 1.0 / tau, reduce};
  const LossBackwardElementsParams element_params{x_t.data_ptr(), eps_ada.data_ptr(), noise.data_ptr(),
                                                  a.data_ptr(), b.data_ptr(), optional_data_ptr(mse_w),
                                                  optional_data_ptr(hf_mse_w), workspace.data_ptr(),
                                                  grad_eps_ada.data_ptr(), strides4d(x_t), strides4d(eps_ada),
                                                  strides4d(noise), geometry};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_float_types(x_t.scalar_type(), op, "x_t", [&](auto types) {
    using scalar_t = typename decltype(types)::scalar_t;
    using acc_t = typename decltype(types)::acc_t;
    launch_loss_backward_matrices<acc_t>(matrix_params, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_loss_backward_elements<scalar_t, acc_t>(element_params, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_eps_ada;
}

}  // namespace
}  // namespace cuda
}  // namespace ddpm_pa

TORCH_LIBRARY_IMPL(ddpm_pa_fast, CUDA, m) {
  m.impl("ddpm_pa_loss", &ddpm_pa::cuda::loss_forward_cuda);
  m.impl("ddpm_pa_loss_backward", &ddpm_pa::cuda::loss_backward_cuda);
}
