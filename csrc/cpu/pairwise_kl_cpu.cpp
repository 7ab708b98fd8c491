// Pairwise similarity KL on CPU. The forward reads each input once, blocked over the flattened
// feature dimension, to accumulate the two Gram matrices; the KL itself is O(N^2) work on them. The
// backward is grad_ada = M @ ada, with M from the Gram matrices the forward saved.
#include <torch/library.h>

#include <type_traits>

#include "cpu_kernel_utils.h"

namespace ddpm_pa {
namespace cpu {
namespace {

// Rows [begin, end) of every sample of a (N, D) contiguous tensor in acc_t: the tensor's own memory
// when it already is acc_t, else a converted copy in `buffer` (stride end - begin).
template <typename scalar_t, typename acc_t>
const acc_t* block_rows(const scalar_t* data, int64_t n, int64_t d, int64_t begin, int64_t end,
                        std::vector<acc_t>& buffer, int64_t& stride) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    stride = d;
    return data + begin;
  } else {
    const int64_t len = end - begin;
    buffer.resize(n * len);
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t* DDPM_PA_RESTRICT src = data + i * d + begin;
      acc_t* DDPM_PA_RESTRICT dst = buffer.data() + i * len;
      DDPM_PA_SIMD
      for (int64_t e = 0; e < len; ++e) dst[e] = static_cast<acc_t>(src[e]);
    }
    stride = len;
    return buffer.data();
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pairwise_similarity_kl_cpu(const at::Tensor& src, const at::Tensor& ada,
                                                                          double tau, c10::string_view reduction_name) {
  TORCH_CHECK(src.dim() >= 2, "src must have at least 2 dimensions (N, ...), got shape ", src.sizes());
  check_floating(src, "src");
  check_same_layout(src, "src", ada, "ada");
  TORCH_CHECK(src.size(0) >= 2, "src must hold at least 2 samples (pairwise similarities need N >= 2), got N=",
              src.size(0));
  TORCH_CHECK(tau > 0 && std::isfinite(tau), "tau must be a finite number > 0, got ", tau);
  const int reduction = reduction_from_name(std::string(reduction_name), "reduction", /*allow_none=*/true);
  const int64_t n = src.size(0), d = src.numel() / n;
  const at::Tensor s = src.contiguous(), a = ada.contiguous();
  const at::ScalarType acc_dtype = accumulation_dtype(src.scalar_type());
  at::Tensor gram_src = at::empty({n, n}, src.options().dtype(acc_dtype));
  at::Tensor gram_ada = at::empty({n, n}, src.options().dtype(acc_dtype));
  at::Tensor loss = reduction == kReduceNone ? at::empty({n}, src.options()) : at::empty({}, src.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "pairwise_similarity_kl_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* s_data = s.const_data_ptr<scalar_t>();
    const scalar_t* a_data = a.const_data_ptr<scalar_t>();
    const FixedPartition partition(d, block_values_per_sample(n));
    const int64_t width = 2 * n * n;  // upper triangles of G_src and G_ada
    std::vector<double> partials(partition.count * width, 0.0);
    parallel_for_chunks(partition, [&](int64_t chunk, int64_t begin, int64_t end) {
      double* g_src = partials.data() + chunk * width;
      double* g_ada = g_src + n * n;
      std::vector<acc_t> buffer;
      const int64_t block = block_values_per_sample(n);
      for (int64_t b = begin; b < end; b += block) {
        const int64_t e = std::min(end, b + block);
        int64_t stride;
        const acc_t* rows = block_rows(s_data, n, d, b, e, buffer, stride);
        add_block_gram(rows, n, stride, e - b, g_src);
        rows = block_rows(a_data, n, d, b, e, buffer, stride);
        add_block_gram(rows, n, stride, e - b, g_ada);
      }
    });
    std::vector<double> total(width);
    sum_partials_in_order(partials, partition.count, width, total.data());
    acc_t* gs = gram_src.mutable_data_ptr<acc_t>();
    acc_t* ga = gram_ada.mutable_data_ptr<acc_t>();
    store_symmetric(total.data(), n, gs);
    store_symmetric(total.data() + n * n, n, ga);

    std::vector<acc_t> row_kl(n);
    similarity_kl_rows(gs, ga, n, static_cast<acc_t>(1.0 / tau), row_kl.data());
    scalar_t* out = loss.mutable_data_ptr<scalar_t>();
    if (reduction == kReduceNone) {
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(row_kl[i]);
    } else {
      out[0] = static_cast<scalar_t>(reduce_kl_rows(row_kl.data(), n, reduction));
    }
  });
  return {loss, gram_src, gram_ada};
}

at::Tensor pairwise_similarity_kl_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& ada,
                                               const at::Tensor& gram_src, const at::Tensor& gram_ada, double tau,
                                               c10::string_view reduction_name) {
  TORCH_CHECK(ada.dim() >= 2, "ada must have at least 2 dimensions (N, ...), got shape ", ada.sizes());
  check_floating(ada, "ada");
  TORCH_CHECK(tau > 0 && std::isfinite(tau), "tau must be a finite number > 0, got ", tau);
  const int reduction = reduction_from_name(std::string(reduction_name), "reduction", /*allow_none=*/true);
  const int64_t n = ada.size(0), d = ada.numel() / n;
  const at::ScalarType acc_dtype = accumulation_dtype(ada.scalar_type());
  for (const auto& [gram, name] : {std::pair{&gram_src, "gram_src"}, std::pair{&gram_ada, "gram_ada"}}) {
    TORCH_CHECK(gram->dim() == 2 && gram->size(0) == n && gram->size(1) == n, name, " must have shape (", n, ", ",
                n, "), got ", gram->sizes());
    TORCH_CHECK(gram->scalar_type() == acc_dtype, name, " must have dtype ", acc_dtype, ", got ",
                gram->scalar_type());
  }
  if (reduction == kReduceNone) {
    TORCH_CHECK(grad_loss.numel() == n, "grad_loss must hold ", n, " values for reduction 'none', got shape ",
                grad_loss.sizes());
  } else {
    TORCH_CHECK(grad_loss.numel() == 1, "grad_loss must be a scalar, got shape ", grad_loss.sizes());
  }
  const at::Tensor a = ada.contiguous();
  const at::Tensor g_src = gram_src.contiguous(), g_ada = gram_ada.contiguous();
  const at::Tensor upstream = grad_loss.to(acc_dtype).contiguous();
  at::Tensor grad = at::empty(ada.sizes(), ada.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ada.scalar_type(), "pairwise_similarity_kl_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t* up = upstream.const_data_ptr<acc_t>();
    std::vector<acc_t> row_weight(n);
    for (int64_t i = 0; i < n; ++i)
      row_weight[i] = reduction == kReduceNone ? up[i] : up[0] * reduction_scale<acc_t>(reduction, n);
    const std::vector<acc_t> m = similarity_kl_gradient(g_src.const_data_ptr<acc_t>(), g_ada.const_data_ptr<acc_t>(),
                                                         n, static_cast<acc_t>(1.0 / tau), row_weight.data());
    const scalar_t* a_data = a.const_data_ptr<scalar_t>();
    scalar_t* out = grad.mutable_data_ptr<scalar_t>();
    const int64_t block = block_values_per_sample(n);
    const FixedPartition partition(d, block);
    parallel_for_chunks(partition, [&](int64_t, int64_t begin, int64_t end) {
      std::vector<acc_t> in_buffer, out_buffer;
      for (int64_t b = begin; b < end; b += block) {
        const int64_t e = std::min(end, b + block), len = e - b;
        int64_t stride;
        const acc_t* rows = block_rows(a_data, n, d, b, e, in_buffer, stride);
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          // Not a template here, so this branch compiles for every type; it runs only when they match.
          apply_matrix_block(m.data(), n, rows, stride, len, reinterpret_cast<acc_t*>(out) + b, d);
        } else {
          out_buffer.resize(n * len);
          apply_matrix_block(m.data(), n, rows, stride, len, out_buffer.data(), len);
          for (int64_t i = 0; i < n; ++i) {
            const acc_t* DDPM_PA_RESTRICT src = out_buffer.data() + i * len;
            scalar_t* DDPM_PA_RESTRICT dst = out + i * d + b;
            DDPM_PA_SIMD
            for (int64_t k = 0; k < len; ++k) dst[k] = static_cast<scalar_t>(src[k]);
          }
        }
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_pa_fast, CPU, m) {
  m.impl("pairwise_similarity_kl", &pairwise_similarity_kl_cpu);
  m.impl("pairwise_similarity_kl_backward", &pairwise_similarity_kl_backward_cpu);
}

}  // namespace cpu
}  // namespace ddpm_pa
