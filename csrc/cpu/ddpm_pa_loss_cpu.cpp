// The fused DDPM-PA loss on CPU.
//
// Forward: one pass over x_t, eps_ada, eps_src and noise. The flattened per-sample dimension is cut
// into units of one channel's row pair (so every 2x2 Haar block is whole; an odd last row is a unit of
// one row). For a block of units, x0_src, x0_ada and their high-frequency maps of all N samples are
// formed in a small buffer, and the four Gram matrices and the two squared-error sums accumulate from
// it; no x0 or HF tensor is ever materialised. Per-chunk partial sums are added in chunk order. The
// optional per-sample weights m_i (mse_weight) and h_i (hf_mse_weight) scale sample i's squared-error
// sums of a block as they are added to the chunk's partial sums:
//   mse = sum_i m_i sum_chw (eps_ada - noise)_i^2 / numel,
//   hf_mse = sum_i h_i b_i^2 sum_chw HF(eps_ada - noise)_i^2 / numel_hf.
//
// Backward: one pass over x_t, eps_ada and noise, writing grad_eps_ada once; for sample i:
//   grad_i = c_mse m_i 2 (eps_ada - noise)_i / numel + HF^T(c_hf h_i 2 b_i^2 HF(eps_ada - noise)_i / numel_hf)
//            - b_i (M_img @ x0_ada)_i - b_i HF^T(M_hf @ HF(x0_ada))_i
// with the M matrices built from the Gram matrices the forward saved. hf_mse uses
// HF(x0_ada) - HF(x0_tgt) = -b HF(eps_ada - noise), so x0_tgt is never formed either. An absent
// weight is no factor at all (not a factor of one), so unweighted calls keep the unweighted arithmetic.
#include <torch/library.h>

#include <optional>
#include <utility>
#include <vector>

#include "cpu_kernel_utils.h"

namespace ddpm_pa {
namespace cpu {

// The geometry of the blocked walk over one sample's (C, H, W) values.
struct LossLayout {
  int64_t n, channels, height, width;
  int64_t row_pairs;       // ceil(H / 2): units per channel
  int64_t half_width;      // W / 2: HF values per full unit
  int64_t units;           // channels * row_pairs
  int64_t units_per_block;
  int64_t values_per_block;  // max x0 values per sample in a block

  LossLayout(const at::Tensor& x)
      : n(x.size(0)), channels(x.size(1)), height(x.size(2)), width(x.size(3)) {
    row_pairs = (height + 1) / 2;
    half_width = width / 2;
    units = channels * row_pairs;
    units_per_block = std::max<int64_t>(1, block_values_per_sample(n) / (2 * width));
    values_per_block = units_per_block * 2 * width;
  }
  int64_t sample_values() const { return channels * height * width; }
  int64_t numel() const { return n * sample_values(); }
  int64_t hf_numel() const { return n * channels * (height / 2) * half_width; }
  // Offset of unit u's first value within a sample, and how many rows (1 or 2) it has.
  int64_t unit_offset(int64_t u) const { return (u / row_pairs) * height * width + 2 * (u % row_pairs) * width; }
  int64_t unit_rows(int64_t u) const { return 2 * (u % row_pairs) + 1 < height ? 2 : 1; }
};


template <typename scalar_t>
struct LossInputs {
  const scalar_t* x_t;
  const scalar_t* eps_ada;
  const scalar_t* eps_src;  // unused by the backward
  const scalar_t* noise;
  const acc_type<scalar_t>* coef_a;
  const acc_type<scalar_t>* coef_b;
  const acc_type<scalar_t>* mse_weight;     // (N,) or null: unweighted
  const acc_type<scalar_t>* hf_mse_weight;  // (N,) or null: unweighted
};

// What the backward multiplies by: the two N x N similarity-gradient matrices and the mse factors,
// which sample i's weights (LossInputs) scale.
template <typename acc_t>
struct BackwardFactors {
  const acc_t* m_img;
  const acc_t* m_hf;
  acc_t mse;  // c_mse 2 / numel
  acc_t hf;   // c_hf 2 / numel_hf
  bool stream_out;  // write the gradient with streaming stores (kStreamingPassBytes)

