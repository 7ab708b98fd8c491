"""Argument checks shared by every backend, so that all of them reject bad input with the same words.

Each check names the argument and says what was expected. The C++ and Triton ops repeat only the
checks they need to index memory safely; these are the user-facing ones.
"""

from __future__ import annotations

from numbers import Real

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DWT_MODES = ("zero", "symmetric", "periodization")
KL_REDUCTIONS = ("mean", "batchmean", "sum", "none")
# The total DDPM-PA loss is a scalar, so its pair terms cannot be left per row.
LOSS_REDUCTIONS = ("mean", "batchmean", "sum")


def check_tensor(x, name: str, *, ndim: int | None = None, min_ndim: int | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), got {x.dtype}"
        )
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {tuple(x.shape)}")


def check_images(x, name: str, *, min_size: int = 1) -> None:
    """x must be an (N, C, H, W) float tensor with H, W >= min_size."""
    check_tensor(x, name, ndim=4)
    if x.shape[-2] < min_size or x.shape[-1] < min_size:
        raise ValueError(
            f"{name} must have height and width of at least {min_size}, got shape {tuple(x.shape)}"
        )


def check_batch_for_pairs(x, name: str) -> None:
    if x.shape[0] < 2:
        raise ValueError(
            f"{name} must hold at least 2 samples (pairwise similarities need N >= 2), got N={x.shape[0]}"
        )


def check_same_layout(
    reference: torch.Tensor, ref_name: str, other: torch.Tensor, name: str, *, same_dtype: bool = True
) -> None:
    """other must be a float tensor matching reference in shape and device (and dtype if same_dtype)."""
    check_tensor(other, name)
    if other.shape != reference.shape:
        raise ValueError(
            f"{name} must have the shape of {ref_name} {tuple(reference.shape)}, got {tuple(other.shape)}"
        )
    if same_dtype and other.dtype != reference.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({reference.dtype}), got {other.dtype}")
    check_same_device(reference, ref_name, other, name)


def check_same_device(reference: torch.Tensor, ref_name: str, other: torch.Tensor, name: str) -> None:
    if other.device != reference.device:
        raise ValueError(
            f"{name} must be on the device of {ref_name} ({reference.device}), got {other.device}"
        )


def check_per_sample(coef, name: str, images: torch.Tensor, images_name: str) -> None:
    """coef must hold one value per sample: shape (N,) or (N, 1, 1, 1)."""
    check_tensor(coef, name)
    n = images.shape[0]
    shape = tuple(coef.shape)
    # Two comparisons, not `in`: torch.compile (2.13) gets containment wrong when the sizes are part
    # symbolic, part constant.
    if shape != (n,) and shape != (n, 1, 1, 1):
        raise ValueError(
            f"{name} must hold one value per sample of {images_name}: shape ({n},) or ({n}, 1, 1, 1), "
            f"got {tuple(coef.shape)}"
        )
    check_same_device(images, images_name, coef, name)


def _at_most_float_max(value) -> bool:
    """value <= sys.float_info.max: with value >= -sys.float_info.max, finite (NaN fails both).

    Not `< math.inf`: torch.compile assumes its symbolic floats finite, and turns the float into a
    constant to compare it with infinity. The bound is a literal because under dynamic=True a float
    read from a module would itself become an input of the graph.
    """
    return value <= 1.7976931348623157e308


def _require(condition, expected: str, value) -> None:
    """Raises ValueError(f"{expected}, got {value!r}") unless condition holds.

    Under torch.compile a float argument may be an input of the graph (a SymFloat: under dynamic=True,
    or once its value has changed between calls), and a comparison on it symbolic. torch._check keeps
    it in the compiled function: a call that breaks it raises RuntimeError(expected) instead of
    running (its message cannot carry the symbolic value).
    """
    if torch.compiler.is_compiling():
        # The message as a default, not a closure: torch 2.11's dynamo refuses a message function that
        # closes over a variable ("Can't extract message from torch._check()"); 2.13's takes both.
        torch._check(condition, lambda expected=expected: expected)
    elif not condition:
        raise ValueError(f"{expected}, got {value!r}")


