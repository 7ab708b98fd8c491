"""What every Triton kernel module shares: dtypes, launch sizes, and the deterministic partial-sum kernel.

Launch-size reasoning (Ampere A100 / Hopper H100, H200): every op here is memory-bound (a few flops per
byte; the Gram products are N x N with N ~ 2..64, far below tensor-core saturation), so the goal is
enough bytes in flight per SM, not math throughput:
- elementwise kernels (Haar maps): 1024 elements per program, 4 warps = 8 elements per thread; the
  contiguous side of each kernel vectorises, and the stride-2 taps of the other side together cover
  every 32-byte sector they touch, so no DRAM bytes are wasted. Up to 16 such programs fit per SM,
  enough loads in flight to saturate HBM on both A100 and H100.
- Gram kernels: persistent grid of at most 4 programs per SM (what the fused loss's registers allow at
  32-sample tiles: ~128 registers x 128 threads each, of 64K per SM), each walking a strided range of column
  blocks and keeping its N x N partial Grams in registers; 4 warps, num_stages=2 so the next block's
  loads overlap the current block's dot (Hopper gains little from deeper pipelines at these tile sizes).
Under the interpreter (TRITON_INTERPRET=1, CPU) the grid is capped low instead: each program is a
Python-level loop, so fewer, larger programs run faster.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

ELEMENTWISE_BLOCK = 1024
ELEMENTWISE_WARPS = 4
GRAM_WARPS = 4
GRAM_STAGES = 2
# Samples per Gram tile: tl.dot needs every dimension >= 16; at most 32 rows keep the fused loss's live
# tiles within 255 registers per thread (see kernels/ddpm_pa_loss.py). Larger N tiles the samples.
MIN_BLOCK_N = 16
MAX_BLOCK_N = 32
# The one-program kernels hold whole N x N matrices in registers, so N is bounded by what one program
# can hold. At N = 256 the first GPU run (H200, 2026-11-30) refused the pairwise KL kernel: 256 KiB of
# shared memory staged for one 256 x 256 float32 matrix, above the 227 KiB a Hopper block may have;
# from 128 x 128 on the registers spill kilobytes (whole_batch_warps). 64 is the largest N whose
# kernels compile for sm_80 and sm_90 within shared memory and without spilling
# (tests/test_triton.py::test_kernels_compile_for_gpu_targets compiles them at this N). Larger N
# would tile the N x N work across programs; the CUDA and CPU kernels have no such limit.
MAX_BATCH = 64
PROGRAMS_PER_SM = 4
INTERPRETER_MAX_PROGRAMS = 4

# Reductions of the (N, N - 1) KL terms, numbered as ddpm_pa::Reduction in csrc/ddpm_pa_math.h.
REDUCTION_CODES = {"mean": 0, "batchmean": 1, "sum": 2, "none": 3}
DWT_MODE_ZERO = "zero"


def elementwise_grid(numel: int) -> tuple[int]:
    """The launch grid of an elementwise kernel: one program per ELEMENTWISE_BLOCK elements."""
    return (triton.cdiv(numel, ELEMENTWISE_BLOCK),)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16/float32 inputs, float64 for float64 (as the C++ kernels)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_dtype(dtype: torch.dtype):
    return {torch.float64: tl.float64, torch.float32: tl.float32}[dtype]


def block_n(n: int) -> int:
    """Rows of a Gram tile: N rounded up to a power of two, within [MIN_BLOCK_N, MAX_BLOCK_N]."""
    return min(max(triton.next_power_of_2(n), MIN_BLOCK_N), MAX_BLOCK_N)


def whole_batch_block(n: int) -> int:
    """The (power-of-two) side of the tile that holds a whole N x N matrix in one program."""
    return max(triton.next_power_of_2(n), MIN_BLOCK_N)


def whole_batch_warps(n: int) -> int:
    """Warps of a one-program kernel holding whole N x N matrices: one per 256 values of a matrix, 4 to
    32. Compiled for sm_80 and sm_90 (tests/test_triton.py::test_kernels_compile_for_gpu_targets), at
    4 warps a 64 x 64 tile spilled 16-1312 bytes per thread, at 16 at most 48. From 128 x 128 on these
    kernels spill kilobytes even so: N > 64 wants the N x N work tiled across programs."""
    b = whole_batch_block(n)
    return min(32, max(4, b * b // 256))


def check_batch(n: int, name: str) -> None:
    if n > MAX_BATCH:
        raise ValueError(
            f"{name} has N={n} samples; the Triton kernels support N <= {MAX_BATCH} "
            "(use backend='torch' or 'cuda' for larger batches)"
        )


def reduction_programs(num_blocks: int, device: torch.device) -> int:
    """How many programs share a reduction over num_blocks column blocks (the persistent grid)."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        cap = PROGRAMS_PER_SM * sms
    else:
        cap = INTERPRETER_MAX_PROGRAMS
    return max(1, min(num_blocks, cap))


@triton.jit
def _sum_partials_kernel(
    partials_ptr,  # (P, L) float32/float64: one row of partial sums per program of a reduction
    out_ptr,  # (L,) float32/float64
    num_partials,  # P
    length,  # L
    BLOCK: tl.constexpr,
):
    # Adds the P rows in a fixed order (p = 0, 1, ...): the result does not depend on which program
    # finished first, so the Grams, and every loss built on them, are bitwise reproducible run to run.
    # This replaces atomics, whose order (and so rounding) varies between runs.
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < length
    acc = tl.load(partials_ptr + offs, mask=mask, other=0.0)
    for p in range(1, num_partials):
        acc += tl.load(partials_ptr + p * length + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc, mask=mask)


def wrap_triton(kernel):
    """torch.library.wrap_triton(kernel): the launch as a node that torch.compile and export can trace.

    Under the interpreter (TRITON_INTERPRET=1), where @triton.jit makes an InterpretedFunction, the kernel
    itself, launched eagerly: what torch 2.13's wrap_triton returns there, whereas torch 2.11's raises
    "wrap_triton only works on functions annotated with triton.jit or triton.autotune".
    """
    if isinstance(kernel, InterpretedFunction):
        return kernel
    return torch.library.wrap_triton(kernel)


def sum_partials(partials: torch.Tensor) -> torch.Tensor:
    """(P, ...) -> (...): the fixed-order sum over the first dimension."""
    out = partials.new_empty(partials.shape[1:])
    length = out.numel()
    block = 256
    wrap_triton(_sum_partials_kernel)[(triton.cdiv(length, block),)](
        partials, out, partials.shape[0], length, BLOCK=block
    )
    return out


def scalars(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Float parameters as a small tensor in the accumulation dtype, filled on the device.

    Triton passes Python floats as float32; float64 kernels (used by the float64 gradient checks) need
    them in float64, so the one-program kernels read them from memory. Filling on the device (rather
    than copying a host tensor, which synchronises with pageable memory) keeps the host out of the
    forward and backward, and the fills trace as constants under torch.compile.
    """
    return torch.stack([torch.full((), float(v), dtype=dtype, device=device) for v in values])
