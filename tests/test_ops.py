"""The C++ extension's ops (backend "cpu", and "cuda" where a GPU exists) against the float64 reference.

Every correctness test runs forward and backward with a random, non-unit upstream gradient, through
the public API with the device's backend, and the opcheck / compile tests call torch.ops directly.
Reference values are computed in float64 from the inputs as rounded to the tested dtype, so the
tolerances bound the kernels' own arithmetic.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import ddpm_pa_fast as D
from ddpm_pa_fast import ops
from ddpm_pa_fast import reference as R
from ddpm_pa_fast.testing import relayout

from .common import (
    DEVICES,
    DWT_MODES,
    FEATURE_SHAPES,
    FLOAT_DTYPES,
    KL_REDUCTIONS,
    LOSS_SHAPES,
    TOLERANCES,
    make_loss_sample,
    randn,
    similar_features,
)

if ops.extension_unavailable_reason() is not None:
    # These tests are about the extension: without it they must fail, never pass by skipping.
    pytest.fail(ops.extension_unavailable_reason(), pytrace=False)

OPS = torch.ops.ddpm_pa_fast
LAYOUTS = ["contiguous", "channels_last", "strided"]
LOSS_REDUCTIONS = ["mean", "batchmean", "sum"]


def backend_for(device: str) -> str:
    return "cpu" if device == "cpu" else "cuda"


def check_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str, scale: float = 1.0
):
    """actual against the float64 expected; atol relative to the expected's magnitude."""
    rtol, atol = TOLERANCES[dtype]
    expected = expected.detach().double().cpu()
    magnitude = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.detach().double().cpu(),
        expected,
        rtol=rtol * scale,
        atol=atol * scale * magnitude,
        msg=lambda m: f"{what}: {m}",
    )


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_()


def assert_unchanged(tensors, snapshots):
    for t, s in zip(tensors, snapshots, strict=True):
        assert torch.equal(t, s), "an input was modified"


# ---------------------------------------------------------------------------------------------
# ddpm_pa_high_frequency


@pytest.mark.isa_copies
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (3, 4, 9, 7), (2, 3, 17, 33), (1, 1, 2, 2), (2, 2, 6, 70)])
def test_high_frequency_matches_reference(device, dtype, layout, shape):
    x = relayout(randn(shape, 1, dtype, device), layout)
    snapshot = x.clone()
    x_ada = leaf(x)
    hf = D.ddpm_pa_high_frequency(x_ada, backend=backend_for(device))
    x64 = leaf(x.double())
    expected = R.ddpm_pa_high_frequency(x64)
    assert hf.dtype == dtype and hf.shape == expected.shape
    check_close(hf, expected, dtype, "hf")
    grad_out = randn(expected.shape, 2, dtype, device)
    hf.backward(grad_out)
    expected.backward(grad_out.double())
    check_close(x_ada.grad, x64.grad, dtype, "grad x")
    assert_unchanged([x], [snapshot])


# ---------------------------------------------------------------------------------------------
# haar_dwt2d / haar_idwt2d


