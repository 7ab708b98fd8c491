"""The public functions: validate once, pick the backend, run it inside an NVTX range.

Each takes `backend=` ("auto", "torch", "cpu", "cuda", "triton"); see ddpm_pa_fast.backends. All three
steps trace under torch.compile(fullgraph=True): the backend is picked while tracing, the checks on
float arguments become assertions of the compiled code (ddpm_pa_fast._validation), and the NVTX range
is skipped.
"""

from __future__ import annotations

import torch

from . import _validation as V
from ._nvtx import annotate
from .backends import resolve_backend
from .reference import DDPMPALossOutput, check_loss_inputs


def ddpm_pa_high_frequency(x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """DDPM-PA's high-frequency map (LH + HL + HH of the Haar DWT): (N, C, H, W) -> (N, C, H//2, W//2)."""
    V.check_images(x, "x", min_size=2)
    impl = resolve_backend(backend, x.device)
    with annotate("ddpm_pa_high_frequency"):
        return impl.ddpm_pa_high_frequency(x)


def haar_dwt2d(
    x: torch.Tensor, levels: int = 1, mode: str = "zero", *, backend: str = "auto"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Multi-level 2D Haar DWT, pytorch_wavelets' layout: yl (N, C, h, w), yh [(N, C, 3, h_j, w_j)]."""
    V.check_images(x, "x")
    V.check_levels(levels)
    V.check_choice(mode, "mode", V.DWT_MODES)
    impl = resolve_backend(backend, x.device)
    with annotate("haar_dwt2d"):
        return impl.haar_dwt2d(x, levels, mode)


def haar_idwt2d(yl: torch.Tensor, yh, mode: str = "zero", *, backend: str = "auto") -> torch.Tensor:
    """Inverse of haar_dwt2d; entries of yh may be None (zero detail)."""
    V.check_dwt_coefficients(yl, yh)
    V.check_choice(mode, "mode", V.DWT_MODES)
    impl = resolve_backend(backend, yl.device)
    with annotate("haar_idwt2d"):
        return impl.haar_idwt2d(yl, yh, mode)


def pairwise_similarity_kl(
    src: torch.Tensor, ada: torch.Tensor, tau: float = 1.0, reduction: str = "mean", *, backend: str = "auto"
) -> torch.Tensor:
    """KL(P_src || P_ada) of the row-softmaxed pairwise cosine similarities; gradient flows into ada."""
    V.check_tensor(src, "src", min_ndim=2)
    V.check_same_layout(src, "src", ada, "ada")
    V.check_batch_for_pairs(src, "src")
    tau = V.check_positive(tau, "tau")
    V.check_choice(reduction, "reduction", V.KL_REDUCTIONS)
    impl = resolve_backend(backend, src.device)
    with annotate("pairwise_similarity_kl"):
        return impl.pairwise_similarity_kl(src, ada, tau, reduction)


def ddpm_pa_loss(
    x_t: torch.Tensor,
    eps_ada: torch.Tensor,
    eps_src: torch.Tensor,
    noise: torch.Tensor,
    a_t: torch.Tensor,
    b_t: torch.Tensor,
    w_pair: float = 4.0,
    w_hf_pair: float = 4.0,
    w_hf_mse: float = 1.0,
    tau: float = 1.0,
    reduction: str = "mean",
    *,
    mse_weight: torch.Tensor | None = None,
    hf_mse_weight: torch.Tensor | None = None,
    backend: str = "auto",
) -> DDPMPALossOutput:
    """The DDPM-PA loss and its terms (loss, mse, hf_mse, pair_img, pair_hf), with optional per-sample
    weights of mse and hf_mse (N,); see reference.ddpm_pa_loss."""
    if not (
        reduction in V.LOSS_REDUCTIONS
        and V.is_plain_loss_call(
            x_t,
            (eps_ada, eps_src, noise),
            (a_t, b_t, mse_weight, hf_mse_weight),
            (w_pair, w_hf_pair, w_hf_mse, tau),
        )
    ):
        # Anything but the common call: the named checks raise, or promote mixed image dtypes. The fast
        # path is tested here rather than inside check_loss_inputs: the extra call and its returned tuples
        # cost about 5% of the fused loss's forward + backward in bench_ops --overhead (measured A/B).
        (x_t, eps_ada, eps_src, noise), (w_pair, w_hf_pair, w_hf_mse, tau) = check_loss_inputs(
            x_t,
            eps_ada,
            eps_src,
            noise,
            a_t,
            b_t,
            w_pair,
            w_hf_pair,
            w_hf_mse,
            tau,
            reduction,
            mse_weight,
            hf_mse_weight,
        )
    impl = resolve_backend(backend, x_t.device)
    with annotate("ddpm_pa_loss"):
        return impl.ddpm_pa_loss(
            x_t,
            eps_ada,
            eps_src,
            noise,
            a_t,
            b_t,
            w_pair,
            w_hf_pair,
            w_hf_mse,
            tau,
            reduction,
            mse_weight=mse_weight,
            hf_mse_weight=hf_mse_weight,
        )
