"""Pairwise similarity KL (CDC / DDPM-PA) in Triton: Gram matrices, the KL from them, and its gradient.

Forward, in three launches: (1) a persistent grid of programs over column blocks of the flattened
(N, D) features accumulates partial Grams of src and ada with tl.dot, (2) the fixed-order partial sum
(_common._sum_partials_kernel) makes them deterministic, (3) one program turns the two N x N Grams into
the KL. Backward: one program forms the N x N matrix M with dL/dF_ada = M @ F_ada, then a grid over
column blocks applies it: one read of ada, one write of its gradient.

The N x N maths (_similarity_*) is csrc/ddpm_pa_math.h's (similarity_row_logsumexp, similarity_kl_row,
similarity_kl_grad_matrix) written on whole register tiles; ddpm_pa_loss.py uses the same functions.
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

# Clamp on |F_i| |F_j|, as reference.SIMILARITY_EPS and ddpm_pa::kSimilarityEps.
SIMILARITY_EPS = tl.constexpr(1e-8)
# Columns per Gram block: 64 x 32 rows x 4 bytes = 8 KiB per operand tile.
GRAM_BLOCK_D = 64


@triton.jit
def _load_square(ptr, n, B: tl.constexpr, ACC: tl.constexpr):
    """The (n, n) row-major matrix at ptr as a (B, B) tile, zero-padded."""
    rows = tl.arange(0, B)
    mask = (rows[:, None] < n) & (rows[None, :] < n)
    return tl.load(ptr + rows[:, None] * n + rows[None, :], mask=mask, other=0.0).to(ACC)


@triton.jit
def _reduction_scale(n, REDUCTION: tl.constexpr, ACC: tl.constexpr):
    """ddpm_pa::reduction_scale: the weight of each row's KL in the reduced loss."""
    nf = tl.full((), 1.0, ACC) * n
    if REDUCTION == 0:
        scale = 1.0 / (nf * (nf - 1.0))
    elif REDUCTION == 1:
        scale = 1.0 / nf
    else:
        scale = tl.full((), 1.0, ACC)
    return scale


@triton.jit
def _similarity(gram, n, B: tl.constexpr):
    """Cosine similarities S = G / max(|F_i| |F_j|, eps), their denominators, and the j != i pair mask."""
    rows = tl.arange(0, B)
    eye = rows[:, None] == rows[None, :]
    diag_by_row = tl.sum(tl.where(eye, gram, 0.0), axis=1)
    diag_by_col = tl.sum(tl.where(eye, gram, 0.0), axis=0)
    norm_product = (
        tl.sqrt(tl.maximum(diag_by_row, 0.0))[:, None] * tl.sqrt(tl.maximum(diag_by_col, 0.0))[None, :]
    )
    denominator = tl.maximum(norm_product, SIMILARITY_EPS)
    pairs = (~eye) & (rows[:, None] < n) & (rows[None, :] < n)
    return gram / denominator, denominator, pairs


@triton.jit
def _log_softmax_rows(s, pairs, inv_tau):
    """log softmax over j != i of S_ij / tau (similarity_row_logsumexp); entries off the pairs are 0."""
    z = tl.where(pairs, s * inv_tau, float("-inf"))
    row_max = tl.max(z, axis=1)
    # Padded rows have no pairs: give them a finite normaliser so no -inf - -inf is ever formed.
    has_pairs = row_max != float("-inf")
    row_max = tl.where(has_pairs, row_max, 0.0)
    row_sum = tl.sum(tl.exp(z - row_max[:, None]), axis=1)
    lse = row_max + tl.log(tl.where(has_pairs, row_sum, 1.0))
    return tl.where(pairs, z - lse[:, None], 0.0)


@triton.jit
def _similarity_kl_rows(gram_src, gram_ada, n, inv_tau, B: tl.constexpr):
    """KL_i = sum_{j != i} p_ij (log p_ij - log q_ij) (similarity_kl_row); (B,), zero past n."""
    s_src, _, pairs = _similarity(gram_src, n, B)
    s_ada, _, _ = _similarity(gram_ada, n, B)
    log_p = _log_softmax_rows(s_src, pairs, inv_tau)
    log_q = _log_softmax_rows(s_ada, pairs, inv_tau)
    return tl.sum(tl.where(pairs, tl.exp(log_p) * (log_p - log_q), 0.0), axis=1)


