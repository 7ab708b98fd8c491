// Autograd for the five ops, registered for the Autograd dispatch key. Each backward is the op's
// registered *_backward op (or, for haar_idwt2d, haar_dwt2d) called through the dispatcher, so the
// device's kernel runs and torch.compile traces ops, never code.
//
// The *_backward ops have autograd of their own, for double backward (create_graph=True: gradient
// penalties, Hessian-vector products). Without it torch's fallback let a second backward through them
// return zeros. The linear ops' backward ops are linear in the incoming gradient, so their derivative
// is the forward op again (the adjoint of the adjoint) and every order is exact. The nonlinear ops'
// backward ops raise when a second backward reaches them (see double_backward_unsupported).
//
// In C++ rather than torch.library.register_autograd: the Python wrapper cost about 60 us per forward
// and as much per backward (argument re-binding, a Python autograd.Function), more than the CPU
// kernels take at the benchmark's small sizes. Here it is a few microseconds.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

#include "ddpm_pa_math.h"

#ifdef DDPM_PA_WITH_CUDA
#include <nvtx3/nvToolsExt.h>
#endif

namespace ddpm_pa {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The typed dispatcher handle of ddpm_pa_fast::<name>, looked up once.
template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

#ifdef DDPM_PA_WITH_CUDA
nvtxDomainHandle_t nvtx_domain() {
  static const nvtxDomainHandle_t domain = nvtxDomainCreateA("ddpm_pa_fast");
  return domain;
}
#endif

// "<op>.backward" as a range: in torch.profiler always, and in Nsight Systems (NVTX domain
// "ddpm_pa_fast", next to the forward ranges ddpm_pa_fast/_nvtx.py opens) in CUDA builds.
class BackwardRange {
 public:
  explicit BackwardRange(const char* name) : record_(at::RecordScope::BACKWARD_FUNCTION) {
    if (record_.isActive()) record_.before(name);
#ifdef DDPM_PA_WITH_CUDA
    nvtxEventAttributes_t attributes = {};
    attributes.version = NVTX_VERSION;
    attributes.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    attributes.messageType = NVTX_MESSAGE_TYPE_ASCII;
    attributes.message.ascii = name;
    nvtxDomainRangePushEx(nvtx_domain(), &attributes);
#endif
  }
  ~BackwardRange() {
#ifdef DDPM_PA_WITH_CUDA
    nvtxDomainRangePop(nvtx_domain());
#endif
  }
  BackwardRange(const BackwardRange&) = delete;
  BackwardRange& operator=(const BackwardRange&) = delete;

 private:
  at::RecordFunction record_;
};

using OptionalTensor = std::optional<at::Tensor>;

bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
bool requires_grad(const OptionalTensor& t) { return t.has_value() && requires_grad(*t); }

// Whether the Autograd kernel of a backward op has a graph to record: grad mode on (the engine turns
// it on only inside a create_graph=True backward) and an input that requires grad, as Function::apply
// decides. Otherwise the kernel calls the op directly, without apply's node and bookkeeping, so a
// first-order backward costs what it did before these kernels existed.
template <typename... Tensors>
bool records_graph(const Tensors&... inputs) {
  return at::GradMode::is_enabled() && (requires_grad(inputs) || ...);
}

// The dispatcher handles the autograd functions below call (each looked up once).
using HighFrequencySignature = at::Tensor(const at::Tensor&);
using HighFrequencyBackwardSignature = at::Tensor(const at::Tensor&, c10::SymInt, c10::SymInt);
using HaarDwtSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::string_view);
using HaarDwtBackwardSignature =
    at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt, c10::SymInt, c10::string_view);
using PairwiseKlBackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, double, c10::string_view);
using LossBackwardSignature =
    at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
               const at::Tensor&, const at::Tensor&, const OptionalTensor&, const OptionalTensor&, double, double,
               double, double, c10::string_view);

