// What the thin CUDA op files (csrc/cuda/*_cuda.cu) share: argument checks that name the argument,
// the dtype dispatch onto CUDA's own types, and tensor -> parameter-struct helpers. This is the only
// layer of csrc/cuda that knows torch; the kernels in csrc/cuda/kernels/ do not.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <ATen/cuda/CUDAContext.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <optional>
#include <string>

#include "ddpm_pa_math.h"
#include "kernels/common.cuh"

namespace ddpm_pa {
namespace cuda {

// The storage type of a kernel instantiation and the type it accumulates in.
template <typename Scalar, typename Acc>
struct KernelTypes {
  using scalar_t = Scalar;
  using acc_t = Acc;
};

// Calls body(KernelTypes<...>{}) for float32, float64, float16 and bfloat16 (CUDA's __half and
// __nv_bfloat16 as storage, float accumulation); any other dtype is an error naming `arg`.
template <typename Body>
void dispatch_float_types(at::ScalarType dtype, const char* op, const char* arg, Body&& body) {
  switch (dtype) {
    case at::kFloat:
      body(KernelTypes<float, float>{});
      break;
    case at::kDouble:
      body(KernelTypes<double, double>{});
      break;
    case at::kHalf:
      body(KernelTypes<__half, float>{});
      break;
    case at::kBFloat16:
      body(KernelTypes<__nv_bfloat16, float>{});
      break;
    default:
      TORCH_CHECK(false, op, ": ", arg, " must be float32, float64, float16 or bfloat16, got ", dtype);
  }
}

// float64 accumulates in float64, every other dtype in float32.
inline at::ScalarType accumulation_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_cuda_tensor(const at::Tensor& t, const char* op, const char* arg, int64_t ndim) {
  TORCH_CHECK(t.is_cuda(), op, ": ", arg, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(ndim < 0 || t.dim() == ndim, op, ": ", arg, " must have ", ndim, " dimensions, got shape ",
              t.sizes());
}

inline void check_same_device_dtype(const at::Tensor& ref, const char* ref_arg, const at::Tensor& t, const char* op,
                                    const char* arg) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", arg, " must be on ", ref_arg, "'s device ", ref.device(),
              ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", arg, " must have ", ref_arg, "'s dtype ",
              ref.scalar_type(), ", got ", t.scalar_type());
}

inline void check_same_shape(const at::Tensor& ref, const char* ref_arg, const at::Tensor& t, const char* op,
                             const char* arg) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", arg, " must have ", ref_arg, "'s shape ", ref.sizes(), ", got ",
              t.sizes());
}

inline Strides4d strides4d(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// The reduction of the pairwise KL terms, as ddpm_pa_math.h's Reduction.
inline int parse_reduction(const std::string& reduction, bool allow_none, const char* op) {
  if (reduction == "mean") return kReduceMean;
  if (reduction == "batchmean") return kReduceBatchMean;
  if (reduction == "sum") return kReduceSum;
  TORCH_CHECK(allow_none && reduction == "none", op, ": reduction must be one of 'mean', 'batchmean', 'sum'",
              allow_none ? ", 'none'" : "", ", got '", reduction, "'");
  return kReduceNone;
}

// Whether the DWT extends an odd size by a copy of the edge ("symmetric", "periodization") or zeros.
inline bool parse_replicate_edge(const std::string& mode, const char* op) {
  if (mode == "zero") return false;
  TORCH_CHECK(mode == "symmetric" || mode == "periodization", op,
              ": mode must be one of 'zero', 'symmetric', 'periodization', got '", mode, "'");
  return true;
}

// A per-sample coefficient ((N,) or (N, 1, 1, 1), any float dtype) as a contiguous (N,) tensor in
// the accumulation dtype on `like`'s device: a copy of N numbers, the input is left as it is.
inline at::Tensor per_sample_coefficients(const at::Tensor& coef, const char* arg, const at::Tensor& like,
                                          at::ScalarType acc_dtype, const char* op) {
  const int64_t n = like.size(0);
  TORCH_CHECK(coef.device() == like.device(), op, ": ", arg, " must be on x_t's device ", like.device(), ", got ",
              coef.device());
  TORCH_CHECK(at::isFloatingType(coef.scalar_type()), op, ": ", arg, " must be a floating-point tensor, got ",
              coef.scalar_type());
  TORCH_CHECK(coef.numel() == n && (coef.dim() == 1 || (coef.dim() == 4 && coef.size(0) == n)), op, ": ", arg,
              " must have shape (N,) or (N, 1, 1, 1) with N = ", n, ", got ", coef.sizes());
  // The usual (N,) coefficient in the accumulation dtype is used as it is (three dispatcher calls saved).
  if (coef.dim() == 1 && coef.scalar_type() == acc_dtype && coef.is_contiguous()) return coef;
  return coef.reshape({n}).to(acc_dtype).contiguous();
}

// An optional per-sample weight as per_sample_coefficients' tensor, or an undefined tensor when absent.
inline at::Tensor optional_per_sample_coefficients(const std::optional<at::Tensor>& weight, const char* arg,
                                                   const at::Tensor& like, at::ScalarType acc_dtype, const char* op) {
  return weight.has_value() ? per_sample_coefficients(*weight, arg, like, acc_dtype, op) : at::Tensor();
}

// A kernel's pointer to an optional tensor: null when it is undefined.
inline const void* optional_data_ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// The number of tile columns for `values_per_column` accumulation values per sample, or an error
// saying the batch is too large for one tile to fit in shared memory.
inline int64_t checked_tile_columns(int64_t batch, int64_t values_per_column, at::ScalarType acc_dtype, const char* op,
                                    const char* arg) {
  const int64_t columns = tile_columns(batch, values_per_column, c10::elementSize(acc_dtype));
  TORCH_CHECK(columns >= 1, op, ": the batch size of ", arg, " (", batch,
              ") is too large for the CUDA kernel's shared-memory tile; split the batch");
  return columns;
}

}  // namespace cuda
}  // namespace ddpm_pa