  // Sample i's factors: the weight is applied only when given.
  acc_t mse_of(const acc_t* weight, int64_t i) const { return weight ? mse * weight[i] : mse; }
  acc_t hf_of(const acc_t* weight, int64_t i) const { return weight ? hf * weight[i] : hf; }
};

// HF(eps_ada - noise) of block j of a row pair (top rows et, nt; bottom rows eb, nb), in acc_t: both
// passes need it and form it from the input rows, never storing eps_ada - noise.
template <typename acc_t, typename scalar_t>
DDPM_PA_ALWAYS_INLINE acc_t high_frequency_of_difference(const scalar_t* et, const scalar_t* nt, const scalar_t* eb,
                                                         const scalar_t* nb, int64_t j) {
  const auto diff = [&](const scalar_t* e, const scalar_t* z, int64_t k) {
    return static_cast<acc_t>(e[k]) - static_cast<acc_t>(z[k]);
  };
  return high_frequency<acc_t>(diff(et, nt, 2 * j), diff(et, nt, 2 * j + 1), diff(eb, nb, 2 * j),
                               diff(eb, nb, 2 * j + 1));
}

// A thread's scratch for the forward: x0_src, x0_ada, HF(x0_src), HF(x0_ada) of the N samples of a
// block.
struct ForwardScratch {
  enum : int64_t { kX0Src, kX0Ada, kHfSrc, kHfAda, kCount };
};
// The backward's: x0_ada and HF(x0_ada) of a block, M_img @ x0_ada and M_hf @ HF(x0_ada), and for
// the row pair in hand the top row's eps_ada - noise (row 0) and the gradient at its HF values (row 1).
struct BackwardScratch {
  enum : int64_t { kX0Ada, kPairImg, kHfAda, kPairHf, kRowPair, kCount };
};

template <typename acc_t>
StaggeredScratch<acc_t> loss_scratch(const LossLayout& layout, int64_t buffers) {
  return StaggeredScratch<acc_t>(buffers, layout.n, layout.values_per_block);
}

// Units [unit_begin, unit_end) of the forward: adds the chunk's four Gram upper triangles and two
// squared-error sums to `partial` (layout: 4 N^2 values, then the two sums).
//
// Inputs are read row after row, each row in column order, never the two rows of a pair side by side:
// the hardware prefetchers follow one sequential stream per input, and reading four inputs' row pairs
// side by side (two streams each) halved the read bandwidth on Zen 4 (2 threads; 8x3x256x256: 116 ->
// 76 GB/s, 32x3x256x256: 40 -> 20). A pair's HF values are formed during its bottom row, the top
// row's values coming back from L1 (x0 from the scratch, eps_ada - noise from the inputs just read).
template <int kBytes, typename scalar_t>
DDPM_PA_ALWAYS_INLINE void loss_forward_chunk_impl(const LossLayout& layout, const LossInputs<scalar_t>& in,
                                                   int64_t unit_begin, int64_t unit_end,
                                                   StaggeredScratch<acc_type<scalar_t>>& scratch, double* partial) {
  using acc_t = acc_type<scalar_t>;
  const int64_t n = layout.n, width = layout.width, half_width = layout.half_width, nn = n * n;
  const int64_t stride = scratch.stride();
  const scalar_t* xt = in.x_t;
  const scalar_t* ea = in.eps_ada;
  const scalar_t* es = in.eps_src;
  const scalar_t* nz = in.noise;
  const acc_t* coef_a = in.coef_a;
  const acc_t* coef_b = in.coef_b;
  using vec = typename Vec<acc_t, kBytes>::type;
  constexpr int64_t kLanes = Vec<acc_t, kBytes>::lanes;
  acc_t* x0_src = scratch.buffer(ForwardScratch::kX0Src);
  acc_t* x0_ada = scratch.buffer(ForwardScratch::kX0Ada);
  acc_t* hf_src = scratch.buffer(ForwardScratch::kHfSrc);
  acc_t* hf_ada = scratch.buffer(ForwardScratch::kHfAda);
  const HighFrequencyLanes<vec> hf_lanes;
  for (int64_t u0 = unit_begin; u0 < unit_end; u0 += layout.units_per_block) {
    const int64_t u1 = std::min(unit_end, u0 + layout.units_per_block);
    int64_t len = 0, hf_len = 0;
    for (int64_t i = 0; i < n; ++i) {
      const acc_t a = coef_a[i], b = coef_b[i];
      const vec a_lanes = vec{} + a, b_lanes = vec{} + b;
      // sum (eps_ada - noise)^2 and HF(eps_ada - noise)^2 in vector lanes across the block's rows:
      // neither difference is stored (a third store stream in a loop bound by its memory streams),
      // and one horizontal sum per sample and block.
      vec sq_lanes = {}, hf_sq_lanes = {};
      acc_t sq = 0, hf_sq = 0;
      int64_t pos = 0, hpos = 0;
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t top = i * layout.sample_values() + layout.unit_offset(u), bottom = top + width;
        acc_t* DDPM_PA_RESTRICT s_out = x0_src + i * stride + pos;
        acc_t* DDPM_PA_RESTRICT a_out = x0_ada + i * stride + pos;
        // One vector at column w of the row at `off` (input) / `out` (scratch): x0_src and x0_ada stored,
        // eps_ada - noise squared into sq_lanes; the three returned for the HF maps.
        const auto x0_vector = [&](int64_t off, int64_t out, int64_t w, vec& x0s, vec& x0a, vec& d) {
          const vec x = load_as_vec<kBytes, acc_t>(xt + off + w), e = load_as_vec<kBytes, acc_t>(ea + off + w);
          x0s = predict_x0<vec>(a_lanes, x, b_lanes, load_as_vec<kBytes, acc_t>(es + off + w));
          x0a = predict_x0<vec>(a_lanes, x, b_lanes, e);
          d = e - load_as_vec<kBytes, acc_t>(nz + off + w);
          store_vec(s_out + out + w, x0s);
          store_vec(a_out + out + w, x0a);
          sq_lanes += d * d;
        };
        // x0 of the row at `off` / `out` from column `from` on, and its squared errors.
        const auto x0_row = [&](int64_t off, int64_t out, int64_t from) {
          int64_t w = from;
          for (; w + kLanes <= width; w += kLanes) {
            vec x0s, x0a, d;
            x0_vector(off, out, w, x0s, x0a, d);
          }
          for (; w < width; ++w) {
            const acc_t x = xt[off + w], e = ea[off + w];
            s_out[out + w] = predict_x0<acc_t>(a, x, b, es[off + w]);
            a_out[out + w] = predict_x0<acc_t>(a, x, b, e);
            const acc_t d = e - static_cast<acc_t>(nz[off + w]);
            sq += d * d;
          }
        };
        x0_row(top, 0, 0);
        pos += width;
        if (layout.unit_rows(u) == 1) continue;  // an odd last row: no HF value
        acc_t* DDPM_PA_RESTRICT hs = hf_src + i * stride + hpos;
        acc_t* DDPM_PA_RESTRICT ha = hf_ada + i * stride + hpos;
        int64_t w = 0;
        for (; w + 2 * kLanes <= width; w += 2 * kLanes) {
          vec x0s[2][2], x0a[2][2], d[2][2];  // [row][vector]
          for (int c = 0; c < 2; ++c) {
            const int64_t k = w + c * kLanes;
            x0_vector(bottom, width, k, x0s[1][c], x0a[1][c], d[1][c]);
            x0s[0][c] = load_vec<kBytes>(s_out + k);
            x0a[0][c] = load_vec<kBytes>(a_out + k);
            d[0][c] = load_as_vec<kBytes, acc_t>(ea + top + k) - load_as_vec<kBytes, acc_t>(nz + top + k);
          }
          store_vec(hs + w / 2, hf_lanes.map(x0s[0][0], x0s[0][1], x0s[1][0], x0s[1][1]));
          store_vec(ha + w / 2, hf_lanes.map(x0a[0][0], x0a[0][1], x0a[1][0], x0a[1][1]));
          const vec hd = hf_lanes.map(d[0][0], d[0][1], d[1][0], d[1][1]);
          hf_sq_lanes += hd * hd;
        }
        x0_row(bottom, width, w);
        for (int64_t j = w / 2; j < half_width; ++j) {
          hs[j] = high_frequency(s_out[2 * j], s_out[2 * j + 1], s_out[width + 2 * j], s_out[width + 2 * j + 1]);
          ha[j] = high_frequency(a_out[2 * j], a_out[2 * j + 1], a_out[width + 2 * j], a_out[width + 2 * j + 1]);
          const acc_t hd = high_frequency_of_difference<acc_t>(ea + top, nz + top, ea + bottom, nz + bottom, j);
          hf_sq += hd * hd;
        }
        pos += width;
        hpos += half_width;
      }
      len = pos;
      hf_len = hpos;
      // Sample i's weight (one load per sample and block) scales its block sums in double. It is the
      // first factor of each product, so a weight of 1 gives the unweighted sums bit for bit, whether or
      // not the compiler fuses the multiply and the add (it does in the FMA copies).
      const double sample_sq = static_cast<double>(sum_lanes(sq_lanes) + sq);
      const double sample_hf_sq = static_cast<double>(sum_lanes(hf_sq_lanes) + hf_sq);
      const double b_d = static_cast<double>(b);
      if (in.mse_weight) {
        partial[4 * nn] += static_cast<double>(in.mse_weight[i]) * sample_sq;
      } else {
        partial[4 * nn] += sample_sq;
      }
      if (in.hf_mse_weight) {
        partial[4 * nn + 1] += static_cast<double>(in.hf_mse_weight[i]) * b_d * b_d * sample_hf_sq;
      } else {
        partial[4 * nn + 1] += b_d * b_d * sample_hf_sq;
      }
    }
    add_block_gram_impl<kBytes>(x0_src, n, stride, len, partial);
    add_block_gram_impl<kBytes>(x0_ada, n, stride, len, partial + nn);
    add_block_gram_impl<kBytes>(hf_src, n, stride, hf_len, partial + 2 * nn);
    add_block_gram_impl<kBytes>(hf_ada, n, stride, hf_len, partial + 3 * nn);
  }
}

// Units [unit_begin, unit_end) of the backward: writes grad_eps_ada there. Per block: x0_ada and its
// HF map (reads x_t, eps_ada), the two M products, then per row pair eps_ada - noise again (eps_ada
// is still in cache), its HF map, the gradient at each HF value, and per row the mse terms, the pair
// term and the HF gradient spread over its block, written once. Rows one after the other, as in the
// forward: the top row's eps_ada - noise waits in the scratch for the bottom row, and the top row's
// gradient is written after the bottom row's.
template <int kBytes, typename scalar_t>
DDPM_PA_ALWAYS_INLINE void loss_backward_chunk_impl(const LossLayout& layout, const LossInputs<scalar_t>& in,
                                                    const BackwardFactors<acc_type<scalar_t>>& factors, int64_t unit_begin,
                                                    int64_t unit_end, StaggeredScratch<acc_type<scalar_t>>& scratch,
                                                    scalar_t* out) {
  using acc_t = acc_type<scalar_t>;
  const int64_t n = layout.n, width = layout.width, half_width = layout.half_width;
  const int64_t stride = scratch.stride();
  const scalar_t* xt = in.x_t;
  const scalar_t* ea = in.eps_ada;
  const scalar_t* nz = in.noise;
  const acc_t* coef_a = in.coef_a;
  const acc_t* coef_b = in.coef_b;
  acc_t* x0_ada = scratch.buffer(BackwardScratch::kX0Ada);
  acc_t* pair_img = scratch.buffer(BackwardScratch::kPairImg);
  acc_t* hf_ada = scratch.buffer(BackwardScratch::kHfAda);
  acc_t* pair_hf = scratch.buffer(BackwardScratch::kPairHf);
  acc_t* top_diff = scratch.buffer(BackwardScratch::kRowPair);
  acc_t* hf_grad = top_diff + stride;
  using vec = typename Vec<acc_t, kBytes>::type;
  constexpr int64_t kLanes = Vec<acc_t, kBytes>::lanes;
  const HighFrequencyLanes<vec> hf_lanes;
  for (int64_t u0 = unit_begin; u0 < unit_end; u0 += layout.units_per_block) {
    const int64_t u1 = std::min(unit_end, u0 + layout.units_per_block);
    int64_t len = 0, hf_len = 0;
    for (int64_t i = 0; i < n; ++i) {
      const acc_t a = coef_a[i], b = coef_b[i];
      const vec a_lanes = vec{} + a, b_lanes = vec{} + b;
      int64_t pos = 0, hpos = 0;
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t top = i * layout.sample_values() + layout.unit_offset(u), bottom = top + width;
        acc_t* DDPM_PA_RESTRICT x0 = x0_ada + i * stride + pos;
        DDPM_PA_SIMD
        for (int64_t w = 0; w < width; ++w) x0[w] = predict_x0<acc_t>(a, xt[top + w], b, ea[top + w]);
        pos += width;
        if (layout.unit_rows(u) == 1) continue;
        acc_t* DDPM_PA_RESTRICT hx = hf_ada + i * stride + hpos;
        int64_t w = 0;
        for (; w + 2 * kLanes <= width; w += 2 * kLanes) {
          vec v[2][2];  // [row][vector]
          for (int c = 0; c < 2; ++c) {
            const int64_t k = w + c * kLanes;
            v[1][c] = predict_x0<vec>(a_lanes, load_as_vec<kBytes, acc_t>(xt + bottom + k), b_lanes,
                                      load_as_vec<kBytes, acc_t>(ea + bottom + k));
            store_vec(x0 + width + k, v[1][c]);
            v[0][c] = load_vec<kBytes>(x0 + k);
          }
          store_vec(hx + w / 2, hf_lanes.map(v[0][0], v[0][1], v[1][0], v[1][1]));
        }
        for (int64_t k = w; k < width; ++k) x0[width + k] = predict_x0<acc_t>(a, xt[bottom + k], b, ea[bottom + k]);
        for (int64_t j = w / 2; j < half_width; ++j)
          hx[j] = high_frequency(x0[2 * j], x0[2 * j + 1], x0[width + 2 * j], x0[width + 2 * j + 1]);
        pos += width;
        hpos += half_width;
      }
      len = pos;
      hf_len = hpos;
    }
    apply_matrix_block_impl<kBytes>(factors.m_img, n, x0_ada, stride, len, pair_img, stride);
    apply_matrix_block_impl<kBytes>(factors.m_hf, n, hf_ada, stride, hf_len, pair_hf, stride);
    for (int64_t i = 0; i < n; ++i) {
      const acc_t k_mse = factors.mse_of(in.mse_weight, i);
      const acc_t b = coef_b[i], k_hf_b = factors.hf_of(in.hf_mse_weight, i) * b * b;
      const vec mse_lanes = vec{} + k_mse;
      const vec b_lanes = vec{} + b, k_hf_b_lanes = vec{} + k_hf_b;
      int64_t pos = 0, hpos = 0;
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t top = i * layout.sample_values() + layout.unit_offset(u), bottom = top + width;
        const acc_t* DDPM_PA_RESTRICT p = pair_img + i * stride + pos;
        const auto diff = [&](int64_t k) { return static_cast<acc_t>(ea[k]) - static_cast<acc_t>(nz[k]); };
        // The gradient of the row at `off` from the mse terms, the pair term (p_row) and, for columns
        // below `paired`, the HF gradient spread from hf_grad; eps_ada - noise from d_row, or from the
        // inputs when d_row is null.
        const auto write_row = [&](int64_t off, const acc_t* p_row, const acc_t* d_row, int row, int64_t from,
                                   int64_t paired) {
          const auto row_vec = [&](int64_t w) {
            const vec d = d_row ? load_vec<kBytes>(d_row + w)
                                : load_as_vec<kBytes, acc_t>(ea + off + w) - load_as_vec<kBytes, acc_t>(nz + off + w);
            return mse_lanes * d - b_lanes * load_vec<kBytes>(p_row + w);
          };
          int64_t w = from;
          // hf_grad's row is far longer than half_width: a load past its end stays in it (and the
          // spread uses only the load's first half).
          for (; w + kLanes <= paired; w += kLanes)
            store_vec_as(out + off + w, row_vec(w) + hf_lanes.spread(load_vec<kBytes>(hf_grad + w / 2), row, 0),
                         factors.stream_out);
          for (; w >= paired && w + kLanes <= width; w += kLanes) store_vec_as(out + off + w, row_vec(w), factors.stream_out);
          for (; w < width; ++w) {
            const acc_t d = d_row ? d_row[w] : diff(off + w);
            const acc_t spread = w < paired ? hf_lanes.weight(row, w) * hf_grad[w / 2] : acc_t(0);
            out[off + w] = static_cast<scalar_t>(k_mse * d - b * p_row[w] + spread);
          }
        };
        if (layout.unit_rows(u) == 1) {
          write_row(top, p, nullptr, 0, 0, 0);
          pos += width;
          continue;
        }
        const acc_t* DDPM_PA_RESTRICT ph = pair_hf + i * stride + hpos;
        DDPM_PA_SIMD
        for (int64_t k = 0; k < width; ++k) top_diff[k] = diff(top + k);
        // The bottom row 2 x lanes columns at a time: HF(eps_ada - noise) of the pair and the gradient
        // at the HF values; then both rows' gradients, top row first (the bottom row's inputs are in L1).
        int64_t w = 0;
        for (; w + 2 * kLanes <= width; w += 2 * kLanes) {
          vec d[2][2];  // [row][vector]
          for (int c = 0; c < 2; ++c) {
            const int64_t k = w + c * kLanes;
            d[0][c] = load_vec<kBytes>(top_diff + k);
            d[1][c] = load_as_vec<kBytes, acc_t>(ea + bottom + k) - load_as_vec<kBytes, acc_t>(nz + bottom + k);
          }
          store_vec(hf_grad + w / 2, k_hf_b_lanes * hf_lanes.map(d[0][0], d[0][1], d[1][0], d[1][1]) -
                                         b_lanes * load_vec<kBytes>(ph + w / 2));
        }
        for (int64_t j = w / 2; j < half_width; ++j) {
          const acc_t hd = high_frequency<acc_t>(top_diff[2 * j], top_diff[2 * j + 1], diff(bottom + 2 * j),
                                                 diff(bottom + 2 * j + 1));
          hf_grad[j] = k_hf_b * hd - b * ph[j];
        }
        write_row(top, p, top_diff, 0, 0, 2 * half_width);
        write_row(bottom, p + width, nullptr, 1, 0, 2 * half_width);
        pos += 2 * width;
        hpos += half_width;
      }
    }
  }
  if (factors.stream_out) stream_fence();
}

