"""What every kernel test shares: devices, per-dtype tolerances, and one list of sample inputs.

The same SAMPLES feed the correctness tests (against the float64 reference), the gradient tests and
torch.library.opcheck, for every backend.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ddpm_pa_fast.testing import ddpm_like_batch

# Every correctness test runs on each of these; CUDA runs wherever a GPU exists.
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
    ),
]

# (rtol, atol) against the float64 reference, per input dtype. Half-precision inputs are first rounded
# to their dtype, and the reference runs on those rounded values in float64, so these bound the
# kernel's own arithmetic error (fp32 accumulation), not the input rounding.
TOLERANCES = {
    torch.float64: (1e-9, 1e-11),
    torch.float32: (2e-4, 2e-5),
    torch.float16: (2e-2, 2e-3),
    torch.bfloat16: (6e-2, 1e-2),
}
FLOAT_DTYPES = list(TOLERANCES)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0):
    """actual (any dtype) against a float64 expected, with dtype's tolerance (scaled)."""
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.detach().double().cpu(), expected.detach().double().cpu(), rtol=rtol * scale, atol=atol * scale
    )


@dataclasses.dataclass
class LossSample:
    """Inputs of ddpm_pa_loss: realistic magnitudes (a_t >= 1, b_t >= 0) from a DDPM schedule."""

    x_t: torch.Tensor
    eps_ada: torch.Tensor
    eps_src: torch.Tensor
    noise: torch.Tensor
    a_t: torch.Tensor
    b_t: torch.Tensor

    def args(self):
        return (self.x_t, self.eps_ada, self.eps_src, self.noise, self.a_t, self.b_t)

    def to(self, device=None, dtype=None) -> LossSample:
        def move(t, is_coef=False):
            return t.to(device=device, dtype=t.dtype if is_coef else (dtype or t.dtype))

        return LossSample(
            move(self.x_t),
            move(self.eps_ada),
            move(self.eps_src),
            move(self.noise),
            move(self.a_t, True),
            move(self.b_t, True),
        )


def make_loss_sample(
    shape, seed: int = 0, dtype=torch.float64, device="cpu", coef_shape="flat"
) -> LossSample:
    """A DDPM-like batch (ddpm_pa_fast.testing.ddpm_like_batch) as a LossSample."""
    x_t, eps_ada, eps_src, noise, a_t, b_t = ddpm_like_batch(shape, seed)
    view = (shape[0], 1, 1, 1)
    if coef_shape == "4d":
        a_t, b_t = a_t.view(view), b_t.view(view)
    sample = LossSample(x_t, eps_ada, eps_src, noise, a_t, b_t)
    return sample.to(device=device, dtype=dtype)


# Shapes that hit the interesting cases: N = 2 (the smallest pair set), the authors' 3, odd H and W
# (dropped last row/column), a 4-channel latent, a single channel, non-square.
# (3, 2, 5, 58): the CPU kernels' row-pair vector loop (32 columns a step in float32 with AVX-512) with
# a vector and a scalar tail, the HF values past it one by one, and an odd last row.
LOSS_SHAPES = [(2, 3, 8, 8), (3, 3, 16, 16), (5, 4, 9, 7), (8, 1, 6, 10), (4, 3, 17, 33), (3, 2, 5, 58)]
IMAGE_SHAPES = [(2, 3, 8, 8), (1, 1, 2, 2), (3, 4, 9, 7), (2, 2, 1, 5), (2, 3, 17, 33), (1, 1, 1, 1)]
FEATURE_SHAPES = [(2, 5), (3, 3, 8, 8), (7, 130), (16, 4, 5, 5)]
KL_REDUCTIONS = ["mean", "batchmean", "sum", "none"]
DWT_MODES = ["zero", "symmetric", "periodization"]


def randn(shape, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def similar_features(shape, seed=0, dtype=torch.float64, device="cpu"):
    """(src, ada) feature batches with ada a perturbation of src, as during adaptation."""
    src = randn(shape, seed, torch.float64)
    ada = src + 0.5 * randn(shape, seed + 1, torch.float64)
    return src.to(device=device, dtype=dtype), ada.to(device=device, dtype=dtype)