const c10::TypedOperatorHandle<HighFrequencySignature>& high_frequency_op() {
  static const auto op = op_handle<HighFrequencySignature>("ddpm_pa_fast::ddpm_pa_high_frequency");
  return op;
}
const c10::TypedOperatorHandle<HighFrequencyBackwardSignature>& high_frequency_backward_op() {
  static const auto op =
      op_handle<HighFrequencyBackwardSignature>("ddpm_pa_fast::ddpm_pa_high_frequency_backward");
  return op;
}
const c10::TypedOperatorHandle<HaarDwtSignature>& haar_dwt2d_op() {
  static const auto op = op_handle<HaarDwtSignature>("ddpm_pa_fast::haar_dwt2d");
  return op;
}
const c10::TypedOperatorHandle<HaarDwtBackwardSignature>& haar_dwt2d_backward_op() {
  static const auto op = op_handle<HaarDwtBackwardSignature>("ddpm_pa_fast::haar_dwt2d_backward");
  return op;
}
const c10::TypedOperatorHandle<PairwiseKlBackwardSignature>& pairwise_similarity_kl_backward_op() {
  static const auto op =
      op_handle<PairwiseKlBackwardSignature>("ddpm_pa_fast::pairwise_similarity_kl_backward");
  return op;
}
const c10::TypedOperatorHandle<LossBackwardSignature>& ddpm_pa_loss_backward_op() {
  static const auto op = op_handle<LossBackwardSignature>("ddpm_pa_fast::ddpm_pa_loss_backward");
  return op;
}

// How torch holds autograd nodes: by std::shared_ptr up to torch 2.12 (2.11 is our floor), by
// c10::intrusive_ptr from 2.13. An Edge holds its node the same way, so its member's type says which.
using NodePtr = decltype(torch::autograd::Edge::function);

// A new backward node of type T, held as this torch holds nodes (T's own pointer type, so its members
// can be set; it converts to NodePtr). Only the branch of this torch is instantiated.
template <typename T>
auto make_node() {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>) {
    // torch's deleter frees a long chain of nodes without deep recursion; found by argument-dependent
    // lookup (T derives from torch::autograd::Node), so a torch without it never looks for it.
    return std::shared_ptr<T>(new T(), [](T* node) { deleteNode(node); });
  } else {
    return c10::make_intrusive<T>();
  }
}

// ---------------------------------------------------------------------------------------------

// The HF map's backward node, written as PyTorch's generated nodes are (see DdpmPaLossBackward below):
// one edge, the input's size as members. The map is linear, so nothing else is saved.
struct HighFrequencyBackward : public torch::autograd::Node {
  variable_list apply(variable_list&& grads) override {
    BackwardRange range("ddpm_pa_high_frequency.backward");
    if (!grads[0].defined()) return {at::Tensor()};
    return {high_frequency_backward_op().call(grads[0], height_, width_)};
  }
  std::string name() const override { return "DdpmPaHighFrequencyBackward"; }

  c10::SymInt height_, width_;
};

struct HaarDwtFunction : public torch::autograd::Function<HaarDwtFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const std::string& mode) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->saved_data["height"] = x.sym_size(2);
    ctx->saved_data["width"] = x.sym_size(3);
    ctx->saved_data["mode"] = mode;
    auto [yl, yh] = haar_dwt2d_op().call(x, mode);
    return {yl, yh};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    BackwardRange range("haar_dwt2d.backward");
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    return {haar_dwt2d_backward_op().call(grads[0], grads[1], ctx->saved_data["height"].toSymInt(),
                                          ctx->saved_data["width"].toSymInt(), mode),
            at::Tensor()};
  }
};

struct HaarIdwtFunction : public torch::autograd::Function<HaarIdwtFunction> {
  static at::Tensor forward(AutogradContext*, const at::Tensor& yl, const at::Tensor& yh) {
    static const auto op =
        op_handle<at::Tensor(const at::Tensor&, const at::Tensor&)>("ddpm_pa_fast::haar_idwt2d");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(yl, yh);
  }
  static variable_list backward(AutogradContext*, variable_list grads) {
    // The synthesis is orthogonal, so its adjoint is the analysis (even size: every mode agrees).
    BackwardRange range("haar_idwt2d.backward");
    auto [grad_yl, grad_yh] = haar_dwt2d_op().call(grads[0], "zero");
    return {grad_yl, grad_yh};
  }
};