// One compiled copy per dtype and instruction set (see DDPM_PA_DISPATCH_BY_ISA).
#define DDPM_PA_LOSS_CHUNKS(scalar_t)                                                                             \
  DDPM_PA_DISPATCH_BY_ISA(void, loss_forward_chunk,                                                              \
                          (const LossLayout& layout, const LossInputs<scalar_t>& in, int64_t unit_begin,         \
                           int64_t unit_end, StaggeredScratch<acc_type<scalar_t>>& scratch, double* partial),    \
                          (layout, in, unit_begin, unit_end, scratch, partial), loss_forward_chunk_impl)         \
  DDPM_PA_DISPATCH_BY_ISA(void, loss_backward_chunk,                                                             \
                          (const LossLayout& layout, const LossInputs<scalar_t>& in,                             \
                           const BackwardFactors<acc_type<scalar_t>>& factors, int64_t unit_begin,              \
                           int64_t unit_end, StaggeredScratch<acc_type<scalar_t>>& scratch, scalar_t* out),      \
                          (layout, in, factors, unit_begin, unit_end, scratch, out), loss_backward_chunk_impl)
DDPM_PA_LOSS_CHUNKS(float)
DDPM_PA_LOSS_CHUNKS(double)
DDPM_PA_LOSS_CHUNKS(c10::Half)
DDPM_PA_LOSS_CHUNKS(c10::BFloat16)
#undef DDPM_PA_LOSS_CHUNKS

