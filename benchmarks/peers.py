"""Other libraries' Haar transforms as benchmark providers: pytorch_wavelets, ptwt, haar-pytorch.

All three share the orthonormal band convention of docs/ddpm_pa_spec.md: per 2x2 block (a b / c d),
band1 = (a + b - c - d)/2, band2 = (a - b + c - d)/2, band3 = (a - b - c + d)/2. DDPM-PA's
high-frequency map is then band3 - band1 - band2, computed here from each library's bands. Layouts:
- pytorch_wavelets: DWTForward/DWTInverse, yl and yh = [(N, C, 3, h, w)] finest first: ours;
- ptwt: wavedec2/waverec2, [cA, (cH, cV, cD) coarsest, ..., finest], bands as separate tensors;
- haar-pytorch: HaarForward/HaarInverse, one level, [ll, band1, band2, band3] concatenated on channels.
pytorch_wavelets' modules are built once per device and dtype, outside the timed calls. Output layouts
are converted for the correctness check only (untimed). Input layouts are converted inside
the timed call where the library needs it (ptwt: unbinding views; haar-pytorch: a concatenation), as a
user holding our layout would have to.
"""

from __future__ import annotations

import functools
import importlib

import torch

from .harness import Provider

PEERS = ("pytorch_wavelets", "ptwt", "haar_pytorch")


def _import_reason(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as error:  # a broken install is as unavailable as a missing one
        return f"unavailable: cannot import {module} ({type(error).__name__}: {error})"
    return None


@functools.cache
def _wavelets_module(kind: str, levels: int, device: torch.device, dtype: torch.dtype):
    """pytorch_wavelets' DWTForward (kind 'forward') or DWTInverse, built once per device and dtype."""
    from pytorch_wavelets import DWTForward, DWTInverse

    module = DWTForward(J=levels, wave="haar", mode="zero") if kind == "forward" else DWTInverse(
        wave="haar", mode="zero"
    )
    return module.to(device=device, dtype=dtype)


def _detail_sum(band1: torch.Tensor, band2: torch.Tensor, band3: torch.Tensor) -> torch.Tensor:
    return band3 - band1 - band2


def _peer(name: str, build, unsupported: str | None = None) -> Provider:
    """The peer's Provider from build(), called only when module `name` imports and `unsupported` is
    None; otherwise a Provider that says why it has no numbers."""
    reason = _import_reason(name) or unsupported
    return Provider(name, unavailable=reason) if reason else build()


def _one_level_only(levels: int) -> str | None:
    return None if levels == 1 else f"unsupported: haar_pytorch has one level, not {levels}"


def high_frequency_providers() -> list[Provider]:
    """DDPM-PA's high-frequency map from each library's one-level bands."""

    def pytorch_wavelets():
        def hf(x):
            yh = _wavelets_module("forward", 1, x.device, x.dtype)(x)[1][0]
            return [_detail_sum(yh[:, :, 0], yh[:, :, 1], yh[:, :, 2])]

        return Provider("pytorch_wavelets", hf)

    def ptwt():
        import ptwt

        def hf(x):
            details = ptwt.wavedec2(x, "haar", mode="zero", level=1)[1]
            return [_detail_sum(*details)]

        return Provider("ptwt", hf)

    def haar_pytorch():
        from haar_pytorch import HaarForward

        haar = HaarForward()

        def hf(x):
            _, band1, band2, band3 = haar(x).chunk(4, dim=1)
            return [_detail_sum(band1, band2, band3)]

        return Provider("haar_pytorch", hf)

    return [
        _peer("pytorch_wavelets", pytorch_wavelets),
        _peer("ptwt", ptwt),
        _peer("haar_pytorch", haar_pytorch),
    ]


def dwt_providers(levels: int) -> list[Provider]:
    """Forward DWT, mode 'zero'; native outputs [yl, yh_1, ..., yh_J] or the library's own list."""

    def pytorch_wavelets():
        def dwt(x):
            yl, yh = _wavelets_module("forward", levels, x.device, x.dtype)(x)
            return [yl, *yh]

        return Provider("pytorch_wavelets", dwt)

    def ptwt():
        import ptwt

        def dwt(x):
            coeffs = ptwt.wavedec2(x, "haar", mode="zero", level=levels)
            return [coeffs[0], *(band for details in coeffs[1:] for band in details)]

        def to_canonical(native):
            # native: cA, then three bands per level, coarsest level first.
            levels_coarsest_first = [native[1 + 3 * j : 4 + 3 * j] for j in range(levels)]
            return [native[0], *(torch.stack(list(b), dim=2) for b in reversed(levels_coarsest_first))]

        def grads_to_native(grads):
            return [grads[0], *(band for g in reversed(grads[1:]) for band in g.unbind(2))]

        return Provider("ptwt", dwt, to_canonical=to_canonical, grads_to_native=grads_to_native)

    def haar_pytorch():
        from haar_pytorch import HaarForward

        haar = HaarForward()

        def dwt(x):
            return [haar(x)]

        def to_canonical(native):
            ll, band1, band2, band3 = native[0].chunk(4, dim=1)
            return [ll, torch.stack([band1, band2, band3], dim=2)]

        def grads_to_native(grads):
            return [torch.cat([grads[0], *grads[1].unbind(2)], dim=1)]

        return Provider("haar_pytorch", dwt, to_canonical=to_canonical, grads_to_native=grads_to_native)

    return [
        _peer("pytorch_wavelets", pytorch_wavelets),
        _peer("ptwt", ptwt),
        _peer("haar_pytorch", haar_pytorch, _one_level_only(levels)),
    ]


def idwt_providers(levels: int) -> list[Provider]:
    """Inverse DWT from our layout (yl, yh_1, ..., yh_J), mode 'zero'; one output tensor."""

    def pytorch_wavelets():
        def idwt(yl, *yh):
            return [_wavelets_module("inverse", 0, yl.device, yl.dtype)((yl, list(yh)))]

        return Provider("pytorch_wavelets", idwt)

    def ptwt():
        import ptwt

        def idwt(yl, *yh):
            coeffs = [yl, *(tuple(level.unbind(2)) for level in reversed(yh))]
            return [ptwt.waverec2(coeffs, "haar")]

        return Provider("ptwt", idwt)

    def haar_pytorch():
        from haar_pytorch import HaarInverse

        haar = HaarInverse()

        def idwt(yl, yh):
            return [haar(torch.cat([yl, *yh.unbind(2)], dim=1))]

        return Provider("haar_pytorch", idwt)

    return [
        _peer("pytorch_wavelets", pytorch_wavelets),
        _peer("ptwt", ptwt),
        _peer("haar_pytorch", haar_pytorch, _one_level_only(levels)),
    ]
