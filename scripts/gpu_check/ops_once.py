"""Every op of one backend, forward and backward, once per edge shape: the workload that
scripts/gpu_check.sh runs under compute-sanitizer (memcheck, racecheck), and on the CPU in a rehearsal.

    python3 scripts/gpu_check/ops_once.py --device cuda --backend cuda
    python3 scripts/gpu_check/ops_once.py --device cpu --backend cpu        # the rehearsal's stand-in

The shapes are the kernels' edges: the smallest batch (N = 2), N above one 32-sample tile, a large N
(the Triton kernels' limit, kernels/_common.MAX_BATCH; 256 for the C++ kernels), 1x1 and odd-sized
images (the dropped last row and column), one channel, a non-contiguous and a channels_last input,
every DWT mode, a missing detail band, and each dtype.
Each result is also compared with the float64 reference (loose tolerances: this is a memory-safety
workload, the tests check the numbers), so a kernel that runs clean but writes garbage still fails.
Prints one line per call and exits 1 if any call raised or disagreed.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys
import time
import traceback

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import ddpm_pa_fast as D  # noqa: E402
from ddpm_pa_fast import reference as R  # noqa: E402
from ddpm_pa_fast.testing import ddpm_like_batch, relayout  # noqa: E402

# (rtol, atol) against the float64 reference, relative to the largest expected magnitude.
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-3, torch.float16: 3e-2, torch.bfloat16: 8e-2}


def _randn(shape, seed, dtype, device):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _check(actual, expected, dtype, what):
    actual = [a.detach().double().cpu() for a in actual]
    expected = [e.detach().double().cpu() for e in expected]
    for a, e in zip(actual, expected, strict=True):
        if not torch.isfinite(a).all():
            raise AssertionError(f"{what}: non-finite values")
        scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
        tol = TOLERANCE[dtype]
        torch.testing.assert_close(a, e, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def _flat(coefficients):
    yl, yh = coefficients
    return [yl, *yh]


def _grad_of(fn, leaves, upstream):
    """Outputs of fn(*leaves) and the gradients of sum(outputs * upstream) with respect to leaves."""
    outs = fn(*leaves)
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    total = sum((o * u.to(device=o.device, dtype=o.dtype)).sum() for o, u in zip(outs, upstream, strict=True))
    grads = torch.autograd.grad(total, leaves, allow_unused=True, materialize_grads=True)
    return outs, list(grads)


def _idwt(impl, missing, levels, yl, *given):
    """impl(yl, yh) with the bands listed in missing passed as None."""
    it = iter(given)
    return impl(yl, [None if j in missing else next(it) for j in range(levels)])


class _Kl:
    """a -> impl(src, a, 0.7, reduction)."""

    def __init__(self, impl, src, reduction):
        self.impl, self.src, self.reduction = impl, src, reduction

    def __call__(self, ada):
        return self.impl(self.src, ada, 0.7, self.reduction)


def _loss(impl, fixed, coefs, eps_ada):
    x_t, eps_src, noise = fixed
    return list(impl(x_t, eps_ada, eps_src, noise, *coefs, 4.0, 3.0, 2.0, 0.7, "mean"))


def _large_batch(backend: str) -> int:
    """The largest N to call: the Triton kernels' limit, or 256 for the C++ kernels (which have none)."""
    if backend != "triton":
        return 256
    from ddpm_pa_fast import triton_ops

    return triton_ops.max_batch()


