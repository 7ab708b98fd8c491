"""Plain-PyTorch reference of the DDPM-PA maths: the truth every kernel is tested against.

Written for clarity, not speed: each function is the spec's formula (../shared/docs/ddpm_pa_spec.md,
copied to docs/ddpm_pa_spec.md) in vectorised PyTorch, differentiable by autograd, for every float dtype.

Precision: float64 inputs are computed in float64 (tests call it in float64 to get the truth for all
dtypes). float32, float16 and bfloat16 inputs are computed in float32, as the kernels accumulate, with the
caller's autocast turned off, and each result is rounded to the input dtype once, at the end. Computed in
half precision, the norms, Gram matrix, softmax, log and sums would lose the similarities, overflow
(float16 tops out at 65504) or divide by a clamp that rounds to 0 (1e-8 is 0 in float16).
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch

from . import _validation as V
from ._haar_levels import analysis_levels, synthesis_levels

# Clamp on |F_i| * |F_j| in the cosine similarity, as torch.nn.CosineSimilarity's default eps.
SIMILARITY_EPS = 1e-8


class DDPMPALossOutput(NamedTuple):
    """The total DDPM-PA loss and its four terms (each a 0-d tensor)."""

    loss: torch.Tensor
    mse: torch.Tensor
    hf_mse: torch.Tensor
    pair_img: torch.Tensor
    pair_hf: torch.Tensor


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """x in the dtype the reference computes it in (see the module docstring)."""
    return x.to(_compute_dtype(x.dtype))


@torch.compiler.assume_constant_result
def _has_autocast(device_type: str) -> bool:
    """torch.amp.is_autocast_available, run as plain Python while torch.compile traces: torch 2.11's
    dynamo cannot trace that builtin (a graph break), and the answer is fixed for a device type."""
    return torch.amp.is_autocast_available(device_type)


def _autocast_off(device: torch.device):
    """A context in which the caller's autocast does not lower the dtype of ops on device (it would run
    the Gram matrix in float16 or bfloat16)."""
    if _has_autocast(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _blocks(x: torch.Tensor):
    """The four pixels (a b / c d) of every 2x2 block; an odd last row or column is dropped."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    return x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2], x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2]


def ddpm_pa_high_frequency(x: torch.Tensor) -> torch.Tensor:
    """DDPM-PA's high-frequency map LH + HL + HH: (N, C, H, W) -> (N, C, H // 2, W // 2).

    Per 2x2 block (a b / c d): (3d - a - b - c) / 2. An odd last row or column is dropped.
    """
    V.check_images(x, "x", min_size=2)
    with _autocast_off(x.device):
        a, b, c, d = _blocks(_upcast(x))
        # 3d - a - b - c as differences, which are exactly 0 on a flat block: 3d rounds, and the rounding
        # residue of a flat image would be a constant map whose cosine similarities are not 0.
        return (((d - a) + (d - b) + (d - c)) * 0.5).to(x.dtype)


