"""The reference ("torch" backend) in half precision and under autocast: right values, forward and backward.

Each case runs the public function with backend="torch" on inputs rounded to float16 or bfloat16, or on
float32 inputs under torch.autocast, and compares it with the reference in float64 on the same rounded
inputs, with the tolerances the kernels get for the input dtype (tests/common.TOLERANCES, atol relative
to the expected magnitude as in tests/test_ops.check_close). Results must come back in the input dtype.
The inputs are the ones half precision gets wrong: features that are all zero (the high-frequency map of
a flat image) or near zero, values whose intermediate sums overflow float16, and similarities that a
bfloat16 Gram matrix loses.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import ddpm_pa_fast as D
from ddpm_pa_fast import reference as R

from .common import DEVICES, KL_REDUCTIONS, TOLERANCES, make_loss_sample, randn, similar_features

# name: (input dtype, autocast dtype or None)
PRECISIONS = {
    "float16": (torch.float16, None),
    "bfloat16": (torch.bfloat16, None),
    "float32_autocast_bfloat16": (torch.float32, torch.bfloat16),
    "float32_autocast_float16": (torch.float32, torch.float16),
}


def check_close(actual, expected, dtype, what, scale=1.0):
    """actual against the float64 expected with dtype's tolerance, atol relative to the expected's
    magnitude (as tests/test_ops.check_close).

    Expected values beyond dtype's range must come back as the infinities they round to (the gradient
    at an all-zero feature is of order 1 / SIMILARITY_EPS, beyond float16's 65504)."""
    rtol, atol = TOLERANCES[dtype]
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    overflow = expected.to(dtype).isinf() & expected.isfinite()
    torch.testing.assert_close(
        actual[overflow], expected.to(dtype).double()[overflow], msg=lambda m: f"{what}, overflow: {m}"
    )
    actual, expected = actual[~overflow], expected[~overflow]
    magnitude = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual,
        expected,
        rtol=rtol * scale,
        atol=atol * scale * magnitude,
        msg=lambda m: f"{what}: {m}",
    )