@pytest.mark.isa_copies
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mode", DWT_MODES)
@pytest.mark.parametrize(
    "shape, levels",
    [((2, 3, 8, 8), 1), ((3, 4, 9, 7), 2), ((2, 2, 1, 5), 1), ((2, 3, 17, 33), 3), ((2, 2, 6, 70), 1)],
)
def test_haar_dwt_and_idwt_match_reference(device, dtype, mode, shape, levels):
    backend = backend_for(device)
    x = relayout(randn(shape, 3, dtype, device), "channels_last" if levels == 2 else "contiguous")
    snapshot = x.clone()
    x_ada, x64 = leaf(x), leaf(x.double())
    yl, yh = D.haar_dwt2d(x_ada, levels, mode, backend=backend)
    ryl, ryh = R.haar_dwt2d(x64, levels, mode)
    check_close(yl, ryl, dtype, "yl")
    assert len(yh) == levels
    for j, (band, ref_band) in enumerate(zip(yh, ryh, strict=True)):
        assert band.dtype == dtype
        check_close(band, ref_band, dtype, f"yh[{j}]")
    grads = [randn(t.shape, 10 + j, dtype, device) for j, t in enumerate([yl, *yh])]
    torch.autograd.backward([yl, *yh], grads)
    torch.autograd.backward([ryl, *ryh], [g.double() for g in grads])
    check_close(x_ada.grad, x64.grad, dtype, "grad x")
    assert_unchanged([x], [snapshot])

    # The inverse, from coefficients with the finest detail missing (None is zeros).
    coeffs_l = leaf(relayout(ryl.detach().to(dtype), "strided"))
    coeffs_h = [None] + [leaf(b.detach().to(dtype)) for b in ryh[1:]]
    rec = D.haar_idwt2d(coeffs_l, coeffs_h, mode, backend=backend)
    ref_l = leaf(coeffs_l.double())
    ref_h = [None] + [leaf(b.double()) for b in coeffs_h[1:]]
    expected = R.haar_idwt2d(ref_l, ref_h, mode)
    assert rec.shape == expected.shape
    check_close(rec, expected, dtype, "idwt")
    grad_out = randn(expected.shape, 20, dtype, device)
    rec.backward(grad_out)
    expected.backward(grad_out.double())
    check_close(coeffs_l.grad, ref_l.grad, dtype, "grad yl")
    for j in range(1, levels):
        check_close(coeffs_h[j].grad, ref_h[j].grad, dtype, f"grad yh[{j}]")


@pytest.mark.parametrize("device", DEVICES)
def test_haar_idwt_inverts_dwt(device):
    x = randn((2, 3, 13, 10), 4, torch.float64, device)
    yl, yh = D.haar_dwt2d(x, 2, "symmetric", backend=backend_for(device))
    rec = D.haar_idwt2d(yl, yh, "symmetric", backend=backend_for(device))
    torch.testing.assert_close(rec[..., :13, :10], x)


# ---------------------------------------------------------------------------------------------
# pairwise_similarity_kl


@pytest.mark.isa_copies
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", KL_REDUCTIONS)
@pytest.mark.parametrize(
    "shape, tau", [(s, 1.0) for s in FEATURE_SHAPES] + [((64, 3, 5, 5), 0.5), ((5, 5000), 2.0)]
)
def test_pairwise_kl_matches_reference(device, dtype, reduction, shape, tau):
    src, ada = similar_features(shape, 5, dtype, device)
    if len(shape) == 4:
        src, ada = relayout(src, "channels_last"), relayout(ada, "strided")
    snapshots = [src.clone(), ada.clone()]
    ada_leaf, ada64 = leaf(ada), leaf(ada.double())
    loss = D.pairwise_similarity_kl(src, ada_leaf, tau, reduction, backend=backend_for(device))
    expected = R.pairwise_similarity_kl(src.double(), ada64, tau, reduction)
    assert loss.dtype == dtype and loss.shape == expected.shape
    check_close(loss, expected, dtype, "kl")
    grad_out = randn(expected.shape, 6, dtype, device) + 2
    loss.backward(grad_out)
    expected.backward(grad_out.double())
    # The gradient is a difference of near-equal softmax terms: allow a little more than the loss.
    check_close(ada_leaf.grad, ada64.grad, dtype, "grad ada", scale=4.0)
    assert_unchanged([src, ada], snapshots)


def test_pairwise_kl_source_gets_no_gradient():
    src, ada = similar_features((4, 20), 7)
    src, ada = leaf(src), leaf(ada)
    D.pairwise_similarity_kl(src, ada, backend="cpu").backward()
    assert src.grad is None and ada.grad is not None


# ---------------------------------------------------------------------------------------------
# ddpm_pa_loss


def run_loss(
    sample, backend, weights=(4.0, 4.0, 1.0), tau=1.0, reduction="mean", grad_seed=8, mse_weight=None,
    hf_mse_weight=None,
):
    """Loss terms, grad of eps_ada from random upstream grads on all five terms, and the reference's.

    mse_weight, hf_mse_weight go to both as given (the reference uses them in float64)."""
    eps_ada = leaf(sample.eps_ada)
    args = (sample.x_t, eps_ada, sample.eps_src, sample.noise, sample.a_t, sample.b_t)
    sample_weights = {"mse_weight": mse_weight, "hf_mse_weight": hf_mse_weight}
    out = D.ddpm_pa_loss(*args, *weights, tau, reduction, backend=backend, **sample_weights)
    ref_sample = sample.to(dtype=torch.float64)
    eps64 = leaf(ref_sample.eps_ada)
    ref_args = (ref_sample.x_t, eps64, ref_sample.eps_src, ref_sample.noise, ref_sample.a_t, ref_sample.b_t)
    expected = R.ddpm_pa_loss(*ref_args, *weights, tau, reduction, **sample_weights)
    upstream = randn((5,), grad_seed, torch.float64) + 1.5
    torch.autograd.backward(list(out), [g.to(out.loss) for g in upstream])
    torch.autograd.backward(list(expected), list(upstream.to(sample.x_t.device)))
    return out, eps_ada.grad, expected, eps64.grad