struct PairwiseSimilarityKlFunction : public torch::autograd::Function<PairwiseSimilarityKlFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& src, const at::Tensor& ada, double tau,
                               const std::string& reduction) {
    static const auto op = op_handle<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, double, c10::string_view)>("ddpm_pa_fast::pairwise_similarity_kl");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [loss, gram_src, gram_ada] = op.call(src, ada, tau, reduction);
    ctx->mark_non_differentiable({gram_src, gram_ada});
    // No zero tensors made for the Grams' gradients: they are not differentiable and never read.
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({ada, gram_src, gram_ada});
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["reduction"] = reduction;
    return {loss, gram_src, gram_ada};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    BackwardRange range("pairwise_similarity_kl.backward");
    // The Grams are not differentiable, so an undefined loss gradient means no gradient at all (as
    // torch.autograd.gradcheck's undefined-gradient check asks of every op).
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const variable_list saved = ctx->get_saved_variables();
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    const at::Tensor grad_ada = pairwise_similarity_kl_backward_op().call(
        grads[0], saved[0], saved[1], saved[2], ctx->saved_data["tau"].toDouble(), reduction);
    // The source features are a constant of the loss (the frozen model): no gradient for src.
    return {at::Tensor(), grad_ada, at::Tensor(), at::Tensor()};
  }
};

using LossOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// An optional weight back from its SavedVariable, which keeps an absent one as an undefined tensor.
OptionalTensor restored_optional(const at::Tensor& t) { return t.defined() ? OptionalTensor(t) : std::nullopt; }

// The loss's backward node, written as PyTorch writes its generated nodes (MseLossBackward0 and the
// like) rather than as a torch::autograd::Function: one edge, to eps_ada, the only input with a
// gradient (the others are constants of the loss, as the reference detaches them), the saved tensors
// and the scalars as members. A Function records all 13 inputs (their metadata and 12 empty edges),
// keeps its scalars in a dictionary of IValues and wraps its outputs generically on every call: that
// was most of the gap between this op's host time and F.mse_loss's (issue 23).
struct DdpmPaLossBackward : public torch::autograd::Node {
  variable_list apply(variable_list&& grads) override {
    BackwardRange range("ddpm_pa_loss.backward");
    std::lock_guard<std::mutex> lock(mutex_);
    const at::Tensor grams = grams_.unpack();
    // The five upstream gradients (loss, mse, hf_mse, pair_img, pair_hf) in the Gram dtype, zero where a
    // term was not differentiated (the engine passes those undefined). Device to device, no sync.
    const at::Tensor grad_terms = at::zeros({kNumLossTerms}, grams.options());
    for (int i = 0; i < kNumLossTerms; ++i) {
      if (grads[i].defined()) grad_terms.select(0, i).copy_(grads[i].reshape({}));
    }
    at::Tensor grad_eps_ada = ddpm_pa_loss_backward_op().call(
        grad_terms, grams, x_t_.unpack(), eps_ada_.unpack(), noise_.unpack(), a_t_.unpack(), b_t_.unpack(),
        restored_optional(mse_weight_.unpack()), restored_optional(hf_mse_weight_.unpack()), w_pair_, w_hf_pair_,
        w_hf_mse_, tau_, reduction_);
    return {std::move(grad_eps_ada)};
  }
  std::string name() const override { return "DdpmPaLossBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (torch::autograd::SavedVariable* saved :
         {&grams_, &x_t_, &eps_ada_, &noise_, &a_t_, &b_t_, &mse_weight_, &hf_mse_weight_}) {
      saved->reset_data();
    }
  }

  torch::autograd::SavedVariable grams_, x_t_, eps_ada_, noise_, a_t_, b_t_, mse_weight_, hf_mse_weight_;
  double w_pair_ = 0.0, w_hf_pair_ = 0.0, w_hf_mse_ = 0.0, tau_ = 0.0;
  std::string reduction_;
};

