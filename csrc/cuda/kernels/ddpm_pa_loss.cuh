// The fused DDPM-PA loss, forward and backward. Torch-free.
//
// The loss walks "units": the 2x2 blocks of the image extended to even size, C * ceil(H/2) * ceil(W/2)
// per sample, so every pixel belongs to exactly one unit and a unit's high-frequency value exists
// when its block is whole (i < H/2 and j < W/2; an odd last row or column is dropped by HF).
//
// Forward: (1) loss_forward_partials: each block stages, for a tile of units and all N samples, the
// x0 pixels and HF values of the source and adapted predictions in shared memory (reading x_t, eps_ada,
// eps_src and noise once), adds the tile's four N x N Gram matrices to its own slice of a partial
// buffer and sums the two squared errors, each value times its sample's weight m_n (mse_weight) or
// h_n (hf_mse_weight), 1 when not given (sample_weight, ddpm_pa_math.h); (2) reduce_partials
// (common.cuh), twice: the Gram matrices and the squared errors, summed in block order;
// (3) loss_forward_terms, one block: the KL terms and the total.
// Backward: (1) loss_backward_matrices, one block: the loss-term weights from the upstream gradients
// and the two similarity gradient matrices M_img and M_hf; (2) loss_backward_elements: per tile of
// units, reads x_t, eps_ada and noise once and writes the gradient of eps_ada once:
//   grad[n] = c_mse m_n 2 (eps_ada - noise)[n] / numel + HF^T(c_hf h_n 2 b_n^2 HF(eps_ada - noise)[n] / numel_hf)
//             - b_n (M_img @ x0_ada)[n] - b_n HF^T((M_hf @ HF(x0_ada))[n]).
#pragma once

#include "ddpm_pa_math.h"
#include "common.cuh"

namespace ddpm_pa {
namespace cuda {

// The four Gram matrices, in the order of the op's `grams` output.
enum LossGram : int { kGramImgSrc = 0, kGramImgAda = 1, kGramHfSrc = 2, kGramHfAda = 3, kNumLossGrams = 4 };
// Squared-error sums after the Gram matrices in each block's partial row.
enum LossSquaredError : int { kSseMse = 0, kSseHfMse = 1, kNumSquaredErrors = 2 };
// Accumulation-type values a tile stages per unit and sample.
constexpr int64_t kForwardValuesPerUnit = 4 + 4 + 1 + 1;  // x0_src pixels, x0_ada pixels, HF(x0_src), HF(x0_ada)
constexpr int64_t kBackwardValuesPerUnit = 4 + 4 + 1;     // x0_ada pixels, eps_ada - noise pixels, HF(x0_ada)

// The layout shared by forward and backward: the (N, C, H, W) inputs and the per-sample coefficients.
struct LossGeometry {
  int64_t n, c, height, width;
  int64_t tile_units;  // units per tile