def check_loss(out, grad, expected, grad_expected, dtype):
    assert isinstance(out, D.DDPMPALossOutput)
    for name in out._fields:
        assert getattr(out, name).dtype == dtype and getattr(out, name).shape == ()
        check_close(getattr(out, name), getattr(expected, name), dtype, name)
    check_close(grad, grad_expected, dtype, "grad eps_ada", scale=2.0)


@pytest.mark.isa_copies
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", LOSS_SHAPES)
def test_loss_matches_reference(device, dtype, shape):
    sample = make_loss_sample(shape, seed=sum(shape), dtype=dtype, device=device)
    snapshots = [t.clone() for t in sample.args()]
    out, grad, expected, grad_expected = run_loss(sample, backend_for(device))
    check_loss(out, grad, expected, grad_expected, dtype)
    assert_unchanged(sample.args(), snapshots)


@pytest.mark.isa_copies
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", LOSS_REDUCTIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_loss_options_and_layouts(device, reduction, layout):
    sample = make_loss_sample((4, 3, 11, 6), seed=3, dtype=torch.float32, device=device, coef_shape="4d")
    sample.x_t, sample.eps_ada, sample.eps_src, sample.noise = (
        relayout(t, layout) for t in (sample.x_t, sample.eps_ada, sample.eps_src, sample.noise)
    )
    out, grad, expected, grad_expected = run_loss(
        sample, backend_for(device), (2.5, -1.0, 3.0), 0.7, reduction
    )
    check_loss(out, grad, expected, grad_expected, torch.float32)


@pytest.mark.isa_copies
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [2, 17, 64])
def test_loss_batch_sizes(device, n):
    sample = make_loss_sample((n, 2, 6, 5), seed=n, dtype=torch.float32, device=device)
    check_loss(*run_loss(sample, backend_for(device)), torch.float32)


@pytest.mark.isa_copies
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_large_flattened_dimension(device, dtype):
    # 24 MiB or more moved by the backward: on CPU it writes the gradient with streaming stores
    # (kStreamingPassBytes in csrc/cpu/cpu_kernel_utils.h).
    sample = make_loss_sample((8, 3, 256, 256), seed=11, dtype=dtype, device=device)
    check_loss(*run_loss(sample, backend_for(device)), dtype)


def test_loss_rejects_bad_op_arguments_by_name():
    sample = make_loss_sample((3, 2, 4, 4))
    args = list(sample.args())
    args[1] = args[1][:, :1]
    with pytest.raises(RuntimeError, match="eps_ada must have the shape of x_t"):
        OPS.ddpm_pa_loss(*args, None, None, 4.0, 4.0, 1.0, 1.0, "mean")
    with pytest.raises(RuntimeError, match="reduction must be one of"):
        OPS.ddpm_pa_loss(*sample.args(), None, None, 4.0, 4.0, 1.0, 1.0, "none")
    with pytest.raises(RuntimeError, match="a_t must hold one value per sample"):
        OPS.ddpm_pa_loss(
            *sample.args()[:4], sample.a_t[:2], sample.b_t, None, None, 4.0, 4.0, 1.0, 1.0, "mean"
        )


# ---------------------------------------------------------------------------------------------
# ddpm_pa_loss with per-sample weights of mse and hf_mse