// ---------------------------------------------------------------------------------------------
// Autograd of the backward ops: what a second backward (after create_graph=True) runs.

// ddpm_pa_high_frequency_backward is HF's adjoint, linear in grad_hf: its adjoint is HF itself. Called
// through the dispatcher (autograd included), so that a third backward is exact too.
struct HighFrequencyBackwardFunction : public torch::autograd::Function<HighFrequencyBackwardFunction> {
  static at::Tensor forward(AutogradContext*, const at::Tensor& grad_hf, const c10::SymInt& height,
                            const c10::SymInt& width) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return high_frequency_backward_op().call(grad_hf, height, width);
  }
  static variable_list backward(AutogradContext*, variable_list grads) {
    BackwardRange range("ddpm_pa_high_frequency_backward.backward");
    return {high_frequency_op().call(grads[0]), at::Tensor(), at::Tensor()};
  }
};

// haar_dwt2d_backward is the adjoint of haar_dwt2d in its mode (at odd sizes too: the padding's folding
// included), linear in (grad_yl, grad_yh): its adjoint is haar_dwt2d in the same mode.
struct HaarDwtBackwardFunction : public torch::autograd::Function<HaarDwtBackwardFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_yl, const at::Tensor& grad_yh,
                            const c10::SymInt& height, const c10::SymInt& width, const std::string& mode) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->saved_data["mode"] = mode;
    return haar_dwt2d_backward_op().call(grad_yl, grad_yh, height, width, mode);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    BackwardRange range("haar_dwt2d_backward.backward");
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    auto [grad_grad_yl, grad_grad_yh] = haar_dwt2d_op().call(grads[0], mode);
    return {grad_grad_yl, grad_grad_yh, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The nonlinear ops' backward ops have no derivative here (it would need the Hessian of the softmaxed
// similarities): their node raises when a second backward reaches it, naming the op and the backend.
//
// Why there and not in the first backward whenever create_graph=True: create_graph=True is also used
// where no second derivative passes through this op (only the first-order gradient is read, or the
// second backward asks for inputs this gradient does not depend on), and there every value is right;
// raising eagerly would refuse correct work. Where the second derivative does pass through the op,
// the engine runs this node, and the error stops it before any result lacks the term. Never zeros,
// never a silently missing term.
[[noreturn]] void double_backward_unsupported(const char* op, AutogradContext* ctx) {
  TORCH_CHECK(false, "ddpm_pa_fast: double backward (create_graph=True) of ", op,
              " is not supported by backend '", ctx->saved_data["backend"].toStringRef(),
              "'; use backend='torch' (the reference) for higher-order gradients");
}

// The backend of a C++ op is its device's: "cpu" or "cuda".
std::string backend_of(const at::Tensor& t) { return c10::DeviceTypeName(t.device().type(), /*lower_case=*/true); }

struct PairwiseKlBackwardFunction : public torch::autograd::Function<PairwiseKlBackwardFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_loss, const at::Tensor& ada,
                            const at::Tensor& gram_src, const at::Tensor& gram_ada, double tau,
                            const std::string& reduction) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->saved_data["backend"] = backend_of(ada);
    return pairwise_similarity_kl_backward_op().call(grad_loss, ada, gram_src, gram_ada, tau, reduction);
  }
  static variable_list backward(AutogradContext* ctx, variable_list) {
    double_backward_unsupported("pairwise_similarity_kl", ctx);
  }
};