namespace {

void check_loss_args(const at::Tensor& x_t, const at::Tensor& eps_ada, const at::Tensor& noise, const at::Tensor& a_t,
                     const at::Tensor& b_t, const std::optional<at::Tensor>& mse_weight,
                     const std::optional<at::Tensor>& hf_mse_weight, double tau) {
  TORCH_CHECK(x_t.dim() == 4, "x_t must be a 4-D (N, C, H, W) tensor, got shape ", x_t.sizes());
  check_floating(x_t, "x_t");
  check_same_layout(x_t, "x_t", eps_ada, "eps_ada");
  check_same_layout(x_t, "x_t", noise, "noise");
  TORCH_CHECK(x_t.size(0) >= 2, "x_t must hold at least 2 samples (pairwise similarities need N >= 2), got N=",
              x_t.size(0));
  TORCH_CHECK(x_t.size(2) >= 2 && x_t.size(3) >= 2, "x_t must have height and width of at least 2, got shape ",
              x_t.sizes());
  // The per-sample tensors: coefficients and the weights that are given. Values are not checked (a host
  // sync on CUDA, and any float is a weight).
  std::vector<std::pair<const at::Tensor*, const char*>> per_sample_args{{&a_t, "a_t"}, {&b_t, "b_t"}};
  if (mse_weight.has_value()) per_sample_args.emplace_back(&*mse_weight, "mse_weight");
  if (hf_mse_weight.has_value()) per_sample_args.emplace_back(&*hf_mse_weight, "hf_mse_weight");
  for (const auto& [coef, name] : per_sample_args) {
    check_floating(*coef, name);
    TORCH_CHECK(coef->numel() == x_t.size(0), name, " must hold one value per sample of x_t (", x_t.size(0),
                "), got shape ", coef->sizes());
    TORCH_CHECK(coef->device() == x_t.device(), name, " must be on the device of x_t (", x_t.device(), "), got ",
                coef->device());
  }
  TORCH_CHECK(tau > 0 && std::isfinite(tau), "tau must be a finite number > 0, got ", tau);
}

at::Tensor per_sample(const at::Tensor& coef, at::ScalarType acc_dtype) {
  // The usual (N,) coefficient in the accumulation dtype is used as it is: reshape, to and contiguous
  // are three dispatcher calls each, microseconds of host time per tensor at small sizes.
  if (coef.dim() == 1 && coef.scalar_type() == acc_dtype && coef.is_contiguous()) return coef;
  return coef.reshape({coef.numel()}).to(acc_dtype).contiguous();
}

// An optional weight as per_sample's tensor, or an undefined tensor when absent.
at::Tensor per_sample(const std::optional<at::Tensor>& weight, at::ScalarType acc_dtype) {
  return weight.has_value() ? per_sample(*weight, acc_dtype) : at::Tensor();
}

// The data of per_sample's tensor, null for an absent weight.
template <typename acc_t>
const acc_t* optional_data(const at::Tensor& weight) {
  return weight.defined() ? weight.const_data_ptr<acc_t>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ddpm_pa_loss_cpu(
    const at::Tensor& x_t, const at::Tensor& eps_ada, const at::Tensor& eps_src, const at::Tensor& noise,
    const at::Tensor& a_t, const at::Tensor& b_t, const std::optional<at::Tensor>& mse_weight,
    const std::optional<at::Tensor>& hf_mse_weight, double w_pair, double w_hf_pair, double w_hf_mse, double tau,
    c10::string_view reduction_name) {
  check_loss_args(x_t, eps_ada, noise, a_t, b_t, mse_weight, hf_mse_weight, tau);
  check_same_layout(x_t, "x_t", eps_src, "eps_src");
  const int reduction = reduction_from_name(std::string(reduction_name), "reduction", /*allow_none=*/false);
  const LossLayout layout(x_t);
  const int64_t n = layout.n;
  const at::ScalarType acc_dtype = accumulation_dtype(x_t.scalar_type());
  const at::Tensor xt_c = x_t.contiguous(), ea_c = eps_ada.contiguous(), es_c = eps_src.contiguous();
  const at::Tensor noise_c = noise.contiguous();
  const at::Tensor a_c = per_sample(a_t, acc_dtype), b_c = per_sample(b_t, acc_dtype);
  const at::Tensor mse_w = per_sample(mse_weight, acc_dtype), hf_mse_w = per_sample(hf_mse_weight, acc_dtype);
  at::Tensor grams = at::empty({4, n, n}, x_t.options().dtype(acc_dtype));
  std::array<at::Tensor, 5> terms;
  for (auto& t : terms) t = at::empty({}, x_t.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_t.scalar_type(), "ddpm_pa_loss_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* xt = xt_c.const_data_ptr<scalar_t>();
    const scalar_t* ea = ea_c.const_data_ptr<scalar_t>();
    const scalar_t* es = es_c.const_data_ptr<scalar_t>();
    const scalar_t* nz = noise_c.const_data_ptr<scalar_t>();
    const acc_t* coef_a = a_c.const_data_ptr<acc_t>();
    const acc_t* coef_b = b_c.const_data_ptr<acc_t>();
    const int64_t nn = n * n;
    // Per chunk: upper triangles of the four Gram matrices, then sum m (eps_ada - noise)^2 and
    // sum h b^2 HF(eps_ada - noise)^2 (m, h: the weights, or no factor).
    const int64_t width_partial = 4 * nn + 2;
    const FixedPartition partition(layout.units, layout.units_per_block);
    std::vector<double> partials(partition.count * width_partial, 0.0);

    const LossInputs<scalar_t> in{xt, ea, es, nz, coef_a, coef_b, optional_data<acc_t>(mse_w),
                                  optional_data<acc_t>(hf_mse_w)};
    parallel_for_chunks(
        partition, [&] { return loss_scratch<acc_t>(layout, ForwardScratch::kCount); },
        [&](StaggeredScratch<acc_t>& scratch, int64_t chunk, int64_t unit_begin, int64_t unit_end) {
          loss_forward_chunk(layout, in, unit_begin, unit_end, scratch, partials.data() + chunk * width_partial);
        });

    std::vector<double> total(width_partial);
    sum_partials_in_order(partials, partition.count, width_partial, total.data());
    acc_t* g = grams.mutable_data_ptr<acc_t>();
    for (int k = 0; k < 4; ++k) store_symmetric(total.data() + k * nn, n, g + k * nn);
    const acc_t inv_tau = static_cast<acc_t>(1.0 / tau);
    std::vector<acc_t> row_kl(n);
    similarity_kl_rows(g, g + nn, n, inv_tau, row_kl.data());
    const acc_t pair_img = reduce_kl_rows(row_kl.data(), n, reduction);
    similarity_kl_rows(g + 2 * nn, g + 3 * nn, n, inv_tau, row_kl.data());
    const acc_t pair_hf = reduce_kl_rows(row_kl.data(), n, reduction);
    const acc_t mse = static_cast<acc_t>(total[4 * nn] / static_cast<double>(layout.numel()));
    const acc_t hf_mse = static_cast<acc_t>(total[4 * nn + 1] / static_cast<double>(layout.hf_numel()));
    const acc_t loss = mse + static_cast<acc_t>(w_pair) * pair_img + static_cast<acc_t>(w_hf_pair) * pair_hf +
                       static_cast<acc_t>(w_hf_mse) * hf_mse;
    const acc_t values[5] = {loss, mse, hf_mse, pair_img, pair_hf};
    for (int k = 0; k < 5; ++k) *terms[k].mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(values[k]);
  });
  return {terms[kLoss], terms[kMse], terms[kHfMse], terms[kPairImg], terms[kPairHf], grams};
}

at::Tensor ddpm_pa_loss_backward_cpu(const at::Tensor& grad_terms, const at::Tensor& grams, const at::Tensor& x_t,
                                     const at::Tensor& eps_ada, const at::Tensor& noise, const at::Tensor& a_t,
                                     const at::Tensor& b_t, const std::optional<at::Tensor>& mse_weight,
                                     const std::optional<at::Tensor>& hf_mse_weight, double w_pair, double w_hf_pair,
                                     double w_hf_mse, double tau, c10::string_view reduction_name) {
  check_loss_args(x_t, eps_ada, noise, a_t, b_t, mse_weight, hf_mse_weight, tau);
  const int reduction = reduction_from_name(std::string(reduction_name), "reduction", /*allow_none=*/false);
  const LossLayout layout(x_t);
  const int64_t n = layout.n;
  const at::ScalarType acc_dtype = accumulation_dtype(x_t.scalar_type());
  TORCH_CHECK(grad_terms.numel() == kNumLossTerms, "grad_terms must hold the ", int(kNumLossTerms),
              " upstream gradients of (loss, mse, hf_mse, pair_img, pair_hf), got shape ", grad_terms.sizes());
  TORCH_CHECK(grams.dim() == 3 && grams.size(0) == 4 && grams.size(1) == n && grams.size(2) == n,
              "grams must have shape (4, ", n, ", ", n, "), got ", grams.sizes());
  TORCH_CHECK(grams.scalar_type() == acc_dtype, "grams must have dtype ", acc_dtype, ", got ", grams.scalar_type());
  const at::Tensor xt_c = x_t.contiguous(), ea_c = eps_ada.contiguous(), noise_c = noise.contiguous();
  const at::Tensor a_c = per_sample(a_t, acc_dtype), b_c = per_sample(b_t, acc_dtype);
  const at::Tensor mse_w = per_sample(mse_weight, acc_dtype), hf_mse_w = per_sample(hf_mse_weight, acc_dtype);
  const at::Tensor g_c = grams.contiguous(), up_c = grad_terms.to(acc_dtype).contiguous();
  at::Tensor grad = at::empty(x_t.sizes(), x_t.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_t.scalar_type(), "ddpm_pa_loss_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const int64_t nn = n * n;
    const acc_t* g = g_c.const_data_ptr<acc_t>();
    const LossTermWeights<acc_t> c = loss_term_weights<acc_t>(
        up_c.const_data_ptr<acc_t>(), static_cast<acc_t>(w_pair), static_cast<acc_t>(w_hf_pair),
        static_cast<acc_t>(w_hf_mse));
    const acc_t scale = reduction_scale<acc_t>(reduction, n);
    const acc_t inv_tau = static_cast<acc_t>(1.0 / tau);
    const std::vector<acc_t> weight_img(n, c.pair_img * scale), weight_hf(n, c.pair_hf * scale);
    const std::vector<acc_t> m_img = similarity_kl_gradient(g, g + nn, n, inv_tau, weight_img.data());
    const std::vector<acc_t> m_hf = similarity_kl_gradient(g + 2 * nn, g + 3 * nn, n, inv_tau, weight_hf.data());
    const acc_t k_mse = c.mse * acc_t(2) / static_cast<acc_t>(layout.numel());
    const acc_t k_hf = c.hf_mse * acc_t(2) / static_cast<acc_t>(layout.hf_numel());

    const scalar_t* xt = xt_c.const_data_ptr<scalar_t>();
    const scalar_t* ea = ea_c.const_data_ptr<scalar_t>();
    const scalar_t* nz = noise_c.const_data_ptr<scalar_t>();
    const acc_t* coef_a = a_c.const_data_ptr<acc_t>();
    const acc_t* coef_b = b_c.const_data_ptr<acc_t>();
    scalar_t* out = grad.mutable_data_ptr<scalar_t>();
    const FixedPartition partition(layout.units, layout.units_per_block);

    const LossInputs<scalar_t> in{xt, ea, nullptr, nz, coef_a, coef_b, optional_data<acc_t>(mse_w),
                                  optional_data<acc_t>(hf_mse_w)};
    // The pass reads x_t, eps_ada and noise and writes the gradient, all of one size.
    const BackwardFactors<acc_t> factors{m_img.data(), m_hf.data(), k_mse, k_hf,
                                         4 * grad.nbytes() >= static_cast<size_t>(kStreamingPassBytes)};
    parallel_for_chunks(
        partition, [&] { return loss_scratch<acc_t>(layout, BackwardScratch::kCount); },
        [&](StaggeredScratch<acc_t>& scratch, int64_t, int64_t unit_begin, int64_t unit_end) {
          loss_backward_chunk(layout, in, factors, unit_begin, unit_end, scratch, out);
        });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_pa_fast, CPU, m) {
  m.impl("ddpm_pa_loss", &ddpm_pa_loss_cpu);
  m.impl("ddpm_pa_loss_backward", &ddpm_pa_loss_backward_cpu);
}

}  // namespace cpu
}  // namespace ddpm_pa
