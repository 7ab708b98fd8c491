"""Generated inputs for testing and benchmarking the DDPM-PA loss (nothing downloaded), like torch.testing.

The tests and the benchmarks draw their loss inputs here, so both see the same kind of batch.
"""

from __future__ import annotations

import torch


def relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout: "contiguous", "channels_last" (4-D) or "strided"
    (every other element of a twice-as-wide last dimension)."""
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        wide = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1])
        wide[..., ::2] = t
        return wide[..., ::2]
    return t.contiguous()


def ddpm_like_batch(shape, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(x_t, eps_ada, eps_src, noise, a_t, b_t) in float64, with realistic magnitudes.

    x_t noises x0 ~ U(-1, 1) at timesteps drawn from the linear DDPM schedule (1000 steps, betas
    1e-4 to 0.02); eps_src is the noise plus 0.3 N(0, 1), eps_ada is eps_src plus 0.1 N(0, 1), as during
    adaptation; a_t = sqrt(1 / abar_t) >= 1 and b_t = sqrt(1 / abar_t - 1) >= 0 have shape (N,).
    """
    g = torch.Generator().manual_seed(seed)
    n = shape[0]
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    abar_t = abar[torch.randint(0, 1000, (n,), generator=g)]
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    per_sample = (n, 1, 1, 1)
    x_t = abar_t.sqrt().view(per_sample) * x0 + (1 - abar_t).sqrt().view(per_sample) * noise
    eps_src = noise + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)
    eps_ada = eps_src + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
    return x_t, eps_ada, eps_src, noise, (1 / abar_t).sqrt(), (1 / abar_t - 1).sqrt()