  __host__ __device__ int64_t units_h() const { return (height + 1) / 2; }
  __host__ __device__ int64_t units_w() const { return (width + 1) / 2; }
  __host__ __device__ int64_t units_per_sample() const { return c * units_h() * units_w(); }
  __host__ __device__ int64_t num_tiles() const { return (units_per_sample() + tile_units - 1) / tile_units; }
  __host__ __device__ int64_t numel() const { return n * c * height * width; }
  __host__ __device__ int64_t numel_hf() const { return n * c * (height / 2) * (width / 2); }
};

// A unit's position: channel, block row i, block column j.
struct Unit {
  int64_t ch, i, j;
};

__device__ __forceinline__ Unit unit_at(const LossGeometry& g, int64_t unit) {
  const int64_t uw = g.units_w(), uh = g.units_h();
  return {unit / (uw * uh), (unit / uw) % uh, unit % uw};
}

// Pixel q of a unit (0..3 = a, b, c, d of the block (a b / c d)), and whether it lies in the image.
__device__ __forceinline__ bool unit_pixel(const LossGeometry& g, const Unit& u, int q, int64_t& row, int64_t& col) {
  row = 2 * u.i + q / 2;
  col = 2 * u.j + q % 2;
  return row < g.height && col < g.width;
}

__device__ __forceinline__ bool unit_has_high_frequency(const LossGeometry& g, const Unit& u) {
  return u.i < g.height / 2 && u.j < g.width / 2;
}

struct LossForwardPartialsParams {
  const void* x_t;      // scalar_t (n, c, height, width), strides x_t_strides; likewise the next three
  const void* eps_ada;
  const void* eps_src;
  const void* noise;
  const void* a_t;      // acc_t (n,)
  const void* b_t;      // acc_t (n,)
  const void* mse_weight;     // acc_t (n,), or null: unweighted
  const void* hf_mse_weight;  // acc_t (n,), or null: unweighted
  void* partials;       // acc_t (gridDim.x, partial_stride): 4 Gram matrices (n, n), then 2 squared errors
  Strides4d x_t_strides, eps_ada_strides, eps_src_strides, noise_strides;
  LossGeometry geometry;

