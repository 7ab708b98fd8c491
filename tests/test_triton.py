"""The Triton kernels (backend "triton") against the float64 reference, forward and backward.

Without a GPU they run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1); with a
GPU, on it. Shapes are kept small because the interpreter runs every program in Python, but they hit
partial blocks, odd sizes, N = 2 and N above one Gram tile (32 samples), and grids of several programs
so that the fixed-order partial sums are exercised.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ddpm_pa_fast as D
from ddpm_pa_fast import reference as R
from ddpm_pa_fast import triton_ops

from .common import (
    DWT_MODES,
    FEATURE_SHAPES,
    KL_REDUCTIONS,
    LOSS_SHAPES,
    assert_close,
    make_loss_sample,
    randn,
    similar_features,
)


def _device_param(device: str):
    reason = triton_ops.unavailable_reason(device)
    if device == "cuda" and not torch.cuda.is_available():
        reason = "no CUDA device on this machine"
    return pytest.param(device, id=device, marks=pytest.mark.skipif(reason is not None, reason=str(reason)))


# Where the Triton kernels can run here: CPU under the interpreter, CUDA on a GPU.
TRITON_DEVICES = [_device_param("cpu"), _device_param("cuda")]
# float32 and bfloat16 (fp32 accumulation) each with its tolerance from tests/common.TOLERANCES.
DTYPES = [torch.float32, torch.bfloat16]
# N = 40 spans two 32-sample Gram tiles, so the tile-pair and row-tile loops run.
LARGE_N_LOSS_SHAPE = (40, 1, 3, 5)
# The fused loss at 32-sample Gram tiles, one row tile (N = 20) and two (N = 36), over 80 2x2 blocks:
# 5 column tiles of 16, so that a program of the forward's persistent grid (4 programs under the
# interpreter) walks more than one. LOSS_SHAPES keep 16-sample tiles; LARGE_N_LOSS_SHAPE has 6 blocks.
WIDE_TILE_LOSS_SHAPES = [(20, 2, 9, 15), (36, 2, 9, 15)]
LARGE_N_FEATURE_SHAPE = (40, 3, 5)
TRITON_IMAGE_SHAPES = [(2, 3, 8, 8), (3, 4, 9, 7), (2, 2, 1, 5), (2, 3, 17, 33), (1, 1, 1, 1), (2, 1, 40, 3)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _ops():
    return triton_ops.load_kernels()



def _upstream(shape, dtype, device, seed=7):
    """A random, non-unit upstream gradient, rounded to dtype (the reference then uses the same values)."""
    return randn(shape, seed, dtype, device)


def _reference_grad(fn, inputs, grad_out):
    """Gradients of sum(fn(inputs) * grad_out) in float64 on CPU."""
    leaves = [t.detach().double().cpu().requires_grad_() for t in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, (list, tuple)) else [out]
    grads = grad_out if isinstance(grad_out, (list, tuple)) else [grad_out]
    total = sum((o * g.double().cpu()).sum() for o, g in zip(outs, grads, strict=True))
    return out, torch.autograd.grad(total, leaves, allow_unused=True, materialize_grads=True)


# ------------------------------------------------------------------------------------------------
# High-frequency map


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [s for s in TRITON_IMAGE_SHAPES if min(s[2:]) >= 2])
def test_high_frequency_matches_reference(device, dtype, shape):
    x = randn(shape, 1, dtype, device).requires_grad_()
    hf = D.ddpm_pa_high_frequency(x, backend="triton")
    assert hf.dtype == dtype and hf.device.type == device
    grad_out = _upstream(hf.shape, dtype, device)
    expected, (expected_grad,) = _reference_grad(R.ddpm_pa_high_frequency, [x], grad_out)
    assert_close(hf, expected, dtype)
    (grad,) = torch.autograd.grad(hf, x, grad_out)
    assert_close(grad, expected_grad, dtype)


# ------------------------------------------------------------------------------------------------
# Haar DWT and its inverse


def _dwt_reference(x, levels, mode, grads_out):
    """reference.haar_dwt2d in float64 and the gradient of sum(outputs * grads_out) with respect to x."""
    leaf = x.detach().double().cpu().requires_grad_()
    yl, yh = R.haar_dwt2d(leaf, levels, mode)
    outs = [yl, *yh]
    total = sum((o * g.double().cpu()).sum() for o, g in zip(outs, grads_out, strict=True))
    (grad,) = torch.autograd.grad(total, leaf)
    return outs, grad


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", DWT_MODES)
@pytest.mark.parametrize("shape", TRITON_IMAGE_SHAPES)
def test_haar_dwt2d_one_level_matches_reference(device, dtype, mode, shape):
    x = randn(shape, 2, dtype, device).requires_grad_()
    yl, yh = D.haar_dwt2d(x, 1, mode, backend="triton")
    outs = [yl, *yh]
    grads_out = [_upstream(o.shape, dtype, device, 3 + k) for k, o in enumerate(outs)]
    expected, expected_grad = _dwt_reference(x, 1, mode, grads_out)
    for actual, truth in zip(outs, expected, strict=True):
        assert actual.dtype == dtype
        assert_close(actual, truth, dtype)
    (grad,) = torch.autograd.grad(outs, x, grads_out)
    assert_close(grad, expected_grad, dtype)


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("mode", DWT_MODES)
@pytest.mark.parametrize("shape", [(2, 3, 9, 7), (1, 2, 16, 11)])
def test_haar_dwt2d_levels_match_reference(device, mode, shape):
    x = randn(shape, 5, torch.float32, device).requires_grad_()
    yl, yh = D.haar_dwt2d(x, 3, mode, backend="triton")
    outs = [yl, *yh]
    grads_out = [_upstream(o.shape, torch.float32, device, 6 + k) for k, o in enumerate(outs)]
    expected, expected_grad = _dwt_reference(x, 3, mode, grads_out)
    for actual, truth in zip(outs, expected, strict=True):
        assert_close(actual, truth, torch.float32)
    (grad,) = torch.autograd.grad(outs, x, grads_out)
    assert_close(grad, expected_grad, torch.float32)


def _idwt_reference(yl, yh, mode, grad_out):
    leaves = [yl.detach().double().cpu().requires_grad_()]
    bands = []
    for band in yh:
        if band is None:
            bands.append(None)
        else:
            leaves.append(band.detach().double().cpu().requires_grad_())
            bands.append(leaves[-1])
    x = R.haar_idwt2d(leaves[0], bands, mode)
    return x, torch.autograd.grad((x * grad_out.double().cpu()).sum(), leaves)


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "image_shape, levels, missing",
    [
        ((2, 3, 8, 8), 1, ()),
        ((3, 4, 9, 7), 2, ()),  # odd sizes: the coarser reconstruction is cropped
        ((2, 2, 17, 33), 3, (0,)),  # the finest bands None: zeros
        ((1, 1, 1, 5), 1, ()),
    ],
)
def test_haar_idwt2d_matches_reference(device, dtype, image_shape, levels, missing):
    coefficients = R.haar_dwt2d(randn(image_shape, 8, torch.float64), levels)
    yl = coefficients[0].to(device=device, dtype=dtype).requires_grad_()
    yh = [
        None
        if j in missing
        else (b + 0.1 * randn(b.shape, 9 + j)).to(device=device, dtype=dtype).requires_grad_()
        for j, b in enumerate(coefficients[1])
    ]
    x = D.haar_idwt2d(yl, yh, backend="triton")
    grad_out = _upstream(x.shape, dtype, device)
    expected, expected_grads = _idwt_reference(yl, yh, "zero", grad_out)
    assert x.shape == expected.shape and x.dtype == dtype
    assert_close(x, expected, dtype)
    leaves = [yl] + [b for b in yh if b is not None]
    for grad, truth in zip(torch.autograd.grad(x, leaves, grad_out), expected_grads, strict=True):
        assert_close(grad, truth, dtype)


# ------------------------------------------------------------------------------------------------
# Pairwise similarity KL


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", KL_REDUCTIONS)
@pytest.mark.parametrize("shape", FEATURE_SHAPES + [LARGE_N_FEATURE_SHAPE])
def test_pairwise_similarity_kl_matches_reference(device, dtype, reduction, shape):
    src, ada = similar_features(shape, 10, dtype, device)
    ada.requires_grad_()
    loss = D.pairwise_similarity_kl(src, ada, 0.7, reduction, backend="triton")
    assert loss.dtype == dtype and loss.shape == ((shape[0],) if reduction == "none" else ())
    grad_out = _upstream(loss.shape, dtype, device)
    expected, (_, expected_grad) = _reference_grad(
        lambda s, a: R.pairwise_similarity_kl(s, a, 0.7, reduction), [src, ada], grad_out
    )
    assert_close(loss, expected, dtype)
    (grad,) = torch.autograd.grad(loss, ada, grad_out)
    assert_close(grad, expected_grad, dtype)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_pairwise_similarity_kl_returns_grams(device):
    src, ada = similar_features((5, 3, 7, 7), 11, torch.float32, device)
    loss, gram_src, gram_ada = _ops().pairwise_similarity_kl(src, ada, 1.0, "mean")
    for gram, features in ((gram_src, src), (gram_ada, ada)):
        flat = features.double().reshape(5, -1)
        assert gram.dtype == torch.float32
        assert_close(gram, flat @ flat.T, torch.float32)


# ------------------------------------------------------------------------------------------------
# The fused DDPM-PA loss

LOSS_TERMS = ("loss", "mse", "hf_mse", "pair_img", "pair_hf")


def _loss_reference(sample, eps_ada, weights, tau, reduction, grads_out, mse_weight=None, hf_mse_weight=None):
    leaf = eps_ada.detach().double().cpu().requires_grad_()
    s = sample.to(device="cpu", dtype=torch.float64)
    # The per-sample weights in their own dtype: the reference takes their values to float64.
    mse_weight, hf_mse_weight = (None if w is None else w.cpu() for w in (mse_weight, hf_mse_weight))
    out = R.ddpm_pa_loss(
        s.x_t, leaf, s.eps_src, s.noise, s.a_t, s.b_t, *weights, tau, reduction, mse_weight=mse_weight,
        hf_mse_weight=hf_mse_weight,
    )
    total = sum(o * g.double().cpu() for o, g in zip(out, grads_out, strict=True))
    (grad,) = torch.autograd.grad(total, leaf)
    return out, grad


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", [*DTYPES, torch.float16])
@pytest.mark.parametrize("shape", LOSS_SHAPES + [LARGE_N_LOSS_SHAPE] + WIDE_TILE_LOSS_SHAPES)
def test_ddpm_pa_loss_matches_reference(device, dtype, shape):
    sample = make_loss_sample(shape, seed=12, dtype=dtype, device=device)
    eps_ada = sample.eps_ada.clone().requires_grad_()
    weights, tau, reduction = (4.0, 3.0, 2.0), 0.7, "batchmean"
    out = D.ddpm_pa_loss(
        sample.x_t,
        eps_ada,
        sample.eps_src,
        sample.noise,
        sample.a_t,
        sample.b_t,
        *weights,
        tau,
        reduction,
        backend="triton",
    )
    assert isinstance(out, D.DDPMPALossOutput)
    # A random upstream gradient on each of the five outputs, as when the terms are logged and weighted.
    grads_out = [_upstream((), dtype, device, 20 + k) for k in range(len(LOSS_TERMS))]
    expected, expected_grad = _loss_reference(sample, eps_ada, weights, tau, reduction, grads_out)
    for name, actual, truth in zip(LOSS_TERMS, out, expected, strict=True):
        assert actual.dtype == dtype and actual.shape == (), name
        assert_close(actual, truth, dtype)
    (grad,) = torch.autograd.grad(list(out), eps_ada, grads_out)
    assert_close(grad, expected_grad, dtype)


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("coef_shape", ["flat", "4d"])
def test_ddpm_pa_loss_reductions_and_coefficient_shapes(device, reduction, coef_shape):
    sample = make_loss_sample(
        (3, 2, 7, 6), seed=13, dtype=torch.float32, device=device, coef_shape=coef_shape
    )
    eps_ada = sample.eps_ada.clone().requires_grad_()
    weights = (4.0, 4.0, 1.0)
    out = D.DDPMPALoss(*weights, tau=1.0, reduction=reduction, backend="triton")(
        sample.x_t, eps_ada, sample.eps_src, sample.noise, sample.a_t, sample.b_t
    )
    grads_out = [torch.tensor(1.0, device=device)] + [torch.tensor(0.0, device=device)] * 4
    expected, expected_grad = _loss_reference(sample, eps_ada, weights, 1.0, reduction, grads_out)
    for actual, truth in zip(out, expected, strict=True):
        assert_close(actual, truth, torch.float32)
    (grad,) = torch.autograd.grad(out.loss, eps_ada)
    assert_close(grad, expected_grad, torch.float32)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_ddpm_pa_loss_grams_are_deterministic_and_correct(device):
    # (4, 3, 17, 33): 459 blocks = 15 column tiles over several programs, so the fixed-order partial
    # sum is what makes two runs agree bit for bit.
    sample = make_loss_sample((4, 3, 17, 33), seed=14, dtype=torch.float32, device=device)
    first = _ops().ddpm_pa_loss(*sample.args(), None, None, 4.0, 4.0, 1.0, 1.0, "mean")
    second = _ops().ddpm_pa_loss(*sample.args(), None, None, 4.0, 4.0, 1.0, 1.0, "mean")
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    s = sample.to(device="cpu", dtype=torch.float64)
    a, b = s.a_t.view(-1, 1, 1, 1), s.b_t.view(-1, 1, 1, 1)
    x0_src, x0_ada = a * s.x_t - b * s.eps_src, a * s.x_t - b * s.eps_ada
    features = [x0_src, x0_ada, R.ddpm_pa_high_frequency(x0_src), R.ddpm_pa_high_frequency(x0_ada)]
    grams = first[-1]
    assert grams.shape == (4, 4, 4) and grams.dtype == torch.float32
    for k, f in enumerate(features):
        flat = f.reshape(4, -1)
        assert_close(grams[k], flat @ flat.T, torch.float32)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_ddpm_pa_loss_does_not_modify_inputs(device):
    sample = make_loss_sample((3, 2, 5, 6), seed=15, dtype=torch.float32, device=device)
    copies = [t.clone() for t in sample.args()]
    eps_ada = sample.eps_ada.requires_grad_()
    out = D.ddpm_pa_loss(
        sample.x_t, eps_ada, sample.eps_src, sample.noise, sample.a_t, sample.b_t, backend="triton"
    )
    out.loss.backward()
    for before, after in zip(copies, sample.args(), strict=True):
        assert torch.equal(before, after.detach())


# ------------------------------------------------------------------------------------------------
# The fused loss with per-sample weights of its mse and hf_mse terms

# The weights' dtype for each dtype of the images: always another one (a schedule's weights may be a
# float64 or half-precision table); the reference uses the same rounded values.
WEIGHT_DTYPES = {torch.float32: torch.float16, torch.bfloat16: torch.float64, torch.float16: torch.float32}
# Odd sizes and partial blocks at 16-sample tiles, N = 40 over two 32-sample row tiles, and N = 20 and
# 36 at one and two row tiles with several column tiles per program (each program weights its rows'
# sums once, after its walk).
WEIGHTED_LOSS_SHAPES = [(5, 4, 9, 7), (3, 2, 5, 58), LARGE_N_LOSS_SHAPE] + WIDE_TILE_LOSS_SHAPES


def _sample_weights(n, seed, dtype, device, shape="flat"):
    """Per-sample weights in [0.25, 3): unequal, none of them 1."""
    w = 0.25 + 2.75 * torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return w.reshape((n,) if shape == "flat" else (n, 1, 1, 1)).to(device=device, dtype=dtype)


def _weighted_loss(sample, eps_ada, weights, tau, reduction, mse_weight, hf_mse_weight):
    return D.ddpm_pa_loss(
        *_with_eps_ada(sample, eps_ada), *weights, tau, reduction, mse_weight=mse_weight,
        hf_mse_weight=hf_mse_weight, backend="triton",
    )


def _assert_weighted_loss_matches_reference(sample, dtype, mse_weight, hf_mse_weight, seed):
    eps_ada = sample.eps_ada.clone().requires_grad_()
    weights, tau, reduction = (4.0, 3.0, 2.0), 0.7, "batchmean"
    out = _weighted_loss(sample, eps_ada, weights, tau, reduction, mse_weight, hf_mse_weight)
    grads_out = [_upstream((), dtype, sample.x_t.device, seed + k) for k in range(len(LOSS_TERMS))]
    expected, expected_grad = _loss_reference(
        sample, eps_ada, weights, tau, reduction, grads_out, mse_weight, hf_mse_weight
    )
    for name, actual, truth in zip(LOSS_TERMS, out, expected, strict=True):
        assert actual.dtype == dtype and actual.shape == (), name
        assert_close(actual, truth, dtype)
    (grad,) = torch.autograd.grad(list(out), eps_ada, grads_out)
    assert_close(grad, expected_grad, dtype)
    return out


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", [*DTYPES, torch.float16])
@pytest.mark.parametrize("shape", WEIGHTED_LOSS_SHAPES)
def test_ddpm_pa_loss_weighted_matches_reference(device, dtype, shape):
    sample = make_loss_sample(shape, seed=16, dtype=dtype, device=device)
    n = shape[0]
    mse_weight = _sample_weights(n, 1, WEIGHT_DTYPES[dtype], device, "flat")
    hf_mse_weight = _sample_weights(n, 2, WEIGHT_DTYPES[dtype], device, "4d")
    out = _assert_weighted_loss_matches_reference(sample, dtype, mse_weight, hf_mse_weight, 30)
    # The weights are not a common factor the test could miss: the unweighted terms differ.
    plain = D.ddpm_pa_loss(*sample.args(), 4.0, 3.0, 2.0, 0.7, "batchmean", backend="triton")
    for term in ("mse", "hf_mse"):
        assert not torch.allclose(getattr(out, term).float(), getattr(plain, term).float(), rtol=0.05), term


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("case", ["mse_only", "hf_mse_only", "zero", "some_zero"])
def test_ddpm_pa_loss_weight_cases(device, case):
    """One weight None and the other set (each in the other shape and another dtype), all-zero weights
    and weights with zeros among them."""
    dtype, n = torch.float32, 5
    sample = make_loss_sample((n, 3, 9, 7), seed=17, dtype=dtype, device=device)
    if case == "mse_only":
        mse_weight, hf_mse_weight = _sample_weights(n, 3, torch.float64, device, "4d"), None
    elif case == "hf_mse_only":
        mse_weight, hf_mse_weight = None, _sample_weights(n, 4, torch.bfloat16, device, "flat")
    elif case == "zero":
        mse_weight = torch.zeros(n, device=device, dtype=dtype)
        hf_mse_weight = torch.zeros((n, 1, 1, 1), device=device, dtype=torch.float16)
    else:
        keep = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], device=device, dtype=dtype)
        mse_weight = keep * _sample_weights(n, 5, dtype, device)
        hf_mse_weight = keep.flip(0) * _sample_weights(n, 6, dtype, device)
    out = _assert_weighted_loss_matches_reference(sample, dtype, mse_weight, hf_mse_weight, 40)
    if case == "zero":
        assert out.mse.item() == 0.0 and out.hf_mse.item() == 0.0


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("shape", [(5, 4, 9, 7), WIDE_TILE_LOSS_SHAPES[1]])
def test_ddpm_pa_loss_unit_weights_are_the_unweighted_loss(device, shape):
    """Weights of exactly 1 (either shape) give the unweighted loss and gradient, to rounding."""
    sample = make_loss_sample(shape, seed=18, dtype=torch.float32, device=device)
    n = shape[0]
    grads_out = [_upstream((), torch.float32, device, 50 + k) for k in range(len(LOSS_TERMS))]
    results = []
    for mse_weight, hf_mse_weight in [
        (None, None),
        (torch.ones(n, device=device), torch.ones((n, 1, 1, 1), device=device, dtype=torch.float64)),
    ]:
        eps_ada = sample.eps_ada.clone().requires_grad_()
        out = _weighted_loss(sample, eps_ada, (4.0, 3.0, 2.0), 0.7, "batchmean", mse_weight, hf_mse_weight)
        results.append([*out, *torch.autograd.grad(list(out), eps_ada, grads_out)])
    for name, plain, unit in zip([*LOSS_TERMS, "grad"], *results, strict=True):
        torch.testing.assert_close(unit, plain, rtol=1e-6, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}")


# ------------------------------------------------------------------------------------------------
# float64: gradcheck of every op, and torch.library.opcheck of the registered triton ops


def _with_eps_ada(sample, eps_ada):
    return (sample.x_t, eps_ada, sample.eps_src, sample.noise, sample.a_t, sample.b_t)


def _flat_dwt(yl, yh):
    return (yl, *yh)


def _gradcheck_cases(device):
    x = randn((2, 2, 5, 6), 30, torch.float64, device)
    src, ada = similar_features((3, 10), 31, torch.float64, device)
    sample = make_loss_sample((3, 2, 4, 5), seed=32, device=device)
    weights = (4.0, 3.0, 2.0, 0.7, "mean")
    yl, yh = R.haar_dwt2d(randn((2, 1, 5, 6), 33, torch.float64, device))
    mse_weight = _sample_weights(3, 34, torch.float64, device)
    hf_mse_weight = _sample_weights(3, 35, torch.float32, device, "4d")
    return {
        "high_frequency": (lambda t: D.ddpm_pa_high_frequency(t, backend="triton"), x),
        "haar_dwt2d": (lambda t: _flat_dwt(*D.haar_dwt2d(t, 2, "symmetric", backend="triton")), x),
        "haar_idwt2d": (lambda t: D.haar_idwt2d(t, yh, backend="triton"), yl),
        "pairwise_similarity_kl": (
            lambda t: D.pairwise_similarity_kl(src, t, 0.7, "none", backend="triton"),
            ada,
        ),
        "ddpm_pa_loss": (
            lambda t: tuple(D.ddpm_pa_loss(*_with_eps_ada(sample, t), *weights, backend="triton")),
            sample.eps_ada,
        ),
        "ddpm_pa_loss_weighted": (
            lambda t: tuple(
                D.ddpm_pa_loss(
                    *_with_eps_ada(sample, t), *weights, mse_weight=mse_weight, hf_mse_weight=hf_mse_weight,
                    backend="triton",
                )
            ),
            sample.eps_ada,
        ),
    }


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize(
    "op",
    [
        "high_frequency",
        "haar_dwt2d",
        "haar_idwt2d",
        "pairwise_similarity_kl",
        "ddpm_pa_loss",
        "ddpm_pa_loss_weighted",
    ],
)
def test_gradcheck_float64(device, op):
    fn, x = _gradcheck_cases(device)[op]
    assert torch.autograd.gradcheck(
        fn, (x.detach().clone().requires_grad_(),), eps=1e-6, atol=1e-7, rtol=1e-5
    )


def _opcheck_samples(device):
    """(op, args) by name; the names are OPCHECK_SAMPLES."""
    x = randn((2, 3, 5, 7), 40, torch.float32, device)
    yl, yh = _ops().haar_dwt2d(x, "zero")
    src, ada = similar_features((3, 2, 4, 4), 41, torch.float32, device)
    sample = make_loss_sample((3, 2, 6, 5), seed=42, dtype=torch.float32, device=device)
    grams = _ops().ddpm_pa_loss(*sample.args(), None, None, 4.0, 4.0, 1.0, 1.0, "mean")[-1]
    _, gram_src, gram_ada = _ops().pairwise_similarity_kl(src, ada, 1.0, "sum")
    ops = _ops()
    grad_terms = randn((5,), 43, torch.float32, device)
    mse_weight = _sample_weights(3, 46, torch.float32, device)
    hf_mse_weight = _sample_weights(3, 47, torch.float64, device, "4d")
    loss_args = _with_eps_ada(sample, sample.eps_ada.requires_grad_())
    # The backward ops get inputs that do not require grad, as autograd gives them (they have no
    # derivative of their own); detached because other samples mark yl, yh, ada and eps_ada.
    loss_backward_args = (
        grad_terms, grams, sample.x_t, sample.eps_ada.detach(), sample.noise, sample.a_t, sample.b_t
    )
    scalar_args = (4.0, 3.0, 2.0, 0.7, "mean")
    return {
        "high_frequency": (ops.ddpm_pa_high_frequency.default, (x.requires_grad_(),)),
        "high_frequency_backward": (
            ops.ddpm_pa_high_frequency_backward.default,
            (randn((2, 3, 2, 3), 44, torch.float32, device), 5, 7),
        ),
        "haar_dwt2d": (ops.haar_dwt2d.default, (x, "symmetric")),
        "haar_dwt2d_backward": (
            ops.haar_dwt2d_backward.default,
            (yl.detach(), yh.detach(), 5, 7, "periodization"),
        ),
        "haar_idwt2d": (ops.haar_idwt2d.default, (yl.requires_grad_(), yh.requires_grad_())),
        "pairwise_similarity_kl": (
            ops.pairwise_similarity_kl.default,
            (src, ada.requires_grad_(), 0.7, "none"),
        ),
        "pairwise_similarity_kl_backward": (
            ops.pairwise_similarity_kl_backward.default,
            (randn((), 45, torch.float32, device), ada.detach(), gram_src, gram_ada, 0.7, "sum"),
        ),
        "ddpm_pa_loss": (ops.ddpm_pa_loss.default, (*loss_args, None, None, *scalar_args)),
        "ddpm_pa_loss_weighted": (
            ops.ddpm_pa_loss.default,
            (*loss_args, mse_weight, hf_mse_weight, *scalar_args),
        ),
        "ddpm_pa_loss_backward": (
            ops.ddpm_pa_loss_backward.default,
            (*loss_backward_args, None, None, *scalar_args),
        ),
        # One weight set, the other None.
        "ddpm_pa_loss_backward_weighted": (
            ops.ddpm_pa_loss_backward.default,
            (*loss_backward_args, None, hf_mse_weight, *scalar_args),
        ),
    }


OPCHECK_SAMPLES = [
    "high_frequency",
    "high_frequency_backward",
    "haar_dwt2d",
    "haar_dwt2d_backward",
    "haar_idwt2d",
    "pairwise_similarity_kl",
    "pairwise_similarity_kl_backward",
    "ddpm_pa_loss",
    "ddpm_pa_loss_weighted",
    "ddpm_pa_loss_backward",
    "ddpm_pa_loss_backward_weighted",
]


OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
# Under the interpreter, wrap_triton returns the kernel itself (kernels/_common.py), so AOT tracing
# would launch it on fake tensors; that check runs where the kernels compile, on a GPU.
INTERPRETER_OPCHECK_UTILS = OPCHECK_UTILS[:3]


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("name", OPCHECK_SAMPLES)
def test_opcheck(device, name):
    samples = _opcheck_samples(device)
    assert list(samples) == OPCHECK_SAMPLES  # none left untested
    op, args = samples[name]
    interpreted = device == "cpu"
    torch.library.opcheck(op, args, test_utils=INTERPRETER_OPCHECK_UTILS if interpreted else OPCHECK_UTILS)


# ------------------------------------------------------------------------------------------------
# Compiling for GPUs without one


# Register spills, bytes per thread, at the sizes recorded below: the fused loss's backward with two row
# tiles (N > 32) spills up to 120 (kernels/ddpm_pa_loss._loss_tiling), the one-program N x N kernels
# at N = 33..64 up to 48 (kernels/_common.whole_batch_warps), the rest at most 80. Before those two
# choices the loss kernels had spilled 230-700 and the N x N kernels up to 1312.
MAX_STACK_BYTES = 128


def _record_launches(monkeypatch) -> list[dict]:
    """Patches the interpreter's launch to record each distinct launch's types, constexprs and options
    instead of running it: what launches, and with what, depends on shapes and dtypes only (no launcher
    reads a tensor's value), so the outputs' values are not needed."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import mangle_type

    launches, seen = [], set()

    def recording_run(self, *args, grid, warmup, **kwargs):
        params = list(inspect.signature(self.fn).parameters.values())
        names = [p.name for p in params]
        # Positional arguments may stop before the keyword (constexpr) ones.
        values = {**dict(zip(names, args, strict=False)), **{k: v for k, v in kwargs.items() if k in names}}
        signature, constexprs = {}, {}
        for p in params:
            value = values.get(p.name, p.default)
            if p.annotation is tl.constexpr or "constexpr" in str(p.annotation):
                signature[p.name] = "constexpr"
                constexprs[p.name] = {"tl_dtype": value.name} if isinstance(value, tl.dtype) else value
            else:
                signature[p.name] = mangle_type(value)
        launch = {
            "module": self.fn.__module__, "kernel": self.fn.__name__, "signature": signature,
            "constexprs": constexprs, "options": {k: v for k, v in kwargs.items() if k not in names},
        }
        key = json.dumps(launch, sort_keys=True)
        if key not in seen:
            seen.add(key)
            launches.append(launch)

    monkeypatch.setattr(InterpretedFunction, "run", recording_run)
    return launches


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="with a GPU the other tests compile and run the kernels on it")
def test_kernels_compile_for_gpu_targets(monkeypatch, tmp_path):
    """Every kernel launch our ops make, fwd and bwd, float32 and bfloat16, each Gram tiling, the fused
    loss with and without its per-sample weights, compiled by Triton's compiler for sm_80 and sm_90 down
    to cubin: what the interpreter cannot show (the compiler's type and layout checks, shared memory
    within the GPU's limit, register spills)."""
    launches = _record_launches(monkeypatch)
    max_batch = triton_ops.max_batch()
    for dtype in DTYPES:
        x = randn((2, 3, 9, 7), 1, dtype, "cpu").requires_grad_()
        D.ddpm_pa_high_frequency(x, backend="triton").sum().backward()
        yl, yh = D.haar_dwt2d(x, 2, "zero", backend="triton")
        torch.autograd.backward([yl, *yh], [torch.ones_like(yl), *map(torch.ones_like, yh)])
        coefficients = [t.detach().requires_grad_() for t in (yl, *yh)]
        D.haar_idwt2d(coefficients[0], coefficients[1:], "zero", backend="triton").sum().backward()
        # N = 4, 20 and 40: BLOCK_N 16, then 32 with one and with two row tiles; and the kernels' limit,
        # where the one-program N x N kernels are largest (at N = 256 one needed 256 KiB of shared memory).
        for feature_shape in [(4, 30), (20, 3, 5), LARGE_N_FEATURE_SHAPE, (max_batch, 2)]:
            src, ada = similar_features(feature_shape, 2, dtype, "cpu")
            D.pairwise_similarity_kl(src, ada.requires_grad_(), backend="triton").backward()
        for loss_shape in [(3, 2, 8, 8), (20, 1, 3, 5), LARGE_N_LOSS_SHAPE, (max_batch, 1, 2, 3)]:
            sample = make_loss_sample(loss_shape, seed=3, dtype=dtype)
            eps_ada = sample.eps_ada.requires_grad_()
            out = D.ddpm_pa_loss(sample.x_t, eps_ada, sample.eps_src, sample.noise, sample.a_t, sample.b_t,
                                 backend="triton")
            out.loss.backward()
            # The weighted kernels (both flags on: the code of either weight alone is a part of it).
            weights = [_sample_weights(loss_shape[0], k, WEIGHT_DTYPES[dtype], "cpu") for k in (4, 5)]
            out = D.ddpm_pa_loss(sample.x_t, eps_ada, sample.eps_src, sample.noise, sample.a_t, sample.b_t,
                                 mse_weight=weights[0], hf_mse_weight=weights[1], backend="triton")
            out.loss.backward()
    from triton.runtime.interpreter import InterpretedFunction

    kernel_modules = [m for name, m in list(sys.modules.items()) if name.startswith("ddpm_pa_fast.kernels")]
    defined = {
        name for module in kernel_modules for name, value in vars(module).items()
        if isinstance(value, InterpretedFunction) and name.endswith("_kernel")
    }
    assert {launch["kernel"] for launch in launches} == defined  # every kernel, none left out
    weightings = {
        (launch["kernel"], launch["constexprs"]["HAS_MSE_WEIGHT"], launch["constexprs"]["HAS_HF_MSE_WEIGHT"])
        for launch in launches if "HAS_MSE_WEIGHT" in launch["constexprs"]
    }
    loss_kernels = ("_ddpm_pa_loss_forward_kernel", "_ddpm_pa_loss_backward_kernel")
    assert weightings == {(kernel, flag, flag) for kernel in loss_kernels for flag in (False, True)}

    path = tmp_path / "launches.json"
    path.write_text(json.dumps(launches))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.triton_gpu_compile", str(path)], env=env, capture_output=True,
        text=True, timeout=1200, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    compiled = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(compiled) == 2 * len(launches)
    failures = [
        c for c in compiled
        if "error" in c or c["shared_bytes"] > c["shared_limit"] or c["stack_bytes"] > MAX_STACK_BYTES
        or c["local_bytes"] > 0
    ]
    assert not failures, [
        {**{k: c.get(k) for k in ("kernel", "sm", "shared_bytes", "shared_limit", "registers", "stack_bytes",
                                  "local_bytes", "error")},
         "constexprs": next(x["constexprs"] for x in launches
                            if x["kernel"] == c["kernel"] and x["signature"] == c["signature"])}
        for c in failures
    ]
    assert all(c["cubin_bytes"] > 0 for c in compiled)