@triton.jit
def _similarity_kl_grad_matrix(gram_src, gram_ada, row_weight, n, inv_tau, B: tl.constexpr):
    """M with d(sum_i row_weight_i KL_i)/dF_ada = M @ F_ada (similarity_kl_grad_matrix): (B, B) tile.

    dS_kj = w_k (q_kj - p_kj) / tau; M_kj = (dS_kj + dS_jk) / D_kj off the diagonal and
    M_kk = -sum_{j: |F_k||F_j| > eps} (dS_kj + dS_jk) S_kj / |F_k|^2.
    """
    rows = tl.arange(0, B)
    s_src, _, pairs = _similarity(gram_src, n, B)
    s_ada, denominator, _ = _similarity(gram_ada, n, B)
    p = tl.where(pairs, tl.exp(_log_softmax_rows(s_src, pairs, inv_tau)), 0.0)
    q = tl.where(pairs, tl.exp(_log_softmax_rows(s_ada, pairs, inv_tau)), 0.0)
    ds = row_weight[:, None] * (q - p) * inv_tau
    ds_sym = ds + tl.trans(ds)
    eye = rows[:, None] == rows[None, :]
    norm_sq = tl.sum(tl.where(eye, gram_ada, 0.0), axis=1)
    unclamped = pairs & (denominator > SIMILARITY_EPS)
    diagonal_sum = tl.sum(tl.where(unclamped, ds_sym * s_ada, 0.0), axis=1)
    # A zero feature row has no unclamped pair (its sum is 0): keep its diagonal 0, not 0 / 0.
    diagonal = tl.where(norm_sq > 0.0, -diagonal_sum / tl.where(norm_sq > 0.0, norm_sq, 1.0), 0.0)
    return tl.where(pairs, ds_sym / denominator, tl.where(eye, diagonal[:, None], 0.0))


