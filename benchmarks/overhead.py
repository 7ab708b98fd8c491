"""Per-call cost of the public API against native ops of the same kind (issue 23, item 1).

    python -m benchmarks.bench_ops --overhead [--device cpu|cuda]   # -> results/overhead_<device>.md

At tiny sizes a call's time is its host path: argument checks, backend choice, the dispatcher, the
autograd node, the engine's backward. Each row times forward + backward of one public call on tiny
inputs, one torch thread, side by side with a native op that does a comparable job:

| ours | native baseline | target |
|---|---|---|
| DDPMPALoss (the fused loss, module) | F.mse_loss (the plain diffusion loss) | 1.5x |
| ddpm_pa_high_frequency | F.avg_pool2d (one 2x2 stride-2 map) | 1.3x |
| haar_dwt2d (1 level) | F.conv2d with the 4 Haar filters, stride 2 (pytorch_wavelets' way) | 1.3x |
| haar_idwt2d (1 level) | F.conv_transpose2d with the 4 Haar filters, stride 2 | 1.3x |
| pairwise_similarity_kl | F.kl_div of the log-softmax against a softmax (one KL) | 1.3x |

Timing: the cases take turns, in blocks of BLOCK_CALLS calls, for `rounds` rounds; a case's time is the
fastest block (timeit's rule: slower blocks measure the machine's other work, not the call). On CUDA each
block ends with a synchronize, so the time is what the host and the device together allow. Before any
timing each case proves what it runs: our call resolves to the backend the row names, takes the
validated fast path where it has one, and agrees with the float64 reference (the native baselines with
their own float64 values).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import ddpm_pa_fast
from ddpm_pa_fast import _validation, reference
from ddpm_pa_fast.backends import backend_name

from .harness import _synchronize, check_close

BLOCK_CALLS = 20
WARMUP_CALLS = 50
# Issue 23's sizes: a batch of 4 tiny images for the loss (as F.mse_loss's), 4x3x8x8 for the image ops.
LOSS_SHAPE = (4, 1, 4, 4)
IMAGE_SHAPE = (4, 3, 8, 8)
FEATURE_SHAPE = (4, 16)
TARGETS = {
    "ddpm_pa_loss": 1.5,
    "ddpm_pa_high_frequency": 1.3,
    "haar_dwt2d": 1.3,
    "haar_idwt2d": 1.3,
    "pairwise_similarity_kl": 1.3,
}


@dataclasses.dataclass
class OverheadCase:
    """One public op and its native baseline: each a zero-argument forward + backward call."""

    op: str
    ours_label: str
    native_label: str
    ours: Callable[[], None]
    native: Callable[[], None]


def _haar_filters(dtype, device) -> torch.Tensor:
    """(4, 1, 2, 2): the orthonormal Haar analysis as conv2d weights, yl's band then yh's three in
    pytorch_wavelets' order (outer(row filter, column filter): low-low, high-low, low-high, high-high)."""
    low = torch.tensor([1.0, 1.0], dtype=torch.float64) / math.sqrt(2)
    high = torch.tensor([1.0, -1.0], dtype=torch.float64) / math.sqrt(2)
    bands = [
        torch.outer(rows, columns) for columns, rows in ((low, low), (low, high), (high, low), (high, high))
    ]
    return torch.stack(bands).unsqueeze(1).to(dtype=dtype, device=device)