def loss_weights(n, kind, device="cpu", dtype=torch.float64, seed=50):
    """(mse_weight, hf_mse_weight) of one kind, for n samples.

    "both": positive weights of shape (N,); "both_4d": (N, 1, 1, 1) in another dtype than float64 and
    of very different magnitudes (as 1 / b_t^2 weights are); "mse_only", "hf_only": the other None;
    "zeros": some samples weigh 0 in mse, all in hf_mse; "signed": a negative weight and a zero
    (no value checks: any float is a weight).
    """
    w = randn((n,), seed).abs() + 0.25
    h = randn((n,), seed + 1).abs() + 0.25
    if kind == "both":
        pair = (w, h)
    elif kind == "both_4d":
        scales = torch.logspace(-3, 2, n, dtype=torch.float64)
        pair = (w.view(n, 1, 1, 1), (h * scales).view(n, 1, 1, 1))
    elif kind == "mse_only":
        pair = (w, None)
    elif kind == "hf_only":
        pair = (None, h)
    elif kind == "zeros":
        pair = (w * (torch.arange(n) % 2), torch.zeros(n, dtype=torch.float64))
    elif kind == "signed":
        pair = (w * torch.tensor([(-1.0, 0.0, 1.0)[k % 3] for k in range(n)], dtype=torch.float64), -h)
    else:
        raise ValueError(kind)
    return tuple(None if t is None else t.to(device=device, dtype=dtype) for t in pair)


WEIGHT_KINDS = ["both", "both_4d", "mse_only", "hf_only", "zeros", "signed"]


@pytest.mark.isa_copies
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", LOSS_SHAPES)
def test_weighted_loss_matches_reference(device, dtype, shape):
    # Weights in float64, another dtype than the images but for float64 images: there float32.
    weight_dtype = torch.float32 if dtype == torch.float64 else torch.float64
    sample = make_loss_sample(shape, seed=sum(shape) + 1, dtype=dtype, device=device)
    mse_weight, hf_mse_weight = loss_weights(shape[0], "both", device, weight_dtype)
    snapshots = [t.clone() for t in (*sample.args(), mse_weight, hf_mse_weight)]
    out, grad, expected, grad_expected = run_loss(
        sample, backend_for(device), mse_weight=mse_weight, hf_mse_weight=hf_mse_weight
    )
    check_loss(out, grad, expected, grad_expected, dtype)
    assert_unchanged((*sample.args(), mse_weight, hf_mse_weight), snapshots)


@pytest.mark.isa_copies
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kind", WEIGHT_KINDS)
def test_weighted_loss_kinds_of_weights(device, dtype, kind):
    weight_dtype = {torch.float32: torch.float16, torch.float64: torch.float32, torch.bfloat16: torch.float64}
    # Weights rounded to their dtype first: the reference then sees the values the kernel converts.
    sample = make_loss_sample((5, 3, 9, 12), seed=51, dtype=dtype, device=device, coef_shape="4d")
    mse_weight, hf_mse_weight = loss_weights(5, kind, device, weight_dtype[dtype])
    out, grad, expected, grad_expected = run_loss(
        sample, backend_for(device), (2.5, -1.0, 3.0), 0.7, "batchmean", mse_weight=mse_weight,
        hf_mse_weight=hf_mse_weight,
    )
    check_loss(out, grad, expected, grad_expected, dtype)
    if kind == "zeros":
        assert out.hf_mse.item() == 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_weighted_loss_large_flattened_dimension(device):
    # Many blocks and chunks per sample (and, on CPU, the backward's streaming stores): the weight is
    # applied to every block's sums, not once.
    sample = make_loss_sample((8, 3, 256, 256), seed=52, dtype=torch.float32, device=device)
    mse_weight, hf_mse_weight = loss_weights(8, "both_4d", device, torch.float32)
    check_loss(
        *run_loss(sample, backend_for(device), mse_weight=mse_weight, hf_mse_weight=hf_mse_weight),
        torch.float32,
    )


