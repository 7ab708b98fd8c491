"""Double backward (create_graph=True) through every op on every backend (issue 21 E).

Gradient penalties and Hessian-vector products differentiate a gradient. The linear ops
(ddpm_pa_high_frequency, haar_dwt2d, haar_idwt2d) give the exact second derivative on every backend:
gradgradcheck in float64, and the reference's values (second and third order) on a nonlinear use of
them, as in the issue. The nonlinear ops (pairwise_similarity_kl, ddpm_pa_loss) give it on "torch";
on the kernel backends the first-order gradient with create_graph=True is right, and a second backward
through it raises an error that names double backward, the op and the backend. Before the fix the C++
backends returned zeros there (torch only warned) and Triton raised torch's generic "no autograd
formula" error.

The Triton kernels run in Triton's CPU interpreter here (tests/conftest.py), so their cases are small.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch

import ddpm_pa_fast as D
from ddpm_pa_fast import triton_ops

from .common import DWT_MODES, make_loss_sample, randn, similar_features

NO_GPU = not torch.cuda.is_available()
# CUDA cases skip only where there is no GPU, as tests/common.DEVICES.
NEEDS_GPU = pytest.mark.skipif(NO_GPU, reason="no CUDA device on this machine")


def _triton_marks(device: str):
    if device == "cuda" and NO_GPU:
        return NEEDS_GPU
    reason = triton_ops.unavailable_reason(device)
    return pytest.mark.skipif(reason is not None, reason=str(reason))


# (backend, device) pairs: the reference, the C++ kernels, the Triton kernels; CUDA ones where a GPU is.
REFERENCE = pytest.param(("torch", "cpu"), id="torch")
KERNEL_BACKENDS = [
    pytest.param(("cpu", "cpu"), id="cpu"),
    pytest.param(("triton", "cpu"), id="triton-cpu", marks=_triton_marks("cpu")),
    pytest.param(("cuda", "cuda"), id="cuda", marks=NEEDS_GPU),
    pytest.param(("triton", "cuda"), id="triton-cuda", marks=_triton_marks("cuda")),
]
BACKENDS = [REFERENCE, *KERNEL_BACKENDS]


def _interpreted(backend, device) -> bool:
    """Triton on CPU runs every program in Python: its gradgradchecks use fast mode (random projections)."""
    return backend == "triton" and device == "cpu"


def _gradgradcheck(fn, inputs, backend, device):
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=_interpreted(backend, device))


def _leaf(shape, seed, device):
    return randn(shape, seed, torch.float64, device).requires_grad_()


# ---------------------------------------------------------------------------------------------
# Linear ops: gradgradcheck in float64 through the public API and the modules.

# Odd heights and widths drop (HF) or extend (DWT) a row or column; a single channel; N = 1.
HF_SHAPES = [(2, 2, 4, 6), (1, 2, 5, 7), (2, 1, 3, 2)]
DWT_SHAPES = [(1, 2, 5, 7), (2, 1, 4, 6)]


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("shape", HF_SHAPES, ids=str)
def test_high_frequency_gradgradcheck(backend_device, shape):
    backend, device = backend_device
    x = _leaf(shape, 1, device)
    _gradgradcheck(lambda x: D.ddpm_pa_high_frequency(x, backend=backend), (x,), backend, device)


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("mode", DWT_MODES)
@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("shape", DWT_SHAPES, ids=str)
def test_haar_dwt_gradgradcheck(backend_device, mode, levels, shape):
    backend, device = backend_device
    x = _leaf(shape, 2, device)

    def dwt(x):
        yl, yh = D.haar_dwt2d(x, levels, mode, backend=backend)
        return (yl, *yh)

    _gradgradcheck(dwt, (x,), backend, device)


def _coefficients(shape, levels, device, seed=3):
    """(yl, yh) leaves of the shapes haar_dwt2d gives for `shape` (odd sizes: the crop between levels)."""
    yl, yh = D.haar_dwt2d(randn(shape, seed, torch.float64, device), levels, backend="torch")
    return yl.detach().requires_grad_(), [band.detach().requires_grad_() for band in yh]


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("shape", DWT_SHAPES, ids=str)
def test_haar_idwt_gradgradcheck(backend_device, levels, shape):
    backend, device = backend_device
    yl, yh = _coefficients(shape, levels, device)
    _gradgradcheck(lambda yl, *yh: D.haar_idwt2d(yl, list(yh), backend=backend), (yl, *yh), backend, device)


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_haar_idwt_with_a_zero_band_gradgradcheck(backend_device):
    backend, device = backend_device
    yl, (fine, _) = _coefficients((1, 2, 5, 7), 2, device)

    def idwt(yl, fine):
        return D.haar_idwt2d(yl, [fine, None], backend=backend)

    _gradgradcheck(idwt, (yl, fine), backend, device)


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("mode", DWT_MODES)
def test_modules_gradgradcheck(backend_device, mode):
    backend, device = backend_device
    x = _leaf((1, 2, 5, 7), 4, device)
    hf = D.DDPMPAHighFrequency(backend=backend)
    forward = D.DWTForward(J=2, mode=mode, backend=backend)
    inverse = D.DWTInverse(mode=mode, backend=backend)
    _gradgradcheck(hf, (x,), backend, device)

    def dwt(x):
        yl, yh = forward(x)
        return (yl, *yh)

    _gradgradcheck(dwt, (x,), backend, device)
    yl, yh = _coefficients((1, 2, 5, 7), 2, device)
    _gradgradcheck(lambda yl, *yh: inverse((yl, list(yh))), (yl, *yh), backend, device)


# ---------------------------------------------------------------------------------------------
# The example and its kin: second and third derivatives of a nonlinear use equal the reference's.


def _cubed_hf(x, backend):
    return D.ddpm_pa_high_frequency(x, backend=backend).pow(3).sum()


def _cubed_dwt(mode):
    def loss(x, backend):
        yl, yh = D.haar_dwt2d(x, 2, mode, backend=backend)
        return yl.pow(3).sum() + sum(band.pow(3).sum() for band in yh)

    return loss


def _cubed_roundtrip(x, backend):
    # idwt of the (constant) analysis of x, scaled by x's own coefficients: the synthesis' double backward.
    yl, yh = D.haar_dwt2d(x, 1, backend="torch")
    return D.haar_idwt2d(yl * yl, [yh[0] * yh[0]], backend=backend).pow(3).sum()


NONLINEAR_USES = [
    pytest.param(_cubed_hf, (2, 1, 4, 4), id="issue-high-frequency"),
    pytest.param(_cubed_hf, (2, 2, 5, 7), id="high-frequency-odd"),
    *(pytest.param(_cubed_dwt(m), (1, 2, 5, 7), id=f"dwt-{m}") for m in DWT_MODES),
    pytest.param(_cubed_roundtrip, (1, 2, 4, 6), id="idwt"),
]


def _three_derivatives(loss, x, backend):
    v = x.clone().requires_grad_()
    (first,) = torch.autograd.grad(loss(v, backend), v, create_graph=True)
    (second,) = torch.autograd.grad(first.square().sum(), v, create_graph=True)
    # Projected on random weights, not summed: HF maps a constant image to zero.
    weights = randn(x.shape, 6, x.dtype, x.device)
    (third,) = torch.autograd.grad((second * weights).sum(), v)
    return first, second, third


@pytest.mark.parametrize("backend_device", KERNEL_BACKENDS)
@pytest.mark.parametrize(("loss", "shape"), NONLINEAR_USES)
def test_higher_derivatives_match_the_reference(backend_device, loss, shape):
    backend, device = backend_device
    x = randn(shape, 5, torch.float64, device)
    expected = _three_derivatives(loss, x, "torch")
    # The failure was all zeros: the reference's derivatives are far from it.
    assert all(d.abs().max() > 1.0 for d in expected)
    with warnings.catch_warnings():
        # torch's warnings (UserWarning: "autograd kernel was not registered" among them) become errors;
        # not DeprecationWarning, which Triton 3.6's interpreter raises through numpy on its own.
        warnings.simplefilter("error", UserWarning)
        actual = _three_derivatives(loss, x, backend)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Nonlinear ops: exact on the reference, a clear error on the kernel backends.


def _kl(backend, device, reduction="mean"):
    src, ada = similar_features((3, 2, 5), 6, torch.float64, device)
    return (lambda ada: D.pairwise_similarity_kl(src, ada, 0.5, reduction, backend=backend).sum()), ada


def _loss(backend, device, weighted=False):
    sample = make_loss_sample((2, 2, 4, 6), seed=7, device=device)
    weights = {}
    if weighted:
        weights = {"mse_weight": torch.tensor([0.5, 2.0], dtype=torch.float64, device=device),
                   "hf_mse_weight": torch.tensor([1.5, 0.25], dtype=torch.float64, device=device)}

    def loss(eps_ada):
        return D.ddpm_pa_loss(
            sample.x_t, eps_ada, sample.eps_src, sample.noise, sample.a_t, sample.b_t, 4.0, 4.0, 1.0, 0.5,
            backend=backend, **weights,
        ).loss

    return loss, sample.eps_ada


NONLINEAR_CASES = [
    pytest.param("pairwise_similarity_kl", lambda b, d: _kl(b, d, "mean"), id="kl-mean"),
    pytest.param("pairwise_similarity_kl", lambda b, d: _kl(b, d, "none"), id="kl-none"),
    pytest.param("ddpm_pa_loss", lambda b, d: _loss(b, d), id="loss"),
    pytest.param("ddpm_pa_loss", lambda b, d: _loss(b, d, weighted=True), id="loss-weighted"),
]


@pytest.mark.parametrize(("op", "case"), NONLINEAR_CASES)
def test_reference_nonlinear_gradgradcheck(op, case):
    fn, x = case("torch", "cpu")
    assert torch.autograd.gradgradcheck(fn, (x.requires_grad_(),))


def _first_order(fn, x, create_graph):
    v = x.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(fn(v), v, create_graph=create_graph)
    return v, grad


@pytest.mark.parametrize("backend_device", KERNEL_BACKENDS)
@pytest.mark.parametrize(("op", "case"), NONLINEAR_CASES)
def test_nonlinear_double_backward_names_itself(backend_device, op, case):
    backend, device = backend_device
    fn, x = case(backend, device)
    v, grad = _first_order(fn, x, create_graph=True)
    # The first-order gradient is right and carries a graph: the error waits for a second backward.
    _, expected = _first_order(case("torch", device)[0], x, create_graph=False)
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-11)
    assert grad.requires_grad
    message = f"double backward (create_graph=True) of {op} is not supported by backend '{backend}'"
    with pytest.raises(RuntimeError, match=re.escape(message) + ".*backend='torch'"):
        torch.autograd.grad(grad.square().sum(), v)


@pytest.mark.parametrize("backend_device", KERNEL_BACKENDS)
def test_gradient_penalty_through_a_model_names_the_loss(backend_device):
    """A gradient penalty on a model's parameters trained with the DDPM-PA loss needs the loss's Hessian."""
    backend, device = backend_device
    sample = make_loss_sample((2, 2, 4, 6), seed=8, device=device)
    weight = torch.ones((), dtype=torch.float64, device=device, requires_grad=True)
    terms = D.ddpm_pa_loss(
        sample.x_t, weight * sample.eps_ada, sample.eps_src, sample.noise, sample.a_t, sample.b_t,
        backend=backend,
    )
    (grad,) = torch.autograd.grad(terms.loss, weight, create_graph=True)
    with pytest.raises(RuntimeError, match=re.escape("double backward (create_graph=True) of ddpm_pa_loss")):
        grad.square().backward()


@pytest.mark.parametrize("backend_device", KERNEL_BACKENDS)
@pytest.mark.parametrize(("op", "case"), NONLINEAR_CASES)
def test_create_graph_alone_changes_nothing(backend_device, op, case):
    """create_graph=True where only the first-order gradient is used: the same values, no error or warning."""
    backend, device = backend_device
    fn, x = case(backend, device)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # as above: torch's, not Triton 3.6's numpy deprecation
        _, with_graph = _first_order(fn, x, create_graph=True)
        _, plain = _first_order(fn, x, create_graph=False)
    torch.testing.assert_close(with_graph, plain, rtol=0, atol=0)
    assert with_graph.requires_grad and not plain.requires_grad


# ---------------------------------------------------------------------------------------------
# opcheck of the backward ops with inputs that require grad: their new Autograd registrations.


def _backward_op_samples(device):
    ops = torch.ops.ddpm_pa_fast
    src, ada = similar_features((4, 3, 5), 9, torch.float64, device)
    _, gram_src, gram_ada = ops.pairwise_similarity_kl(src, ada, 1.0, "none")
    sample = make_loss_sample((3, 2, 5, 6), seed=10, device=device)
    grams = ops.ddpm_pa_loss(*sample.args(), None, None, 4.0, 4.0, 1.0, 1.0, "mean")[5]
    hf_mse_weight = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64, device=device)
    grad_yl, grad_yh = _leaf((2, 3, 3, 4), 12, device), _leaf((2, 3, 3, 3, 4), 13, device)
    linear = [
        (ops.ddpm_pa_high_frequency_backward, (_leaf((2, 3, 2, 3), 11, device), 5, 7)),
        *((ops.haar_dwt2d_backward, (grad_yl, grad_yh, 5, 7, mode)) for mode in DWT_MODES),
    ]
    nonlinear = [
        (ops.pairwise_similarity_kl_backward,
         (_leaf((4,), 14, device), ada.requires_grad_(), gram_src, gram_ada, 1.0, "none")),
        (ops.ddpm_pa_loss_backward,
         (randn((5,), 15, torch.float64, device), grams, sample.x_t, sample.eps_ada.requires_grad_(),
          sample.noise, sample.a_t, sample.b_t, None, hf_mse_weight, 4.0, 4.0, 1.0, 1.0, "mean")),
    ]
    return linear, nonlinear


C_DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=NEEDS_GPU),
]


def _has_autograd_kernel(op) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(op.default.name(), "Autograd")


@pytest.mark.parametrize("device", C_DEVICES)
def test_opcheck_linear_backward_ops(device):
    linear, _ = _backward_op_samples(device)
    for op, args in linear:
        assert _has_autograd_kernel(op), op
        torch.library.opcheck(op.default, args)
        # The backward op's own gradient in its incoming gradients (opcheck compares eager with AOT only).
        tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

        def call(*grads, op=op, args=args, tensors=tensors):
            full = list(args)
            for i, g in zip(tensors, grads, strict=True):
                full[i] = g
            return op(*full)

        assert torch.autograd.gradcheck(call, tuple(args[i] for i in tensors))


@pytest.mark.parametrize("device", C_DEVICES)
def test_opcheck_nonlinear_backward_ops(device):
    # Every check but the AOT one, which differentiates the op: that raises, as the tests above want.
    _, nonlinear = _backward_op_samples(device)
    for op, args in nonlinear:
        assert _has_autograd_kernel(op), op
        torch.library.opcheck(
            op.default, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor")
        )