# ------------------------------------------------------------------------------------------------
# Bad input, availability, and triton staying optional


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_bad_input_is_rejected_with_the_argument_named(device):
    sample = make_loss_sample((1, 3, 8, 8), dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match="x_t must hold at least 2 samples"):
        D.ddpm_pa_loss(*sample.args(), backend="triton")
    src, ada = similar_features((3, 5), dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        D.pairwise_similarity_kl(src, ada, 0.0, backend="triton")
    with pytest.raises(ValueError, match="x must have height and width of at least 2"):
        D.ddpm_pa_high_frequency(randn((2, 3, 1, 8), device=device, dtype=torch.float32), backend="triton")


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_batch_above_the_kernels_limit_is_rejected(device):
    max_batch = triton_ops.max_batch()
    src, ada = similar_features((max_batch + 1, 2), dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match=rf"src has N={max_batch + 1} samples; the Triton kernels support "
                                         rf"N <= {max_batch}"):
        D.pairwise_similarity_kl(src, ada, backend="triton")
    sample = make_loss_sample((max_batch + 1, 1, 2, 2), dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match=rf"x_t has N={max_batch + 1} samples"):
        D.ddpm_pa_loss(*sample.args(), backend="triton")


def test_unavailable_reason_says_why_and_how(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in triton_ops.unavailable_reason("cpu")
    assert "CUDA" in triton_ops.unavailable_reason("mps")
    monkeypatch.setattr(triton_ops.importlib.util, "find_spec", lambda name: None)
    assert "pip install ddpm_pa_fast[triton]" in triton_ops.unavailable_reason("cuda")


def test_package_works_without_triton():
    # A fresh interpreter in which `import triton` fails: the package imports, the torch backend runs,
    # and backend "triton" explains how to get it.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None
        import torch, ddpm_pa_fast as D
        x = torch.randn(2, 3, 4, 4)
        assert D.ddpm_pa_high_frequency(x, backend="torch").shape == (2, 3, 2, 2)
        assert "triton" not in D.available_backends("cpu")
        try:
            D.ddpm_pa_high_frequency(x, backend="triton")
        except D.BackendUnavailableError as e:
            assert "pip install ddpm_pa_fast[triton]" in str(e), e
        else:
            raise AssertionError("backend triton ran without triton")
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