@triton.jit
def _gram_partials_kernel(
    src_ptr,  # (N, D) contiguous
    ada_ptr,  # (N, D) contiguous, dtype of src
    partials_ptr,  # (2, P, N, N) accumulation dtype: per program, [G(src), G(ada)] over its columns
    n,  # N
    d,  # D
    NUM_TILES: tl.constexpr,  # T = ceil(N / BLOCK_N); the grid's axis 1 is T * T tile pairs
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,
):
    pid_p = tl.program_id(0)
    num_programs = tl.num_programs(0)
    pair = tl.program_id(1)
    rows_i = (pair // NUM_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_j = (pair % NUM_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_off_i = rows_i.to(tl.int64)[:, None] * d
    row_off_j = rows_j.to(tl.int64)[:, None] * d
    acc_src = tl.zeros((BLOCK_N, BLOCK_N), ACC)
    acc_ada = tl.zeros((BLOCK_N, BLOCK_N), ACC)
    for block in range(pid_p, tl.cdiv(d, BLOCK_D), num_programs):
        cols = block * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
        mask_i = (rows_i[:, None] < n) & (cols < d)
        # Upcast before the dot: exact products for the similarities, and bf16 tl.dot is wrong in the
        # interpreter (triton-lang/triton issue 11584).
        src_i = tl.load(src_ptr + row_off_i + cols, mask=mask_i, other=0.0).to(ACC)
        ada_i = tl.load(ada_ptr + row_off_i + cols, mask=mask_i, other=0.0).to(ACC)
        if NUM_TILES == 1:
            src_j = src_i
            ada_j = ada_i
        else:
            mask_j = (rows_j[:, None] < n) & (cols < d)
            src_j = tl.load(src_ptr + row_off_j + cols, mask=mask_j, other=0.0).to(ACC)
            ada_j = tl.load(ada_ptr + row_off_j + cols, mask=mask_j, other=0.0).to(ACC)
        acc_src += tl.dot(src_i, tl.trans(src_j), input_precision="ieee", out_dtype=ACC)
        acc_ada += tl.dot(ada_i, tl.trans(ada_j), input_precision="ieee", out_dtype=ACC)
    out = partials_ptr + pid_p.to(tl.int64) * n * n + rows_i[:, None] * n + rows_j[None, :]
    mask = (rows_i[:, None] < n) & (rows_j[None, :] < n)
    tl.store(out, acc_src, mask=mask)
    tl.store(out + num_programs * n * n, acc_ada, mask=mask)


@triton.jit
def _pairwise_kl_loss_kernel(
    gram_src_ptr,  # (N, N) accumulation dtype
    gram_ada_ptr,  # (N, N) accumulation dtype
    params_ptr,  # (1,) accumulation dtype: [1 / tau]
    loss_ptr,  # () or, for reduction "none", (N,); dtype of the features
    n,  # N
    REDUCTION: tl.constexpr,  # REDUCTION_CODES
    B: tl.constexpr,  # power of two >= N
    ACC: tl.constexpr,
):
    inv_tau = tl.load(params_ptr)
    gram_src = _load_square(gram_src_ptr, n, B, ACC)
    kl = _similarity_kl_rows(gram_src, _load_square(gram_ada_ptr, n, B, ACC), n, inv_tau, B)
    rows = tl.arange(0, B)
    if REDUCTION == 3:
        tl.store(loss_ptr + rows, kl.to(loss_ptr.dtype.element_ty), mask=rows < n)
    else:
        tl.store(
            loss_ptr, (tl.sum(kl, axis=0) * _reduction_scale(n, REDUCTION, ACC)).to(loss_ptr.dtype.element_ty)
        )


@triton.jit
def _pairwise_kl_grad_matrix_kernel(
    grad_loss_ptr,  # () or, for reduction "none", (N,): upstream gradient of the loss
    gram_src_ptr,  # (N, N) accumulation dtype
    gram_ada_ptr,  # (N, N) accumulation dtype
    params_ptr,  # (1,) accumulation dtype: [1 / tau]
    m_ptr,  # (N, N) accumulation dtype: out, dL/dF_ada = M @ F_ada
    n,  # N
    REDUCTION: tl.constexpr,
    B: tl.constexpr,
    ACC: tl.constexpr,
):
    inv_tau = tl.load(params_ptr)
    rows = tl.arange(0, B)
    if REDUCTION == 3:
        row_weight = tl.load(grad_loss_ptr + rows, mask=rows < n, other=0.0).to(ACC)
    else:
        row_weight = tl.zeros((B,), ACC) + tl.load(grad_loss_ptr).to(ACC) * _reduction_scale(
            n, REDUCTION, ACC
        )
    gram_src = _load_square(gram_src_ptr, n, B, ACC)
    gram_ada = _load_square(gram_ada_ptr, n, B, ACC)
    m = _similarity_kl_grad_matrix(gram_src, gram_ada, row_weight, n, inv_tau, B)
    tl.store(m_ptr + rows[:, None] * n + rows[None, :], m, mask=(rows[:, None] < n) & (rows[None, :] < n))


@triton.jit
def _pairwise_kl_backward_kernel(
    m_ptr,  # (N, N) accumulation dtype
    ada_ptr,  # (N, D) contiguous
    grad_ada_ptr,  # (N, D) contiguous, dtype of ada
    n,  # N
    d,  # D
    NUM_TILES: tl.constexpr,  # T = ceil(N / BLOCK_N); the grid's axis 1 walks the T row tiles
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,
):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    rows_i = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N, BLOCK_D), ACC)
    for tile_j in range(NUM_TILES):
        rows_j = tile_j * BLOCK_N + tl.arange(0, BLOCK_N)
        m = tl.load(
            m_ptr + rows_i[:, None] * n + rows_j[None, :],
            mask=(rows_i[:, None] < n) & (rows_j[None, :] < n),
            other=0.0,
        )
        f = tl.load(
            ada_ptr + rows_j.to(tl.int64)[:, None] * d + cols,
            mask=(rows_j[:, None] < n) & (cols < d),
            other=0.0,
        ).to(ACC)
        acc += tl.dot(m, f, input_precision="ieee", out_dtype=ACC)
    tl.store(
        grad_ada_ptr + rows_i.to(tl.int64)[:, None] * d + cols,
        acc.to(grad_ada_ptr.dtype.element_ty),
        mask=(rows_i[:, None] < n) & (cols < d),
    )