def cases(device, backend, dtypes):
    """(name, ours, reference, inputs, dtype): ours(*inputs) on `backend`, reference on float64 copies."""
    ours = functools.partial
    out = []
    large_n = _large_batch(backend)
    for dtype in dtypes:
        tag = str(dtype).removeprefix("torch.")
        hf = functools.partial(D.ddpm_pa_high_frequency, backend=backend)
        for shape in [(2, 3, 2, 2), (2, 1, 17, 33), (3, 2, 9, 7)]:
            for layout in ["contiguous", "channels_last", "strided"]:
                x = relayout(_randn(shape, 1, dtype, device), layout)
                out.append((f"ddpm_pa_high_frequency {tag} {shape} {layout}", hf, R.ddpm_pa_high_frequency,
                            [x], dtype))
        for shape, levels in [((1, 1, 1, 1), 1), ((2, 3, 9, 7), 3), ((1, 2, 16, 11), 2)]:
            for mode in ["zero", "symmetric", "periodization"]:
                x = _randn(shape, 2, dtype, device)
                out.append((
                    f"haar_dwt2d {tag} {shape} J{levels} {mode}",
                    lambda t, levels=levels, mode=mode: _flat(D.haar_dwt2d(t, levels, mode, backend=backend)),
                    lambda t, levels=levels, mode=mode: _flat(R.haar_dwt2d(t, levels, mode)),
                    [x], dtype,
                ))
        for shape, levels, missing in [((2, 3, 8, 8), 1, ()), ((3, 1, 9, 7), 2, ()),
                                       ((2, 2, 17, 33), 3, (0,))]:
            yl, yh = R.haar_dwt2d(_randn(shape, 3, torch.float64, "cpu"), levels)
            given = [b.to(device=device, dtype=dtype) for j, b in enumerate(yh) if j not in missing]
            out.append((
                f"haar_idwt2d {tag} {shape} J{levels} missing={list(missing)}",
                ours(_idwt, functools.partial(D.haar_idwt2d, backend=backend), missing, levels),
                ours(_idwt, R.haar_idwt2d, missing, levels),
                [yl.to(device=device, dtype=dtype), *given], dtype,
            ))
        large = dtype == torch.float32  # one dtype at the largest N keeps the sanitizer runs short
        kl_shapes = [(2, 5), (40, 3, 5), (3, 1, 4, 4)] + ([(large_n, 2)] if large else [])
        for shape in kl_shapes:
            g = torch.Generator().manual_seed(4)
            src = torch.randn(shape, generator=g, dtype=torch.float64)
            ada = src + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
            src, ada = src.to(dtype), ada.to(device=device, dtype=dtype)
            for reduction in ["mean", "none"]:
                out.append((
                    f"pairwise_similarity_kl {tag} {shape} {reduction}",
                    _Kl(functools.partial(D.pairwise_similarity_kl, backend=backend), src.to(device),
                        reduction),
                    _Kl(R.pairwise_similarity_kl, src.double(), reduction),
                    [ada], dtype,
                ))
        for shape in [(2, 1, 2, 2), (3, 3, 17, 33), (40, 1, 3, 5), (5, 4, 9, 7)] + (
            [(large_n, 1, 2, 3)] if large else []
        ):
            x_t, eps_ada, eps_src, noise, a_t, b_t = ddpm_like_batch(shape, 5)
            fixed = [t.to(dtype) for t in (x_t, eps_src, noise)]
            out.append((
                f"ddpm_pa_loss {tag} {shape}",
                ours(_loss, functools.partial(D.ddpm_pa_loss, backend=backend), [t.to(device) for t in fixed],
                     [a_t.to(device), b_t.to(device)]),
                ours(_loss, R.ddpm_pa_loss, [t.double() for t in fixed], [a_t, b_t]),
                [eps_ada.to(device=device, dtype=dtype)], dtype,
            ))
    return out


def run_case(ours, reference, inputs, dtype, what):
    """ours forward and backward (random upstream gradient) against the float64 reference on the CPU."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    ref_leaves = [t.detach().double().cpu().requires_grad_() for t in inputs]
    ref_outs = reference(*ref_leaves)
    ref_outs = list(ref_outs) if isinstance(ref_outs, (list, tuple)) else [ref_outs]
    upstream = [_randn(o.shape, 7 + k, dtype, "cpu") for k, o in enumerate(ref_outs)]
    _, ref_grads = _grad_of(reference, ref_leaves, upstream)
    outs, grads = _grad_of(ours, leaves, upstream)
    if leaves[0].device.type == "cuda":
        torch.cuda.synchronize()
    _check(outs, ref_outs, dtype, f"{what} forward")
    _check(grads, ref_grads, dtype, f"{what} backward")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--backend", default="cuda", choices=["cuda", "triton", "cpu", "torch"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--only", help="run only the calls whose name contains this")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible to torch", file=sys.stderr)
        return 2
    dtypes = [getattr(torch, d) for d in args.dtypes]
    if args.backend == "triton":
        dtypes = [d for d in dtypes if d != torch.float16] or dtypes  # as tests/test_triton.py
    print(f"ops_once: backend {args.backend} on {args.device}, torch {torch.__version__}, "
          f"available backends: {D.available_backends(args.device)}", flush=True)
    failures, count, start = [], 0, time.perf_counter()
    for name, ours, reference, inputs, dtype in cases(args.device, args.backend, dtypes):
        if args.only and args.only not in name:
            continue
        count += 1
        try:
            run_case(ours, reference, inputs, dtype, name)
            print(f"ok    {name}", flush=True)
        except Exception as error:  # every call runs; the exit code says whether any failed
            failures.append(name)
            print(f"FAIL  {name}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                  flush=True)
            traceback.print_exc(limit=3)
    if args.device == "cuda":
        torch.cuda.synchronize()
    print(f"ops_once: {count - len(failures)} passed, {len(failures)} failed "
          f"({time.perf_counter() - start:.1f} s)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