def _check_real(value, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{expected}, got {value!r}")


def check_positive(value, name: str) -> float:
    """value must be a finite real number > 0 (not a bool); returns it as a float."""
    expected = f"{name} must be a finite number > 0"
    _check_real(value, expected)
    _require(value > 0, expected, value)
    _require(_at_most_float_max(value), expected, value)
    return float(value)


def check_weight(value, name: str) -> float:
    """value must be a finite real number (not a bool); returns it as a float."""
    expected = f"{name} must be a finite number"
    _check_real(value, expected)
    _require(_at_most_float_max(-value), expected, value)
    _require(_at_most_float_max(value), expected, value)
    return float(value)


_FLOAT_DTYPE_SET = frozenset(FLOAT_DTYPES)


def is_plain_loss_call(x_t, images, per_sample, scalars) -> bool:
    """True for the common, valid call of ddpm_pa_loss, which the checks below accept unchanged: x_t and
    the other images float tensors of x_t's dtype, shape (N >= 2, C, H >= 2, W >= 2) and device;
    per_sample (a_t, b_t, then the optional weights: None or present) float tensors of shape (N,) on that
    device; scalars (w_pair, w_hf_pair, w_hf_mse, tau) Python floats, finite, tau > 0.

    The public ddpm_pa_loss runs the named checks (reference.check_loss_inputs) only when this says
    False, for their error or, for mixed image dtypes, their promotion: one pass over attributes costs
    less than the dozen calls those make, a part of the call's host time at small sizes (issue 23). It
    must never say True where they would raise: tests/test_api.py runs every rejected case through the
    public function on every CPU backend, and checks that the common call takes this path. The caller
    checks the reduction.
    """
    if not (isinstance(x_t, torch.Tensor) and x_t.dtype in _FLOAT_DTYPE_SET):
        return False
    dtype, shape, device = x_t.dtype, x_t.shape, x_t.device
    if len(shape) != 4 or shape[0] < 2 or shape[2] < 2 or shape[3] < 2:
        return False
    for image in images:
        if not (
            isinstance(image, torch.Tensor)
            and image.dtype is dtype
            and image.shape == shape
            and image.device == device
        ):
            return False
    per_sample_shape = shape[:1]
    for coefficient in per_sample:
        if coefficient is None:
            continue
        if not (
            isinstance(coefficient, torch.Tensor)
            and coefficient.dtype in _FLOAT_DTYPE_SET
            and coefficient.shape == per_sample_shape
            and coefficient.device == device
        ):
            return False
    for value in scalars:
        # `type is float`: not a bool, int, numpy scalar or, under torch.compile, a symbolic float (the
        # named checks turn a symbolic one into an assertion of the compiled code).
        if type(value) is not float or not -1.7976931348623157e308 <= value <= 1.7976931348623157e308:
            return False
    return scalars[-1] > 0


def check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_levels(levels, name: str = "levels") -> int:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {levels!r}")
    return levels


def check_dwt_coefficients(yl, yh) -> None:
    """(yl, yh) must be a Haar DWT in pytorch_wavelets' layout; entries of yh may be None (zeros)."""
    check_images(yl, "yl")
    if not isinstance(yh, (list, tuple)) or len(yh) == 0:
        raise ValueError("yh must be a non-empty list of (N, C, 3, h, w) tensors, finest level first")
    for j, band in enumerate(yh):
        if band is None:
            continue
        name = f"yh[{j}]"
        check_tensor(band, name, ndim=5)
        if band.shape[:2] != yl.shape[:2] or band.shape[2] != 3:
            raise ValueError(
                f"{name} must have shape (N, C, 3, h, w) with (N, C) = {tuple(yl.shape[:2])} of yl, "
                f"got {tuple(band.shape)}"
            )
        if band.dtype != yl.dtype:
            raise TypeError(f"{name} must have the dtype of yl ({yl.dtype}), got {band.dtype}")
        check_same_device(yl, "yl", band, name)
