"""DWTForward and DWTInverse as pytorch_wavelets drop-ins for checkpoints: the same state-dict keys, shapes
and dtypes, strict loading in both directions with outputs unchanged, and non-Haar filters refused."""

import io

import pytest
import torch
from torch import nn

import ddpm_pa_fast as D
from tests.common import randn

pytorch_wavelets = pytest.importorskip("pytorch_wavelets")

KINDS = ["forward", "inverse"]
DIRECTIONS = ["theirs_into_ours", "ours_into_theirs"]
FILTER_KEYS = {
    "forward": ["h0_col", "h1_col", "h0_row", "h1_row"],
    "inverse": ["g0_col", "g1_col", "g0_row", "g1_row"],
}


def make(kind, library, wave="haar", mode="zero", J=2):
    if kind == "forward":
        return library.DWTForward(J=J, wave=wave, mode=mode)
    return library.DWTInverse(wave=wave, mode=mode)


def run(kind, module, x):
    """Forward: the DWT of x. Inverse: the reconstruction from x's DWT with the finest detail missing."""
    if kind == "forward":
        yl, yh = module(x)
        return [yl, *yh]
    yl, yh = D.haar_dwt2d(x.to(module.g0_col.dtype), 2, module.mode, backend="torch")
    return [module((yl, [None, yh[1]]))]


def roundtrip(state_dict):
    """The state dict as a checkpoint file gives it back (torch.save, then torch.load)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("default_dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_is_pytorch_wavelets(kind, default_dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default_dtype)
    try:
        ours, theirs = make(kind, D).state_dict(), make(kind, pytorch_wavelets).state_dict()
    finally:
        torch.set_default_dtype(previous)
    assert list(ours) == list(theirs) == FILTER_KEYS[kind]
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype == default_dtype, key
        assert ours[key].shape == theirs[key].shape, key
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("mode", ["zero", "symmetric", "periodization"])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_strict_load_keeps_outputs(kind, direction, mode):
    ours, theirs = make(kind, D, mode=mode), make(kind, pytorch_wavelets, mode=mode)
    x = randn((2, 3, 13, 10), seed=1, dtype=torch.float32)
    source, target = (theirs, ours) if direction == "theirs_into_ours" else (ours, theirs)
    before = run(kind, target, x)
    result = target.load_state_dict(roundtrip(source.state_dict()), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    after = run(kind, target, x)
    for a, b in zip(after, before, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(run(kind, ours, x), run(kind, theirs, x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_model_checkpoint_loads_after_swapping_the_import(kind, direction):
    """A model that holds a wavelet module: its checkpoint loads strictly whichever library built it."""

    class Model(nn.Module):
        def __init__(self, library):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.wavelet = make(kind, library, J=1)

    torch.manual_seed(0)
    ours, theirs = Model(D), Model(pytorch_wavelets)
    source, target = (theirs, ours) if direction == "theirs_into_ours" else (ours, theirs)
    target.load_state_dict(roundtrip(source.state_dict()), strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_converted_modules_load_both_ways(kind, direction, dtype):
    """module.to(dtype) converts the buffers, as in pytorch_wavelets: the Haar taps rounded to dtype load."""
    ours, theirs = make(kind, D), make(kind, pytorch_wavelets)
    source, target = (theirs, ours) if direction == "theirs_into_ours" else (ours, theirs)
    source.to(dtype)
    target.load_state_dict(source.state_dict(), strict=True)
    for key, value in target.state_dict().items():
        assert value.dtype == torch.get_default_dtype(), key


def non_haar_state_dicts(kind):
    """Filters our Haar kernels cannot compute: a longer wavelet, a length-2 non-Haar filter bank, and
    Haar with the high-pass filter's sign flipped (which would flip every detail band)."""
    flipped = make(kind, pytorch_wavelets).state_dict()
    flipped_key = FILTER_KEYS[kind][1]
    flipped[flipped_key] = -flipped[flipped_key]
    return {
        "db2": (make(kind, pytorch_wavelets, wave="db2").state_dict(), FILTER_KEYS[kind][0]),
        "length_2": (make(kind, pytorch_wavelets, wave=([0.6, 0.8], [0.8, -0.6])).state_dict(),
                     FILTER_KEYS[kind][0]),
        "sign_flipped": (flipped, flipped_key),
    }


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("case", ["db2", "length_2", "sign_flipped"])
@pytest.mark.parametrize("kind", KINDS)
def test_non_haar_filters_are_refused(kind, case, strict):
    state_dict, bad_key = non_haar_state_dicts(kind)[case]
    model = nn.Sequential(make(kind, D))
    x = randn((2, 3, 8, 8), seed=2, dtype=torch.float32)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before = run(kind, model[0], x)
    prefixed = {f"0.{key}": value for key, value in state_dict.items()}
    name = "DWTForward" if kind == "forward" else "DWTInverse"
    with pytest.raises(RuntimeError, match=rf"0\.{bad_key} must hold the Haar filter .*{name} computes only"):
        model.load_state_dict(prefixed, strict=strict)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before_state[key]), f"{key} was loaded from a refused state dict"
    for a, b in zip(run(kind, model[0], x), before, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_strict_load_still_reports_missing_and_unexpected_keys(kind):
    state_dict = make(kind, pytorch_wavelets).state_dict()
    missing = FILTER_KEYS[kind][2]
    del state_dict[missing]
    state_dict["extra"] = torch.zeros(1)
    pattern = rf'Missing key\(s\).*"{missing}"(.|\n)*Unexpected key\(s\).*"extra"'
    with pytest.raises(RuntimeError, match=pattern):
        make(kind, D).load_state_dict(state_dict, strict=True)