struct DdpmPaLossBackwardFunction : public torch::autograd::Function<DdpmPaLossBackwardFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_terms, const at::Tensor& grams,
                            const at::Tensor& x_t, const at::Tensor& eps_ada, const at::Tensor& noise,
                            const at::Tensor& a_t, const at::Tensor& b_t, const OptionalTensor& mse_weight,
                            const OptionalTensor& hf_mse_weight, double w_pair, double w_hf_pair, double w_hf_mse,
                            double tau, const std::string& reduction) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->saved_data["backend"] = backend_of(eps_ada);
    return ddpm_pa_loss_backward_op().call(grad_terms, grams, x_t, eps_ada, noise, a_t, b_t, mse_weight,
                                           hf_mse_weight, w_pair, w_hf_pair, w_hf_mse, tau, reduction);
  }
  static variable_list backward(AutogradContext* ctx, variable_list) {
    double_backward_unsupported("ddpm_pa_loss", ctx);
  }
};

// ---------------------------------------------------------------------------------------------
// The Autograd kernels: the schema's signature, forwarding to the functions above.

at::Tensor high_frequency_autograd(const at::Tensor& x) {
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = high_frequency_op().call(x);
  }
  if (!(at::GradMode::is_enabled() && x.requires_grad())) return out;
  auto node = make_node<HighFrequencyBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(x));
  node->height_ = x.sym_size(2);
  node->width_ = x.sym_size(3);
  torch::autograd::set_history(out, node);
  return out;
}

std::tuple<at::Tensor, at::Tensor> haar_dwt2d_autograd(const at::Tensor& x, c10::string_view mode) {
  const variable_list out = HaarDwtFunction::apply(x, std::string(mode));
  return {out[0], out[1]};
}

at::Tensor haar_idwt2d_autograd(const at::Tensor& yl, const at::Tensor& yh) { return HaarIdwtFunction::apply(yl, yh); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> pairwise_similarity_kl_autograd(const at::Tensor& src,
                                                                               const at::Tensor& ada, double tau,
                                                                               c10::string_view reduction) {
  const variable_list out = PairwiseSimilarityKlFunction::apply(src, ada, tau, std::string(reduction));
  return {out[0], out[1], out[2]};
}

LossOutputs ddpm_pa_loss_autograd(const at::Tensor& x_t, const at::Tensor& eps_ada, const at::Tensor& eps_src,
                                  const at::Tensor& noise, const at::Tensor& a_t, const at::Tensor& b_t,
                                  const OptionalTensor& mse_weight, const OptionalTensor& hf_mse_weight, double w_pair,
                                  double w_hf_pair, double w_hf_mse, double tau, c10::string_view reduction) {
  static const auto op =
      op_handle<LossOutputs(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const OptionalTensor&, const OptionalTensor&, double,
                            double, double, double, c10::string_view)>("ddpm_pa_fast::ddpm_pa_loss");
  LossOutputs outputs;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    outputs = op.call(x_t, eps_ada, eps_src, noise, a_t, b_t, mse_weight, hf_mse_weight, w_pair, w_hf_pair, w_hf_mse,
                      tau, reduction);
  }
  if (!(at::GradMode::is_enabled() && eps_ada.requires_grad())) return outputs;
  auto node = make_node<DdpmPaLossBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(eps_ada));
  // The Gram matrices (the last output) are not differentiable: saved, without history.
  node->grams_ = torch::autograd::SavedVariable(std::get<5>(outputs), /*is_output=*/false);
  node->x_t_ = torch::autograd::SavedVariable(x_t, false);
  node->eps_ada_ = torch::autograd::SavedVariable(eps_ada, false);
  node->noise_ = torch::autograd::SavedVariable(noise, false);
  node->a_t_ = torch::autograd::SavedVariable(a_t, false);
  node->b_t_ = torch::autograd::SavedVariable(b_t, false);
  node->mse_weight_ = torch::autograd::SavedVariable(mse_weight, false);
  node->hf_mse_weight_ = torch::autograd::SavedVariable(hf_mse_weight, false);
  node->w_pair_ = w_pair;
  node->w_hf_pair_ = w_hf_pair;
  node->w_hf_mse_ = w_hf_mse;
  node->tau_ = tau;
  node->reduction_ = std::string(reduction);
  torch::autograd::set_history(std::get<0>(outputs), node);  // loss, mse, hf_mse, pair_img, pair_hf:
  torch::autograd::set_history(std::get<1>(outputs), node);  // the node's inputs 0..4, in this order
  torch::autograd::set_history(std::get<2>(outputs), node);
  torch::autograd::set_history(std::get<3>(outputs), node);
  torch::autograd::set_history(std::get<4>(outputs), node);
  return outputs;
}

