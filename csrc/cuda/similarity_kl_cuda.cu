// CUDA kernels of pairwise_similarity_kl and its backward: checks, parameter structs, launches.
#include <torch/library.h>

#include <cmath>
#include <string>
#include <tuple>

#include "kernels/similarity_kl.cuh"
#include "op_utils.h"

namespace ddpm_pa {
namespace cuda {
namespace {

// Features flattened to a contiguous (N, D) tensor: a copy only when the input is not contiguous.
at::Tensor flat_features(const at::Tensor& features) { return features.reshape({features.size(0), -1}).contiguous(); }

void check_features(const at::Tensor& t, const char* op, const char* arg) {
  check_cuda_tensor(t, op, arg, -1);
  TORCH_CHECK(t.dim() >= 2, op, ": ", arg, " must have shape (N, ...) with at least 2 dimensions, got ", t.sizes());
  TORCH_CHECK(t.size(0) >= 2, op, ": ", arg, " must hold at least 2 samples to form pairs, got shape ", t.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> similarity_kl_forward_cuda(const at::Tensor& src, const at::Tensor& ada,
                                                                          double tau, c10::string_view reduction) {
  constexpr const char* op = "pairwise_similarity_kl";
  check_features(src, op, "src");
  check_same_device_dtype(src, "src", ada, op, "ada");
  check_same_shape(src, "src", ada, op, "ada");
  TORCH_CHECK(tau > 0 && std::isfinite(tau), op, ": tau must be a finite number > 0, got ", tau);
  const int reduce = parse_reduction(std::string(reduction), /*allow_none=*/true, op);
  const c10::cuda::CUDAGuard device_guard(src.device());
  const at::ScalarType acc_dtype = accumulation_dtype(src.scalar_type());
  const at::TensorOptions acc_options = src.options().dtype(acc_dtype);
  const at::Tensor src_flat = flat_features(src), ada_flat = flat_features(ada);
  const int64_t n = src_flat.size(0), d = src_flat.size(1);

  const int64_t tile = checked_tile_columns(n, 2, acc_dtype, op, "src");
  const unsigned int blocks = reduction_blocks(ceil_div(d, tile));
  at::Tensor partials = at::empty({int64_t(blocks), 2, n, n}, acc_options);
  at::Tensor gram_src = at::empty({n, n}, acc_options), gram_ada = at::empty({n, n}, acc_options);
  at::Tensor workspace = at::empty({3 * n}, acc_options);
  at::Tensor loss = reduce == kReduceNone ? at::empty({n}, src.options()) : at::empty({}, src.options());

  const SimilarityGramParams gram_params{src_flat.data_ptr(), ada_flat.data_ptr(), partials.data_ptr(), n, d, tile};
  const SimilarityKlForwardParams kl_params{gram_src.data_ptr(), gram_ada.data_ptr(), workspace.data_ptr(),
                                            loss.data_ptr(), n, 1.0 / tau, reduce};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_float_types(src.scalar_type(), op, "src", [&](auto types) {
    using scalar_t = typename decltype(types)::scalar_t;
    using acc_t = typename decltype(types)::acc_t;
    launch_similarity_gram_partials<scalar_t, acc_t>(gram_params, blocks, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const acc_t* partial_grams = partials.data_ptr<acc_t>();
    launch_reduce_partials<acc_t>({partial_grams, gram_src.data_ptr<acc_t>(), blocks, 2 * n * n, n * n}, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_reduce_partials<acc_t>({partial_grams + n * n, gram_ada.data_ptr<acc_t>(), blocks, 2 * n * n, n * n},
                                  stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_similarity_kl_forward<scalar_t, acc_t>(kl_params, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, gram_src, gram_ada};
}

at::Tensor similarity_kl_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& ada, const at::Tensor& gram_src,
                                       const at::Tensor& gram_ada, double tau, c10::string_view reduction) {
  constexpr const char* op = "pairwise_similarity_kl_backward";
  check_features(ada, op, "ada");
  TORCH_CHECK(tau > 0 && std::isfinite(tau), op, ": tau must be a finite number > 0, got ", tau);
  const int reduce = parse_reduction(std::string(reduction), /*allow_none=*/true, op);
  const int64_t n = ada.size(0);
  const at::ScalarType acc_dtype = accumulation_dtype(ada.scalar_type());
  for (const auto& [gram, arg] : {std::pair<const at::Tensor&, const char*>{gram_src, "gram_src"},
                                  std::pair<const at::Tensor&, const char*>{gram_ada, "gram_ada"}}) {
    check_cuda_tensor(gram, op, arg, 2);
    TORCH_CHECK(gram.size(0) == n && gram.size(1) == n, op, ": ", arg, " must have shape (", n, ", ", n,
                "), got ", gram.sizes());
    TORCH_CHECK(gram.scalar_type() == acc_dtype, op, ": ", arg, " must have the accumulation dtype ", acc_dtype,
                ", got ", gram.scalar_type());
    TORCH_CHECK(gram.device() == ada.device(), op, ": ", arg, " must be on ada's device ", ada.device());
  }
  check_cuda_tensor(grad_loss, op, "grad_loss", -1);
  TORCH_CHECK(grad_loss.numel() == (reduce == kReduceNone ? n : 1), op, ": grad_loss must hold ",
              reduce == kReduceNone ? n : 1, " value(s) for reduction '", std::string(reduction), "', got shape ",
              grad_loss.sizes());
  TORCH_CHECK(grad_loss.device() == ada.device(), op, ": grad_loss must be on ada's device ", ada.device());
  const c10::cuda::CUDAGuard device_guard(ada.device());
  const at::TensorOptions acc_options = ada.options().dtype(acc_dtype);
  const at::Tensor ada_flat = flat_features(ada);
  const int64_t d = ada_flat.size(1);
  const at::Tensor grad_loss_acc = grad_loss.reshape({-1}).to(acc_dtype).contiguous();
  const at::Tensor gram_src_c = gram_src.contiguous(), gram_ada_c = gram_ada.contiguous();
  at::Tensor workspace = at::empty({3 * n}, acc_options);
  at::Tensor m = at::empty({n, n}, acc_options);
  at::Tensor grad_ada = at::empty(ada.sizes(), ada.options());  // contiguous: the (N, D) layout of apply_matrix

  const SimilarityKlGradMatrixParams matrix_params{grad_loss_acc.data_ptr(), gram_src_c.data_ptr(),
                                                   gram_ada_c.data_ptr(),    workspace.data_ptr(),
                                                   m.data_ptr(),             n,
                                                   1.0 / tau,                reduce};
  const ApplyMatrixParams apply_params{m.data_ptr(), ada_flat.data_ptr(), grad_ada.data_ptr(), n, d,
                                       checked_tile_columns(n, 1, acc_dtype, op, "ada")};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_float_types(ada.scalar_type(), op, "ada", [&](auto types) {
    using scalar_t = typename decltype(types)::scalar_t;
    using acc_t = typename decltype(types)::acc_t;
    launch_similarity_kl_grad_matrix<acc_t>(matrix_params, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (d > 0) {
      launch_apply_matrix<scalar_t, acc_t>(apply_params, stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return grad_ada;
}

}  // namespace
}  // namespace cuda
}  // namespace ddpm_pa

TORCH_LIBRARY_IMPL(ddpm_pa_fast, CUDA, m) {
  m.impl("pairwise_similarity_kl", &ddpm_pa::cuda::similarity_kl_forward_cuda);
  m.impl("pairwise_similarity_kl_backward", &ddpm_pa::cuda::similarity_kl_backward_cuda);
}
