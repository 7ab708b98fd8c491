// What the CPU kernels share beyond the maths in ddpm_pa_math.h: argument parsing, the fixed
// partition of work that keeps reductions deterministic, and the blocked Gram / matrix-apply loops
// used by both the pairwise KL op and the fused loss.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <string>
#include <vector>

#include "ddpm_pa_math.h"

#if defined(__GNUC__)
#define DDPM_PA_RESTRICT __restrict__
#else
#define DDPM_PA_RESTRICT
#endif

// OpenMP SIMD hints that also work inside AT_DISPATCH lambdas (a macro argument cannot hold #pragma).
// They only let the compiler vectorise; the code, and so the order of the sums, is fixed at build time.
#define DDPM_PA_PRAGMA(...) _Pragma(#__VA_ARGS__)
#define DDPM_PA_SIMD DDPM_PA_PRAGMA(omp simd)

// The build targets baseline x86-64 (SSE2, no FMA) so the wheel runs anywhere. The hot loops are
// compiled twice more, for x86-64-v3 (AVX2 + FMA) and x86-64-v4 (AVX-512), and the loader picks the
// best the CPU supports (GCC >= 12 on x86-64 Linux; elsewhere baseline only). Bodies they call are
// DDPM_PA_ALWAYS_INLINE so they are compiled per clone.
#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 12 && !defined(__clang__) && defined(__linux__)
#define DDPM_PA_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DDPM_PA_MULTIVERSION
#endif
#if defined(__GNUC__)
#define DDPM_PA_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define DDPM_PA_ALWAYS_INLINE inline
#endif

namespace ddpm_pa {
namespace cpu {

// float for float32, float16 and bfloat16 inputs; double for float64.
template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

inline at::ScalarType accumulation_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline int reduction_from_name(const std::string& name, const char* arg_name, bool allow_none) {
  if (name == "mean") return kReduceMean;
  if (name == "batchmean") return kReduceBatchMean;
  if (name == "sum") return kReduceSum;
  if (name == "none" && allow_none) return kReduceNone;
  TORCH_CHECK(false, arg_name, " must be one of 'mean', 'batchmean', 'sum'", allow_none ? ", 'none'" : "",
              "; got '", name, "'");
}

// How haar_dwt2d extends an odd height or width by one: zeros, or a copy of the last sample
// ("symmetric" and "periodization" agree for the length-2 Haar filter; see reference._pad_to_even).
inline bool dwt_pads_with_zeros(const std::string& mode) {
  TORCH_CHECK(mode == "zero" || mode == "symmetric" || mode == "periodization",
              "mode must be one of 'zero', 'symmetric', 'periodization'; got '", mode, "'");
  return mode == "zero";
}

inline void check_floating(const at::Tensor& t, const char* name) {
  const at::ScalarType d = t.scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kDouble || d == at::kHalf || d == at::kBFloat16, name,
              " must be float16, bfloat16, float32 or float64, got ", d);
}

inline void check_same_layout(const at::Tensor& reference, const char* ref_name, const at::Tensor& t,
                              const char* name) {
  TORCH_CHECK(t.sizes() == reference.sizes(), name, " must have the shape of ", ref_name, " ",
              reference.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == reference.scalar_type(), name, " must have the dtype of ", ref_name, " (",
              reference.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == reference.device(), name, " must be on the device of ", ref_name, " (",
              reference.device(), "), got ", t.device());
}

// Work items [0, total) cut into at most kMaxChunks contiguous chunks of whole blocks. The cut depends
// on the problem size only, never on the thread count, and each chunk's partial sums are added in
// chunk order: a reduction gives the same bits with 1 thread or 64.
struct FixedPartition {
  static constexpr int64_t kMaxChunks = 64;
  int64_t total;
  int64_t chunk_size;
  int64_t count;

