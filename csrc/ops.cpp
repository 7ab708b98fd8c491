// The ops' schemas, defined once. Kernels register per dispatch key in csrc/cpu/*.cpp (CPU) and
// csrc/cuda/*.cu (CUDA), autograd in csrc/autograd.cpp; fake kernels are registered from Python
// (ddpm_pa_fast/ops.py).
//
// Forward ops return, after their public outputs, the small statistics their backward needs
// (Gram matrices), so the backward never recomputes a reduction over the inputs.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// A Python module with no methods: importing ddpm_pa_fast._C loads this library, whose static
// initialisers register the ops. Built against the limited API, so one wheel serves CPython >= 3.10.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(ddpm_pa_fast, m) {
  // (N, C, H, W) -> (N, C, H // 2, W // 2); its adjoint spreads each gradient over its 2x2 block.
  m.def("ddpm_pa_high_frequency(Tensor x) -> Tensor");
  m.def("ddpm_pa_high_frequency_backward(Tensor grad_hf, SymInt height, SymInt width) -> Tensor");

  // One level of the Haar DWT in pytorch_wavelets' layout: yl (N, C, h, w), yh (N, C, 3, h, w),
  // h = ceil(H / 2). mode is "zero", "symmetric" or "periodization" (they differ only at odd sizes).
  m.def("haar_dwt2d(Tensor x, str mode) -> (Tensor yl, Tensor yh)");
  // Adjoint of haar_dwt2d: synthesis of the gradients, folded back onto the (height, width) input.
  m.def("haar_dwt2d_backward(Tensor grad_yl, Tensor grad_yh, SymInt height, SymInt width, str mode) -> Tensor");
  // One level of the inverse: yl (N, C, h, w) and yh (N, C, 3, h, w) -> (N, C, 2h, 2w). Its adjoint is
  // haar_dwt2d(grad, "zero") at even size.
  m.def("haar_idwt2d(Tensor yl, Tensor yh) -> Tensor");

  // KL(P_src || P_ada) of row-softmaxed pairwise cosine similarities of (N, ...) features.
  // reduction: "mean", "batchmean", "sum" (0-d loss) or "none" (loss of shape (N,)).
  // gram_src, gram_ada: (N, N) Gram matrices in the accumulation dtype (float32; float64 for float64).
  m.def("pairwise_similarity_kl(Tensor src, Tensor ada, float tau, str reduction) -> (Tensor loss, Tensor gram_src, Tensor gram_ada)");
  m.def("pairwise_similarity_kl_backward(Tensor grad_loss, Tensor ada, Tensor gram_src, Tensor gram_ada, float tau, str reduction) -> Tensor");

  // The fused DDPM-PA loss. a_t, b_t: (N,) or (N, 1, 1, 1). mse_weight, hf_mse_weight: optional
  // per-sample weights m_i, h_i of the same shapes, any float dtype (used in the accumulation dtype, no
  // gradient, values unchecked: no host sync):
  //   mse = (1/N) sum_i m_i mean_chw (noise_i - eps_ada_i)^2,
  //   hf_mse = (1/N) sum_i h_i mean_chw (HF(x0_ada_i) - HF(x0_tgt_i))^2;
  // None is the plain mean, by the unweighted arithmetic (not a multiplication by ones). Outputs the
  // total and its four terms (0-d, the input dtype) and grams (4, N, N) in the accumulation dtype:
  // [G(x0_src), G(x0_ada), G(HF(x0_src)), G(HF(x0_ada))].
  m.def("ddpm_pa_loss(Tensor x_t, Tensor eps_ada, Tensor eps_src, Tensor noise, Tensor a_t, Tensor b_t, Tensor? mse_weight, Tensor? hf_mse_weight, float w_pair, float w_hf_pair, float w_hf_mse, float tau, str reduction) -> (Tensor loss, Tensor mse, Tensor hf_mse, Tensor pair_img, Tensor pair_hf, Tensor grams)");
  // grad_terms: (5,) upstream gradients of (loss, mse, hf_mse, pair_img, pair_hf), accumulation dtype.
  // Returns the gradient with respect to eps_ada, the only input that gets one.
  m.def("ddpm_pa_loss_backward(Tensor grad_terms, Tensor grams, Tensor x_t, Tensor eps_ada, Tensor noise, Tensor a_t, Tensor b_t, Tensor? mse_weight, Tensor? hf_mse_weight, float w_pair, float w_hf_pair, float w_hf_mse, float tau, str reduction) -> Tensor");
}
