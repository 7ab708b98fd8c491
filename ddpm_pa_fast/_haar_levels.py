"""Multi-level Haar transforms from one-level ones, shared by the reference and every backend.

A backend provides one level of analysis (x, mode) -> (yl, yh) and of synthesis (yl, yh) -> x; the
level loop, the zero detail for None bands and pytorch_wavelets' crop live here once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Analysis = Callable[[torch.Tensor, str], tuple[torch.Tensor, torch.Tensor]]
Synthesis = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def analysis_levels(analysis: Analysis, x: torch.Tensor, levels: int, mode: str):
    """yl and the list of detail bands, finest level first."""
    yl, yh = x, []
    for _ in range(levels):
        yl, band = analysis(yl, mode)
        yh.append(band)
    return yl, yh


def synthesis_levels(synthesis: Synthesis, yl: torch.Tensor, yh) -> torch.Tensor:
    """Inverse of analysis_levels. None bands are zero detail. As pytorch_wavelets does, a
    reconstruction one row or column larger than the next finer level's bands is cropped to them."""
    ll = yl
    for j in range(len(yh) - 1, -1, -1):
        band = yh[j]
        if band is None:
            band = ll.new_zeros(ll.shape[0], ll.shape[1], 3, ll.shape[2], ll.shape[3])
        h, w = band.shape[-2:]
        # Comparisons, not `in (h, h + 1)`: torch.compile (2.13) gets containment wrong when the sizes
        # are part symbolic, part constant.
        if not (h <= ll.shape[-2] <= h + 1 and w <= ll.shape[-1] <= w + 1):
            raise ValueError(
                f"yh[{j}] has spatial size {(h, w)}, which does not fit the coarser level's "
                f"reconstruction of size {tuple(ll.shape[-2:])}"
            )
        ll = synthesis(ll[..., :h, :w], band)
    return ll