  FixedPartition(int64_t total_items, int64_t block_items) : total(total_items) {
    const int64_t blocks = std::max<int64_t>(1, (total + block_items - 1) / block_items);
    const int64_t blocks_per_chunk = (blocks + kMaxChunks - 1) / kMaxChunks;
    chunk_size = blocks_per_chunk * block_items;
    count = total == 0 ? 0 : (total + chunk_size - 1) / chunk_size;
  }
  int64_t begin(int64_t chunk) const { return chunk * chunk_size; }
  int64_t end(int64_t chunk) const { return std::min(total, (chunk + 1) * chunk_size); }
};

// Values per sample in one block of a Gram / matrix-apply pass: N rows of this many values of two
// tensors stay within a few hundred KB of cache. A function of N only, so the partition is fixed.
inline int64_t block_values_per_sample(int64_t n) {
  return std::min<int64_t>(4096, std::max<int64_t>(256, 32768 / std::max<int64_t>(1, n)));
}

// Calls body(chunk, begin, end) for every chunk, in parallel. Chunks are independent.
template <typename Body>
void parallel_for_chunks(const FixedPartition& partition, const Body& body) {
  at::parallel_for(0, partition.count, 1, [&](int64_t first, int64_t last) {
    for (int64_t chunk = first; chunk < last; ++chunk) body(chunk, partition.begin(chunk), partition.end(chunk));
  });
}

// Adds per-chunk partial sums (count rows of width values each) in chunk order into out.
inline void sum_partials_in_order(const std::vector<double>& partials, int64_t count, int64_t width, double* out) {
  std::fill(out, out + width, 0.0);
  for (int64_t c = 0; c < count; ++c) {
    const double* p = partials.data() + c * width;
    for (int64_t k = 0; k < width; ++k) out[k] += p[k];
  }
}

template <typename T>
DDPM_PA_ALWAYS_INLINE T dot(const T* DDPM_PA_RESTRICT x, const T* DDPM_PA_RESTRICT y, int64_t len) {
  T s = T(0);
  DDPM_PA_PRAGMA(omp simd reduction(+ : s))
  for (int64_t e = 0; e < len; ++e) s += x[e] * y[e];
  return s;
}

// gram[i][j] += <row_i, row_j> (j >= i only) for n rows of len values, row k at rows + k * stride.
// The length is walked in slices whose n rows fit in L1; each slice's dots run in acc_t (vectorised)
// into `tile`, and the block's sums are added to the double gram.
template <typename acc_t>
DDPM_PA_ALWAYS_INLINE void add_block_gram_impl(const acc_t* rows, int64_t n, int64_t stride, int64_t len,
                                               double* gram) {
  const int64_t slice = std::max<int64_t>(64, (16384 / static_cast<int64_t>(sizeof(acc_t))) / n / 16 * 16);
  std::vector<acc_t> tile(n * n, acc_t(0));
  for (int64_t e0 = 0; e0 < len; e0 += slice) {
    const int64_t count = std::min(slice, len - e0);
    for (int64_t i = 0; i < n; ++i) {
      const acc_t* DDPM_PA_RESTRICT ri = rows + i * stride + e0;
      int64_t j = i;
      // Four dots per pass reuse each load of row i.
      for (; j + 4 <= n; j += 4) {
        const acc_t* DDPM_PA_RESTRICT r0 = rows + j * stride + e0;
        const acc_t* DDPM_PA_RESTRICT r1 = r0 + stride;
        const acc_t* DDPM_PA_RESTRICT r2 = r1 + stride;
        const acc_t* DDPM_PA_RESTRICT r3 = r2 + stride;
        acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        DDPM_PA_PRAGMA(omp simd reduction(+ : s0, s1, s2, s3))
        for (int64_t e = 0; e < count; ++e) {
          const acc_t v = ri[e];
          s0 += v * r0[e];
          s1 += v * r1[e];
          s2 += v * r2[e];
          s3 += v * r3[e];
        }
        tile[i * n + j] += s0;
        tile[i * n + j + 1] += s1;
        tile[i * n + j + 2] += s2;
        tile[i * n + j + 3] += s3;
      }
      for (; j < n; ++j) tile[i * n + j] += dot(ri, rows + j * stride + e0, count);
    }
  }
  for (int64_t k = 0; k < n * n; ++k) gram[k] += static_cast<double>(tile[k]);
}

// The full symmetric Gram matrix from its accumulated upper triangle, in the output dtype.
template <typename acc_t>
void store_symmetric(const double* upper, int64_t n, acc_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = i; j < n; ++j) {
      out[i * n + j] = static_cast<acc_t>(upper[i * n + j]);
      out[j * n + i] = static_cast<acc_t>(upper[i * n + j]);
    }
  }
}