// The backward ops' Autograd kernels: a node only where there is a graph to record (records_graph).

at::Tensor high_frequency_backward_autograd(const at::Tensor& grad_hf, c10::SymInt height, c10::SymInt width) {
  if (!records_graph(grad_hf)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return high_frequency_backward_op().call(grad_hf, std::move(height), std::move(width));
  }
  return HighFrequencyBackwardFunction::apply(grad_hf, height, width);
}

at::Tensor haar_dwt2d_backward_autograd(const at::Tensor& grad_yl, const at::Tensor& grad_yh, c10::SymInt height,
                                        c10::SymInt width, c10::string_view mode) {
  if (!records_graph(grad_yl, grad_yh)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return haar_dwt2d_backward_op().call(grad_yl, grad_yh, std::move(height), std::move(width), mode);
  }
  return HaarDwtBackwardFunction::apply(grad_yl, grad_yh, height, width, std::string(mode));
}

at::Tensor pairwise_similarity_kl_backward_autograd(const at::Tensor& grad_loss, const at::Tensor& ada,
                                                    const at::Tensor& gram_src, const at::Tensor& gram_ada,
                                                    double tau, c10::string_view reduction) {
  if (!records_graph(grad_loss, ada, gram_src, gram_ada)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return pairwise_similarity_kl_backward_op().call(grad_loss, ada, gram_src, gram_ada, tau, reduction);
  }
  return PairwiseKlBackwardFunction::apply(grad_loss, ada, gram_src, gram_ada, tau, std::string(reduction));
}

at::Tensor ddpm_pa_loss_backward_autograd(const at::Tensor& grad_terms, const at::Tensor& grams, const at::Tensor& x_t,
                                          const at::Tensor& eps_ada, const at::Tensor& noise, const at::Tensor& a_t,
                                          const at::Tensor& b_t, const OptionalTensor& mse_weight,
                                          const OptionalTensor& hf_mse_weight, double w_pair, double w_hf_pair,
                                          double w_hf_mse, double tau, c10::string_view reduction) {
  if (!records_graph(grad_terms, grams, x_t, eps_ada, noise, a_t, b_t, mse_weight, hf_mse_weight)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ddpm_pa_loss_backward_op().call(grad_terms, grams, x_t, eps_ada, noise, a_t, b_t, mse_weight,
                                           hf_mse_weight, w_pair, w_hf_pair, w_hf_mse, tau, reduction);
  }
  return DdpmPaLossBackwardFunction::apply(grad_terms, grams, x_t, eps_ada, noise, a_t, b_t, mse_weight,
                                           hf_mse_weight, w_pair, w_hf_pair, w_hf_mse, tau, std::string(reduction));
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_pa_fast, Autograd, m) {
  m.impl("ddpm_pa_high_frequency", &high_frequency_autograd);
  m.impl("haar_dwt2d", &haar_dwt2d_autograd);
  m.impl("haar_idwt2d", &haar_idwt2d_autograd);
  m.impl("pairwise_similarity_kl", &pairwise_similarity_kl_autograd);
  m.impl("ddpm_pa_loss", &ddpm_pa_loss_autograd);
  m.impl("ddpm_pa_high_frequency_backward", &high_frequency_backward_autograd);
  m.impl("haar_dwt2d_backward", &haar_dwt2d_backward_autograd);
  m.impl("pairwise_similarity_kl_backward", &pairwise_similarity_kl_backward_autograd);
  m.impl("ddpm_pa_loss_backward", &ddpm_pa_loss_backward_autograd);
}

}  // namespace ddpm_pa