@pytest.mark.isa_copies
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(3, 2, 5, 58), (8, 3, 64, 64)])
def test_unit_weights_equal_the_unweighted_call(device, dtype, shape):
    """Weights of exactly 1 give the unweighted call's results bit for bit: the kernels put the weight
    first in each product (1 * x == x), and an absent weight skips the product. So the weighted
    arithmetic is the unweighted one plus a factor, and None computes what the kernels computed
    before weights existed (that code path is unchanged)."""
    sample = make_loss_sample(shape, seed=53, dtype=dtype, device=device)
    upstream = randn((5,), 54) + 1.5
    ones = torch.ones(shape[0], device=device)

    x_t, _, eps_src, noise, a_t, b_t = sample.args()

    def run(**weights):
        eps_ada = leaf(sample.eps_ada)
        out = OPS.ddpm_pa_loss(
            x_t, eps_ada, eps_src, noise, a_t, b_t, weights.get("m"), weights.get("h"),
            2.0, 3.0, 0.5, 0.8, "mean",
        )
        torch.autograd.backward(list(out[:5]), [g.to(out[0]) for g in upstream])
        return [*out, eps_ada.grad]

    unweighted = run()
    for weights in ({"m": ones}, {"h": ones.double()}, {"m": ones.half(), "h": ones.view(-1, 1, 1, 1)}):
        for name, got, want in zip(("loss", "mse", "hf_mse", "pair_img", "pair_hf", "grams", "grad"),
                                   run(**weights), unweighted, strict=True):
            assert torch.equal(got, want), (name, list(weights), (got - want).abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
def test_weights_get_no_gradient(device):
    sample = make_loss_sample((3, 2, 6, 6), seed=55, dtype=torch.float32, device=device)
    mse_weight, hf_mse_weight = (leaf(w) for w in loss_weights(3, "both", device, torch.float32))
    eps_ada = leaf(sample.eps_ada)
    out = OPS.ddpm_pa_loss(
        sample.x_t, eps_ada, *sample.args()[2:], mse_weight, hf_mse_weight, 4.0, 4.0, 1.0, 1.0, "mean"
    )
    (out[0] + out[1] + out[2]).backward()
    assert eps_ada.grad is not None and mse_weight.grad is None and hf_mse_weight.grad is None
    public = D.ddpm_pa_loss(
        *sample.args(), backend=backend_for(device), mse_weight=mse_weight, hf_mse_weight=hf_mse_weight
    )
    assert not public.mse.requires_grad and not public.hf_mse.requires_grad


@pytest.mark.parametrize("name", ["mse_weight", "hf_mse_weight"])
def test_loss_rejects_bad_weights_by_name(name):
    sample = make_loss_sample((3, 2, 4, 4))
    n = 3

    def public(weight):
        D.ddpm_pa_loss(*sample.args(), backend="cpu", **{name: weight})

    def op_args(weight):
        weights = (weight, None) if name == "mse_weight" else (None, weight)
        return (*sample.args(), *weights, 4.0, 4.0, 1.0, 1.0, "mean")

    def backward_args(weight):
        grams = OPS.ddpm_pa_loss(*op_args(None))[5]
        return (randn((5,), 56), grams, sample.x_t, sample.eps_ada, sample.noise, *op_args(weight)[4:])

    for bad_shape in ((n + 1,), (n, 2)):
        weight = torch.ones(bad_shape, dtype=torch.float64)
        with pytest.raises(ValueError, match=f"{name} must hold one value per sample of x_t"):
            public(weight)
        with pytest.raises(RuntimeError, match=f"{name} must hold one value per sample of x_t"):
            OPS.ddpm_pa_loss(*op_args(weight))
        with pytest.raises(RuntimeError, match=f"{name} must hold one value per sample of x_t"):
            OPS.ddpm_pa_loss_backward(*backward_args(weight))
    # A weight on another device than x_t: the meta device stands in for a GPU. Called normally the
    # op dispatches to its fake (Meta) kernel, which checks; redispatched to the CPU kernel, the C++
    # check must name the argument too.
    elsewhere = torch.ones(n, device="meta")
    with pytest.raises(ValueError, match=f"{name} must be on the device of x_t"):
        public(elsewhere)
    with pytest.raises(RuntimeError, match=f"{name} must be on the device of x_t"):
        OPS.ddpm_pa_loss(*op_args(elsewhere))
    cpu_only = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    with pytest.raises(RuntimeError, match=f"{name} must be on the device of x_t"):
        OPS.ddpm_pa_loss.default.redispatch(cpu_only, *op_args(elsewhere))
    with pytest.raises(RuntimeError, match=f"{name} must be on the device of x_t"):
        OPS.ddpm_pa_loss_backward.default.redispatch(cpu_only, *backward_args(elsewhere))
    with pytest.raises(RuntimeError, match=f"{name} must be float16, bfloat16, float32 or float64"):
        OPS.ddpm_pa_loss(*op_args(torch.ones(n, dtype=torch.int64)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("name", ["mse_weight", "hf_mse_weight"])
def test_cuda_loss_rejects_weights_by_name(name):
    sample = make_loss_sample((3, 2, 4, 4), device="cuda")
    bad = ((torch.ones(3), "must be on x_t's device"), (torch.ones(4, device="cuda"), "must have shape"))
    for weight, message in bad:
        weights = (weight, None) if name == "mse_weight" else (None, weight)
        with pytest.raises(RuntimeError, match=f"{name} {message}"):
            OPS.ddpm_pa_loss(*sample.args(), *weights, 4.0, 4.0, 1.0, 1.0, "mean")


# ---------------------------------------------------------------------------------------------
# Determinism, autocast, the backend registry


def test_results_do_not_depend_on_thread_count():
    sample = make_loss_sample((5, 3, 64, 96), seed=12, dtype=torch.float32)
    src, ada = similar_features((6, 50000), 13, torch.float32)

    def run():
        eps_ada = leaf(sample.eps_ada)
        out = D.ddpm_pa_loss(
            sample.x_t, eps_ada, sample.eps_src, sample.noise, sample.a_t, sample.b_t, backend="cpu"
        )
        (out.loss + out.hf_mse).backward()
        ada_leaf = leaf(ada)
        kl = D.pairwise_similarity_kl(src, ada_leaf, backend="cpu")
        kl.backward()
        return [*out, eps_ada.grad, kl, ada_leaf.grad]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Instruction sets: every copy of the CPU kernels this machine can run, against the reference

ISAS = ["avx512", "avx2", "baseline"]  # best first, as ddpm_pa_fast.ops.cpu_isa names them


@pytest.mark.isa_copies
def test_cpu_isa_is_the_one_asked_for():
    asked = os.environ.get("DDPM_PA_CPU_ISA")
    assert ops.cpu_isa() in ISAS
    if asked:  # set by test_lower_instruction_sets_match_reference for its run of this module
        assert ops.cpu_isa() == asked


@pytest.mark.parametrize("isa", ISAS[ISAS.index(ops.cpu_isa()) + 1:])
def test_lower_instruction_sets_match_reference(isa):
    """This module's CPU correctness tests again, in a process whose kernels run the lower set's copy
    (this process runs the best one: the other tests). They carry the isa_copies marker."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-m", "isa_copies",
         "-k", "not cuda"],
        env=dict(os.environ, DDPM_PA_CPU_ISA=isa), capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


def test_unusable_cpu_isa_request_warns_and_keeps_the_best():
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from ddpm_pa_fast import ops\n"
        "print(ops.cpu_isa()); print(*[str(w.message) for w in caught], sep='\\n')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, DDPM_PA_CPU_ISA="sse9"),
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    chosen, *messages = result.stdout.splitlines()
    assert chosen == ops.cpu_isa()
    expected = ("DDPM_PA_CPU_ISA", "'avx512', 'avx2', 'baseline'", "'sse9'")
    assert any(all(part in m for part in expected) for m in messages), messages


@pytest.mark.parametrize("device", DEVICES)
def test_loss_under_bfloat16_autocast(device):
    """A model under autocast feeds the loss bfloat16 predictions; the loss and its gradient to the
    model's float32 weights match the reference run the same way."""
    sample = make_loss_sample((3, 3, 8, 8), seed=14, dtype=torch.bfloat16, device=device)
    grads = []
    for loss_fn in (D.ddpm_pa_loss, R.ddpm_pa_loss):
        torch.manual_seed(0)
        model = torch.nn.Conv2d(3, 3, 3, padding=1).to(device)
        kwargs = {"backend": backend_for(device)} if loss_fn is D.ddpm_pa_loss else {}
        with torch.autocast(device, dtype=torch.bfloat16):
            eps_ada = model(sample.x_t)
            assert eps_ada.dtype == torch.bfloat16
            out = loss_fn(sample.x_t, eps_ada, sample.eps_src, sample.noise, sample.a_t, sample.b_t, **kwargs)
        assert out.loss.dtype == torch.bfloat16
        out.loss.backward()
        grads.append((out.loss.detach(), model.weight.grad))
    (loss, grad), (ref_loss, ref_grad) = grads
    check_close(loss, ref_loss, torch.bfloat16, "loss")
    check_close(grad, ref_grad, torch.bfloat16, "grad weight", scale=2.0)


def test_auto_backend_uses_the_cpu_kernels():
    assert D.backend_name("auto", "cpu") == "cpu"
    assert "cpu" in D.available_backends("cpu")


# ---------------------------------------------------------------------------------------------
# opcheck, gradcheck and torch.compile on one shared sample list


def op_samples():
    """(op name, args) pairs for every op, forward and backward: small, odd and non-contiguous."""
    x = randn((2, 3, 5, 7), 20)
    x_cl = relayout(randn((3, 2, 6, 4), 21), "channels_last")
    src, ada = similar_features((4, 3, 5), 22)
    loss_sample = make_loss_sample((3, 2, 5, 6), seed=23)
    loss_sample_4d = make_loss_sample((2, 1, 4, 3), seed=30, coef_shape="4d")
    n = 3
    grams = OPS.ddpm_pa_loss(*loss_sample.args(), None, None, 4.0, 4.0, 1.0, 1.0, "mean")[5]
    mse_weight, hf_mse_weight = loss_weights(3, "both")
    mse_weight_4d, _ = loss_weights(2, "both_4d", dtype=torch.float32)
    _, gram_src, gram_ada = OPS.pairwise_similarity_kl(src, ada, 1.0, "none")
    samples = [
        ("ddpm_pa_high_frequency", (x,)),
        ("ddpm_pa_high_frequency", (x_cl,)),
        ("ddpm_pa_high_frequency_backward", (randn((2, 3, 2, 3), 24), 5, 7)),
        ("haar_dwt2d", (x, "zero")),
        ("haar_dwt2d", (x_cl, "symmetric")),
        ("haar_dwt2d_backward", (randn((2, 3, 3, 4), 25), randn((2, 3, 3, 3, 4), 26), 5, 7, "periodization")),
        ("haar_idwt2d", (randn((2, 3, 3, 4), 27), relayout(randn((2, 3, 3, 3, 4), 28), "strided"))),
        ("pairwise_similarity_kl", (src, ada, 0.5, "mean")),
        ("pairwise_similarity_kl", (src, ada, 1.0, "none")),
        ("pairwise_similarity_kl_backward", (randn((4,), 29), ada, gram_src, gram_ada, 1.0, "none")),
        ("ddpm_pa_loss", (*loss_sample.args(), None, None, 4.0, 4.0, 1.0, 1.0, "mean")),
        ("ddpm_pa_loss", (*loss_sample_4d.args(), None, None, 1.0, 2.0, 3.0, 0.5, "sum")),
        ("ddpm_pa_loss_backward", (randn((5,), 31), grams, *loss_sample.args()[:2], loss_sample.noise,
                                   loss_sample.a_t, loss_sample.b_t, None, None, 4.0, 4.0, 1.0, 1.0, "mean")),
        # Weighted: both (N,) in float64, one (N, 1, 1, 1) in float32 with the other None.
        ("ddpm_pa_loss", (*loss_sample.args(), mse_weight, hf_mse_weight, 4.0, 4.0, 1.0, 1.0, "mean")),
        ("ddpm_pa_loss", (*loss_sample_4d.args(), mse_weight_4d, None, 1.0, 2.0, 3.0, 0.5, "sum")),
        ("ddpm_pa_loss_backward", (randn((5,), 32), grams, *loss_sample.args()[:2], loss_sample.noise,
                                   loss_sample.a_t, loss_sample.b_t, None, hf_mse_weight, 4.0, 4.0, 1.0, 1.0,
                                   "mean")),
    ]
    assert grams.shape == (4, n, n)
    return samples


# The argument each forward op differentiates: the rest are constants of the maths.
DIFFERENTIABLE = {"ddpm_pa_high_frequency": [0], "haar_dwt2d": [0], "haar_idwt2d": [0, 1],
                  "pairwise_similarity_kl": [1], "ddpm_pa_loss": [1]}


def with_grad(name, args):
    return tuple(leaf(a) if i in DIFFERENTIABLE.get(name, []) else a for i, a in enumerate(args))


@pytest.mark.parametrize("index", range(len(op_samples())))
def test_opcheck(index):
    name, args = op_samples()[index]
    torch.library.opcheck(getattr(OPS, name).default, with_grad(name, args))


@pytest.mark.parametrize("name", list(DIFFERENTIABLE))
def test_gradcheck_float64(name):
    samples = [(n, a) for n, a in op_samples() if n == name]
    for _, args in samples:
        inputs = with_grad(name, args)

        def differentiable_outputs(*tensors, inputs=inputs):
            full = list(inputs)
            for i, t in zip(DIFFERENTIABLE[name], tensors, strict=True):
                full[i] = t
            out = getattr(OPS, name)(*full)
            if name == "pairwise_similarity_kl":
                return out[0]
            if name == "ddpm_pa_loss":
                return out[:5]
            return out

        torch.autograd.gradcheck(differentiable_outputs, tuple(inputs[i] for i in DIFFERENTIABLE[name]))


def test_compiled_ops_match_eager():
    x = randn((2, 3, 9, 8), 40, torch.float32)
    src, ada = similar_features((4, 3, 6, 6), 41, torch.float32)
    sample = make_loss_sample((3, 3, 8, 10), seed=42, dtype=torch.float32)
    mse_weight, hf_mse_weight = loss_weights(3, "both_4d", dtype=torch.float32)

    def every_op(x, ada, eps_ada):
        hf = ops.ddpm_pa_high_frequency(x)
        yl, yh = ops.haar_dwt2d(x, 2, "symmetric")
        rec = ops.haar_idwt2d(yl, [None, yh[1]], "symmetric")
        kl = ops.pairwise_similarity_kl(src, ada, 0.5, "none")
        terms = ops.ddpm_pa_loss(sample.x_t, eps_ada, sample.eps_src, sample.noise, sample.a_t, sample.b_t)
        weighted = ops.ddpm_pa_loss(
            sample.x_t, eps_ada, sample.eps_src, sample.noise, sample.a_t, sample.b_t, mse_weight=mse_weight,
            hf_mse_weight=hf_mse_weight,
        )
        total = hf.square().sum() + yl.sum() + yh[0].square().sum() + rec.square().sum() + (kl * kl).sum()
        return total + terms.loss + terms.hf_mse + 0.5 * weighted.loss - weighted.mse, (*terms, *weighted)

    compiled = torch.compile(every_op, fullgraph=True)
    results = []
    for fn in (every_op, compiled):
        inputs = [leaf(t) for t in (x, ada, sample.eps_ada)]
        total, terms = fn(*inputs)
        total.backward()
        results.append([total, *terms, *(t.grad for t in inputs)])
    for eager, comp in zip(*results, strict=True):
        torch.testing.assert_close(comp, eager, rtol=1e-5, atol=1e-6)


def test_backward_ranges_reach_the_profiler():
    """The C++ autograd marks every backward "<op>.backward" (NVTX in CUDA builds; torch.profiler always)."""
    x = randn((4, 2, 6, 6), 30, torch.float32).requires_grad_()
    src, ada = similar_features((4, 8), 31, torch.float32)
    ada.requires_grad_()
    sample = make_loss_sample((4, 2, 6, 6), 32, torch.float32)
    yl, yh = (t.detach().requires_grad_() for t in OPS.haar_dwt2d(x, "zero"))
    calls = {
        "ddpm_pa_high_frequency": lambda: OPS.ddpm_pa_high_frequency(x).sum(),
        "haar_dwt2d": lambda: OPS.haar_dwt2d(x, "zero")[1].sum(),
        "haar_idwt2d": lambda: OPS.haar_idwt2d(yl, yh).sum(),
        "pairwise_similarity_kl": lambda: OPS.pairwise_similarity_kl(src, ada, 1.0, "mean")[0],
        "ddpm_pa_loss": lambda: OPS.ddpm_pa_loss(
            sample.x_t, x, sample.eps_src, sample.noise, sample.a_t, sample.b_t, None, None,
            1.0, 1.0, 1.0, 1.0, "mean",
        )[0],
    }
    for name, loss in calls.items():
        with torch.profiler.profile() as profile:
            loss().backward()
        recorded = {event.name for event in profile.events()}
        assert f"{name}.backward" in recorded, (name, sorted(recorded))