def flatten(out):
    """A function's tensors: a tensor, (yl, yh) of the DWT, or the loss's terms."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, D.DDPMPALossOutput):
        return list(out)
    yl, yh = out
    return [yl, *yh]


def check_against_float64(fn, reference, inputs, differentiable, precision, device, grad_scale=1.0):
    """fn on inputs rounded to the precision's dtype (under its autocast) against reference in float64
    on the same rounded values: outputs, dtypes, and the gradients of the differentiable inputs for a
    random upstream gradient. Inputs must be left unchanged."""
    dtype, autocast_dtype = PRECISIONS[precision]
    rounded = [t.to(device=device, dtype=dtype) for t in inputs]
    snapshots = [t.clone() for t in rounded]
    leaves = [t.requires_grad_() if i in differentiable else t for i, t in enumerate(rounded)]
    autocast = (
        torch.autocast(device, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    )
    with autocast:
        outs = flatten(fn(*leaves))
    truth_leaves = [
        t.detach().double().requires_grad_() if i in differentiable else t.detach().double()
        for i, t in enumerate(rounded)
    ]
    truths = flatten(reference(*truth_leaves))
    assert len(outs) == len(truths)
    for k, (out, truth) in enumerate(zip(outs, truths, strict=True)):
        assert out.dtype == dtype and out.shape == truth.shape, (k, out.dtype, out.shape)
        check_close(out, truth, dtype, f"output {k}")
    upstream = [randn(t.shape, 100 + k) + 1.5 for k, t in enumerate(truths)]
    grads = torch.autograd.grad(
        outs, [leaves[i] for i in differentiable], [g.to(o) for g, o in zip(upstream, outs, strict=True)]
    )
    truth_grads = torch.autograd.grad(
        truths, [truth_leaves[i] for i in differentiable], [g.to(device) for g in upstream]
    )
    for i, grad, truth_grad in zip(differentiable, grads, truth_grads, strict=True):
        assert grad.dtype == dtype
        check_close(grad, truth_grad, dtype, f"gradient of input {i}", scale=grad_scale)
    for t, snapshot in zip(rounded, snapshots, strict=True):
        assert torch.equal(t.detach(), snapshot), "an input was modified"


# ---------------------------------------------------------------------------------------------
# Inputs (float64; rounded to the tested dtype by check_against_float64)


def images(case, shape=(2, 3, 10, 14), level=0.0):
    """'typical': N(0, 1) pixels; 'large': level + N(0, 1000), a bright, nearly flat image whose 2x2
    sums overflow float16 although every input and output fits."""
    x = randn(shape, seed=1)
    return x if case == "typical" else level + 1000 * x


def features(case, shape=(7, 130)):
    """(src, ada) pairs of samples that share a component in different amounts on each side, so that the
    similarities, not only the noise, decide the KL (a bfloat16 Gram matrix gets it wrong). 'typical': as
    they are; 'zero_sample': one sample all zero on each side (the high-frequency map of a flat image);
    'near_zero': features of size 3e-5 (squares below float16's subnormals); 'large': features of size
    100 (the Gram matrix overflows float16)."""
    src, ada = similar_features(shape, seed=5)
    shared = randn(shape[1:], seed=9)
    amounts = torch.linspace(-3, 3, shape[0], dtype=torch.float64).view(-1, *[1] * (len(shape) - 1))
    src, ada = src + amounts * shared, ada + amounts.roll(3, 0) * shared
    if case == "zero_sample":
        src[2], ada[4] = 0, 0
    elif case == "near_zero":
        src, ada = 3e-5 * src, 3e-5 * ada
    elif case == "large":
        src, ada = 100 * src, 100 * ada
    return src, ada


def loss_inputs(case, shape=(4, 3, 10, 12)):
    """'typical': a DDPM-like batch; 'flat_image': sample 1 has x_t, eps_src, eps_ada and noise constant,
    so all its x0 and high-frequency maps are flat (HF zero); 'all_zero': every image zero."""
    sample = make_loss_sample(shape, seed=3)
    if case == "flat_image":
        for t, value in zip(sample.args()[:4], (0.3, 0.1, 0.2, -0.1), strict=True):
            t[1] = value
    elif case == "all_zero":
        for t in sample.args()[:4]:
            t.zero_()
    return list(sample.args())


# ---------------------------------------------------------------------------------------------
# The right values


def test_issue_example_in_float16():
    """Issue 13's input: a zero sample in float16 gave NaN (clamp_min(1e-8) is 0 in float16)."""
    torch.manual_seed(0)
    src = torch.randn(4, 12)
    ada = src + 0.5 * torch.randn(4, 12)
    src[2] = 0
    kl = D.pairwise_similarity_kl(src.half(), ada.half(), backend="torch")
    assert kl.dtype == torch.float16
    truth = R.pairwise_similarity_kl(src.half().double(), ada.half().double())
    torch.testing.assert_close(truth, torch.tensor(0.0079122, dtype=torch.float64), rtol=1e-5, atol=0)
    check_close(kl, truth, torch.float16, "kl")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("reduction", KL_REDUCTIONS)
@pytest.mark.parametrize("tau", [1.0, 0.1])
@pytest.mark.parametrize("case", ["typical", "zero_sample", "near_zero", "large"])
def test_pairwise_similarity_kl(case, tau, reduction, precision, device):
    check_against_float64(
        lambda s, a: D.pairwise_similarity_kl(s, a, tau, reduction, backend="torch"),
        lambda s, a: R.pairwise_similarity_kl(s, a, tau, reduction),
        features(case),
        differentiable=[1],
        precision=precision,
        device=device,
        # As for the kernels: the gradient is a difference of near-equal softmax terms.
        grad_scale=4.0,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("case", ["typical", "large"])
def test_ddpm_pa_high_frequency(case, precision, device):
    # 3 d reaches 3 * 30000 > 65504; (3 d - a - b - c) / 2 stays near 0.
    check_against_float64(
        lambda x: D.ddpm_pa_high_frequency(x, backend="torch"),
        R.ddpm_pa_high_frequency,
        [images(case, level=30000.0)],
        differentiable=[0],
        precision=precision,
        device=device,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("mode", ["zero", "symmetric"])
@pytest.mark.parametrize("case", ["typical", "large"])
def test_haar_dwt2d(case, mode, precision, device):
    # Level 1: a + b + c + d reaches 4 * 12000 (fits); level 2 sums four of those halves, 96000 > 65504,
    # to 48000 (fits).
    check_against_float64(
        lambda x: D.haar_dwt2d(x, 2, mode, backend="torch"),
        lambda x: R.haar_dwt2d(x, 2, mode),
        [images(case, shape=(2, 3, 11, 14), level=12000.0)],
        differentiable=[0],
        precision=precision,
        device=device,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("case", ["typical", "large"])
def test_haar_idwt2d(case, precision, device):
    # 'large': yl = 40000 and the first band 30000: yl + band1 = 70000 > 65504, the pixels fit.
    yl = images(case, shape=(2, 3, 5, 7), level=40000.0)
    band = randn((2, 3, 3, 5, 7), seed=4) if case == "typical" else randn((2, 3, 3, 5, 7), seed=4) * 1000
    if case == "large":
        band[:, :, 0] += 30000
        band[:, :, 1] -= 30000
    check_against_float64(
        lambda low, high: D.haar_idwt2d(low, [high], "zero", backend="torch"),
        lambda low, high: R.haar_idwt2d(low, [high], "zero"),
        [yl, band],
        differentiable=[0, 1],
        precision=precision,
        device=device,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", ["typical", "flat_image", "all_zero"])
def test_ddpm_pa_loss(case, reduction, precision, device):
    weights = (4.0, 4.0, 1.0)
    tau = 0.5
    check_against_float64(
        lambda *args: D.ddpm_pa_loss(*args, *weights, tau, reduction, backend="torch"),
        lambda *args: R.ddpm_pa_loss(*args, *weights, tau, reduction),
        loss_inputs(case),
        differentiable=[1],
        precision=precision,
        device=device,
        grad_scale=2.0,  # as the kernels' loss gradient gets
    )