// out[i][e] = sum_k m[i][k] rows[k][e] for n rows of len values; row k of rows at rows + k * stride,
// row i of out at out + i * out_stride.
template <typename acc_t>
DDPM_PA_ALWAYS_INLINE void apply_matrix_block_impl(const acc_t* m, int64_t n, const acc_t* rows, int64_t stride,
                                                   int64_t len, acc_t* out, int64_t out_stride) {
  // Slices of 512 values keep the n input slices in L1; four rows per pass halve the output traffic.
  constexpr int64_t kSlice = 512;
  for (int64_t e0 = 0; e0 < len; e0 += kSlice) {
    const int64_t count = std::min(kSlice, len - e0);
    for (int64_t i = 0; i < n; ++i) {
      acc_t* DDPM_PA_RESTRICT o = out + i * out_stride + e0;
      const acc_t* mi = m + i * n;
      std::fill(o, o + count, acc_t(0));
      int64_t k = 0;
      for (; k + 4 <= n; k += 4) {
        const acc_t w0 = mi[k], w1 = mi[k + 1], w2 = mi[k + 2], w3 = mi[k + 3];
        const acc_t* DDPM_PA_RESTRICT r0 = rows + k * stride + e0;
        const acc_t* DDPM_PA_RESTRICT r1 = r0 + stride;
        const acc_t* DDPM_PA_RESTRICT r2 = r1 + stride;
        const acc_t* DDPM_PA_RESTRICT r3 = r2 + stride;
        DDPM_PA_SIMD
        for (int64_t e = 0; e < count; ++e) o[e] += w0 * r0[e] + w1 * r1[e] + w2 * r2[e] + w3 * r3[e];
      }
      for (; k < n; ++k) {
        const acc_t w = mi[k];
        const acc_t* DDPM_PA_RESTRICT r = rows + k * stride + e0;
        DDPM_PA_SIMD
        for (int64_t e = 0; e < count; ++e) o[e] += w * r[e];
      }
    }
  }
}

// Multiversioned entry points (csrc/cpu/blocked_linear_algebra_cpu.cpp).
void add_block_gram(const float* rows, int64_t n, int64_t stride, int64_t len, double* gram);
void add_block_gram(const double* rows, int64_t n, int64_t stride, int64_t len, double* gram);
void apply_matrix_block(const float* m, int64_t n, const float* rows, int64_t stride, int64_t len, float* out,
                        int64_t out_stride);
void apply_matrix_block(const double* m, int64_t n, const double* rows, int64_t stride, int64_t len, double* out,
                        int64_t out_stride);

// Per-row KL(P_src || P_ada) of the similarity softmaxes, from the two Gram matrices.
template <typename acc_t>
void similarity_kl_rows(const acc_t* gram_src, const acc_t* gram_ada, int64_t n, acc_t inv_tau, acc_t* row_kl) {
  std::vector<acc_t> lse(2 * n);
  similarity_logsumexps(gram_src, gram_ada, n, inv_tau, lse.data(), lse.data() + n);
  for (int64_t i = 0; i < n; ++i)
    row_kl[i] = similarity_kl_row(gram_src, gram_ada, n, i, inv_tau, lse.data(), lse.data() + n);
}

// M with d(sum_i row_weight[i] KL_i) / dF_ada = M @ F_ada.
template <typename acc_t>
std::vector<acc_t> similarity_kl_gradient(const acc_t* gram_src, const acc_t* gram_ada, int64_t n, acc_t inv_tau,
                                          const acc_t* row_weight) {
  std::vector<acc_t> lse(2 * n);
  std::vector<acc_t> m(n * n);
  similarity_logsumexps(gram_src, gram_ada, n, inv_tau, lse.data(), lse.data() + n);
  similarity_kl_grad_matrix(gram_src, gram_ada, n, inv_tau, lse.data(), lse.data() + n, row_weight, m.data());
  return m;
}

}  // namespace cpu
}  // namespace ddpm_pa
