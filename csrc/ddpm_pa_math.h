// The per-element maths of DDPM-PA, shared by the CPU (csrc/cpu) and CUDA (csrc/cuda) kernels.
//
// Torch-free on purpose: only <cmath> and <cstdint>, so the same lines compile for the host and, under
// nvcc, for the device. Everything that is maths (the Haar filters and their adjoints, the x0
// prediction, the cosine similarities, the row softmax KL and its gradient) lives here once; the
// kernels around it only decide how memory is walked. The formulas are docs/ddpm_pa_spec.md's.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DDPM_PA_HD __host__ __device__ __forceinline__
#else
#define DDPM_PA_HD inline
#endif

namespace ddpm_pa {

// Clamp on |F_i| |F_j| in the cosine similarity, as torch.nn.CosineSimilarity's default eps.
constexpr double kSimilarityEps = 1e-8;

// Which loss output an upstream gradient belongs to, in the order of the op's outputs.
enum LossTerm : int { kLoss = 0, kMse = 1, kHfMse = 2, kPairImg = 3, kPairHf = 4, kNumLossTerms = 5 };

// Reductions of the (N, N - 1) KL terms. kMean is nn.KLDivLoss()'s default: sum / (N (N - 1)).
enum Reduction : int { kReduceMean = 0, kReduceBatchMean = 1, kReduceSum = 2, kReduceNone = 3 };

// ---------------------------------------------------------------------------------------------
// Haar, per 2x2 block (a b / c d) = (x[2i, 2j], x[2i, 2j+1], x[2i+1, 2j], x[2i+1, 2j+1]).

// DDPM-PA's high-frequency map LH + HL + HH: the 2x2 filter 1/2 [[-1, -1], [-1, 3]].
template <typename T>
DDPM_PA_HD T high_frequency(T a, T b, T c, T d) {
  return (T(3) * d - a - b - c) * T(0.5);
}

// Adjoint of high_frequency: the gradient g of one output spread over its block.
template <typename T>
DDPM_PA_HD void high_frequency_adjoint(T g, T& ga, T& gb, T& gc, T& gd) {
  const T h = T(-0.5) * g;
  ga = h;
  gb = h;
  gc = h;
  gd = T(1.5) * g;
}

// Orthonormal Haar analysis in pytorch_wavelets' band order.
template <typename T>
DDPM_PA_HD void haar_analysis(T a, T b, T c, T d, T& ll, T& band1, T& band2, T& band3) {
  ll = (a + b + c + d) * T(0.5);
  band1 = (a + b - c - d) * T(0.5);
  band2 = (a - b + c - d) * T(0.5);
  band3 = (a - b - c + d) * T(0.5);
}

// Inverse of haar_analysis. The analysis matrix is symmetric and orthogonal, so synthesis is the same
// matrix: it is also haar_analysis's adjoint, which is what the backward passes use.
template <typename T>
DDPM_PA_HD void haar_synthesis(T ll, T band1, T band2, T band3, T& a, T& b, T& c, T& d) {
  a = (ll + band1 + band2 + band3) * T(0.5);
  b = (ll + band1 - band2 - band3) * T(0.5);
  c = (ll - band1 + band2 - band3) * T(0.5);
  d = (ll - band1 - band2 + band3) * T(0.5);
}

// ---------------------------------------------------------------------------------------------
// Diffusion.

// x0 = a_t x_t - b_t eps, with a_t = sqrt(1 / abar_t), b_t = sqrt(1 / abar_t - 1).
template <typename T>
DDPM_PA_HD T predict_x0(T a_t, T x_t, T b_t, T eps) {
  return a_t * x_t - b_t * eps;
}

// ---------------------------------------------------------------------------------------------
// Pairwise similarity KL from Gram matrices. gram is N x N row-major, G_ij = <F_i, F_j>; everything
// here is O(N^2) or O(N^3) scalar work on at most a few thousand numbers, done by one thread.

template <typename T>
DDPM_PA_HD T similarity_denominator(const T* gram, int64_t n, int64_t i, int64_t j) {
  const T ni = sqrt(gram[i * n + i] > T(0) ? gram[i * n + i] : T(0));
  const T nj = sqrt(gram[j * n + j] > T(0) ? gram[j * n + j] : T(0));
  const T norm_product = ni * nj;
  return norm_product > T(kSimilarityEps) ? norm_product : T(kSimilarityEps);
}

// Cosine similarity S_ij = G_ij / max(|F_i| |F_j|, eps).
template <typename T>
DDPM_PA_HD T cosine_similarity(const T* gram, int64_t n, int64_t i, int64_t j) {
  return gram[i * n + j] / similarity_denominator(gram, n, i, j);
}

// log-sum-exp over j != i of S_ij / tau: the normaliser of row i's softmax.
template <typename T>
DDPM_PA_HD T similarity_row_logsumexp(const T* gram, int64_t n, int64_t i, T inv_tau) {
  T row_max = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    if (j == i) continue;
    const T z = cosine_similarity(gram, n, i, j) * inv_tau;
    row_max = z > row_max ? z : row_max;
  }
  T total = T(0);
  for (int64_t j = 0; j < n; ++j) {
    if (j == i) continue;
    total += exp(cosine_similarity(gram, n, i, j) * inv_tau - row_max);
  }
  return row_max + log(total);
}

