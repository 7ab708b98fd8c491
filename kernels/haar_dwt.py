"""One level of the orthonormal 2D Haar DWT and its inverse (pytorch_wavelets' layout), in Triton.

Per 2x2 block (a b / c d): LL = (a+b+c+d)/2, band1 = (a+b-c-d)/2, band2 = (a-b+c-d)/2,
band3 = (a-b-c+d)/2 (csrc/ddpm_pa_math.h: haar_analysis); synthesis is the same symmetric orthogonal
matrix. An odd height or width is first extended by one row/column as reference._pad_to_even does:
zeros for mode "zero", a repeat of the last row/column for "symmetric" and "periodization". The
analysis reads the extension through clamped indices instead of materialising a padded copy.
Multi-level transforms loop over levels in Python (ddpm_pa_fast/triton_ops.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ddpm_pa_fast._nvtx import annotate

from ._common import (
    DWT_MODE_ZERO,
    ELEMENTWISE_BLOCK,
    ELEMENTWISE_WARPS,
    accumulation_dtype,
    elementwise_grid,
    tl_dtype,
    wrap_triton,
)


@triton.jit
def _haar_dwt2d_forward_kernel(
    x_ptr,  # (N, C, H, W) contiguous
    yl_ptr,  # (N, C, h, w) contiguous, h = ceil(H / 2), w = ceil(W / 2)
    yh_ptr,  # (N, C, 3, h, w) contiguous
    height,  # H
    width,  # W
    num_blocks,  # N * C * h * w
    ZERO_PAD: tl.constexpr,  # mode "zero": an odd size extends with zeros; else repeats the edge
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < num_blocks
    out_h = (height + 1) // 2
    out_w = (width + 1) // 2
    out_plane = out_h * out_w
    plane = offs // out_plane
    rem = offs - plane * out_plane
    i = rem // out_w
    j = rem - i * out_w
    row0 = 2 * i
    col0 = 2 * j
    # The second row/column of the last block lies outside an odd image: clamp it onto the edge.
    row1 = tl.minimum(row0 + 1, height - 1)
    col1 = tl.minimum(col0 + 1, width - 1)
    base = x_ptr + plane * height * width
    mask_b = mask
    mask_c = mask
    if ZERO_PAD:
        # ... or, in mode "zero", read zeros there.
        mask_b = mask & ((col0 + 1) < width)
        mask_c = mask & ((row0 + 1) < height)
    a = tl.load(base + row0 * width + col0, mask=mask, other=0.0).to(ACC)
    b = tl.load(base + row0 * width + col1, mask=mask_b, other=0.0).to(ACC)
    c = tl.load(base + row1 * width + col0, mask=mask_c, other=0.0).to(ACC)
    d = tl.load(base + row1 * width + col1, mask=mask_b & mask_c, other=0.0).to(ACC)
    out_ty = yl_ptr.dtype.element_ty
    tl.store(yl_ptr + offs, ((a + b + c + d) * 0.5).to(out_ty), mask=mask)
    bands = yh_ptr + plane * 3 * out_plane + rem
    tl.store(bands, ((a + b - c - d) * 0.5).to(out_ty), mask=mask)
    tl.store(bands + out_plane, ((a - b + c - d) * 0.5).to(out_ty), mask=mask)
    tl.store(bands + 2 * out_plane, ((a - b - c + d) * 0.5).to(out_ty), mask=mask)


@triton.jit
def _haar_synthesis_at(yl_ptr, yh_ptr, plane, out_plane, block, row_odd, col_odd, mask, ACC: tl.constexpr):
    """The synthesised pixel at (row_odd, col_odd) of a block: haar_synthesis of csrc/ddpm_pa_math.h."""
    ll = tl.load(yl_ptr + plane * out_plane + block, mask=mask, other=0.0).to(ACC)
    bands = yh_ptr + plane * 3 * out_plane + block
    band1 = tl.load(bands, mask=mask, other=0.0).to(ACC)
    band2 = tl.load(bands + out_plane, mask=mask, other=0.0).to(ACC)
    band3 = tl.load(bands + 2 * out_plane, mask=mask, other=0.0).to(ACC)
    # a = + + +, b = + - -, c = - + -, d = - - + (signs of band1, band2, band3).
    s1 = tl.where(row_odd, -1.0, 1.0)
    s2 = tl.where(col_odd, -1.0, 1.0)
    return (ll + s1 * band1 + s2 * band2 + s1 * s2 * band3) * 0.5


@triton.jit
def _haar_dwt2d_backward_kernel(
    grad_yl_ptr,  # (N, C, h, w) contiguous
    grad_yh_ptr,  # (N, C, 3, h, w) contiguous
    grad_x_ptr,  # (N, C, H, W) contiguous
    height,  # H
    width,  # W
    num_inputs,  # N * C * H * W
    ZERO_PAD: tl.constexpr,
    ODD_H: tl.constexpr,  # H % 2 == 1
    ODD_W: tl.constexpr,  # W % 2 == 1
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Adjoint of the analysis: each input pixel gathers the synthesised gradient of its own position
    # in its block and, in the edge-repeating modes, of the padded row/column that copied it.
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < num_inputs
    plane_size = height * width
    plane = offs // plane_size
    rem = offs - plane * plane_size
    r = rem // width
    c = rem - r * width
    out_h = (height + 1) // 2
    out_w = (width + 1) // 2
    out_plane = out_h * out_w
    block = (r // 2) * out_w + c // 2
    row_odd = (r % 2) == 1
    col_odd = (c % 2) == 1
    g = _haar_synthesis_at(grad_yl_ptr, grad_yh_ptr, plane, out_plane, block, row_odd, col_odd, mask, ACC)
    if not ZERO_PAD:
        # The last row of an odd-height image also stood in for the padded row below it; likewise the
        # last column, and the corner for all three padded positions.
        last_row = r == height - 1
        last_col = c == width - 1
        if ODD_H:
            g += _haar_synthesis_at(
                grad_yl_ptr, grad_yh_ptr, plane, out_plane, block, True, col_odd, mask & last_row, ACC
            )
        if ODD_W:
            g += _haar_synthesis_at(
                grad_yl_ptr, grad_yh_ptr, plane, out_plane, block, row_odd, True, mask & last_col, ACC
            )
        if ODD_H and ODD_W:
            g += _haar_synthesis_at(
                grad_yl_ptr, grad_yh_ptr, plane, out_plane, block, True, True, mask & last_row & last_col, ACC
            )
    tl.store(grad_x_ptr + offs, g.to(grad_x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _haar_idwt2d_forward_kernel(
    yl_ptr,  # (N, C, h, w) contiguous
    yh_ptr,  # (N, C, 3, h, w) contiguous
    x_ptr,  # (N, C, 2h, 2w) contiguous
    in_h,  # h
    in_w,  # w
    num_outputs,  # N * C * 2h * 2w
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < num_outputs
    out_w = 2 * in_w
    plane_size = 4 * in_h * in_w
    plane = offs // plane_size
    rem = offs - plane * plane_size
    r = rem // out_w
    c = rem - r * out_w
    block = (r // 2) * in_w + c // 2
    x = _haar_synthesis_at(yl_ptr, yh_ptr, plane, in_h * in_w, block, (r % 2) == 1, (c % 2) == 1, mask, ACC)
    tl.store(x_ptr + offs, x.to(x_ptr.dtype.element_ty), mask=mask)


@triton_op("ddpm_pa_fast_triton::haar_dwt2d", mutates_args={})
def haar_dwt2d_forward_triton(x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    n, c, h, w = x.shape
    out_h, out_w = (h + 1) // 2, (w + 1) // 2
    yl = x.new_empty((n, c, out_h, out_w))
    yh = x.new_empty((n, c, 3, out_h, out_w))
    if yl.numel() > 0:
        wrap_triton(_haar_dwt2d_forward_kernel)[elementwise_grid(yl.numel())](
            x,
            yl,
            yh,
            h,
            w,
            yl.numel(),
            ZERO_PAD=mode == DWT_MODE_ZERO,
            ACC=tl_dtype(accumulation_dtype(x.dtype)),
            BLOCK=ELEMENTWISE_BLOCK,
            num_warps=ELEMENTWISE_WARPS,
        )
    return yl, yh


@triton_op("ddpm_pa_fast_triton::haar_dwt2d_backward", mutates_args={})
def haar_dwt2d_backward_triton(
    grad_yl: torch.Tensor, grad_yh: torch.Tensor, height: int, width: int, mode: str
) -> torch.Tensor:
    grad_yl, grad_yh = grad_yl.contiguous(), grad_yh.contiguous()
    grad_x = grad_yl.new_empty((grad_yl.shape[0], grad_yl.shape[1], height, width))
    if grad_x.numel() > 0:
        wrap_triton(_haar_dwt2d_backward_kernel)[elementwise_grid(grad_x.numel())](
            grad_yl,
            grad_yh,
            grad_x,
            height,
            width,
            grad_x.numel(),
            ZERO_PAD=mode == DWT_MODE_ZERO,
            ODD_H=height % 2 == 1,
            ODD_W=width % 2 == 1,
            ACC=tl_dtype(accumulation_dtype(grad_yl.dtype)),
            BLOCK=ELEMENTWISE_BLOCK,
            num_warps=ELEMENTWISE_WARPS,
        )
    return grad_x


@triton_op("ddpm_pa_fast_triton::haar_idwt2d", mutates_args={})
def haar_idwt2d_forward_triton(yl: torch.Tensor, yh: torch.Tensor) -> torch.Tensor:
    yl, yh = yl.contiguous(), yh.contiguous()
    n, c, h, w = yl.shape
    x = yl.new_empty((n, c, 2 * h, 2 * w))
    if x.numel() > 0:
        wrap_triton(_haar_idwt2d_forward_kernel)[elementwise_grid(x.numel())](
            yl,
            yh,
            x,
            h,
            w,
            x.numel(),
            ACC=tl_dtype(accumulation_dtype(yl.dtype)),
            BLOCK=ELEMENTWISE_BLOCK,
            num_warps=ELEMENTWISE_WARPS,
        )
    return x


@haar_dwt2d_forward_triton.register_fake
def _(x, mode):
    torch._check(x.dim() == 4, lambda: f"x must be (N, C, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape
    return x.new_empty((n, c, (h + 1) // 2, (w + 1) // 2)), x.new_empty((n, c, 3, (h + 1) // 2, (w + 1) // 2))


@haar_dwt2d_backward_triton.register_fake
def _(grad_yl, grad_yh, height, width, mode):
    torch._check(grad_yh.dim() == 5, lambda: f"grad_yh must be (N, C, 3, h, w), got {tuple(grad_yh.shape)}")
    return grad_yl.new_empty((grad_yl.shape[0], grad_yl.shape[1], height, width))


@haar_idwt2d_forward_triton.register_fake
def _(yl, yh):
    torch._check(yh.shape == (*yl.shape[:2], 3, *yl.shape[2:]), lambda: "yh must be (N, C, 3, h, w) of yl")
    n, c, h, w = yl.shape
    return yl.new_empty((n, c, 2 * h, 2 * w))


def _dwt_setup_context(ctx, inputs, output):
    x, mode = inputs
    ctx.height, ctx.width = x.shape[-2:]
    ctx.mode = mode


def _dwt_backward(ctx, grad_yl, grad_yh):
    with annotate("haar_dwt2d_backward[triton]"):
        if grad_yl is None:
            grad_yl = grad_yh.new_zeros(grad_yh[:, :, 0].shape)
        if grad_yh is None:
            grad_yh = grad_yl.new_zeros((grad_yl.shape[0], grad_yl.shape[1], 3, *grad_yl.shape[2:]))
        grad_x = torch.ops.ddpm_pa_fast_triton.haar_dwt2d_backward(
            grad_yl, grad_yh, ctx.height, ctx.width, ctx.mode
        )
    return grad_x, None


def _idwt_backward(ctx, grad_x):
    # The synthesis matrix is orthogonal and symmetric: its adjoint is the analysis at even size.
    with annotate("haar_idwt2d_backward[triton]"):
        return torch.ops.ddpm_pa_fast_triton.haar_dwt2d(grad_x, DWT_MODE_ZERO)


def _dwt_backward_setup_context(ctx, inputs, output):
    ctx.mode = inputs[4]


def _dwt_backward_backward(ctx, grad_grad_x):
    # Double backward (create_graph=True). The backward op is the analysis' adjoint in its mode (odd sizes'
    # folded extension included), linear in (grad_yl, grad_yh), so its own adjoint is the analysis in
    # that mode: the forward op, whose autograd makes every higher order exact too.
    with annotate("haar_dwt2d_backward_backward[triton]"):
        grad_grad_yl, grad_grad_yh = torch.ops.ddpm_pa_fast_triton.haar_dwt2d(grad_grad_x, ctx.mode)
    return grad_grad_yl, grad_grad_yh, None, None, None


haar_dwt2d_forward_triton.register_autograd(_dwt_backward, setup_context=_dwt_setup_context)
haar_dwt2d_backward_triton.register_autograd(
    _dwt_backward_backward, setup_context=_dwt_backward_setup_context
)
haar_idwt2d_forward_triton.register_autograd(_idwt_backward)
