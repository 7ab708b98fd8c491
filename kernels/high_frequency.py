"""DDPM-PA's high-frequency map HF = LH + HL + HH of the Haar DWT, forward and adjoint, in Triton.

Per 2x2 block (a b / c d): HF = (3d - a - b - c) / 2 (csrc/ddpm_pa_math.h: high_frequency); an odd last
row or column is dropped. Both kernels are elementwise over their output, so every output element is
written exactly once (no zero-fill pass) and no two programs touch the same address.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ddpm_pa_fast._nvtx import annotate

from ._common import (
    ELEMENTWISE_BLOCK,
    ELEMENTWISE_WARPS,
    accumulation_dtype,
    elementwise_grid,
    tl_dtype,
    wrap_triton,
)


@triton.jit
def _high_frequency_forward_kernel(
    x_ptr,  # (N, C, H, W) contiguous, any float dtype
    hf_ptr,  # (N, C, H // 2, W // 2) contiguous, dtype of x
    height,  # H
    width,  # W
    num_outputs,  # N * C * (H // 2) * (W // 2)
    ACC: tl.constexpr,  # accumulation dtype: float32, or float64 for float64 inputs
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < num_outputs
    out_w = width // 2
    out_plane = (height // 2) * out_w
    plane = offs // out_plane
    rem = offs - plane * out_plane
    i = rem // out_w
    j = rem - i * out_w
    top_left = plane * height * width + (2 * i) * width + 2 * j
    a = tl.load(x_ptr + top_left, mask=mask, other=0.0).to(ACC)
    b = tl.load(x_ptr + top_left + 1, mask=mask, other=0.0).to(ACC)
    c = tl.load(x_ptr + top_left + width, mask=mask, other=0.0).to(ACC)
    d = tl.load(x_ptr + top_left + width + 1, mask=mask, other=0.0).to(ACC)
    hf = (3.0 * d - a - b - c) * 0.5
    tl.store(hf_ptr + offs, hf.to(hf_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _high_frequency_backward_kernel(
    grad_hf_ptr,  # (N, C, H // 2, W // 2) contiguous
    grad_x_ptr,  # (N, C, H, W) contiguous, dtype of grad_hf
    height,  # H
    width,  # W
    num_inputs,  # N * C * H * W
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per BLOCK input pixels: each reads the gradient of its block's output and scales it
    # by its filter tap (-1/2 for a, b, c; 3/2 for d); a dropped odd row/column gets zero.
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < num_inputs
    plane_size = height * width
    plane = offs // plane_size
    rem = offs - plane * plane_size
    r = rem // width
    c = rem - r * width
    out_h = height // 2
    out_w = width // 2
    inside = (r < 2 * out_h) & (c < 2 * out_w)
    g = tl.load(
        grad_hf_ptr + plane * out_h * out_w + (r // 2) * out_w + c // 2, mask=mask & inside, other=0.0
    ).to(ACC)
    tap = tl.where(((r % 2) == 1) & ((c % 2) == 1), 1.5, -0.5)
    tl.store(grad_x_ptr + offs, (g * tap).to(grad_x_ptr.dtype.element_ty), mask=mask)


@triton_op("ddpm_pa_fast_triton::ddpm_pa_high_frequency", mutates_args={})
def high_frequency_forward_triton(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    n, c, h, w = x.shape
    hf = x.new_empty((n, c, h // 2, w // 2))
    if hf.numel() > 0:
        wrap_triton(_high_frequency_forward_kernel)[elementwise_grid(hf.numel())](
            x,
            hf,
            h,
            w,
            hf.numel(),
            ACC=tl_dtype(accumulation_dtype(x.dtype)),
            BLOCK=ELEMENTWISE_BLOCK,
            num_warps=ELEMENTWISE_WARPS,
        )
    return hf


@triton_op("ddpm_pa_fast_triton::ddpm_pa_high_frequency_backward", mutates_args={})
def high_frequency_backward_triton(grad_hf: torch.Tensor, height: int, width: int) -> torch.Tensor:
    grad_hf = grad_hf.contiguous()
    n, c = grad_hf.shape[:2]
    grad_x = grad_hf.new_empty((n, c, height, width))
    if grad_x.numel() > 0:
        wrap_triton(_high_frequency_backward_kernel)[elementwise_grid(grad_x.numel())](
            grad_hf,
            grad_x,
            height,
            width,
            grad_x.numel(),
            ACC=tl_dtype(accumulation_dtype(grad_hf.dtype)),
            BLOCK=ELEMENTWISE_BLOCK,
            num_warps=ELEMENTWISE_WARPS,
        )
    return grad_x


@high_frequency_forward_triton.register_fake
def _(x):
    torch._check(x.dim() == 4, lambda: f"x must be (N, C, H, W), got {tuple(x.shape)}")
    return x.new_empty((x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2))


@high_frequency_backward_triton.register_fake
def _(grad_hf, height, width):
    torch._check(grad_hf.dim() == 4, lambda: f"grad_hf must be (N, C, h, w), got {tuple(grad_hf.shape)}")
    return grad_hf.new_empty((grad_hf.shape[0], grad_hf.shape[1], height, width))


def _setup_context(ctx, inputs, output):
    (x,) = inputs
    ctx.height, ctx.width = x.shape[-2:]


def _backward(ctx, grad_hf):
    with annotate("ddpm_pa_high_frequency_backward[triton]"):
        return torch.ops.ddpm_pa_fast_triton.ddpm_pa_high_frequency_backward(grad_hf, ctx.height, ctx.width)


def _backward_of_backward(ctx, grad_grad_x):
    # Double backward (create_graph=True). The backward op is HF's adjoint, linear in grad_hf, so its
    # own adjoint is HF: the forward op, whose autograd makes every higher order exact too.
    with annotate("ddpm_pa_high_frequency_backward_backward[triton]"):
        return torch.ops.ddpm_pa_fast_triton.ddpm_pa_high_frequency(grad_grad_x), None, None


high_frequency_forward_triton.register_autograd(_backward, setup_context=_setup_context)
high_frequency_backward_triton.register_autograd(_backward_of_backward)