// Fills lse_src[i], lse_ada[i] for every row; the workspace the two functions below read.
template <typename T>
DDPM_PA_HD void similarity_logsumexps(const T* gram_src, const T* gram_ada, int64_t n, T inv_tau, T* lse_src,
                                      T* lse_ada) {
  for (int64_t i = 0; i < n; ++i) {
    lse_src[i] = similarity_row_logsumexp(gram_src, n, i, inv_tau);
    lse_ada[i] = similarity_row_logsumexp(gram_ada, n, i, inv_tau);
  }
}

// KL_i = sum_{j != i} p_ij (log p_ij - log q_ij), p from the source Gram matrix, q from the adapted.
template <typename T>
DDPM_PA_HD T similarity_kl_row(const T* gram_src, const T* gram_ada, int64_t n, int64_t i, T inv_tau,
                               const T* lse_src, const T* lse_ada) {
  T kl = T(0);
  for (int64_t j = 0; j < n; ++j) {
    if (j == i) continue;
    const T log_p = cosine_similarity(gram_src, n, i, j) * inv_tau - lse_src[i];
    const T log_q = cosine_similarity(gram_ada, n, i, j) * inv_tau - lse_ada[i];
    kl += exp(log_p) * (log_p - log_q);
  }
  return kl;
}

// The factor a reduction puts on every row's KL: the weight of row i in the reduced loss.
template <typename T>
DDPM_PA_HD T reduction_scale(int reduction, int64_t n) {
  switch (reduction) {
    case kReduceMean:
      return T(1) / (T(n) * T(n - 1));
    case kReduceBatchMean:
      return T(1) / T(n);
    default:
      return T(1);
  }
}

// Reduces per-row KL values (kReduceNone keeps them: the caller writes row_kl out as is).
template <typename T>
DDPM_PA_HD T reduce_kl_rows(const T* row_kl, int64_t n, int reduction) {
  T total = T(0);
  for (int64_t i = 0; i < n; ++i) total += row_kl[i];
  return total * reduction_scale<T>(reduction, n);
}

// The gradient of sum_i row_weight[i] KL_i with respect to the adapted features is M @ F_ada, with
// the N x N matrix M this fills (row-major). With dS_ij = row_weight[i] (q_ij - p_ij) / tau
// (j != i) and D_ij = max(|F_i| |F_j|, eps):
//   M_kj = (dS_kj + dS_jk) / D_kj                                   for j != k,
//   M_kk = -sum_{j != k, |F_k||F_j| > eps} (dS_kj S_kj + dS_jk S_jk) / |F_k|^2.
// A pair whose norm product is clamped has S = G / eps, whose gradient has no norm term.
template <typename T>
DDPM_PA_HD void similarity_kl_grad_matrix(const T* gram_src, const T* gram_ada, int64_t n, T inv_tau,
                                          const T* lse_src, const T* lse_ada, const T* row_weight, T* m) {
  for (int64_t k = 0; k < n; ++k) {
    T diagonal = T(0);
    const T norm_sq_k = gram_ada[k * n + k];
    for (int64_t j = 0; j < n; ++j) {
      if (j == k) continue;
      const T s_kj = cosine_similarity(gram_ada, n, k, j);  // symmetric: S_jk == S_kj
      const T q_kj = exp(s_kj * inv_tau - lse_ada[k]);
      const T q_jk = exp(s_kj * inv_tau - lse_ada[j]);
      const T p_kj = exp(cosine_similarity(gram_src, n, k, j) * inv_tau - lse_src[k]);
      const T p_jk = exp(cosine_similarity(gram_src, n, j, k) * inv_tau - lse_src[j]);
      const T ds_kj = row_weight[k] * (q_kj - p_kj) * inv_tau;
      const T ds_jk = row_weight[j] * (q_jk - p_jk) * inv_tau;
      const T denominator = similarity_denominator(gram_ada, n, k, j);
      m[k * n + j] = (ds_kj + ds_jk) / denominator;
      if (denominator > T(kSimilarityEps)) diagonal -= (ds_kj + ds_jk) * s_kj / norm_sq_k;
    }
    m[k * n + k] = diagonal;
  }
}

// ---------------------------------------------------------------------------------------------
// The fused DDPM-PA loss: the optional per-sample weights of mse and hf_mse (null when not given).

// Sample i's weight, or exactly 1 without weights. Callers make it the first factor of a product
// (w * x, (w * d) * d): 1 * x == x, so without weights every product, and every multiply-add the
// compiler fuses from it, is bit for bit the unweighted one.
template <typename T>
DDPM_PA_HD T sample_weight(const T* weight, int64_t i) {
  return weight == nullptr ? T(1) : weight[i];
}

// How the five upstream gradients (loss, mse, hf_mse, pair_img, pair_hf)
// weigh each term of loss = mse + w_pair pair_img + w_hf_pair pair_hf + w_hf_mse hf_mse.
template <typename T>
struct LossTermWeights {
  T mse, hf_mse, pair_img, pair_hf;
};

template <typename T>
DDPM_PA_HD LossTermWeights<T> loss_term_weights(const T* grad_terms, T w_pair, T w_hf_pair, T w_hf_mse) {
  const T g = grad_terms[kLoss];
  return {g + grad_terms[kMse], w_hf_mse * g + grad_terms[kHfMse], w_pair * g + grad_terms[kPairImg],
          w_hf_pair * g + grad_terms[kPairHf]};
}

}  // namespace ddpm_pa
