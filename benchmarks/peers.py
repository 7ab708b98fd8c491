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


def high_frequency_providers() -> list[Provider]:
    """DDPM-PA's high-frequency map from each library's one-level bands."""
    providers = []
    reason = _import_reason("pytorch_wavelets")
    if reason is None:
        def pytorch_wavelets_hf(x):
            yh = _wavelets_module("forward", 1, x.device, x.dtype)(x)[1][0]
            return [_detail_sum(yh[:, :, 0], yh[:, :, 1], yh[:, :, 2])]

        providers.append(Provider("pytorch_wavelets", pytorch_wavelets_hf))
    else:
        providers.append(Provider("pytorch_wavelets", unavailable=reason))

    reason = _import_reason("ptwt")
    if reason is None:
        import ptwt

        def ptwt_hf(x):
            details = ptwt.wavedec2(x, "haar", mode="zero", level=1)[1]
            return [_detail_sum(*details)]

        providers.append(Provider("ptwt", ptwt_hf))
    else:
        providers.append(Provider("ptwt", unavailable=reason))

    reason = _import_reason("haar_pytorch")
    if reason is None:
        from haar_pytorch import HaarForward

        haar = HaarForward()

        def haar_pytorch_hf(x):
            _, band1, band2, band3 = haar(x).chunk(4, dim=1)
            return [_detail_sum(band1, band2, band3)]

        providers.append(Provider("haar_pytorch", haar_pytorch_hf))
    else:
        providers.append(Provider("haar_pytorch", unavailable=reason))
    return providers


def _one_level_only(levels: int) -> str | None:
    return None if levels == 1 else f"unsupported: haar_pytorch has one level, not {levels}"


def dwt_providers(levels: int) -> list[Provider]:
    """Forward DWT, mode 'zero'; native outputs [yl, yh_1, ..., yh_J] or the library's own list."""
    providers = []
    reason = _import_reason("pytorch_wavelets")
    if reason is None:
        def pytorch_wavelets_dwt(x):
            yl, yh = _wavelets_module("forward", levels, x.device, x.dtype)(x)
            return [yl, *yh]

        providers.append(Provider("pytorch_wavelets", pytorch_wavelets_dwt))
    else:
        providers.append(Provider("pytorch_wavelets", unavailable=reason))

    reason = _import_reason("ptwt")
    if reason is None:
        import ptwt

        def ptwt_dwt(x):
            coeffs = ptwt.wavedec2(x, "haar", mode="zero", level=levels)
            return [coeffs[0], *(band for details in coeffs[1:] for band in details)]

        def ptwt_to_canonical(native):
            # native: cA, then three bands per level, coarsest level first.
            levels_coarsest_first = [native[1 + 3 * j : 4 + 3 * j] for j in range(levels)]
            return [native[0], *(torch.stack(list(b), dim=2) for b in reversed(levels_coarsest_first))]

        def ptwt_grads_to_native(grads):
            return [grads[0], *(band for g in reversed(grads[1:]) for band in g.unbind(2))]

        providers.append(Provider("ptwt", ptwt_dwt, to_canonical=ptwt_to_canonical,
                                  grads_to_native=ptwt_grads_to_native))
    else:
        providers.append(Provider("ptwt", unavailable=reason))

    reason = _import_reason("haar_pytorch") or _one_level_only(levels)
    if reason is None:
        from haar_pytorch import HaarForward

        haar = HaarForward()

        def haar_pytorch_dwt(x):
            return [haar(x)]

        def haar_pytorch_to_canonical(native):
            ll, band1, band2, band3 = native[0].chunk(4, dim=1)
            return [ll, torch.stack([band1, band2, band3], dim=2)]

        def haar_pytorch_grads_to_native(grads):
            return [torch.cat([grads[0], *grads[1].unbind(2)], dim=1)]

        providers.append(Provider("haar_pytorch", haar_pytorch_dwt, to_canonical=haar_pytorch_to_canonical,
                                  grads_to_native=haar_pytorch_grads_to_native))
    else:
        providers.append(Provider("haar_pytorch", unavailable=reason))
    return providers


def idwt_providers(levels: int) -> list[Provider]:
    """Inverse DWT from our layout (yl, yh_1, ..., yh_J), mode 'zero'; one output tensor."""
    providers = []
    reason = _import_reason("pytorch_wavelets")
    if reason is None:
        def pytorch_wavelets_idwt(yl, *yh):
            return [_wavelets_module("inverse", 0, yl.device, yl.dtype)((yl, list(yh)))]

        providers.append(Provider("pytorch_wavelets", pytorch_wavelets_idwt))
    else:
        providers.append(Provider("pytorch_wavelets", unavailable=reason))

    reason = _import_reason("ptwt")
    if reason is None:
        import ptwt

        def ptwt_idwt(yl, *yh):
            coeffs = [yl, *(tuple(level.unbind(2)) for level in reversed(yh))]
            return [ptwt.waverec2(coeffs, "haar")]

        providers.append(Provider("ptwt", ptwt_idwt))
    else:
        providers.append(Provider("ptwt", unavailable=reason))

    reason = _import_reason("haar_pytorch") or _one_level_only(levels)
    if reason is None:
        from haar_pytorch import HaarInverse

        haar = HaarInverse()

        def haar_pytorch_idwt(yl, yh):
            return [haar(torch.cat([yl, *yh.unbind(2)], dim=1))]

        providers.append(Provider("haar_pytorch", haar_pytorch_idwt))
    else:
        providers.append(Provider("haar_pytorch", unavailable=reason))
    return providers
