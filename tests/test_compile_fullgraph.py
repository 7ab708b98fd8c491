"""torch.compile(fullgraph=True) of every public function and nn.Module, on every backend a device has.

Each case compiles once and then matches eager, values and gradients (a random, non-unit upstream
gradient into every output): with static shapes (two calls of one shape) and with dynamic=True (three
batch sizes). fullgraph=True turns any graph break into an error; dynamo's counters show one graph
and no recompilation. The bulk runs on "aot_eager", which traces forward and backward through the fake
and autograd registrations as inductor does, without inductor's code generation; a few cases run on
the default inductor backend to prove real compilation.

Backend "triton" compiles on CUDA only. torch.compile traces a triton_op by running its launcher on
fake tensors; Triton's CPU interpreter (TRITON_INTERPRET=1) runs a kernel at its launch, on the
tensors' data, which fake tensors do not have. Its CPU cases are therefore skipped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters
from torch.utils._pytree import tree_leaves

import ddpm_pa_fast as D

from .common import make_loss_sample, randn, similar_features

DTYPE = torch.float32
# Batch sizes: the static cases call twice with the first, the dynamic ones once with each. The first,
# which is traced, equals no other size of the inputs: torch.compile's duck sizing would tie them.
BATCH_SIZES = (4, 5, 7)
TRITON_ON_CPU = (
    "backend 'triton' under torch.compile needs CUDA: torch.compile traces a triton_op's launcher on fake "
    "tensors, which Triton's CPU interpreter cannot launch"
)


def _backend_params():
    """(device, backend) for every backend of each device; those this machine cannot run are skipped."""
    params = []
    for device in ("cpu", "cuda"):
        for backend in ("torch", device, "triton"):
            reason = None
            if device == "cuda" and not torch.cuda.is_available():
                reason = "no CUDA device on this machine"
            elif backend not in D.available_backends(device):
                reason = f"backend {backend!r} is not available on {device}"
            elif (device, backend) == ("cpu", "triton"):
                reason = TRITON_ON_CPU
            marks = pytest.mark.skipif(reason is not None, reason=str(reason))
            params.append(pytest.param(device, backend, id=f"{device}-{backend}", marks=marks))
    return params


BACKENDS = _backend_params()


@dataclasses.dataclass
class Case:
    """make(backend) -> the callable to compile; inputs(n, device) -> its arguments for batch size n.

    Every floating tensor among the arguments requires grad, also those the maths keeps constant: their
    gradient must then be zero (or absent) compiled as in eager.
    """

    make: Callable[[str], Callable]
    inputs: Callable[[int, str], tuple]


def _image(n, device, seed=0, shape=(3, 8, 12)):
    return randn((n, *shape), seed, DTYPE, device)


def _features(n, device):
    return similar_features((n, 3, 5, 6), seed=n, dtype=DTYPE, device=device)


def _loss_inputs(n, device):
    return make_loss_sample((n, 3, 8, 10), seed=n, dtype=DTYPE, device=device).args()


def _weighted_loss_inputs(n, device):
    """_loss_inputs and per-sample weights of mse (N,) and hf_mse (N, 1, 1, 1), the latter in float64."""
    mse_weight = randn((n,), n + 2, DTYPE, device).abs() + 0.5
    hf_mse_weight = (randn((n,), n + 3).abs() + 0.5).view(n, 1, 1, 1).to(device)
    return (*_loss_inputs(n, device), mse_weight, hf_mse_weight)


def _idwt_inputs(n, device):
    # Two levels of a 9 x 9 image: the finest bands 5 x 5, the coarse ones None (zero detail), yl 3 x 3
    # (its 6 x 6 reconstruction is cropped to the finest bands' 5 x 5).
    return randn((n, 3, 3, 3), n, DTYPE, device), [randn((n, 3, 3, 5, 5), n + 1, DTYPE, device), None]


CASES = {
    "ddpm_pa_high_frequency": Case(
        lambda b: lambda x: D.ddpm_pa_high_frequency(x, backend=b), lambda n, d: (_image(n, d),)
    ),
    # An odd height: the reference pads it, in a branch of its own.
    "haar_dwt2d": Case(
        lambda b: lambda x: D.haar_dwt2d(x, 2, "symmetric", backend=b),
        lambda n, d: (_image(n, d, shape=(3, 9, 12)),),
    ),
    "haar_idwt2d": Case(lambda b: lambda yl, yh: D.haar_idwt2d(yl, yh, "zero", backend=b), _idwt_inputs),
    # The floats are arguments of the compiled function: under dynamic=True, inputs of the graph.
    "pairwise_similarity_kl": Case(
        lambda b: lambda src, ada, tau: D.pairwise_similarity_kl(src, ada, tau, "none", backend=b),
        lambda n, d: (*_features(n, d), 0.7),
    ),
    "ddpm_pa_loss": Case(
        lambda b: lambda *args: D.ddpm_pa_loss(*args, "sum", backend=b),
        lambda n, d: (*_loss_inputs(n, d), 2.0, 3.0, 0.5, 0.8),
    ),
    # The per-sample weights are tensors of the graph; they get no gradient (zeros, compiled as eager).
    "ddpm_pa_loss_weighted": Case(
        lambda b: lambda x_t, eps_ada, eps_src, noise, a_t, b_t, mse_weight, hf_mse_weight: D.ddpm_pa_loss(
            x_t, eps_ada, eps_src, noise, a_t, b_t, 2.0, 3.0, 0.5, 0.8, "sum", mse_weight=mse_weight,
            hf_mse_weight=hf_mse_weight, backend=b,
        ),
        _weighted_loss_inputs,
    ),
    "DDPMPALoss": Case(
        lambda b: D.DDPMPALoss(
            w_pair=2.0, w_hf_pair=3.0, w_hf_mse=0.5, tau=0.8, reduction="batchmean", backend=b
        ),
        _loss_inputs,
    ),
    "DDPMPALoss_weighted": Case(
        lambda b: D.DDPMPALoss(w_pair=2.0, w_hf_pair=3.0, w_hf_mse=0.5, tau=0.8, backend=b),
        lambda n, d: (*_weighted_loss_inputs(n, d)[:7], None),
    ),
    "PairwiseSimilarityKL": Case(
        lambda b: D.PairwiseSimilarityKL(tau=0.5, reduction="mean", backend=b), _features
    ),
    "DDPMPAHighFrequency": Case(lambda b: D.DDPMPAHighFrequency(backend=b), lambda n, d: (_image(n, d),)),
    "DWTForward": Case(
        lambda b: D.DWTForward(J=2, wave="haar", mode="zero", backend=b), lambda n, d: (_image(n, d),)
    ),
    "DWTInverse": Case(
        lambda b: D.DWTInverse(wave="haar", mode="symmetric", backend=b), lambda n, d: (_idwt_inputs(n, d),)
    ),
}


def test_every_public_function_and_module_has_a_case():
    tensor_functions = {
        name for name in D.__all__ if callable(getattr(D, name)) and name.islower() and "backend" not in name
    }
    modules = {
        name
        for name in D.__all__
        if isinstance(getattr(D, name), type) and issubclass(getattr(D, name), torch.nn.Module)
    }
    # loss_coefficients and hf_mse_weights take no backend and return no gradient
    # (test_loss_coefficients_compiles_once); adapters_off is a context manager over a model, not a
    # tensor function (tests/test_lora.py); the weighted cases are extra.
    weighted = {"ddpm_pa_loss_weighted", "DDPMPALoss_weighted"}
    not_ops = {"loss_coefficients", "hf_mse_weights", "adapters_off"}
    assert tensor_functions | modules == (set(CASES) - weighted) | not_ops


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch and sees only its own graph breaks."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _with_grad(args):
    """The arguments with every floating tensor a fresh leaf that requires grad (lists followed)."""
    if isinstance(args, (list, tuple)):
        return type(args)(_with_grad(a) for a in args)
    if isinstance(args, torch.Tensor) and args.is_floating_point():
        return args.detach().clone().requires_grad_()
    return args


def _run(fn, args, seed):
    """fn's outputs and the gradients of every grad-requiring input, under a random upstream gradient."""
    args = _with_grad(args)
    outputs = tree_leaves(fn(*args))
    inputs = [a for a in tree_leaves(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    generator = torch.Generator().manual_seed(seed)
    upstream = [
        (torch.randn(o.shape, generator=generator, dtype=torch.float64) * 3 + 0.5).to(o.device, o.dtype)
        for o in outputs
    ]
    grads = torch.autograd.grad(outputs, inputs, upstream, allow_unused=True)
    # A compiled graph is one autograd node over all its inputs: where eager has no gradient, it has zeros.
    grads = [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, grads, strict=True)]
    return [o.detach() for o in outputs], grads


def _assert_compiled_once():
    """torch.compile produced one graph, without a graph break, and every later call reused it.

    Counted in graphs produced, not in calls of the compiler: tracing may restart once within one
    compilation (when it finds that a float must be a constant: a kernel op takes it as a Python
    float), which calls the compiler a second time for what remains one graph.
    """
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


def _assert_compiled_matches_eager(case, backend, device, compiler, dynamic, batch_sizes):
    compiled = torch.compile(case.make(backend), backend=compiler, fullgraph=True, dynamic=dynamic)
    eager = case.make(backend)
    for i, n in enumerate(batch_sizes):
        args = case.inputs(n, device)
        got, want = _run(compiled, args, seed=i), _run(eager, args, seed=i)
        for g, w in zip(got[0] + got[1], want[0] + want[1], strict=True):
            assert g.shape == w.shape and g.dtype == w.dtype
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    _assert_compiled_once()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_static_shapes(case, device, backend):
    n = BATCH_SIZES[0]
    _assert_compiled_matches_eager(CASES[case], backend, device, "aot_eager", False, (n, n))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_dynamic_batch_compiles_once(case, device, backend):
    _assert_compiled_matches_eager(CASES[case], backend, device, "aot_eager", True, BATCH_SIZES)


# Real compilation by inductor (C++ code generation on CPU, seconds of compiler time per kernel), kept
# to the fused loss on the device's kernels (the module, and the function with per-sample weights) and
# the HF map on the reference, each with two batch sizes under dynamic=True, and the reported input below.
INDUCTOR_CASES = [
    pytest.param("DDPMPALoss", "cpu", "cpu", id="DDPMPALoss-cpu-cpu"),
    pytest.param("ddpm_pa_loss_weighted", "cpu", "cpu", id="ddpm_pa_loss_weighted-cpu-cpu"),
    pytest.param("DDPMPAHighFrequency", "cpu", "torch", id="DDPMPAHighFrequency-cpu-torch"),
    pytest.param(
        "DDPMPALoss",
        "cuda",
        "cuda",
        id="DDPMPALoss-cuda-cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
    ),
]


@pytest.mark.parametrize("case, device, backend", INDUCTOR_CASES)
def test_inductor_dynamic_batch(case, device, backend):
    if backend not in D.available_backends(device):
        pytest.skip(f"backend {backend!r} is not available on {device}")
    _assert_compiled_matches_eager(CASES[case], backend, device, "inductor", True, BATCH_SIZES[:2])


@pytest.mark.parametrize("backend", ["cpu", "auto"])
def test_inductor_high_frequency_sum(backend):
    """The reported failure: a compiled fullgraph lambda over the function, with the default compiler."""
    x = randn((2, 3, 8, 8), 1, DTYPE).requires_grad_()
    compiled = torch.compile(lambda x: D.ddpm_pa_high_frequency(x, backend=backend).sum(), fullgraph=True)
    total = compiled(x)
    (grad,) = torch.autograd.grad(2.5 * total, x)
    torch.testing.assert_close(total, D.ddpm_pa_high_frequency(x.detach(), backend="torch").sum())
    torch.testing.assert_close(grad, torch.autograd.grad(2.5 * D.ddpm_pa_high_frequency(x).sum(), x)[0])


def test_backend_queries_trace():
    """backend_name and available_backends are plain constants inside a graph."""

    def scaled(x):
        return x * len(D.available_backends(x.device)) + (D.backend_name("auto", x.device) == "cpu")

    compiled = torch.compile(scaled, backend="aot_eager", fullgraph=True)
    for x in (torch.ones(3), torch.arange(3.0)):
        torch.testing.assert_close(compiled(x), scaled(x))
    _assert_compiled_once()


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_bad_float_after_compilation_is_rejected(device, backend):
    """tau, an input of the graph under dynamic=True, is checked at every call of the compiled function.

    With the torch backend new values reuse the graph (its check compiled as an assertion); the kernel
    ops take tau as a Python float, so there a new value is a new graph, traced with its check.
    """
    compiled = torch.compile(
        lambda src, ada, tau: D.pairwise_similarity_kl(src, ada, tau, backend=backend),
        backend="aot_eager",
        fullgraph=True,
        dynamic=True,
    )
    src, ada = similar_features((4, 6), dtype=DTYPE, device=device)
    taus = (0.5, 0.9, 2.0) if backend == "torch" else (0.5,)
    for tau in taus:
        torch.testing.assert_close(
            compiled(src, ada, tau), D.pairwise_similarity_kl(src, ada, tau, backend=backend)
        )
    _assert_compiled_once()
    for bad in (-1.0, 0.0, math.inf, math.nan):
        with pytest.raises(RuntimeError, match="tau must be a finite number > 0"):
            compiled(src, ada, bad)


@pytest.mark.parametrize("device, backend", BACKENDS)
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_bad_options_are_rejected_while_tracing(device, backend, dynamic):
    """A bad float or batch raises with its message when torch.compile traces the call, whether the
    value is a constant of the trace (static) or an input of the graph (dynamic)."""
    compiled = torch.compile(
        lambda *args: D.ddpm_pa_loss(*args, backend=backend),
        backend="aot_eager",
        fullgraph=True,
        dynamic=dynamic,
    )
    args = _loss_inputs(4, device)
    with pytest.raises(RuntimeError, match="w_pair must be a finite number"):
        compiled(*args, math.inf, 4.0, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="w_hf_mse must be a finite number"):
        compiled(*args, 4.0, 4.0, math.nan, 1.0)
    with pytest.raises(RuntimeError, match="tau must be a finite number > 0"):
        compiled(*args, 4.0, 4.0, 1.0, -0.5)
    with pytest.raises(RuntimeError, match="x_t must hold at least 2 samples"):
        compiled(*_loss_inputs(1, device), 4.0, 4.0, 1.0, 1.0)


def test_unavailable_backend_is_reported_when_compiled():
    x = randn((2, 3, 4, 4), dtype=DTYPE)
    compiled = torch.compile(lambda x: D.ddpm_pa_high_frequency(x, backend="cuda"), fullgraph=True)
    with pytest.raises(
        RuntimeError, match="backend 'cuda' is not available: backend 'cuda' runs on CUDA tensors"
    ):
        compiled(x)


DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                            reason="no CUDA device on this machine")),
]


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("device", DEVICES)
def test_loss_coefficients_compiles_once(device, dynamic):
    """A diffusers training step compiled whole: the coefficients and the v target from the scheduler."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=50, prediction_type="v_prediction")

    def coefficients(x0, noise, timesteps):
        return D.loss_coefficients(scheduler, x0, noise, timesteps)

    compiled = torch.compile(coefficients, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    for n in BATCH_SIZES if dynamic else BATCH_SIZES[:1] * 2:
        x0, noise = randn((n, 3, 8, 10), n, DTYPE, device), randn((n, 3, 8, 10), n + 1, DTYPE, device)
        timesteps = torch.randint(0, 50, (n,), generator=torch.Generator().manual_seed(n)).to(device)
        for got, want in zip(compiled(x0, noise, timesteps), coefficients(x0, noise, timesteps), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    _assert_compiled_once()