  __host__ __device__ int64_t partial_stride() const {
    return kNumLossGrams * geometry.n * geometry.n + kNumSquaredErrors;
  }
};

// The tile's four Gram matrices in one walk over the sample pairs: partial[gram * n * n + i * n + j] +=
// <tile[i], tile[j]> for the x0 pixel tiles (rows of 4 kc) and the HF tiles (rows of kc). One warp per
// pair (i, j), the lanes striding the rows and a fixed butterfly summing them, as accumulate_tile_gram
// (common.cuh) does for one tile: the same sums in the same order, with the pair's index arithmetic
// and loop done once instead of once per matrix.
template <typename acc_t>
__device__ void accumulate_tile_grams(const acc_t* img_src, const acc_t* img_ada, const acc_t* hf_src,
                                      const acc_t* hf_ada, int64_t n, int64_t kc, acc_t* partial) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  for (int64_t pair = warp; pair < n * n; pair += kWarpsPerBlock) {
    const int64_t i = pair / n, j = pair % n;
    acc_t dot_src = acc_t(0), dot_ada = acc_t(0), dot_hf_src = acc_t(0), dot_hf_ada = acc_t(0);
    for (int64_t k = lane; k < 4 * kc; k += kWarpSize) {
      dot_src += img_src[i * 4 * kc + k] * img_src[j * 4 * kc + k];
      dot_ada += img_ada[i * 4 * kc + k] * img_ada[j * 4 * kc + k];
    }
    for (int64_t k = lane; k < kc; k += kWarpSize) {
      dot_hf_src += hf_src[i * kc + k] * hf_src[j * kc + k];
      dot_hf_ada += hf_ada[i * kc + k] * hf_ada[j * kc + k];
    }
    dot_src = warp_sum(dot_src);
    dot_ada = warp_sum(dot_ada);
    dot_hf_src = warp_sum(dot_hf_src);
    dot_hf_ada = warp_sum(dot_hf_ada);
    if (lane == 0) {
      partial[kGramImgSrc * n * n + pair] += dot_src;
      partial[kGramImgAda * n * n + pair] += dot_ada;
      partial[kGramHfSrc * n * n + pair] += dot_hf_src;
      partial[kGramHfAda * n * n + pair] += dot_hf_ada;
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void loss_forward_partials_kernel(LossForwardPartialsParams p) {
  const scalar_t* x_t = static_cast<const scalar_t*>(p.x_t);
  const scalar_t* eps_ada = static_cast<const scalar_t*>(p.eps_ada);
  const scalar_t* eps_src = static_cast<const scalar_t*>(p.eps_src);
  const scalar_t* noise = static_cast<const scalar_t*>(p.noise);
  const acc_t* a_t = static_cast<const acc_t*>(p.a_t);
  const acc_t* b_t = static_cast<const acc_t*>(p.b_t);
  const acc_t* mse_weight = static_cast<const acc_t*>(p.mse_weight);
  const acc_t* hf_mse_weight = static_cast<const acc_t*>(p.hf_mse_weight);
  const LossGeometry& g = p.geometry;
  const int64_t n = g.n, kc = g.tile_units;
  acc_t* partial = static_cast<acc_t*>(p.partials) + blockIdx.x * p.partial_stride();

  // Shared tile: pixel rows of 4 kc values, HF rows of kc values, one row per sample.
  acc_t* img_src = dynamic_shared_memory<acc_t>();
  acc_t* img_ada = img_src + n * 4 * kc;
  acc_t* hf_src = img_ada + n * 4 * kc;
  acc_t* hf_ada = hf_src + n * kc;
  __shared__ acc_t sum_scratch[kWarpsPerBlock];

  for (int64_t k = threadIdx.x; k < p.partial_stride(); k += blockDim.x) partial[k] = acc_t(0);
  acc_t sse_mse = acc_t(0), sse_hf = acc_t(0);
  const int64_t units = g.units_per_sample();
  for (int64_t t = blockIdx.x; t < g.num_tiles(); t += gridDim.x) {
    __syncthreads();  // the previous tile is no longer read, and the zeroed partial is visible
    for (int64_t e = threadIdx.x; e < n * kc; e += blockDim.x) {
      const int64_t sample = e / kc, u = e % kc, unit = t * kc + u;
      acc_t x0_src[4] = {0, 0, 0, 0}, x0_ada[4] = {0, 0, 0, 0}, x0_tgt[4] = {0, 0, 0, 0};
      acc_t hf_s = acc_t(0), hf_a = acc_t(0);
      if (unit < units) {
        const Unit pos = unit_at(g, unit);
        const acc_t a = a_t[sample], b = b_t[sample];
        // The sample's weights, first factor of each squared error: (m d) d is d d when m is 1.
        const acc_t m = sample_weight(mse_weight, sample), h = sample_weight(hf_mse_weight, sample);
        for (int q = 0; q < 4; ++q) {
          int64_t row, col;
          if (!unit_pixel(g, pos, q, row, col)) continue;
          const acc_t xt = to_acc(x_t[offset4d(p.x_t_strides, sample, pos.ch, row, col)]);
          const acc_t ea = to_acc(eps_ada[offset4d(p.eps_ada_strides, sample, pos.ch, row, col)]);
          const acc_t es = to_acc(eps_src[offset4d(p.eps_src_strides, sample, pos.ch, row, col)]);
          const acc_t nz = to_acc(noise[offset4d(p.noise_strides, sample, pos.ch, row, col)]);
          x0_src[q] = predict_x0(a, xt, b, es);
          x0_ada[q] = predict_x0(a, xt, b, ea);
          x0_tgt[q] = predict_x0(a, xt, b, nz);
          const acc_t d = nz - ea;
          sse_mse += (m * d) * d;
        }
        if (unit_has_high_frequency(g, pos)) {
          hf_s = high_frequency(x0_src[0], x0_src[1], x0_src[2], x0_src[3]);
          hf_a = high_frequency(x0_ada[0], x0_ada[1], x0_ada[2], x0_ada[3]);
          const acc_t hf_t = high_frequency(x0_tgt[0], x0_tgt[1], x0_tgt[2], x0_tgt[3]);
          const acc_t hd = hf_a - hf_t;
          sse_hf += (h * hd) * hd;
        }
      }
      for (int q = 0; q < 4; ++q) {
        img_src[sample * 4 * kc + 4 * u + q] = x0_src[q];
        img_ada[sample * 4 * kc + 4 * u + q] = x0_ada[q];
      }
      hf_src[sample * kc + u] = hf_s;
      hf_ada[sample * kc + u] = hf_a;
    }
    __syncthreads();
    accumulate_tile_grams(img_src, img_ada, hf_src, hf_ada, n, kc, partial);
  }
  const acc_t block_sse_mse = block_sum(sse_mse, sum_scratch);
  const acc_t block_sse_hf = block_sum(sse_hf, sum_scratch);
  if (threadIdx.x == 0) {
    partial[kNumLossGrams * n * n + kSseMse] = block_sse_mse;
    partial[kNumLossGrams * n * n + kSseHfMse] = block_sse_hf;
  }
}

template <typename scalar_t, typename acc_t>
void launch_loss_forward_partials(const LossForwardPartialsParams& p, unsigned int blocks, cudaStream_t stream) {
  const size_t shared_bytes = size_t(kForwardValuesPerUnit * p.geometry.n * p.geometry.tile_units) * sizeof(acc_t);
  loss_forward_partials_kernel<scalar_t, acc_t><<<blocks, kThreadsPerBlock, shared_bytes, stream>>>(p);
}

struct LossForwardTermsParams {
  const void* grams;            // acc_t (4, n, n)
  // acc_t (2,): sum m (noise - eps_ada)^2, sum h (HF(x0_ada) - HF(x0_tgt))^2 (m, h: the weights or 1)
  const void* squared_errors;
  void* workspace;              // acc_t (6 n): lse of the 4 Gram matrices, row KL of the 2 pairs
  void* loss;                   // scalar_t 0-d each
  void* mse;
  void* hf_mse;
  void* pair_img;
  void* pair_hf;
  int64_t n, numel, numel_hf;
  double w_pair, w_hf_pair, w_hf_mse, inv_tau;
  int reduction;
};

template <typename scalar_t, typename acc_t>
__global__ void loss_forward_terms_kernel(LossForwardTermsParams p) {
  const int64_t n = p.n;
  const acc_t* grams = static_cast<const acc_t*>(p.grams);
  const acc_t* sse = static_cast<const acc_t*>(p.squared_errors);
  const acc_t* gram_img_src = grams + kGramImgSrc * n * n;
  const acc_t* gram_img_ada = grams + kGramImgAda * n * n;
  const acc_t* gram_hf_src = grams + kGramHfSrc * n * n;
  const acc_t* gram_hf_ada = grams + kGramHfAda * n * n;
  acc_t* lse = static_cast<acc_t*>(p.workspace);  // [gram][row]
  acc_t* row_kl_img = lse + kNumLossGrams * n;
  acc_t* row_kl_hf = row_kl_img + n;
  const acc_t inv_tau = acc_t(p.inv_tau);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    for (int gram = 0; gram < kNumLossGrams; ++gram) {
      lse[gram * n + i] = similarity_row_logsumexp(grams + gram * n * n, n, i, inv_tau);
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    row_kl_img[i] = similarity_kl_row(gram_img_src, gram_img_ada, n, i, inv_tau, lse + kGramImgSrc * n,
                                      lse + kGramImgAda * n);
    row_kl_hf[i] = similarity_kl_row(gram_hf_src, gram_hf_ada, n, i, inv_tau, lse + kGramHfSrc * n,
                                     lse + kGramHfAda * n);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const acc_t pair_img = reduce_kl_rows(row_kl_img, n, p.reduction);
    const acc_t pair_hf = reduce_kl_rows(row_kl_hf, n, p.reduction);
    const acc_t mse = sse[kSseMse] / acc_t(p.numel);
    const acc_t hf_mse = sse[kSseHfMse] / acc_t(p.numel_hf);
    const acc_t loss = mse + acc_t(p.w_pair) * pair_img + acc_t(p.w_hf_pair) * pair_hf + acc_t(p.w_hf_mse) * hf_mse;
    store(static_cast<scalar_t*>(p.loss), loss);
    store(static_cast<scalar_t*>(p.mse), mse);
    store(static_cast<scalar_t*>(p.hf_mse), hf_mse);
    store(static_cast<scalar_t*>(p.pair_img), pair_img);
    store(static_cast<scalar_t*>(p.pair_hf), pair_hf);
  }
}

template <typename scalar_t, typename acc_t>
void launch_loss_forward_terms(const LossForwardTermsParams& p, cudaStream_t stream) {
  loss_forward_terms_kernel<scalar_t, acc_t><<<1, kThreadsPerBlock, 0, stream>>>(p);
}

// Workspace of the backward, acc_t: M_img (n, n), M_hf (n, n), the two elementwise coefficients,
// then scratch for the log-sum-exps (4 n) and the row weights (2 n).
struct LossBackwardWorkspace {
  int64_t n;
  __host__ __device__ int64_t m_img() const { return 0; }
  __host__ __device__ int64_t m_hf() const { return n * n; }
  __host__ __device__ int64_t coef_mse() const { return 2 * n * n; }
  __host__ __device__ int64_t coef_hf() const { return 2 * n * n + 1; }
  __host__ __device__ int64_t lse() const { return 2 * n * n + 2; }
  __host__ __device__ int64_t row_weight() const { return 2 * n * n + 2 + kNumLossGrams * n; }
  __host__ __device__ int64_t size() const { return 2 * n * n + 2 + (kNumLossGrams + 2) * n; }
};

struct LossBackwardMatricesParams {
  const void* grad_terms;  // acc_t (5,): upstream gradients of loss, mse, hf_mse, pair_img, pair_hf
  const void* grams;       // acc_t (4, n, n)
  void* workspace;         // acc_t, LossBackwardWorkspace{n}.size()
  int64_t n, numel, numel_hf;
  double w_pair, w_hf_pair, w_hf_mse, inv_tau;
  int reduction;
};

// One block: rows in parallel for the log-sum-exps, then one thread per similarity matrix M.
template <typename acc_t>
__global__ void loss_backward_matrices_kernel(LossBackwardMatricesParams p) {
  const int64_t n = p.n;
  const LossBackwardWorkspace layout{n};
  const acc_t* grams = static_cast<const acc_t*>(p.grams);
  acc_t* ws = static_cast<acc_t*>(p.workspace);
  acc_t* lse = ws + layout.lse();                  // [gram][row]
  acc_t* row_weight_img = ws + layout.row_weight();
  acc_t* row_weight_hf = row_weight_img + n;
  const LossTermWeights<acc_t> c = loss_term_weights(static_cast<const acc_t*>(p.grad_terms), acc_t(p.w_pair),
                                                      acc_t(p.w_hf_pair), acc_t(p.w_hf_mse));
  const acc_t scale = reduction_scale<acc_t>(p.reduction, n);
  const acc_t inv_tau = acc_t(p.inv_tau);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    for (int gram = 0; gram < kNumLossGrams; ++gram) {
      lse[gram * n + i] = similarity_row_logsumexp(grams + gram * n * n, n, i, inv_tau);
    }
    row_weight_img[i] = c.pair_img * scale;
    row_weight_hf[i] = c.pair_hf * scale;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    similarity_kl_grad_matrix(grams + kGramImgSrc * n * n, grams + kGramImgAda * n * n, n, inv_tau,
                              lse + kGramImgSrc * n, lse + kGramImgAda * n, row_weight_img, ws + layout.m_img());
    ws[layout.coef_mse()] = c.mse * acc_t(2) / acc_t(p.numel);
    ws[layout.coef_hf()] = c.hf_mse * acc_t(2) / acc_t(p.numel_hf);
  } else if (threadIdx.x == kWarpSize) {  // another warp, so the two matrices are built side by side
    similarity_kl_grad_matrix(grams + kGramHfSrc * n * n, grams + kGramHfAda * n * n, n, inv_tau,
                              lse + kGramHfSrc * n, lse + kGramHfAda * n, row_weight_hf, ws + layout.m_hf());
  }
}

template <typename acc_t>
void launch_loss_backward_matrices(const LossBackwardMatricesParams& p, cudaStream_t stream) {
  loss_backward_matrices_kernel<acc_t><<<1, kThreadsPerBlock, 0, stream>>>(p);
}

struct LossBackwardElementsParams {
  const void* x_t;       // scalar_t (n, c, height, width), strides x_t_strides; likewise eps_ada, noise
  const void* eps_ada;
  const void* noise;
  const void* a_t;       // acc_t (n,)
  const void* b_t;       // acc_t (n,)
  const void* mse_weight;     // acc_t (n,), or null: unweighted
  const void* hf_mse_weight;  // acc_t (n,), or null: unweighted
  const void* workspace; // acc_t, filled by loss_backward_matrices
  void* grad_eps_ada;    // scalar_t (n, c, height, width), contiguous
  Strides4d x_t_strides, eps_ada_strides, noise_strides;
  LossGeometry geometry;
};

// Two walks over each tile, a block barrier between them, and they cannot be one: the gradient of
// sample s at a unit mixes x0_ada and HF(x0_ada) of all N samples at that unit ((M_img @ x0_ada)[s],
// (M_hf @ HF(x0_ada))[s]), and the items of one unit, sample-major (e = sample * kc + u), are staged
// by N different threads in different rounds of the walk; so no gradient can be formed before the
// whole tile is staged. Walk 1 reads the inputs once and stages x0_ada, HF(x0_ada) and eps_ada - noise
// (which walk 2 would otherwise read again); walk 2 reads only shared memory and writes each pixel once.
// Keeping a thread's items in registers across the barrier instead would need a fixed number of items
// per thread, tiles sized by the thread count rather than by shared memory: a re-tiling to time on a GPU.
template <typename scalar_t, typename acc_t>
__global__ void loss_backward_elements_kernel(LossBackwardElementsParams p) {
  const scalar_t* x_t = static_cast<const scalar_t*>(p.x_t);
  const scalar_t* eps_ada = static_cast<const scalar_t*>(p.eps_ada);
  const scalar_t* noise = static_cast<const scalar_t*>(p.noise);
  const acc_t* a_t = static_cast<const acc_t*>(p.a_t);
  const acc_t* b_t = static_cast<const acc_t*>(p.b_t);
  const acc_t* mse_weight = static_cast<const acc_t*>(p.mse_weight);
  const acc_t* hf_mse_weight = static_cast<const acc_t*>(p.hf_mse_weight);
  scalar_t* grad = static_cast<scalar_t*>(p.grad_eps_ada);
  const LossGeometry& g = p.geometry;
  const int64_t n = g.n, kc = g.tile_units;
  const LossBackwardWorkspace layout{n};
  const acc_t* ws = static_cast<const acc_t*>(p.workspace);
  const acc_t* m_img = ws + layout.m_img();
  const acc_t* m_hf = ws + layout.m_hf();
  const acc_t coef_mse = ws[layout.coef_mse()];
  const acc_t coef_hf = ws[layout.coef_hf()];
  const Strides4d grad_strides{g.c * g.height * g.width, g.height * g.width, g.width, 1};

  acc_t* img_ada = dynamic_shared_memory<acc_t>();  // [sample][4 kc]
  acc_t* diff = img_ada + n * 4 * kc;                // [sample][4 kc]: eps_ada - noise
  acc_t* hf_ada = diff + n * 4 * kc;                 // [sample][kc]
  const int64_t units = g.units_per_sample();
  for (int64_t t = blockIdx.x; t < g.num_tiles(); t += gridDim.x) {
    __syncthreads();
    for (int64_t e = threadIdx.x; e < n * kc; e += blockDim.x) {
      const int64_t sample = e / kc, u = e % kc, unit = t * kc + u;
      acc_t x0_ada[4] = {0, 0, 0, 0}, d[4] = {0, 0, 0, 0};
      acc_t hf_a = acc_t(0);
      if (unit < units) {
        const Unit pos = unit_at(g, unit);
        const acc_t a = a_t[sample], b = b_t[sample];
        for (int q = 0; q < 4; ++q) {
          int64_t row, col;
          if (!unit_pixel(g, pos, q, row, col)) continue;
          const acc_t xt = to_acc(x_t[offset4d(p.x_t_strides, sample, pos.ch, row, col)]);
          const acc_t ea = to_acc(eps_ada[offset4d(p.eps_ada_strides, sample, pos.ch, row, col)]);
          const acc_t nz = to_acc(noise[offset4d(p.noise_strides, sample, pos.ch, row, col)]);
          x0_ada[q] = predict_x0(a, xt, b, ea);
          d[q] = ea - nz;
        }
        if (unit_has_high_frequency(g, pos)) hf_a = high_frequency(x0_ada[0], x0_ada[1], x0_ada[2], x0_ada[3]);
      }
      for (int q = 0; q < 4; ++q) {
        img_ada[sample * 4 * kc + 4 * u + q] = x0_ada[q];
        diff[sample * 4 * kc + 4 * u + q] = d[q];
      }
      hf_ada[sample * kc + u] = hf_a;
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < n * kc; e += blockDim.x) {
      const int64_t sample = e / kc, u = e % kc, unit = t * kc + u;
      if (unit >= units) continue;
      const Unit pos = unit_at(g, unit);
      const acc_t b = b_t[sample];
      // The mse factors of this sample: the weight is exactly 1 when not given (sample_weight).
      const acc_t k_mse = coef_mse * sample_weight(mse_weight, sample);
      const acc_t k_hf = coef_hf * sample_weight(hf_mse_weight, sample);
      const acc_t* own_diff = diff + sample * 4 * kc + 4 * u;
      // (M_img @ x0_ada)[sample] at the unit's pixels and (M_hf @ HF(x0_ada))[sample] at the unit, in
      // one walk over the samples k: each sum in k order, as five separate walks would add it. A unit
      // without an HF value has hf_ada = 0 staged and its mixed_hf goes unused.
      acc_t mixed[4] = {0, 0, 0, 0}, mixed_hf = acc_t(0);
      for (int64_t k = 0; k < n; ++k) {
        const acc_t m = m_img[sample * n + k];
        for (int q = 0; q < 4; ++q) mixed[q] += m * img_ada[k * 4 * kc + 4 * u + q];
        mixed_hf += m_hf[sample * n + k] * hf_ada[k * kc + u];
      }
      acc_t pixel_grad[4];
      for (int q = 0; q < 4; ++q) pixel_grad[q] = k_mse * own_diff[q] - b * mixed[q];
      if (unit_has_high_frequency(g, pos)) {
        const acc_t hf_diff = high_frequency(own_diff[0], own_diff[1], own_diff[2], own_diff[3]);
        const acc_t grad_hf = k_hf * b * b * hf_diff - b * mixed_hf;
        acc_t ga, gb, gc, gd;
        high_frequency_adjoint(grad_hf, ga, gb, gc, gd);
        pixel_grad[0] += ga;
        pixel_grad[1] += gb;
        pixel_grad[2] += gc;
        pixel_grad[3] += gd;
      }
      for (int q = 0; q < 4; ++q) {
        int64_t row, col;
        if (unit_pixel(g, pos, q, row, col)) store(grad + offset4d(grad_strides, sample, pos.ch, row, col), pixel_grad[q]);
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
void launch_loss_backward_elements(const LossBackwardElementsParams& p, cudaStream_t stream) {
  const size_t shared_bytes = size_t(kBackwardValuesPerUnit * p.geometry.n * p.geometry.tile_units) * sizeof(acc_t);
  const unsigned int blocks = reduction_blocks(p.geometry.num_tiles());
  loss_backward_elements_kernel<scalar_t, acc_t><<<blocks, kThreadsPerBlock, shared_bytes, stream>>>(p);
}

}  // namespace cuda
}  // namespace ddpm_pa
