// Pairwise similarity KL of (N, D) features, from Gram matrices. Torch-free.
//
// Forward: (1) gram_partials: each block stages a tile of columns of src and ada for all N samples
// in shared memory and adds the tile's N x N dot products to its own slice of a partial buffer;
// (2) reduce_partials (common.cuh) sums the slices in block order into the two Gram matrices;
// (3) similarity_kl_forward, one block: row log-sum-exps, row KLs and their reduction.
// Backward: (1) similarity_kl_grad_matrix, one block: the N x N matrix M with dLoss/d ada = M @ ada;
// (2) apply_matrix: grad_ada = M @ ada, a tile of columns at a time.
#pragma once

#include "ddpm_pa_math.h"
#include "common.cuh"

namespace ddpm_pa {
namespace cuda {

// Features of one op call: src and ada are contiguous (n, d) in the storage type.
struct SimilarityGramParams {
  const void* src;
  const void* ada;
  void* partials;  // acc_t (gridDim.x, 2, n, n)
  int64_t n, d;
  int64_t tile_columns;  // columns per tile; shared memory holds 2 * n * tile_columns acc_t
};

template <typename scalar_t, typename acc_t>
__global__ void similarity_gram_partials_kernel(SimilarityGramParams p) {
  const scalar_t* src = static_cast<const scalar_t*>(p.src);
  const scalar_t* ada = static_cast<const scalar_t*>(p.ada);
  acc_t* partial = static_cast<acc_t*>(p.partials) + blockIdx.x * 2 * p.n * p.n;
  acc_t* tile = dynamic_shared_memory<acc_t>();  // [feature (src, ada)][sample][column]
  const int64_t kc = p.tile_columns;
  for (int64_t k = threadIdx.x; k < 2 * p.n * p.n; k += blockDim.x) partial[k] = acc_t(0);
  const int64_t num_tiles = ceil_div(p.d, kc);
  for (int64_t t = blockIdx.x; t < num_tiles; t += gridDim.x) {
    __syncthreads();  // the previous tile is no longer read, and the zeroed partial is visible
    for (int64_t e = threadIdx.x; e < p.n * kc; e += blockDim.x) {
      const int64_t sample = e / kc, column = t * kc + e % kc;
      const bool valid = column < p.d;
      tile[e] = valid ? to_acc(src[sample * p.d + column]) : acc_t(0);
      tile[p.n * kc + e] = valid ? to_acc(ada[sample * p.d + column]) : acc_t(0);
    }
    __syncthreads();
    accumulate_tile_gram(tile, p.n, kc, partial);
    accumulate_tile_gram(tile + p.n * kc, p.n, kc, partial + p.n * p.n);
  }
}

template <typename scalar_t, typename acc_t>
void launch_similarity_gram_partials(const SimilarityGramParams& p, unsigned int blocks, cudaStream_t stream) {
  const size_t shared_bytes = size_t(2 * p.n * p.tile_columns) * sizeof(acc_t);
  similarity_gram_partials_kernel<scalar_t, acc_t><<<blocks, kThreadsPerBlock, shared_bytes, stream>>>(p);
}

struct SimilarityKlForwardParams {
  const void* gram_src;  // acc_t (n, n)
  const void* gram_ada;  // acc_t (n, n)
  void* workspace;       // acc_t (3 n): lse_src, lse_ada, row_kl
  void* loss;            // scalar_t: (n,) for kReduceNone, else 0-d
  int64_t n;
  double inv_tau;
  int reduction;
};

// One block: rows in parallel, the reduction over rows by thread 0 in row order.
template <typename scalar_t, typename acc_t>
__global__ void similarity_kl_forward_kernel(SimilarityKlForwardParams p) {
  const acc_t* gram_src = static_cast<const acc_t*>(p.gram_src);
  const acc_t* gram_ada = static_cast<const acc_t*>(p.gram_ada);
  acc_t* lse_src = static_cast<acc_t*>(p.workspace);
  acc_t* lse_ada = lse_src + p.n;
  acc_t* row_kl = lse_ada + p.n;
  scalar_t* loss = static_cast<scalar_t*>(p.loss);
  const acc_t inv_tau = acc_t(p.inv_tau);
  for (int64_t i = threadIdx.x; i < p.n; i += blockDim.x) {
    lse_src[i] = similarity_row_logsumexp(gram_src, p.n, i, inv_tau);
    lse_ada[i] = similarity_row_logsumexp(gram_ada, p.n, i, inv_tau);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < p.n; i += blockDim.x) {
    row_kl[i] = similarity_kl_row(gram_src, gram_ada, p.n, i, inv_tau, lse_src, lse_ada);
  }
  __syncthreads();
  if (p.reduction == kReduceNone) {
    for (int64_t i = threadIdx.x; i < p.n; i += blockDim.x) store(loss + i, row_kl[i]);
  } else if (threadIdx.x == 0) {
    store(loss, reduce_kl_rows(row_kl, p.n, p.reduction));
  }
}

template <typename scalar_t, typename acc_t>
void launch_similarity_kl_forward(const SimilarityKlForwardParams& p, cudaStream_t stream) {
  similarity_kl_forward_kernel<scalar_t, acc_t><<<1, kThreadsPerBlock, 0, stream>>>(p);
}

struct SimilarityKlGradMatrixParams {
  const void* grad_loss;  // acc_t: (n,) for kReduceNone, else one value
  const void* gram_src;   // acc_t (n, n)
  const void* gram_ada;   // acc_t (n, n)
  void* workspace;        // acc_t (3 n): lse_src, lse_ada, row_weight
  void* m;                // acc_t (n, n)
  int64_t n;
  double inv_tau;
  int reduction;
};

// One block. Row i of the loss weighs KL_i by grad_loss (times the reduction's factor); M is then
// ddpm_pa_math.h's similarity_kl_grad_matrix, an O(N^2) loop run by one thread.
template <typename acc_t>
__global__ void similarity_kl_grad_matrix_kernel(SimilarityKlGradMatrixParams p) {
  const acc_t* grad_loss = static_cast<const acc_t*>(p.grad_loss);
  const acc_t* gram_src = static_cast<const acc_t*>(p.gram_src);
  const acc_t* gram_ada = static_cast<const acc_t*>(p.gram_ada);
  acc_t* lse_src = static_cast<acc_t*>(p.workspace);
  acc_t* lse_ada = lse_src + p.n;
  acc_t* row_weight = lse_ada + p.n;
  const acc_t inv_tau = acc_t(p.inv_tau);
  for (int64_t i = threadIdx.x; i < p.n; i += blockDim.x) {
    lse_src[i] = similarity_row_logsumexp(gram_src, p.n, i, inv_tau);
    lse_ada[i] = similarity_row_logsumexp(gram_ada, p.n, i, inv_tau);
    row_weight[i] = p.reduction == kReduceNone ? grad_loss[i] : grad_loss[0] * reduction_scale<acc_t>(p.reduction, p.n);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    similarity_kl_grad_matrix(gram_src, gram_ada, p.n, inv_tau, lse_src, lse_ada, row_weight,
                              static_cast<acc_t*>(p.m));
  }
}

template <typename acc_t>
void launch_similarity_kl_grad_matrix(const SimilarityKlGradMatrixParams& p, cudaStream_t stream) {
  similarity_kl_grad_matrix_kernel<acc_t><<<1, kThreadsPerBlock, 0, stream>>>(p);
}

struct ApplyMatrixParams {
  const void* m;         // acc_t (n, n)
  const void* features;  // scalar_t, contiguous (n, d)
  void* out;             // scalar_t, contiguous (n, d): out = m @ features
  int64_t n, d;
  int64_t tile_columns;  // shared memory holds n * tile_columns acc_t
};

// Stages a tile of columns of all N samples, then each thread forms one output element from it, so
// the features are read once and the output written once.
template <typename scalar_t, typename acc_t>
__global__ void apply_matrix_kernel(ApplyMatrixParams p) {
  const acc_t* m = static_cast<const acc_t*>(p.m);
  const scalar_t* features = static_cast<const scalar_t*>(p.features);
  scalar_t* out = static_cast<scalar_t*>(p.out);
  acc_t* tile = dynamic_shared_memory<acc_t>();  // [sample][column]
  const int64_t kc = p.tile_columns;
  const int64_t num_tiles = ceil_div(p.d, kc);
  for (int64_t t = blockIdx.x; t < num_tiles; t += gridDim.x) {
    __syncthreads();
    for (int64_t e = threadIdx.x; e < p.n * kc; e += blockDim.x) {
      const int64_t sample = e / kc, column = t * kc + e % kc;
      tile[e] = column < p.d ? to_acc(features[sample * p.d + column]) : acc_t(0);
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < p.n * kc; e += blockDim.x) {
      const int64_t row = e / kc, u = e % kc, column = t * kc + u;
      if (column >= p.d) continue;
      acc_t total = acc_t(0);
      for (int64_t k = 0; k < p.n; ++k) total += m[row * p.n + k] * tile[k * kc + u];
      store(out + row * p.d + column, total);
    }
  }
}

template <typename scalar_t, typename acc_t>
void launch_apply_matrix(const ApplyMatrixParams& p, cudaStream_t stream) {
  const size_t shared_bytes = size_t(p.n * p.tile_columns) * sizeof(acc_t);
  const unsigned int blocks = reduction_blocks(ceil_div(p.d, p.tile_columns));
  apply_matrix_kernel<scalar_t, acc_t><<<blocks, kThreadsPerBlock, shared_bytes, stream>>>(p);
}

}  // namespace cuda
}  // namespace ddpm_pa
