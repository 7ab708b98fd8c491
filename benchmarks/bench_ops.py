"""Benchmark of the five ops against the reference, torch.compile, the authors' code and the Haar peers.

    python -m benchmarks.bench_ops [--device cpu|cuda] [--ops OP ...] [--providers P ...] [--quick]
                                   [--sizes SIZE ...] [--few-repeats]
    python -m benchmarks.bench_ops --on-paper        # bytes per op and time at H100 / H200 bandwidth
    python -m benchmarks.bench_ops --overhead        # per-call host cost against native ops (tiny inputs)

Writes benchmarks/results/<device>.csv and <device>.md (with --quick: <device>_quick.*, not committed),
again after every case, so that a run stopped part-way leaves the cases it finished.
Each op and size runs every provider side by side: ours (backend "cpu" on CPU, "cuda" and "triton" on
CUDA, through the public API), the vectorised reference (backend "torch"), torch.compile of the
reference, the authors' formulation (benchmarks/authors.py) and, for the Haar maps, pytorch_wavelets,
ptwt and haar-pytorch (benchmarks/peers.py). Every provider is checked against the float64 reference
before it is timed; see benchmarks/harness.py for timing, memory and the memory-traffic bound.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import subprocess
import sys

import torch

import ddpm_pa_fast
from ddpm_pa_fast import reference
from ddpm_pa_fast.backends import BackendUnavailableError, resolve_backend
from ddpm_pa_fast.testing import ddpm_like_batch

from . import authors, overhead, peers, report
from .harness import (
    PASSES,
    BandwidthProbe,
    Case,
    Provider,
    TimingConfig,
    Traffic,
    measure,
    reference_expectation,
    write_csv,
)

OPS = ("ddpm_pa_loss", "ddpm_pa_high_frequency", "pairwise_similarity_kl", "haar_dwt2d", "haar_idwt2d")
# Our kernels per device: on CPU the Triton interpreter would only measure the interpreter.
OUR_BACKENDS = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}
PROVIDERS = ("ours", "torch", "compile", "authors", *peers.PEERS)

# Issue 3's sizes: the authors' batch of 3 and a batch of 8 at 3x256x256, and 16 at 3x64x64.
IMAGE_SIZES = [(3, 3, 256, 256), (8, 3, 256, 256), (16, 3, 64, 64)]
DWT_SIZES = [(8, 3, 256, 256), (16, 3, 64, 64)]
DWT_LEVELS = (1, 3)
QUICK_IMAGE_SIZES = [(3, 3, 32, 32), (8, 3, 32, 32)]
QUICK_DWT_SIZES = [(4, 3, 32, 32)]
DWT_MODE = "zero"


def size_label(shape, levels=None) -> str:
    label = "x".join(map(str, shape))
    return label if levels is None else f"{label}/J{levels}"


# ------------------------------------------------------------------------------------------- inputs


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def loss_inputs(shape, dtype, device, seed=0):
    """A DDPM-like batch (ddpm_pa_fast.testing.ddpm_like_batch) for the benchmark.

    Returns (args, leaves) for ddpm_pa_loss; eps_ada is the only leaf. Drawn in float64, then cast,
    so every dtype sees the same values up to rounding.
    """
    x_t, eps_ada, eps_src, noise, a_t, b_t = ddpm_like_batch(shape, seed)

    def cast(t):
        return t.to(device=device, dtype=dtype)

    eps_ada = cast(eps_ada).requires_grad_()
    args = (cast(x_t), eps_ada, cast(eps_src), cast(noise), a_t.to(device), b_t.to(device))
    return args, [eps_ada]


def image_inputs(shape, dtype, device, seed=0):
    x = torch.randn(shape, generator=_generator(seed), dtype=torch.float64)
    x = x.to(device=device, dtype=dtype).requires_grad_()
    return (x,), [x]


def feature_inputs(shape, dtype, device, seed=0):
    """(src, ada) with ada a perturbation of src, as during adaptation; ada is the leaf."""
    g = _generator(seed)
    src = torch.randn(shape, generator=g, dtype=torch.float64)
    ada = src + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    ada = ada.to(device=device, dtype=dtype).requires_grad_()
    return (src.to(device=device, dtype=dtype), ada), [ada]


def coefficient_inputs(shape, levels, dtype, device, seed=0):
    """(yl, yh_1, ..., yh_J): the reference DWT of random images, every tensor a leaf."""
    x = torch.randn(shape, generator=_generator(seed), dtype=torch.float64)
    yl, yh = reference.haar_dwt2d(x, levels, DWT_MODE)
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in (yl, *yh)]
    return tuple(leaves), leaves


# ------------------------------------------------------------------------------------------- traffic


def _numel(shape) -> int:
    return math.prod(shape)


def _coefficient_numel(shape, levels) -> int:
    """Elements of yl and all yh for mode 'zero' (an odd size is padded by one)."""
    n, c, h, w = shape
    total = 0
    for _ in range(levels):
        h, w = (h + 1) // 2, (w + 1) // 2
        total += 3 * n * c * h * w
    return total + n * c * h * w


def _passes(fwd: Traffic, bwd: Traffic) -> dict:
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": Traffic(fwd.read + bwd.read, fwd.write + bwd.write)}


def loss_traffic(shape, element_size):
    """Forward reads x_t, eps_ada, eps_src, noise once; backward reads x_t, eps_ada, noise, writes grad."""
    b = _numel(shape) * element_size
    return _passes(Traffic(4 * b, 0), Traffic(3 * b, b))


def high_frequency_traffic(shape, element_size):
    n, c, h, w = shape
    full, half = _numel(shape) * element_size, n * c * (h // 2) * (w // 2) * element_size
    return _passes(Traffic(full, half), Traffic(half, full))


def pairwise_traffic(shape, element_size):
    """Forward reads src and ada; backward reads ada and writes its gradient (N x N state is tiny)."""
    b = _numel(shape) * element_size
    return _passes(Traffic(2 * b, 0), Traffic(b, b))


def dwt_traffic(shape, levels, element_size):
    """All levels in one pass: read the image, write every band (and the reverse for the gradient)."""
    image, coeffs = _numel(shape) * element_size, _coefficient_numel(shape, levels) * element_size
    return _passes(Traffic(image, coeffs), Traffic(coeffs, image))


def idwt_traffic(shape, levels, element_size):
    image, coeffs = _numel(shape) * element_size, _coefficient_numel(shape, levels) * element_size
    return _passes(Traffic(coeffs, image), Traffic(image, coeffs))


# --------------------------------------------------------------------------------------------- cases


def _loss_reference(*args):
    return list(reference.ddpm_pa_loss(*args))


def _list_output(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        return [fn(*args)]

    return wrapper


def _dwt_reference(levels):
    def run(x):
        yl, yh = reference.haar_dwt2d(x, levels, DWT_MODE)
        return [yl, *yh]

    return run


def _idwt_reference(yl, *yh):
    return [reference.haar_idwt2d(yl, list(yh), DWT_MODE)]


def reference_outputs(op: str, levels: int | None):
    """The reference op as a provider function: positional arguments in, list of outputs out."""
    if op == "ddpm_pa_loss":
        return _loss_reference
    if op == "haar_dwt2d":
        return _dwt_reference(levels)
    if op == "haar_idwt2d":
        return _idwt_reference
    return _list_output(getattr(reference, op))


def parse_size(label: str) -> tuple[tuple[int, int, int, int], int | None]:
    """"NxCxHxW" -> ((N, C, H, W), None); "NxCxHxW/JL" -> ((N, C, H, W), L): size_label's inverse.

    Raises ValueError naming --sizes and the expected form for anything else."""
    shape_text, has_levels, levels_text = label.partition("/J")
    try:
        shape = tuple(int(v) for v in shape_text.split("x"))
        levels = int(levels_text) if has_levels else None
    except ValueError:
        shape, levels = (), None
    if len(shape) != 4 or min(shape) < 1 or (has_levels and (levels is None or levels < 1)):
        raise ValueError(
            f"--sizes: {label!r} is not NxCxHxW (the loss, HF and KL ops) or NxCxHxW/JL (the DWTs at L "
            "levels), e.g. 8x3x256x256 or 8x3x256x256/J3"
        )
    return shape, levels


def build_cases(ops, quick: bool, sizes=None) -> list[Case]:
    """The cases of ops at the full (or quick) sizes, or at sizes if given: labels "NxCxHxW" for the
    loss, HF and KL ops and "NxCxHxW/JL" for the DWTs at L levels (any shape, not only the defaults)."""
    if sizes:
        parsed = [parse_size(label) for label in sizes]
        image_sizes = [shape for shape, levels in parsed if levels is None]
        dwt_cases = [(shape, levels) for shape, levels in parsed if levels is not None]
    else:
        image_sizes = QUICK_IMAGE_SIZES if quick else IMAGE_SIZES
        dwt_cases = [(shape, levels) for shape in (QUICK_DWT_SIZES if quick else DWT_SIZES)
                     for levels in DWT_LEVELS]
    cases = []
    for op in ops:
        if op == "ddpm_pa_loss":
            for shape in image_sizes:
                cases.append(Case(
                    op, size_label(shape), functools.partial(loss_inputs, shape), reference_outputs(op, None),
                    functools.partial(loss_traffic, shape), differentiable=[True, False, False, False, False],
                    outputs_are_loss_terms=True,
                ))
        elif op == "ddpm_pa_high_frequency":
            for shape in image_sizes:
                cases.append(Case(
                    op, size_label(shape), functools.partial(image_inputs, shape),
                    reference_outputs(op, None), functools.partial(high_frequency_traffic, shape),
                ))
        elif op == "pairwise_similarity_kl":
            for shape in image_sizes:
                cases.append(Case(
                    op, size_label(shape), functools.partial(feature_inputs, shape),
                    reference_outputs(op, None), functools.partial(pairwise_traffic, shape),
                ))
        elif op == "haar_dwt2d":
            for shape, levels in dwt_cases:
                cases.append(Case(
                    op, size_label(shape, levels), functools.partial(image_inputs, shape),
                    reference_outputs(op, levels), functools.partial(dwt_traffic, shape, levels),
                ))
        elif op == "haar_idwt2d":
            for shape, levels in dwt_cases:
                cases.append(Case(
                    op, size_label(shape, levels), functools.partial(coefficient_inputs, shape, levels),
                    reference_outputs(op, levels), functools.partial(idwt_traffic, shape, levels),
                ))
        else:
            raise ValueError(f"--ops: unknown op {op!r}; expected some of {', '.join(OPS)}")
    return cases


def case_levels(case: Case) -> int | None:
    return int(case.size.rsplit("/J", 1)[1]) if "/J" in case.size else None


# ----------------------------------------------------------------------------------------- providers


def _ours(op: str, backend: str, device: str, levels) -> Provider:
    try:
        resolve_backend(backend, torch.device(device))
    except (BackendUnavailableError, ImportError) as error:
        return Provider(backend, unavailable=f"unavailable: {error}")
    public = getattr(ddpm_pa_fast, op)
    if op == "ddpm_pa_loss":
        def fn(*args):
            return list(public(*args, backend=backend))
    elif op == "haar_dwt2d":
        def fn(x):
            yl, yh = public(x, levels, DWT_MODE, backend=backend)
            return [yl, *yh]
    elif op == "haar_idwt2d":
        def fn(yl, *yh):
            return [public(yl, list(yh), DWT_MODE, backend=backend)]
    else:
        def fn(*args):
            return [public(*args, backend=backend)]
    return Provider(backend, fn)


@functools.cache
def _compiled(op: str):
    """One torch.compile per op (it recompiles per shape; each shape compiles during the check)."""
    return torch.compile(getattr(reference, op), dynamic=False)


def _compile_provider(op: str, levels) -> Provider:
    compiled = _compiled(op)
    if op == "ddpm_pa_loss":
        def fn(*args):
            return list(compiled(*args))
    elif op == "haar_dwt2d":
        def fn(x):
            yl, yh = compiled(x, levels, DWT_MODE)
            return [yl, *yh]
    elif op == "haar_idwt2d":
        def fn(yl, *yh):
            return [compiled(yl, list(yh), DWT_MODE)]
    else:
        def fn(*args):
            return [compiled(*args)]
    return Provider("compile", fn)


def _authors_provider(op: str) -> Provider:
    if op == "ddpm_pa_loss":
        return Provider("authors", lambda *args: list(authors.ddpm_pa_loss(*args)), slow=True)
    if op == "ddpm_pa_high_frequency":
        return Provider("authors", _list_output(authors.high_frequency), slow=True)
    if op == "pairwise_similarity_kl":
        return Provider("authors", _list_output(authors.pairwise_similarity_kl), slow=True)
    return Provider("authors", unavailable="unsupported: the authors' code has no general DWT")


def providers_for(case: Case, device: str, selected) -> list[Provider]:
    """Every provider of the case's op, in table order; filtered by --providers ('ours' = our backends)."""
    op, levels = case.op, case_levels(case)
    providers = [_ours(op, backend, device, levels) for backend in OUR_BACKENDS[torch.device(device).type]]
    providers.append(Provider("torch", reference_outputs(op, levels)))
    providers.append(_compile_provider(op, levels))
    providers.append(_authors_provider(op))
    if op == "ddpm_pa_high_frequency":
        providers += peers.high_frequency_providers()
    elif op == "haar_dwt2d":
        providers += peers.dwt_providers(levels)
    elif op == "haar_idwt2d":
        providers += peers.idwt_providers(levels)
    ours = set(OUR_BACKENDS[torch.device(device).type])
    return [p for p in providers if p.name in selected or ("ours" in selected and p.name in ours)]