def build_cases(device: str, backend: str, dtype=torch.float32) -> list[OverheadCase]:
    """The five cases for `backend` on `device`, each checked (see the module doc) before it is returned.

    Inputs are bench_ops' (the op benchmark's DDPM-like batch and random images, features and DWT
    coefficients), checked with its float64 gate (harness.check_close). Raises AssertionError when a call
    does not run the named backend or its fast path, MismatchError when it computes something else.
    """
    from . import bench_ops  # bench_ops imports this module for --overhead

    resolved = backend_name(backend, torch.device(device))
    if resolved != backend:
        raise AssertionError(f"backend {backend!r} resolves to {resolved!r} on {device}")
    cases = []

    # The fused loss, as a training loop calls it: the module, eps_ada requiring grad, the loss's backward.
    # The coefficients in the images' dtype, as loss_coefficients gives them for float32 images.
    (x_t, eps_ada, eps_src, noise, a_t, b_t), _ = bench_ops.loss_inputs(LOSS_SHAPE, dtype, device, seed=3)
    a_t, b_t = a_t.to(dtype), b_t.to(dtype)
    loss_module = ddpm_pa_fast.DDPMPALoss(backend=backend)
    loss_args = (x_t, eps_ada, eps_src, noise, a_t, b_t)
    scalars = (loss_module.w_pair, loss_module.w_hf_pair, loss_module.w_hf_mse, loss_module.tau)
    if not _validation.is_plain_loss_call(x_t, (eps_ada, eps_src, noise), (a_t, b_t, None, None), scalars):
        raise AssertionError("the benchmark's loss call does not take the validated fast path")
    expected = reference.ddpm_pa_loss(*(t.detach().double() for t in loss_args)).loss
    check_close("DDPMPALoss", loss_module(*loss_args).loss, expected, dtype)
    cases.append(
        OverheadCase(
            "ddpm_pa_loss",
            f"DDPMPALoss(backend={backend!r})(...).loss.backward()",
            "F.mse_loss(eps_ada, noise).backward()",
            lambda: loss_module(*loss_args).loss.backward(),
            lambda: F.mse_loss(eps_ada, noise).backward(),
        )
    )

    (x,), _ = bench_ops.image_inputs(IMAGE_SHAPE, dtype, device)
    check_close(
        "ddpm_pa_high_frequency",
        ddpm_pa_fast.ddpm_pa_high_frequency(x, backend=backend),
        reference.ddpm_pa_high_frequency(x.detach().double()),
        dtype,
    )
    cases.append(
        OverheadCase(
            "ddpm_pa_high_frequency",
            f"ddpm_pa_high_frequency(x, backend={backend!r}).sum().backward()",
            "F.avg_pool2d(x, 2).sum().backward()",
            lambda: ddpm_pa_fast.ddpm_pa_high_frequency(x, backend=backend).sum().backward(),
            lambda: F.avg_pool2d(x, 2).sum().backward(),
        )
    )

    # The DWT pair, against pytorch_wavelets' formulation in native ops: one convolution with the four
    # Haar filters, stride 2 (and its transpose), on (N * C, 1, H, W).
    n, c, h, w = IMAGE_SHAPE
    filters = _haar_filters(dtype, device)

    def as_bands(yl, yh):
        """(yl, yh) as the Haar convolution's (N * C, 4, h, w)."""
        return torch.cat([yl.reshape(n * c, 1, h // 2, w // 2), yh.reshape(n * c, 3, h // 2, w // 2)], 1)

    yl, (yh,) = ddpm_pa_fast.haar_dwt2d(x.detach(), backend=backend)
    native_bands = F.conv2d(x.detach().double().reshape(n * c, 1, h, w), filters.double(), stride=2)
    check_close("haar_dwt2d against the Haar convolution", as_bands(yl, yh), native_bands, dtype)

    def dwt_sum():
        low, (high,) = ddpm_pa_fast.haar_dwt2d(x, backend=backend)
        (low.sum() + high.sum()).backward()

    cases.append(
        OverheadCase(
            "haar_dwt2d",
            f"haar_dwt2d(x, backend={backend!r}): (yl.sum() + yh[0].sum()).backward()",
            "F.conv2d(x as (N*C, 1, H, W), haar (4, 1, 2, 2), stride=2).sum().backward()",
            dwt_sum,
            lambda: F.conv2d(x.view(n * c, 1, h, w), filters, stride=2).sum().backward(),
        )
    )

    (low, high), _ = bench_ops.coefficient_inputs(IMAGE_SHAPE, 1, dtype, device)
    bands = as_bands(low.detach(), high.detach()).requires_grad_()
    check_close(
        "haar_idwt2d against the transposed Haar convolution",
        ddpm_pa_fast.haar_idwt2d(low.detach(), [high.detach()], backend=backend).reshape(n * c, 1, h, w),
        F.conv_transpose2d(bands.detach().double(), filters.double(), stride=2),
        dtype,
    )
    cases.append(
        OverheadCase(
            "haar_idwt2d",
            f"haar_idwt2d(yl, [yh], backend={backend!r}).sum().backward()",
            "F.conv_transpose2d(bands (N*C, 4, h, w), haar, stride=2).sum().backward()",
            lambda: ddpm_pa_fast.haar_idwt2d(low, [high], backend=backend).sum().backward(),
            lambda: F.conv_transpose2d(bands, filters, stride=2).sum().backward(),
        )
    )

    (src, ada), _ = bench_ops.feature_inputs(FEATURE_SHAPE, dtype, device)
    check_close(
        "pairwise_similarity_kl",
        ddpm_pa_fast.pairwise_similarity_kl(src, ada, backend=backend),
        reference.pairwise_similarity_kl(src.double(), ada.detach().double()),
        dtype,
    )
    target = src.softmax(1)
    cases.append(
        OverheadCase(
            "pairwise_similarity_kl",
            f"pairwise_similarity_kl(src, ada, backend={backend!r}).backward()",
            "F.kl_div(ada.log_softmax(1), softmax, reduction='batchmean').backward()",
            lambda: ddpm_pa_fast.pairwise_similarity_kl(src, ada, backend=backend).backward(),
            lambda: F.kl_div(ada.log_softmax(1), target, reduction="batchmean").backward(),
        )
    )
    return cases


def _block_seconds(fn: Callable[[], None], device: str) -> float:
    start = time.perf_counter()
    for _ in range(BLOCK_CALLS):
        fn()
    _synchronize(device)
    return (time.perf_counter() - start) / BLOCK_CALLS


def measure(cases: list[OverheadCase], device: str, rounds: int = 400) -> list[dict]:
    """One row per case: the fastest block's microseconds per call of ours and of the native baseline."""
    calls = [fn for case in cases for fn in (case.ours, case.native)]
    for fn in calls:
        for _ in range(WARMUP_CALLS):
            fn()
    best = [math.inf] * len(calls)
    for _ in range(rounds):
        for i, fn in enumerate(calls):
            best[i] = min(best[i], _block_seconds(fn, device))
    rows = []
    for k, case in enumerate(cases):
        ours_us, native_us = best[2 * k] * 1e6, best[2 * k + 1] * 1e6
        ratio = ours_us / native_us
        rows.append(
            {
                "op": case.op,
                "ours": case.ours_label,
                "native": case.native_label,
                "ours_us": ours_us,
                "native_us": native_us,
                "ratio": ratio,
                "target": TARGETS[case.op],
                "meets_target": ratio <= TARGETS[case.op],
            }
        )
    return rows


def markdown(rows: list[dict], machine: list[tuple[str, str]], backend: str, rounds: int) -> str:
    lines = [
        f"# Per-call cost of the public API: backend {backend!r} against native ops",
        "",
        "Forward + backward of one call on tiny inputs (the loss at "
        f"{'x'.join(map(str, LOSS_SHAPE))}, the image ops at {'x'.join(map(str, IMAGE_SHAPE))}, the KL at "
        f"{'x'.join(map(str, FEATURE_SHAPE))}), one torch thread, the cases taking turns in blocks of "
        f"{BLOCK_CALLS} calls for {rounds} rounds; each time is the fastest block's "
        "(benchmarks/overhead.py).",
        "",
        "| op | ours | us/call | native baseline | us/call | ratio | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['op']} | `{r['ours']}` | {r['ours_us']:.1f} | `{r['native']}` | {r['native_us']:.1f} | "
            f"{r['ratio']:.2f}x | {r['target']:.1f}x | {'yes' if r['meets_target'] else 'NO'} |"
        )
    lines += ["", "Machine:", ""] + [f"- {k}: {v}" for k, v in machine] + [""]
    return "\n".join(lines)
