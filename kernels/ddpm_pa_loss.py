"""The fused DDPM-PA loss in Triton: forward and backward, each one pass over the inputs.

Traffic plan (the CPU kernel's): the images are walked as a grid of 2x2 pixel blocks over the flattened
(C, ceil(H/2), ceil(W/2)) block grid of every sample, so that each block yields its 4 pixels of
x0 = a_t x_t - b_t eps and, when complete, its one HF value, in registers.
Forward:
  1. _ddpm_pa_loss_forward_kernel: a persistent grid of programs, each walking a strided range of
     column blocks with all N samples of a block in one tile (N <= 32; larger N tiles the samples and
     each program handles one pair of row tiles), accumulates the four partial Gram matrices
     [G(x0_src), G(x0_ada), G(HF(x0_src)), G(HF(x0_ada))] with tl.dot and the squared errors of the
     mse and hf_mse terms; x_t, eps_ada, eps_src and noise are read once from memory. The optional
     per-sample weights m_i, h_i of the mse and hf_mse terms are applied to each row's sum once, at the
     end of a program's walk: one load of its row tile's weights, nothing in the loop.
  2. _common._sum_partials_kernel adds the per-program partials in a fixed order (deterministic, no
     atomics).
  3. _ddpm_pa_loss_terms_kernel, one program: the two KL terms from the Grams and the total.
Backward:
  1. _ddpm_pa_loss_grad_matrices_kernel, one program: the weights of the five upstream gradients
     (ddpm_pa::loss_term_weights) and the N x N matrices M_img, M_hf (similarity_kl_grad_matrix).
  2. _ddpm_pa_loss_backward_kernel: one read of x_t, eps_ada and noise, one write of grad_eps_ada:
       grad = c_mse m 2 e / numel + b^2 HF^T(c_hf h 2 HF(e) / numel_hf)
              - b (M_img @ x0_ada) - b HF^T(M_hf @ HF(x0_ada)),   e = eps_ada - noise,
     with the weights m, h per row (1 when absent).
An absent weight is a constexpr flag (HAS_MSE_WEIGHT, HAS_HF_MSE_WEIGHT) off: the kernels then compile
to the unweighted code, which never reads the weight's pointer, and give its results bit for bit.
The maths of each step is csrc/ddpm_pa_math.h's; the N x N functions are shared with pairwise_kl.py.

A block's 4 pixels are a tuple of 4 (rows x blocks) tiles built and used in tl.static_range loops,
which unroll to the code of 4 separately named tiles. Inside them the operations keep the order they
had when the 4 pixels were spelled out, so that the Triton IR is the same op for op: a first version
that started the pixels' dots from zeros and added the adjoint's -1/2 tap as a weight moved sm_90's
register allocation, 167 -> 226 registers in the backward at 32-sample tiles. One (rows x blocks x 4)
tile was tried as well and compiled worse for sm_80 (float32, 16-sample tiles): its sums over the pixel
axis and its reshape for tl.dot took the forward from 142 to 255 registers with a spill (2552 -> 3680
SASS instructions) and the backward from 127 to 163.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ddpm_pa_fast._nvtx import annotate

from ._common import (
    GRAM_STAGES,
    GRAM_WARPS,
    REDUCTION_CODES,
    accumulation_dtype,
    block_n,
    check_batch,
    reduction_programs,
    scalars,
    sum_partials,
    tl_dtype,
    whole_batch_block,
    whole_batch_warps,
    wrap_triton,
)
from .pairwise_kl import (
    _load_square,
    _reduction_scale,
    _similarity_kl_grad_matrix,
    _similarity_kl_rows,
    double_backward_unsupported,
)

NUM_LOSS_TERMS = 5


def _loss_tiling(n: int) -> tuple[int, int, int]:
    """(BLOCK_N, NUM_TILES, BLOCK_K) of the forward and backward kernels for a batch of n: samples per
    Gram tile (block_n), row tiles, and 2x2 blocks per column tile: 16 (64 pixels per sample per step).

    From the kernels compiled for sm_80 and sm_90 (tests/test_triton.py::
    test_kernels_compile_for_gpu_targets; registers and stack read with cuobjdump): at 4 warps and 32
    blocks, BLOCK_N = 32 hit the 255-register limit and spilled 230-700 bytes per thread (the 10
    feature tiles, x0 of 4 pixels and HF of both models, plus the Gram accumulators), and with two row
    tiles (N > 32) the float32 forward staged 176 KiB of shared memory, above the 163 KiB an A100 gives
    a block. With 16 blocks: 127-238 registers, 88 KiB, and no spill but in the backward with two row
    tiles (up to 120 bytes). BLOCK_N = 16 had kept 32 blocks (125-166 registers with Triton 3.9), but
    Triton 3.6, the version on the GPU machines we borrow, compiled its float32 forward to 32 registers
    and 4.4 KiB of stack per thread; with 16 blocks: 106-112 registers, no spill, on both versions.
    The per-sample weights keep this tiling: compiled with Triton 3.9, the weighted kernels use 40 fewer
    to 9 more registers than the unweighted ones at each tiling, the same shared memory and the same
    stack, except that the bfloat16 forward at 16-sample tiles for sm_80 (72 registers) keeps one
    value on the stack, 8 bytes, from before its loop to after it. The unweighted kernels compile to
    the same SASS as before the weights (sm_80 and sm_90, both dtypes, every tiling).
    """
    bn = block_n(n)
    return bn, triton.cdiv(n, bn), 16


@triton.jit
def _pixel_offsets(rows, blocks, n, height, width, num_blocks, PIXEL: tl.constexpr):
    """Offsets (rows x blocks) and in-image mask of pixel PIXEL (0..3: a b / c d) of each 2x2 block."""
    blocks_w = (width + 1) // 2
    plane_blocks = ((height + 1) // 2) * blocks_w
    channel = blocks // plane_blocks
    rem = blocks - channel * plane_blocks
    i = rem // blocks_w
    r = 2 * i + PIXEL // 2
    c = 2 * (rem - i * blocks_w) + PIXEL % 2
    column_offs = channel * height * width + r * width + c
    column_in = (blocks < num_blocks) & (r < height) & (c < width)
    sample_size = (num_blocks // plane_blocks) * height * width
    offs = rows.to(tl.int64)[:, None] * sample_size + column_offs[None, :]
    return offs, (rows[:, None] < n) & column_in[None, :]


@triton.jit
def _high_frequency(pixels, complete):
    """ddpm_pa::high_frequency of a block's 4 pixel tiles (a, b, c, d); zero where the block is not
    complete."""
    return tl.where(complete, (3.0 * pixels[3] - pixels[0] - pixels[1] - pixels[2]) * 0.5, 0.0)


@triton.jit
def _forward_tiles(
    x_t_ptr,
    eps_ada_ptr,
    eps_src_ptr,
    noise_ptr,
    a_ptr,
    b_ptr,
    rows,
    blocks,
    n,
    height,
    width,
    num_blocks,
    noise_rows,
    ACC: tl.constexpr,
):
    """The features of one row tile and column tile: x0 of both models at the 4 pixels of each block
    (tuples of 4 tiles, rows x blocks), their HF, and the squared errors of the mse and hf_mse terms
    (elementwise, summed by the caller).

    The noise is read for rows < noise_rows only (N, or 0 for a tile that does not own the errors):
    a masked-off load moves no bytes.
    """
    a_t = tl.load(a_ptr + rows, mask=rows < n, other=0.0).to(ACC)
    b_t = tl.load(b_ptr + rows, mask=rows < n, other=0.0).to(ACC)
    x0_src, x0_ada, err = (), (), ()
    for pixel in tl.static_range(4):
        offs, mask = _pixel_offsets(rows, blocks, n, height, width, num_blocks, pixel)
        with_noise = mask & (rows < noise_rows)[:, None]
        x_t = tl.load(x_t_ptr + offs, mask=mask, other=0.0).to(ACC)
        eps_ada = tl.load(eps_ada_ptr + offs, mask=mask, other=0.0).to(ACC)
        eps_src = tl.load(eps_src_ptr + offs, mask=mask, other=0.0).to(ACC)
        noise = tl.load(noise_ptr + offs, mask=with_noise, other=0.0).to(ACC)
        x0_src += (a_t[:, None] * x_t - b_t[:, None] * eps_src,)
        x0_ada += (a_t[:, None] * x_t - b_t[:, None] * eps_ada,)
        err += (tl.where(with_noise, eps_ada - noise, 0.0),)
    # A block has an HF value only when complete: its bottom-right pixel is inside the image.
    _, complete = _pixel_offsets(rows, blocks, n, height, width, num_blocks, 3)
    hf_src = _high_frequency(x0_src, complete)
    hf_ada = _high_frequency(x0_ada, complete)
    # HF(x0_ada) - HF(x0_tgt) = -b_t HF(eps_ada - noise): the same value, without cancellation.
    hf_err = b_t[:, None] * _high_frequency(err, complete)
    sq_mse = err[0] * err[0]
    for pixel in tl.static_range(1, 4):
        sq_mse += err[pixel] * err[pixel]
    return x0_src, x0_ada, hf_src, hf_ada, sq_mse, hf_err * hf_err


@triton.jit
def _gram(x, y):
    return tl.dot(x, tl.trans(y), input_precision="ieee", out_dtype=x.dtype)


@triton.jit
def _block_gram(x, y):
    """sum over a block's 4 pixels of x[pixel] @ y[pixel]^T: the pixels' share of a Gram tile."""
    g = _gram(x[0], y[0])
    for pixel in tl.static_range(1, 4):
        g += _gram(x[pixel], y[pixel])
    return g


@triton.jit
def _row_weights(w_ptr, rows, n, ACC: tl.constexpr):
    """The per-sample weights of a row tile, in the accumulation dtype (0 past N)."""
    return tl.load(w_ptr + rows, mask=rows < n, other=0.0).to(ACC)


@triton.jit
def _weighted_sum(sq, w_ptr, rows, n, HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr):
    """sum of a (rows x blocks) tile of squared errors, each row times its sample's weight if HAS_WEIGHT.

    The rows are summed first and weighted once, after the program's walk over the column blocks: the
    weights cost one load per row and program, and nothing in the loop. Without weights, the sum the
    unweighted loss has always made, op for op.
    """
    row_sums = tl.sum(sq, axis=1)
    if HAS_WEIGHT:
        row_sums = row_sums * _row_weights(w_ptr, rows, n, ACC)
    return tl.sum(row_sums, axis=0)


@triton.jit
def _ddpm_pa_loss_forward_kernel(
    x_t_ptr,  # (N, C, H, W) contiguous
    eps_ada_ptr,  # (N, C, H, W) contiguous, dtype of x_t
    eps_src_ptr,  # (N, C, H, W) contiguous, dtype of x_t
    noise_ptr,  # (N, C, H, W) contiguous, dtype of x_t
    a_ptr,  # (N,) a_t = sqrt(1 / abar_t), any float dtype
    b_ptr,  # (N,) b_t = sqrt(1 / abar_t - 1), any float dtype
    mse_w_ptr,  # (N,) the mse term's per-sample weights, any float dtype; unread without HAS_MSE_WEIGHT
    hf_mse_w_ptr,  # (N,) the hf_mse term's, likewise with HAS_HF_MSE_WEIGHT
    gram_partials_ptr,  # (P, 4, N, N) accumulation dtype: per program, the four Grams over its blocks
    sq_partials_ptr,  # (P, 2, T) accumulation dtype: per program and row tile, the mse / hf_mse sums
    n,  # N
    height,  # H
    width,  # W
    num_blocks,  # C * ceil(H / 2) * ceil(W / 2)
    NUM_TILES: tl.constexpr,  # T = ceil(N / BLOCK_N); the grid's axis 1 is the T * T row-tile pairs
    BLOCK_N: tl.constexpr,  # samples per tile, a power of two >= 16 (tl.dot)
    BLOCK_K: tl.constexpr,  # 2x2 blocks per column tile
    HAS_MSE_WEIGHT: tl.constexpr,
    HAS_HF_MSE_WEIGHT: tl.constexpr,
    ACC: tl.constexpr,
):
    pid_p = tl.program_id(0)
    num_programs = tl.num_programs(0)
    tile_i = tl.program_id(1) // NUM_TILES
    tile_j = tl.program_id(1) % NUM_TILES
    rows_i = tile_i * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_j = tile_j * BLOCK_N + tl.arange(0, BLOCK_N)
    # The squared errors are summed by the diagonal tile pairs only, each row once.
    owns_errors = tile_i == tile_j
    noise_rows = tl.where(owns_errors, n, 0)
    g_src = tl.zeros((BLOCK_N, BLOCK_N), ACC)
    g_ada = tl.zeros((BLOCK_N, BLOCK_N), ACC)
    g_hf_src = tl.zeros((BLOCK_N, BLOCK_N), ACC)
    g_hf_ada = tl.zeros((BLOCK_N, BLOCK_N), ACC)
    sq_mse = tl.zeros((BLOCK_N, BLOCK_K), ACC)
    sq_hf = tl.zeros((BLOCK_N, BLOCK_K), ACC)
    for step in range(pid_p, tl.cdiv(num_blocks, BLOCK_K), num_programs):
        blocks = tl.arange(0, BLOCK_K).to(tl.int64) + step * BLOCK_K
        x0_src, x0_ada, hf_src, hf_ada, sq_m, sq_h = _forward_tiles(
            x_t_ptr,
            eps_ada_ptr,
            eps_src_ptr,
            noise_ptr,
            a_ptr,
            b_ptr,
            rows_i,
            blocks,
            n,
            height,
            width,
            num_blocks,
            noise_rows,
            ACC,
        )
        sq_mse += sq_m
        sq_hf += sq_h
        if NUM_TILES == 1:
            y0_src, y0_ada, hf_src_j, hf_ada_j = x0_src, x0_ada, hf_src, hf_ada
        else:
            y0_src, y0_ada, hf_src_j, hf_ada_j, _, _ = _forward_tiles(
                x_t_ptr,
                eps_ada_ptr,
                eps_src_ptr,
                noise_ptr,
                a_ptr,
                b_ptr,
                rows_j,
                blocks,
                n,
                height,
                width,
                num_blocks,
                0,
                ACC,
            )
        g_src += _block_gram(x0_src, y0_src)
        g_ada += _block_gram(x0_ada, y0_ada)
        g_hf_src += _gram(hf_src, hf_src_j)
        g_hf_ada += _gram(hf_ada, hf_ada_j)
    mask = (rows_i[:, None] < n) & (rows_j[None, :] < n)
    out = gram_partials_ptr + pid_p.to(tl.int64) * 4 * n * n + rows_i[:, None] * n + rows_j[None, :]
    tl.store(out, g_src, mask=mask)
    tl.store(out + n * n, g_ada, mask=mask)
    tl.store(out + 2 * n * n, g_hf_src, mask=mask)
    tl.store(out + 3 * n * n, g_hf_ada, mask=mask)
    sq_out = sq_partials_ptr + pid_p.to(tl.int64) * 2 * NUM_TILES + tile_i
    tl.store(sq_out, _weighted_sum(sq_mse, mse_w_ptr, rows_i, n, HAS_MSE_WEIGHT, ACC), mask=owns_errors)
    sq_hf_sum = _weighted_sum(sq_hf, hf_mse_w_ptr, rows_i, n, HAS_HF_MSE_WEIGHT, ACC)
    tl.store(sq_out + NUM_TILES, sq_hf_sum, mask=owns_errors)


@triton.jit
def _ddpm_pa_loss_terms_kernel(
    grams_ptr,  # (4, N, N) accumulation dtype: [G(x0_src), G(x0_ada), G(HF(x0_src)), G(HF(x0_ada))]
    sq_ptr,  # (2, T) accumulation dtype: mse and hf_mse sums per row tile
    params_ptr,  # (4,) accumulation dtype: [1 / tau, w_pair, w_hf_pair, w_hf_mse]
    loss_ptr,  # () dtype of x_t; likewise the four terms below
    mse_ptr,
    hf_mse_ptr,
    pair_img_ptr,
    pair_hf_ptr,
    n,  # N
    numel,  # N * C * H * W
    numel_hf,  # N * C * (H // 2) * (W // 2)
    NUM_TILES: tl.constexpr,  # T
    REDUCTION: tl.constexpr,  # REDUCTION_CODES (never "none": the loss is a scalar)
    B: tl.constexpr,  # power of two >= N
    ACC: tl.constexpr,
):
    inv_tau = tl.load(params_ptr)
    w_pair = tl.load(params_ptr + 1)
    w_hf_pair = tl.load(params_ptr + 2)
    w_hf_mse = tl.load(params_ptr + 3)
    tiles = tl.arange(0, 16)  # T <= MAX_BATCH / MAX_BLOCK_N = 2 row tiles; 16 leaves room to raise N
    tile_mask = tiles < NUM_TILES
    mse = tl.sum(tl.load(sq_ptr + tiles, mask=tile_mask, other=0.0), axis=0) / numel
    hf_mse = tl.sum(tl.load(sq_ptr + NUM_TILES + tiles, mask=tile_mask, other=0.0), axis=0) / numel_hf
    scale = _reduction_scale(n, REDUCTION, ACC)
    g_src = _load_square(grams_ptr, n, B, ACC)
    g_ada = _load_square(grams_ptr + n * n, n, B, ACC)
    pair_img = tl.sum(_similarity_kl_rows(g_src, g_ada, n, inv_tau, B), axis=0) * scale
    g_hf_src = _load_square(grams_ptr + 2 * n * n, n, B, ACC)
    g_hf_ada = _load_square(grams_ptr + 3 * n * n, n, B, ACC)
    pair_hf = tl.sum(_similarity_kl_rows(g_hf_src, g_hf_ada, n, inv_tau, B), axis=0) * scale
    loss = mse + w_pair * pair_img + w_hf_pair * pair_hf + w_hf_mse * hf_mse
    out_ty = loss_ptr.dtype.element_ty
    tl.store(loss_ptr, loss.to(out_ty))
    tl.store(mse_ptr, mse.to(out_ty))
    tl.store(hf_mse_ptr, hf_mse.to(out_ty))
    tl.store(pair_img_ptr, pair_img.to(out_ty))
    tl.store(pair_hf_ptr, pair_hf.to(out_ty))


@triton.jit
def _ddpm_pa_loss_grad_matrices_kernel(
    grad_terms_ptr,  # (5,) accumulation dtype: upstream gradients of (loss, mse, hf_mse, pair_img, pair_hf)
    grams_ptr,  # (4, N, N) accumulation dtype
    params_ptr,  # (4,) accumulation dtype: [1 / tau, w_pair, w_hf_pair, w_hf_mse]
    m_ptr,  # (2, N, N) accumulation dtype: out, [M_img, M_hf]
    coefs_ptr,  # (2,) accumulation dtype: out, [2 c_mse / numel, 2 c_hf_mse / numel_hf]
    n,  # N
    numel,  # N * C * H * W
    numel_hf,  # N * C * (H // 2) * (W // 2)
    REDUCTION: tl.constexpr,
    B: tl.constexpr,
    ACC: tl.constexpr,
):
    inv_tau = tl.load(params_ptr)
    w_pair = tl.load(params_ptr + 1)
    w_hf_pair = tl.load(params_ptr + 2)
    w_hf_mse = tl.load(params_ptr + 3)
    # ddpm_pa::loss_term_weights: what each term weighs in sum_k grad_k * output_k.
    g_loss = tl.load(grad_terms_ptr)
    c_mse = g_loss + tl.load(grad_terms_ptr + 1)
    c_hf_mse = w_hf_mse * g_loss + tl.load(grad_terms_ptr + 2)
    c_pair_img = w_pair * g_loss + tl.load(grad_terms_ptr + 3)
    c_pair_hf = w_hf_pair * g_loss + tl.load(grad_terms_ptr + 4)
    tl.store(coefs_ptr, 2.0 * c_mse / numel)
    tl.store(coefs_ptr + 1, 2.0 * c_hf_mse / numel_hf)
    scale = _reduction_scale(n, REDUCTION, ACC)
    ones = tl.full((B,), 1.0, ACC)
    rows = tl.arange(0, B)
    out = m_ptr + rows[:, None] * n + rows[None, :]
    mask = (rows[:, None] < n) & (rows[None, :] < n)
    g_src = _load_square(grams_ptr, n, B, ACC)
    g_ada = _load_square(grams_ptr + n * n, n, B, ACC)
    tl.store(
        out, _similarity_kl_grad_matrix(g_src, g_ada, ones * (c_pair_img * scale), n, inv_tau, B), mask=mask
    )
    g_hf_src = _load_square(grams_ptr + 2 * n * n, n, B, ACC)
    g_hf_ada = _load_square(grams_ptr + 3 * n * n, n, B, ACC)
    m_hf = _similarity_kl_grad_matrix(g_hf_src, g_hf_ada, ones * (c_pair_hf * scale), n, inv_tau, B)
    tl.store(out + n * n, m_hf, mask=mask)


@triton.jit
def _backward_tiles(
    x_t_ptr,
    eps_ada_ptr,
    noise_ptr,
    a_ptr,
    b_ptr,
    rows,
    blocks,
    n,
    height,
    width,
    num_blocks,
    noise_rows,
    ACC: tl.constexpr,
):
    """x0_ada and eps_ada - noise (rows < noise_rows, as _forward_tiles) at the 4 pixels of each block,
    their HF, and b_t."""
    a_t = tl.load(a_ptr + rows, mask=rows < n, other=0.0).to(ACC)
    b_t = tl.load(b_ptr + rows, mask=rows < n, other=0.0).to(ACC)
    x0, err = (), ()
    for pixel in tl.static_range(4):
        offs, mask = _pixel_offsets(rows, blocks, n, height, width, num_blocks, pixel)
        with_noise = mask & (rows < noise_rows)[:, None]
        x_t = tl.load(x_t_ptr + offs, mask=mask, other=0.0).to(ACC)
        eps_ada = tl.load(eps_ada_ptr + offs, mask=mask, other=0.0).to(ACC)
        noise = tl.load(noise_ptr + offs, mask=with_noise, other=0.0).to(ACC)
        x0 += (a_t[:, None] * x_t - b_t[:, None] * eps_ada,)
        err += (tl.where(with_noise, eps_ada - noise, 0.0),)
    _, complete = _pixel_offsets(rows, blocks, n, height, width, num_blocks, 3)
    return x0, _high_frequency(x0, complete), err, _high_frequency(err, complete), b_t


@triton.jit
def _ddpm_pa_loss_backward_kernel(
    m_ptr,  # (2, N, N) accumulation dtype: [M_img, M_hf]
    coefs_ptr,  # (2,) accumulation dtype: [2 c_mse / numel, 2 c_hf_mse / numel_hf]
    x_t_ptr,  # (N, C, H, W) contiguous
    eps_ada_ptr,  # (N, C, H, W) contiguous
    noise_ptr,  # (N, C, H, W) contiguous
    a_ptr,  # (N,)
    b_ptr,  # (N,)
    mse_w_ptr,  # (N,) as the forward's
    hf_mse_w_ptr,  # (N,)
    grad_ptr,  # (N, C, H, W) contiguous, dtype of eps_ada: out
    n,  # N
    height,  # H
    width,  # W
    num_blocks,  # C * ceil(H / 2) * ceil(W / 2)
    NUM_TILES: tl.constexpr,  # T = ceil(N / BLOCK_N); the grid's axis 1 walks the T row tiles
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_MSE_WEIGHT: tl.constexpr,
    HAS_HF_MSE_WEIGHT: tl.constexpr,
    ACC: tl.constexpr,
):
    blocks = tl.arange(0, BLOCK_K).to(tl.int64) + tl.program_id(0).to(tl.int64) * BLOCK_K
    rows_i = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    c_mse = tl.load(coefs_ptr)
    c_hf = tl.load(coefs_ptr + 1)
    # (M_img @ x0_ada) at each pixel (acc) and (M_hf @ HF(x0_ada)) at each block (acc_hf).
    if NUM_TILES == 1:
        x0, hf_x0, err, hf_err, b_t = _backward_tiles(
            x_t_ptr,
            eps_ada_ptr,
            noise_ptr,
            a_ptr,
            b_ptr,
            rows_i,
            blocks,
            n,
            height,
            width,
            num_blocks,
            n,
            ACC,
        )
        m_img = _load_square(m_ptr, n, BLOCK_N, ACC)
        m_hf = _load_square(m_ptr + n * n, n, BLOCK_N, ACC)
        acc = ()
        for pixel in tl.static_range(4):
            acc += (tl.dot(m_img, x0[pixel], input_precision="ieee", out_dtype=ACC),)
        acc_hf = tl.dot(m_hf, hf_x0, input_precision="ieee", out_dtype=ACC)
    else:
        acc = (tl.zeros((BLOCK_N, BLOCK_K), ACC),) * 4
        acc_hf = tl.zeros((BLOCK_N, BLOCK_K), ACC)
        for tile_j in range(NUM_TILES):
            rows_j = tile_j * BLOCK_N + tl.arange(0, BLOCK_N)
            x0, hf_x0, _, _, _ = _backward_tiles(
                x_t_ptr,
                eps_ada_ptr,
                noise_ptr,
                a_ptr,
                b_ptr,
                rows_j,
                blocks,
                n,
                height,
                width,
                num_blocks,
                0,
                ACC,
            )
            m_mask = (rows_i[:, None] < n) & (rows_j[None, :] < n)
            m_offs = rows_i[:, None] * n + rows_j[None, :]
            m_img = tl.load(m_ptr + m_offs, mask=m_mask, other=0.0)
            m_hf = tl.load(m_ptr + n * n + m_offs, mask=m_mask, other=0.0)
            acc_j = ()
            for pixel in tl.static_range(4):
                acc_j += (acc[pixel] + tl.dot(m_img, x0[pixel], input_precision="ieee", out_dtype=ACC),)
            acc = acc_j
            acc_hf += tl.dot(m_hf, hf_x0, input_precision="ieee", out_dtype=ACC)
        _, _, err, hf_err, b_t = _backward_tiles(
            x_t_ptr,
            eps_ada_ptr,
            noise_ptr,
            a_ptr,
            b_ptr,
            rows_i,
            blocks,
            n,
            height,
            width,
            num_blocks,
            n,
            ACC,
        )
    b = b_t[:, None]
    # The weights scale each row's coefficient, a column (rows x 1): loaded here, after the dots, so
    # they are not live beside the tiles above; the unweighted kernel keeps its scalar coefficients.
    if HAS_MSE_WEIGHT:
        c_mse = c_mse * _row_weights(mse_w_ptr, rows_i, n, ACC)[:, None]
    if HAS_HF_MSE_WEIGHT:
        c_hf = c_hf * _row_weights(hf_mse_w_ptr, rows_i, n, ACC)[:, None]
    # Gradient with respect to HF(x0_ada), then spread over the block by HF's adjoint (-1/2, 3/2 taps).
    g_hf = b * b * c_hf * hf_err - b * acc_hf
    for pixel in tl.static_range(4):
        if pixel == 3:
            grad = c_mse * err[pixel] - b * acc[pixel] + 1.5 * g_hf
        else:
            grad = c_mse * err[pixel] - b * acc[pixel] - 0.5 * g_hf
        offs, mask = _pixel_offsets(rows_i, blocks, n, height, width, num_blocks, pixel)
        tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=mask)


def _geometry(x_t: torch.Tensor):
    n, c, h, w = x_t.shape
    num_blocks = c * ((h + 1) // 2) * ((w + 1) // 2)
    return n, h, w, num_blocks, x_t.numel(), n * c * (h // 2) * (w // 2)


def _loss_params(tau, w_pair, w_hf_pair, w_hf_mse, acc, device):
    return scalars([1.0 / tau, w_pair, w_hf_pair, w_hf_mse], acc, device)


def _per_sample(coef: torch.Tensor) -> torch.Tensor:
    return coef.reshape(-1).contiguous()


def _weight_args(mse_weight, hf_mse_weight, a_t):
    """The kernels' weight pointers and HAS_ flags. An absent weight compiles the unweighted kernel,
    which never reads its pointer: a_t stands in, so that nothing is allocated for it."""
    pointers = tuple(a_t if w is None else _per_sample(w) for w in (mse_weight, hf_mse_weight))
    flags = {"HAS_MSE_WEIGHT": mse_weight is not None, "HAS_HF_MSE_WEIGHT": hf_mse_weight is not None}
    return pointers, flags


@triton_op("ddpm_pa_fast_triton::ddpm_pa_loss", mutates_args={})
def ddpm_pa_loss_forward_triton(
    x_t: torch.Tensor,
    eps_ada: torch.Tensor,
    eps_src: torch.Tensor,
    noise: torch.Tensor,
    a_t: torch.Tensor,
    b_t: torch.Tensor,
    mse_weight: torch.Tensor | None,
    hf_mse_weight: torch.Tensor | None,
    w_pair: float,
    w_hf_pair: float,
    w_hf_mse: float,
    tau: float,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    check_batch(x_t.shape[0], "x_t")
    x_t, eps_ada, eps_src, noise = (t.contiguous() for t in (x_t, eps_ada, eps_src, noise))
    a_t, b_t = _per_sample(a_t), _per_sample(b_t)
    weights, has_weights = _weight_args(mse_weight, hf_mse_weight, a_t)
    n, h, w, num_blocks, numel, numel_hf = _geometry(x_t)
    acc = accumulation_dtype(x_t.dtype)
    bn, num_tiles, block_k = _loss_tiling(n)
    programs = reduction_programs(triton.cdiv(num_blocks, block_k), x_t.device)
    gram_partials = x_t.new_empty((programs, 4, n, n), dtype=acc)
    sq_partials = x_t.new_empty((programs, 2, num_tiles), dtype=acc)
    wrap_triton(_ddpm_pa_loss_forward_kernel)[(programs, num_tiles * num_tiles)](
        x_t,
        eps_ada,
        eps_src,
        noise,
        a_t,
        b_t,
        *weights,
        gram_partials,
        sq_partials,
        n,
        h,
        w,
        num_blocks,
        NUM_TILES=num_tiles,
        BLOCK_N=bn,
        BLOCK_K=block_k,
        **has_weights,
        ACC=tl_dtype(acc),
        num_warps=GRAM_WARPS,
        num_stages=GRAM_STAGES,
    )
    grams = sum_partials(gram_partials)
    sq = sum_partials(sq_partials)
    terms = [x_t.new_empty(()) for _ in range(NUM_LOSS_TERMS)]
    wrap_triton(_ddpm_pa_loss_terms_kernel)[(1,)](
        grams,
        sq,
        _loss_params(tau, w_pair, w_hf_pair, w_hf_mse, acc, x_t.device),
        *terms,
        n,
        numel,
        numel_hf,
        NUM_TILES=num_tiles,
        REDUCTION=REDUCTION_CODES[reduction],
        B=whole_batch_block(n),
        ACC=tl_dtype(acc),
        num_warps=whole_batch_warps(n),
    )
    return (*terms, grams)


@triton_op("ddpm_pa_fast_triton::ddpm_pa_loss_backward", mutates_args={})
def ddpm_pa_loss_backward_triton(
    grad_terms: torch.Tensor,
    grams: torch.Tensor,
    x_t: torch.Tensor,
    eps_ada: torch.Tensor,
    noise: torch.Tensor,
    a_t: torch.Tensor,
    b_t: torch.Tensor,
    mse_weight: torch.Tensor | None,
    hf_mse_weight: torch.Tensor | None,
    w_pair: float,
    w_hf_pair: float,
    w_hf_mse: float,
    tau: float,
    reduction: str,
) -> torch.Tensor:
    x_t, eps_ada, noise = (t.contiguous() for t in (x_t, eps_ada, noise))
    a_t, b_t = _per_sample(a_t), _per_sample(b_t)
    weights, has_weights = _weight_args(mse_weight, hf_mse_weight, a_t)
    n, h, w, num_blocks, numel, numel_hf = _geometry(x_t)
    acc = grams.dtype
    m = grams.new_empty((2, n, n))
    coefs = grams.new_empty((2,))
    wrap_triton(_ddpm_pa_loss_grad_matrices_kernel)[(1,)](
        grad_terms.to(acc).contiguous(),
        grams.contiguous(),
        _loss_params(tau, w_pair, w_hf_pair, w_hf_mse, acc, x_t.device),
        m,
        coefs,
        n,
        numel,
        numel_hf,
        REDUCTION=REDUCTION_CODES[reduction],
        B=whole_batch_block(n),
        ACC=tl_dtype(acc),
        num_warps=whole_batch_warps(n),
    )
    grad = torch.empty_like(eps_ada)
    bn, num_tiles, block_k = _loss_tiling(n)
    wrap_triton(_ddpm_pa_loss_backward_kernel)[(triton.cdiv(num_blocks, block_k), num_tiles)](
        m,
        coefs,
        x_t,
        eps_ada,
        noise,
        a_t,
        b_t,
        *weights,
        grad,
        n,
        h,
        w,
        num_blocks,
        NUM_TILES=num_tiles,
        BLOCK_N=bn,
        BLOCK_K=block_k,
        **has_weights,
        ACC=tl_dtype(acc),
        num_warps=GRAM_WARPS,
        num_stages=GRAM_STAGES,
    )
    return grad


@ddpm_pa_loss_forward_triton.register_fake
def _(
    x_t, eps_ada, eps_src, noise, a_t, b_t, mse_weight, hf_mse_weight, w_pair, w_hf_pair, w_hf_mse, tau,
    reduction,
):
    torch._check(x_t.dim() == 4, lambda: f"x_t must be (N, C, H, W), got {tuple(x_t.shape)}")
    n = x_t.shape[0]
    terms = [x_t.new_empty(()) for _ in range(NUM_LOSS_TERMS)]
    return (*terms, x_t.new_empty((4, n, n), dtype=accumulation_dtype(x_t.dtype)))


@ddpm_pa_loss_backward_triton.register_fake
def _(
    grad_terms, grams, x_t, eps_ada, noise, a_t, b_t, mse_weight, hf_mse_weight, w_pair, w_hf_pair, w_hf_mse,
    tau, reduction,
):
    torch._check(grad_terms.shape == (NUM_LOSS_TERMS,), lambda: "grad_terms must have shape (5,)")
    return torch.empty_like(eps_ada, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x_t, eps_ada, _, noise, a_t, b_t, mse_weight, hf_mse_weight, *scalar_inputs = inputs
    # An absent weight is saved as None, and the backward compiles the unweighted kernel for it too.
    ctx.save_for_backward(output[-1], x_t, eps_ada, noise, a_t, b_t, mse_weight, hf_mse_weight)
    ctx.scalars = tuple(scalar_inputs)  # w_pair, w_hf_pair, w_hf_mse, tau, reduction


def _backward(ctx, *grads):
    grams, x_t, eps_ada, noise, a_t, b_t, mse_weight, hf_mse_weight = ctx.saved_tensors
    with annotate("ddpm_pa_loss_backward[triton]"):
        # Missing upstream gradients are zeros; stacking them on the device keeps the host out of it.
        grad_terms = torch.stack(
            [grams.new_zeros(()) if g is None else g.to(grams.dtype) for g in grads[:NUM_LOSS_TERMS]]
        )
        grad_eps_ada = torch.ops.ddpm_pa_fast_triton.ddpm_pa_loss_backward(
            grad_terms, grams, x_t, eps_ada, noise, a_t, b_t, mse_weight, hf_mse_weight, *ctx.scalars
        )
    # No gradient for the constants: x_t, eps_src, noise, the coefficients and weights, the scalars.
    return None, grad_eps_ada, *(None,) * 11


ddpm_pa_loss_forward_triton.register_autograd(_backward, setup_context=_setup_context)
# Double backward (create_graph=True) raises when a second backward reaches the backward op: see
# pairwise_kl.double_backward_unsupported for why there and not in the first backward.
ddpm_pa_loss_backward_triton.register_autograd(double_backward_unsupported("ddpm_pa_loss"))