# -------------------------------------------------------------------------------------------- driver


def package_version() -> str:
    """ddpm_pa_fast's version and the git commit of the tree being measured (when it is a checkout)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except OSError:
        commit = ""
    return f"{ddpm_pa_fast.__version__}+g{commit}" if commit else ddpm_pa_fast.__version__


# --quick's repetition budget, which --few-repeats applies at the full sizes.
FEW_REPEATS = TimingConfig(warmup=1, min_repeats=3, max_repeats=20, min_time=0.05, slow_repeats=2,
                           cuda_warmup_ms=5, cuda_rep_ms=20)


def run(args, after_case=None):
    """Every case and provider; returns the rows and the bandwidth measured before each case.

    after_case(rows, bandwidths), if given, runs after each case with everything measured so far."""
    device, dtype = args.device, getattr(torch, args.dtype)
    config = FEW_REPEATS if args.quick or args.few_repeats else TimingConfig()
    selected = set(args.providers or [p for p in PROVIDERS if not (args.quick and p == "compile")])
    version = package_version()
    probe = BandwidthProbe(device, megabytes=128 if args.quick else 512)
    rows, bandwidths = [], []
    for case in build_cases(args.ops, args.quick, args.sizes):
        # Measured again for every case, just before our kernel (the first provider) is timed: on a
        # machine that shares its memory system, bandwidth drifts by tens of percent within one run,
        # and a bound taken minutes earlier would compare the kernel with another machine state.
        print(f"measuring {device} bandwidth ...", file=sys.stderr)
        bandwidth = probe.measure()
        bandwidths.append(bandwidth)
        expected = reference_expectation(case, dtype)
        for provider in providers_for(case, device, selected):
            print(f"{case.op} {case.size} {provider.name} ...", file=sys.stderr, flush=True)
            rows += measure(case, provider, expected, dtype, device, config, bandwidth,
                            passes=args.passes, memory=not args.no_memory, package_version=version)
        if args.quick and not args.providers:
            skipped = Provider("compile", unavailable="skipped: --quick (compiling takes ~30 s per shape)")
            rows += measure(case, skipped, expected, dtype, device, config, bandwidth, passes=args.passes,
                            package_version=version)
        if after_case is not None:
            after_case(rows, bandwidths)
    return rows, bandwidths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_ops", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS,
                        help="default: all ('ours' = our kernels on the device); --quick leaves out compile")
    parser.add_argument("--passes", nargs="+", default=list(PASSES), choices=PASSES)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions: a smoke test")
    parser.add_argument("--sizes", nargs="+", metavar="SIZE",
                        help="these sizes instead of the defaults: NxCxHxW for the loss, HF and KL ops, "
                             "NxCxHxW/JL for the DWTs at L levels, e.g. 32x3x256x256 32x3x256x256/J3")
    parser.add_argument("--few-repeats", action="store_true",
                        help="--quick's repetition budget at the full sizes (a time-boxed run)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--overhead", action="store_true",
                        help="per-call cost of each public op against a native op on tiny inputs, one "
                             "thread (benchmarks/overhead.py) -> overhead_<device>.md")
    parser.add_argument("--rounds", type=int, default=400,
                        help="--overhead: rounds of blocks per case (default %(default)s)")
    parser.add_argument("--on-paper", action="store_true",
                        help="write gpu_on_paper.md (bytes and time at H100/H200 bandwidth); needs no GPU")
    return parser.parse_args(argv)


def write_overhead_table(args) -> None:
    """--overhead: the per-call table for our first backend on the device, printed and written."""
    torch.set_num_threads(1)
    backend = OUR_BACKENDS[args.device][0]
    cases = overhead.build_cases(args.device, backend)
    rows = overhead.measure(cases, args.device, rounds=args.rounds)
    text = overhead.markdown(rows, report.describe_machine(args.device), backend, args.rounds)
    path = os.path.join(args.out, f"overhead_{args.device}.md")
    with open(path, "w") as fh:
        fh.write(text)
    print(text)
    print(f"wrote {path}")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.on_paper:
        path = os.path.join(args.out, "gpu_on_paper.md")
        report.write_on_paper(path, build_cases(OPS, quick=False))
        print(f"wrote {path}")
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    if args.overhead:
        write_overhead_table(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    stem = f"{args.device}_quick" if args.quick else args.device
    csv_path, md_path = os.path.join(args.out, f"{stem}.csv"), os.path.join(args.out, f"{stem}.md")

    def write(rows, bandwidths):
        write_csv(rows, csv_path)
        report.write_markdown(md_path, rows, bandwidths, args)

    # Written after every case as well as at the end: a run stopped by a time limit keeps what it measured.
    rows, bandwidths = run(args, after_case=write)
    write(rows, bandwidths)
    print(f"wrote {csv_path} and {md_path}")


if __name__ == "__main__":
    main()