@triton_op("ddpm_pa_fast_triton::pairwise_similarity_kl", mutates_args={})
def pairwise_similarity_kl_forward_triton(
    src: torch.Tensor, ada: torch.Tensor, tau: float, reduction: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = src.shape[0]
    check_batch(n, "src")
    src = src.reshape(n, -1).contiguous()
    ada = ada.reshape(n, -1).contiguous()
    d = src.shape[1]
    acc = accumulation_dtype(src.dtype)
    bn = block_n(n)
    num_tiles = triton.cdiv(n, bn)
    programs = reduction_programs(triton.cdiv(d, GRAM_BLOCK_D), src.device)
    partials = src.new_empty((2, programs, n, n), dtype=acc)
    wrap_triton(_gram_partials_kernel)[(programs, num_tiles * num_tiles)](
        src,
        ada,
        partials,
        n,
        d,
        NUM_TILES=num_tiles,
        BLOCK_N=bn,
        BLOCK_D=GRAM_BLOCK_D,
        ACC=tl_dtype(acc),
        num_warps=GRAM_WARPS,
        num_stages=GRAM_STAGES,
    )
    gram_src, gram_ada = sum_partials(partials[0]), sum_partials(partials[1])
    loss = src.new_empty((n,) if reduction == "none" else ())
    wrap_triton(_pairwise_kl_loss_kernel)[(1,)](
        gram_src,
        gram_ada,
        scalars([1.0 / tau], acc, src.device),
        loss,
        n,
        REDUCTION=REDUCTION_CODES[reduction],
        B=whole_batch_block(n),
        ACC=tl_dtype(acc),
        num_warps=whole_batch_warps(n),
    )
    return loss, gram_src, gram_ada


@triton_op("ddpm_pa_fast_triton::pairwise_similarity_kl_backward", mutates_args={})
def pairwise_similarity_kl_backward_triton(
    grad_loss: torch.Tensor,
    ada: torch.Tensor,
    gram_src: torch.Tensor,
    gram_ada: torch.Tensor,
    tau: float,
    reduction: str,
) -> torch.Tensor:
    n = ada.shape[0]
    flat = ada.reshape(n, -1).contiguous()
    d = flat.shape[1]
    acc = gram_ada.dtype
    m = gram_ada.new_empty((n, n))
    wrap_triton(_pairwise_kl_grad_matrix_kernel)[(1,)](
        grad_loss.contiguous(),
        gram_src.contiguous(),
        gram_ada.contiguous(),
        scalars([1.0 / tau], acc, ada.device),
        m,
        n,
        REDUCTION=REDUCTION_CODES[reduction],
        B=whole_batch_block(n),
        ACC=tl_dtype(acc),
        num_warps=whole_batch_warps(n),
    )
    grad_ada = torch.empty_like(flat)
    bn = block_n(n)
    num_tiles = triton.cdiv(n, bn)
    wrap_triton(_pairwise_kl_backward_kernel)[(triton.cdiv(d, GRAM_BLOCK_D), num_tiles)](
        m,
        flat,
        grad_ada,
        n,
        d,
        NUM_TILES=num_tiles,
        BLOCK_N=bn,
        BLOCK_D=GRAM_BLOCK_D,
        ACC=tl_dtype(acc),
        num_warps=GRAM_WARPS,
        num_stages=GRAM_STAGES,
    )
    return grad_ada.reshape(ada.shape)


@pairwise_similarity_kl_forward_triton.register_fake
def _(src, ada, tau, reduction):
    n = src.shape[0]
    torch._check(ada.shape == src.shape, lambda: "ada must have the shape of src")
    acc = accumulation_dtype(src.dtype)
    loss = src.new_empty((n,) if reduction == "none" else ())
    return loss, src.new_empty((n, n), dtype=acc), src.new_empty((n, n), dtype=acc)


@pairwise_similarity_kl_backward_triton.register_fake
def _(grad_loss, ada, gram_src, gram_ada, tau, reduction):
    return torch.empty_like(ada, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    _, ada, tau, reduction = inputs
    _, gram_src, gram_ada = output
    ctx.save_for_backward(ada, gram_src, gram_ada)
    ctx.tau, ctx.reduction = tau, reduction


def _backward(ctx, grad_loss, grad_gram_src, grad_gram_ada):
    # The Grams are statistics for this backward, not differentiable outputs: their gradients are ignored.
    ada, gram_src, gram_ada = ctx.saved_tensors
    with annotate("pairwise_similarity_kl_backward[triton]"):
        grad_ada = torch.ops.ddpm_pa_fast_triton.pairwise_similarity_kl_backward(
            grad_loss, ada, gram_src, gram_ada, ctx.tau, ctx.reduction
        )
    return None, grad_ada, None, None


def double_backward_unsupported(op: str):
    """The autograd formula of a nonlinear op's backward op (this one, ddpm_pa_loss's): it raises.

    There is no second derivative here. The error comes when a second backward reaches the backward
    op, not in the first backward whenever create_graph=True: create_graph=True is also used where no
    second derivative passes through the op (only the first-order gradient is read, or the second
    backward asks for inputs this gradient does not depend on), and there every value is right. Where
    the second derivative does pass through it, the engine runs this formula and the error stops it
    before any result lacks the term: never zeros, never a silently missing term.
    """

    def backward(ctx, *grads):
        raise RuntimeError(
            f"ddpm_pa_fast: double backward (create_graph=True) of {op} is not supported by backend "
            "'triton'; use backend='torch' (the reference) for higher-order gradients"
        )

    return backward


pairwise_similarity_kl_forward_triton.register_autograd(_backward, setup_context=_setup_context)
pairwise_similarity_kl_backward_triton.register_autograd(
    double_backward_unsupported("pairwise_similarity_kl")
)