def _pad_to_even(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Extends an odd height or width by one row/column as pytorch_wavelets does for Haar.

    "zero" appends zeros; "symmetric" and "periodization" both repeat the last sample (for a
    length-2 filter, half-sample symmetric extension and pywt's odd-length periodization agree).
    """
    for dim in (-2, -1):
        if x.shape[dim] % 2:
            edge = x.narrow(dim, x.shape[dim] - 1, 1)
            x = torch.cat([x, torch.zeros_like(edge) if mode == "zero" else edge], dim=dim)
    return x


def _haar_analysis(x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    a, b, c, d = _blocks(_pad_to_even(x, mode))
    ll = (a + b + c + d) * 0.5
    band1 = (a + b - c - d) * 0.5
    band2 = (a - b + c - d) * 0.5
    band3 = (a - b - c + d) * 0.5
    return ll, torch.stack([band1, band2, band3], dim=2)


def _haar_synthesis(ll: torch.Tensor, yh: torch.Tensor) -> torch.Tensor:
    # The orthonormal analysis matrix is symmetric, so it is its own inverse.
    band1, band2, band3 = yh.unbind(dim=2)
    a = (ll + band1 + band2 + band3) * 0.5
    b = (ll + band1 - band2 - band3) * 0.5
    c = (ll - band1 + band2 - band3) * 0.5
    d = (ll - band1 - band2 + band3) * 0.5
    top = torch.stack([a, b], dim=-1)
    bottom = torch.stack([c, d], dim=-1)
    n, ch, h, w = ll.shape
    return torch.stack([top, bottom], dim=-3).reshape(n, ch, 2 * h, 2 * w)


def haar_dwt2d(
    x: torch.Tensor, levels: int = 1, mode: str = "zero"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Multi-level 2D Haar DWT in pytorch_wavelets' layout (DWTForward(J=levels, wave='haar', mode)).

    Returns yl (N, C, h, w) and yh, a list finest level first of (N, C, 3, h_j, w_j). Per 2x2 block
    (a b / c d) the bands are (a + b - c - d)/2, (a - b + c - d)/2, (a - b - c + d)/2.
    """
    V.check_images(x, "x")
    V.check_levels(levels)
    V.check_choice(mode, "mode", V.DWT_MODES)
    with _autocast_off(x.device):
        yl, yh = analysis_levels(_haar_analysis, _upcast(x), levels, mode)
        return yl.to(x.dtype), [band.to(x.dtype) for band in yh]


def haar_idwt2d(yl: torch.Tensor, yh, mode: str = "zero") -> torch.Tensor:
    """Inverse of haar_dwt2d (pytorch_wavelets' DWTInverse(wave='haar', mode)).

    Entries of yh may be None (zero detail). As pytorch_wavelets does, a reconstruction one row or
    column larger than the next finer level's bands is cropped, and the output is 2h x 2w of the
    finest bands: for an odd input size, idwt(dwt(x)) has one extra row/column after the input's.
    """
    V.check_dwt_coefficients(yl, yh)
    V.check_choice(mode, "mode", V.DWT_MODES)
    with _autocast_off(yl.device):
        bands = [None if band is None else _upcast(band) for band in yh]
        return synthesis_levels(_haar_synthesis, _upcast(yl), bands).to(yl.dtype)


def similarity_logits(features: torch.Tensor) -> torch.Tensor:
    """Cosine similarities of each sample to every other: (N, ...) -> (N, N - 1), diagonal removed.

    Computes in features' dtype: pairwise_similarity_kl calls it in float32 or float64.
    """
    f = features.reshape(features.shape[0], -1)
    n = f.shape[0]
    gram = f @ f.T
    norms = torch.linalg.vector_norm(f, dim=1)
    sim = gram / (norms[:, None] * norms[None, :]).clamp_min(SIMILARITY_EPS)
    # The diagonal removed by reshaping, not by a boolean mask: the (n*n - 1) entries after the first,
    # read n + 1 at a time, start each row with its off-diagonal run. Shape-only ops, so meta and fake
    # tensors (shape inference without data) go through; a mask would need torch.nonzero's data.
    return sim.flatten()[1:].reshape(n - 1, n + 1)[:, :-1].reshape(n, n - 1)


def reduce_kl_rows(terms: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduces (N, N - 1) KL terms. 'mean' divides by N (N - 1), as nn.KLDivLoss() does."""
    if reduction == "mean":
        return terms.mean()
    if reduction == "batchmean":
        return terms.sum() / terms.shape[0]
    if reduction == "sum":
        return terms.sum()
    return terms.sum(dim=1)


def pairwise_similarity_kl(
    src: torch.Tensor, ada: torch.Tensor, tau: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """KL(P_src || P_ada) of the row-softmaxed pairwise cosine similarities (CDC / DDPM-PA).

    src is the frozen source model's features and carries no gradient; ada gets the gradient.
    reduction: 'mean' (the authors', sum / (N (N - 1))), 'batchmean' (sum / N), 'sum', or 'none'
    (one value per row, shape (N,)).
    """
    V.check_tensor(src, "src", min_ndim=2)
    V.check_same_layout(src, "src", ada, "ada")
    V.check_batch_for_pairs(src, "src")
    tau = V.check_positive(tau, "tau")
    V.check_choice(reduction, "reduction", V.KL_REDUCTIONS)
    with _autocast_off(src.device):
        log_p_src = torch.log_softmax(similarity_logits(_upcast(src.detach())) / tau, dim=1)
        log_p_ada = torch.log_softmax(similarity_logits(_upcast(ada)) / tau, dim=1)
        terms = log_p_src.exp() * (log_p_src - log_p_ada)
        return reduce_kl_rows(terms, reduction).to(src.dtype)


def _per_sample(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return coef.detach().reshape(-1, 1, 1, 1).to(like.dtype)


def _weighted_mean(squares: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """(1/N) sum_i w_i mean_chw squares_i; the plain mean when weight is None."""
    if weight is None:
        return squares.mean()
    return (squares * _per_sample(weight, squares)).mean()


def check_loss_inputs(
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
):
    """Validates ddpm_pa_loss's arguments for every backend.

    Returns (x_t, eps_ada, eps_src, noise) in their common dtype and the four scalars as floats. The
    images' float dtypes may differ: under autocast the model's eps_ada is float16/bfloat16 while x_t and
    noise stay float32, and the loss then runs in the promoted dtype, as torch's own losses do.
    """
    V.check_images(x_t, "x_t", min_size=2)
    V.check_batch_for_pairs(x_t, "x_t")
    images = {"x_t": x_t, "eps_ada": eps_ada, "eps_src": eps_src, "noise": noise}
    for name, image in list(images.items())[1:]:
        V.check_same_layout(x_t, "x_t", image, name, same_dtype=False)
    V.check_per_sample(a_t, "a_t", x_t, "x_t")
    V.check_per_sample(b_t, "b_t", x_t, "x_t")
    if mse_weight is not None:
        V.check_per_sample(mse_weight, "mse_weight", x_t, "x_t")
    if hf_mse_weight is not None:
        V.check_per_sample(hf_mse_weight, "hf_mse_weight", x_t, "x_t")
    V.check_choice(reduction, "reduction", V.LOSS_REDUCTIONS)
    dtypes = {image.dtype for image in images.values()}
    # One dtype (the usual case) needs no promotion and no conversions: each costs microseconds per call.
    dtype = dtypes.pop() if len(dtypes) == 1 else functools.reduce(torch.promote_types, dtypes)
    scalars = (
        V.check_weight(w_pair, "w_pair"),
        V.check_weight(w_hf_pair, "w_hf_pair"),
        V.check_weight(w_hf_mse, "w_hf_mse"),
        V.check_positive(tau, "tau"),
    )
    return tuple(image if image.dtype == dtype else image.to(dtype) for image in images.values()), scalars


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
) -> DDPMPALossOutput:
    """The DDPM-PA loss: mse + w_pair pair_img + w_hf_pair pair_hf + w_hf_mse hf_mse.

    x_t: noised images (N, C, H, W); eps_ada: the adapted model's noise prediction (the only input
    that gets a gradient); eps_src: the frozen source model's prediction; noise: the true noise;
    a_t = sqrt(1 / abar_t), b_t = sqrt(1 / abar_t - 1), one per sample. reduction applies to the two
    pairwise KL terms ('mean' is the authors' nn.KLDivLoss() default).

    mse_weight, hf_mse_weight: optional per-sample weights m_i, h_i (shape (N,) or (N, 1, 1, 1), any
    float dtype, used in the compute dtype, no gradient):
        mse    = (1/N) sum_i m_i mean_chw (noise_i - eps_ada_i)^2
        hf_mse = (1/N) sum_i h_i mean_chw (HF(x0_ada_i) - HF(x0_i))^2
    None (the default) is weight 1, and is the unweighted computation, not a multiplication by ones.
    ddpm_pa_fast.hf_mse_weights gives the standard weightings of hf_mse across noise levels (the
    authors' "x0", "eps", "min-snr"; docs/ddpm_pa_spec.md, "A defect of the formulation itself").
    """
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
    dtype = x_t.dtype
    with _autocast_off(x_t.device):
        x_t, eps_src, noise = _upcast(x_t.detach()), _upcast(eps_src.detach()), _upcast(noise.detach())
        eps_ada = _upcast(eps_ada)
        # The coefficients too are used in the compute dtype, not rounded to a half-precision input's.
        a, b = _per_sample(a_t, x_t), _per_sample(b_t, x_t)
        x0_ada = a * x_t - b * eps_ada
        x0_src = a * x_t - b * eps_src
        x0_tgt = a * x_t - b * noise
        hf_ada = ddpm_pa_high_frequency(x0_ada)
        mse = _weighted_mean((noise - eps_ada).square(), mse_weight)
        hf_mse = _weighted_mean((hf_ada - ddpm_pa_high_frequency(x0_tgt)).square(), hf_mse_weight)
        pair_img = pairwise_similarity_kl(x0_src, x0_ada, tau, reduction)
        pair_hf = pairwise_similarity_kl(ddpm_pa_high_frequency(x0_src), hf_ada, tau, reduction)
        loss = mse + w_pair * pair_img + w_hf_pair * pair_hf + w_hf_mse * hf_mse
        return DDPMPALossOutput(*(term.to(dtype) for term in (loss, mse, hf_mse, pair_img, pair_hf)))
