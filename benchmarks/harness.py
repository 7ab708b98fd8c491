"""Benchmark machinery: providers, the correctness gate, timing, peak memory, bandwidth, CSV rows.

A *case* is one op at one size: inputs (with the leaves that get gradients), the float64 reference
outputs and gradients, and the memory-traffic model. A *provider* is one implementation of the op.
`measure(case, provider, ...)` first checks the provider against the float64 reference (outputs and
gradients with a random non-unit upstream gradient); only a provider that passes is timed. Every outcome
is a row with a status, so an unavailable, unsupported, wrong, out-of-memory or failing provider is a
result, never a crash (pytorch_scatter's benchmark does the same for out-of-memory).

Timing (forward, backward and forward+backward separately; median and 20/80 quantiles):
- CPU: our own loop with time.perf_counter, after warm-up, repeating until a time budget is spent;
- CUDA: triton.testing.do_bench (CUDA events, L2 flushed between repetitions); for the backward, and
  when Triton is missing, our own loop of CUDA events with the same L2 flush.
The forward runs with autograd recording (as in training). The backward is timed alone after an untimed
forward per repetition. Gradients are reset to None before each repetition, as optimizer.zero_grad() does.

Peak memory is the extra bytes allocated during one call, above what was allocated before it:
- CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats();
- CPU: torch.profiler with profile_memory=True records every CPU allocation and free; the peak of the
  running sum of those bytes over the call is the extra memory (includes outputs and saved tensors).
  Frees of blocks allocated before the call (the backward releasing saved tensors) are not reported
  (c10 warns "Memory block of unknown size was allocated before the profiling started"), so for the
  backward it is the peak of what the backward itself allocates, never reduced by what it releases.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence

import torch

QUANTILES = (0.5, 0.2, 0.8)
PASSES = ("fwd", "bwd", "fwd+bwd")

# Correctness gate against the float64 reference, in two steps:
# 1. The maths, in float64: the provider run on the float64 inputs, |a - e| <= atol + rtol |e| with the
#    float64 tolerances (which allow for pytorch_wavelets' float32 filters). A provider that cannot run
#    float64 (it raises) skips this step, and its rows say so (column `checked`).
# 2. The benchmarked dtype: the same rule with that dtype's tolerances, or within SAME_DTYPE_FACTOR
#    times the error of the reference itself computed in that dtype, whichever allows more
#    (flash-attention's rule). atol is relative to the largest |e| of the tensor, or for ops whose
#    outputs are terms of one loss, of the total. This step cannot be strict about the pairwise KL at
#    the benchmark sizes: for batches this alike the KL is 1e-9 to 1e-7, the difference of
#    log-probabilities of order 1, and float32 computes it with errors of 2% to 1000% in any
#    implementation (the reference itself included); step 1 is what pins the maths.
CHECK_TOLERANCES = {
    torch.float64: (1e-6, 1e-7),
    torch.float32: (1e-3, 1e-5),
    torch.float16: (2e-2, 2e-3),
    torch.bfloat16: (6e-2, 1e-2),
}
SAME_DTYPE_FACTOR = 5.0


def _identity(values):
    return values


@dataclasses.dataclass
class Provider:
    """One implementation of an op.

    fn(*args) returns the provider's outputs as a list of tensors, in its own layout; to_canonical
    turns them into the reference's layout (for the correctness check only, untimed) and
    grads_to_native turns upstream gradients given in the reference's layout into the provider's.
    unavailable: why it cannot run here (the rows say so instead of timing). slow: time it with few
    repetitions.
    """

    name: str
    fn: Callable[..., list] | None = None
    unavailable: str | None = None
    to_canonical: Callable[[list], list] = _identity
    grads_to_native: Callable[[list], list] = _identity
    slow: bool = False


@dataclasses.dataclass
class Traffic:
    """Bytes that an op must read and write at least, per pass."""

    read: int
    write: int


@dataclasses.dataclass
class Case:
    """One op at one size.

    make_args(dtype, device) -> (args, leaves): positional arguments and the tensors that get
    gradients (leaves of args). reference(*args) -> canonical outputs (list); differentiable marks which
    canonical outputs the backward starts from. traffic(element_size) -> {pass: Traffic}.
    """

    op: str
    size: str
    make_args: Callable[[torch.dtype, str], tuple[tuple, list]]
    reference: Callable[..., list]
    traffic: Callable[[int], dict]
    differentiable: Sequence[bool] | None = None
    outputs_are_loss_terms: bool = False


@dataclasses.dataclass
class Row:
    op: str
    size: str
    provider: str
    dtype: str
    device: str
    pass_: str
    status: str
    checked: str = ""
    median_ms: float | None = None
    q20_ms: float | None = None
    q80_ms: float | None = None
    repeats: int | None = None
    peak_extra_bytes: int | None = None
    min_bytes: int | None = None
    bound_ms: float | None = None
    x_bound: float | None = None
    # CUDA only (None elsewhere): the kernels' own time per call (profiler, sum of device kernel
    # durations) and the time per replay of the pass captured in a CUDA graph; each / bound.
    device_ms: float | None = None
    graph_ms: float | None = None
    device_x_bound: float | None = None
    graph_x_bound: float | None = None
    torch_version: str = torch.__version__
    package_version: str = ""
    threads: int | None = None


CSV_FIELDS = [("pass" if f.name == "pass_" else f.name) for f in dataclasses.fields(Row)]


def write_csv(rows: list[Row], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_FIELDS)
        for row in rows:
            writer.writerow(["" if v is None else v for v in dataclasses.astuple(row)])


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------------------------- check


class MismatchError(AssertionError):
    """A provider's output or gradient differs from the float64 reference beyond tolerance."""


def check_close(
    name: str, actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
    same_dtype_error: float = 0.0, scale: float | None = None,
) -> None:
    """Raises MismatchError unless actual is within tolerance of the float64 expected (see above).

    scale: what atol is relative to (default: the largest |expected|).
    """
    rtol, atol_rel = CHECK_TOLERANCES[dtype]
    if tuple(actual.shape) != tuple(expected.shape):
        raise MismatchError(f"{name}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    actual = actual.detach().to("cpu", torch.float64)
    expected = expected.detach().to("cpu", torch.float64)
    if not torch.isfinite(actual).all():
        raise MismatchError(f"{name}: non-finite values")
    if scale is None:
        scale = float(expected.abs().max()) if expected.numel() else 0.0
    atol = atol_rel * scale
    allowed = torch.clamp_min(atol + rtol * expected.abs(), SAME_DTYPE_FACTOR * same_dtype_error)
    excess = (actual - expected).abs() - allowed
    if excess.numel() and float(excess.max()) > 0:
        worst = int(excess.argmax())
        raise MismatchError(
            f"{name}: {float(actual.flatten()[worst]):.6g} vs reference "
            f"{float(expected.flatten()[worst]):.6g} "
            f"(rtol {rtol:g}, atol {atol:.3g}, reference's own {dtype} error {same_dtype_error:.3g})"
        )


@dataclasses.dataclass
class Expected:
    """The float64 reference's outputs and gradients for a case, the upstream gradients used, and the
    largest error of the reference computed in the benchmarked dtype, per output and per gradient."""

    outputs: list
    upstream: list  # canonical layout, None where an output is not differentiated
    grads: list
    output_errors: list
    grad_errors: list


def _run_reference(case: Case, dtype: torch.dtype, upstream_fn):
    args, leaves = case.make_args(dtype, "cpu")
    outputs = case.reference(*args)
    upstream = upstream_fn(outputs)
    _backward(outputs, [None if g is None else g.to(dtype) for g in upstream], retain_graph=False)
    return [o.detach() for o in outputs], upstream, [leaf.grad for leaf in leaves]


def _max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).abs().max()) if expected.numel() else 0.0


def reference_expectation(case: Case, dtype: torch.dtype = torch.float64, seed: int = 0) -> Expected:
    """Runs the reference in float64 (and in dtype, for its own error); random non-unit upstream gradients."""
    differentiable = case.differentiable

    def draw_upstream(outputs):
        generator = torch.Generator().manual_seed(seed)
        use = differentiable or [True] * len(outputs)
        return [
            torch.randn(out.shape, generator=generator, dtype=torch.float64) if u else None
            for out, u in zip(outputs, use, strict=True)
        ]

    outputs, upstream, grads = _run_reference(case, torch.float64, draw_upstream)
    if dtype == torch.float64:
        output_errors, grad_errors = [0.0] * len(outputs), [0.0] * len(grads)
    else:
        own_outputs, _, own_grads = _run_reference(case, dtype, lambda _: upstream)
        output_errors = [_max_error(a, e) for a, e in zip(own_outputs, outputs, strict=True)]
        grad_errors = [_max_error(a, e) for a, e in zip(own_grads, grads, strict=True)]
    return Expected(outputs, upstream, grads, output_errors, grad_errors)


def _backward(outputs: list, grads: list, retain_graph: bool) -> None:
    pairs = [(o, g) for o, g in zip(outputs, grads, strict=True) if g is not None]
    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs], retain_graph=retain_graph)


def _check_in(case: Case, provider: Provider, expected: Expected, dtype, device, own_errors: bool) -> list:
    """One run of the provider in dtype against the float64 expectation; returns native upstream grads."""
    args, leaves = case.make_args(dtype, device)
    native = provider.fn(*args)
    canonical = provider.to_canonical(native)
    scale = max(float(o.abs().max()) for o in expected.outputs) if case.outputs_are_loss_terms else None
    for i, (actual, want) in enumerate(zip(canonical, expected.outputs, strict=True)):
        check_close(f"{_dtype_name(dtype)} output {i}", actual, want, dtype,
                    expected.output_errors[i] if own_errors else 0.0, scale)
    upstream = [None if g is None else g.to(device=device, dtype=dtype) for g in expected.upstream]
    native_upstream = provider.grads_to_native(upstream)
    _backward(native, native_upstream, retain_graph=False)
    for i, (leaf, want) in enumerate(zip(leaves, expected.grads, strict=True)):
        if leaf.grad is None:
            raise MismatchError(f"{_dtype_name(dtype)} gradient {i}: none computed")
        check_close(f"{_dtype_name(dtype)} gradient {i}", leaf.grad, want, dtype,
                    expected.grad_errors[i] if own_errors else 0.0)
    return native_upstream


def check_provider(case: Case, provider: Provider, expected: Expected, dtype, device) -> tuple[list, str]:
    """Raises MismatchError unless outputs and gradients match (float64, then dtype; see above).

    Returns the upstream gradients in the provider's layout, and which checks ran.
    """
    checked = []
    if dtype != torch.float64:
        try:
            _check_in(case, provider, expected, torch.float64, device, own_errors=False)
            checked.append("float64")
        except MismatchError:
            raise
        except Exception as error:  # cannot run float64: the dtype check below still runs
            checked.append(f"not float64 ({type(error).__name__})")
    native_upstream = _check_in(case, provider, expected, dtype, device, own_errors=True)
    checked.append(_dtype_name(dtype))
    return native_upstream, " + ".join(checked)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------------- timing


@dataclasses.dataclass
class TimingConfig:
    """Repetition budget. CPU: repeat until min_time seconds or max_repeats, at least min_repeats."""

    warmup: int = 2
    min_repeats: int = 5
    max_repeats: int = 200
    min_time: float = 1.0
    slow_repeats: int = 3  # for providers marked slow (the authors' loops)
    cuda_warmup_ms: int = 25
    cuda_rep_ms: int = 100


def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _clear_grads(leaves) -> None:
    for leaf in leaves:
        leaf.grad = None


def _quantiles(samples_ms: list[float]) -> tuple[float, float, float]:
    if len(samples_ms) == 1:
        return samples_ms[0], samples_ms[0], samples_ms[0]
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return statistics.median(samples_ms), cuts[19], cuts[79]


def time_call(
    fn: Callable[[], object], leaves, device: str, config: TimingConfig, slow: bool = False,
    prepare: Callable[[], None] | None = None,
):
    """(median, q20, q80) in milliseconds and the number of timed repetitions (None: do_bench chose).

    Before each repetition, untimed: the leaves' gradients are reset to None and prepare() runs.
    """
    if torch.device(device).type == "cuda":
        return _time_cuda(fn, leaves, config, slow, prepare)

    def untimed():
        _clear_grads(leaves)
        if prepare is not None:
            prepare()

    for _ in range(1 if slow else config.warmup):
        untimed()
        fn()
    samples = []
    budget_end = time.perf_counter() + (0.0 if slow else config.min_time)
    max_repeats = config.slow_repeats if slow else config.max_repeats
    min_repeats = min(config.min_repeats, max_repeats)
    while len(samples) < max_repeats and (len(samples) < min_repeats or time.perf_counter() < budget_end):
        untimed()
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return (*_quantiles(samples), len(samples))


def _time_cuda(fn, leaves, config: TimingConfig, slow: bool, prepare):
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None and prepare is None:
        rep_ms = config.cuda_rep_ms * (3 if slow else 1)
        median, q20, q80 = do_bench(
            fn, warmup=config.cuda_warmup_ms, rep=rep_ms, grad_to_none=list(leaves), quantiles=list(QUANTILES)
        )
        return median, q20, q80, None
    # CUDA events around each call, with do_bench's L2 flush, when an untimed step precedes each call.
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    samples = []
    repeats = config.slow_repeats if slow else max(config.min_repeats, 50)
    for i in range(config.warmup + repeats):
        _clear_grads(leaves)
        if prepare is not None:
            prepare()
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        if i >= config.warmup:
            samples.append(start.elapsed_time(end))
    return (*_quantiles(samples), len(samples))


DEVICE_TIME_CALLS = 20
GRAPH_REPLAYS = 50


def device_kernel_ms(fn: Callable[[], object], leaves) -> float:
    """The kernels' own time per call of fn, in ms: the profiler's sum of CUDA kernel (and memcpy/memset)
    durations over DEVICE_TIME_CALLS calls, divided by the count. Host time, launch gaps and the
    device's idle time between kernels are left out: this is what the call costs a GPU that is never
    starved, the part that the memory bound speaks to."""
    from torch.profiler import ProfilerActivity, profile

    _clear_grads(leaves)
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(DEVICE_TIME_CALLS):
            _clear_grads(leaves)
            fn()
        torch.cuda.synchronize()
    device_us = sum(event.self_device_time_total for event in prof.key_averages())
    return device_us / 1e3 / DEVICE_TIME_CALLS


def cuda_graph_ms(fn: Callable[[], object], leaves) -> float:
    """ms per replay of fn captured in a CUDA graph (CUDA events around GRAPH_REPLAYS replays): the pass
    without its host path. Raises if fn cannot be captured (a host sync, a host tensor, a
    data-dependent shape); the caller records that as the row's graph status."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as torch.cuda.graphs asks
        for _ in range(3):
            _clear_grads(leaves)
            fn()
    torch.cuda.current_stream().wait_stream(side)
    _clear_grads(leaves)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(GRAPH_REPLAYS):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / GRAPH_REPLAYS


# --------------------------------------------------------------------------------------------- memory


def peak_extra_bytes(
    fn: Callable[[], object], leaves, device: str, prepare: Callable[[], None] | None = None
) -> int:
    """Peak bytes allocated during one call of fn above those allocated before it (see module doc)."""
    _clear_grads(leaves)
    if prepare is not None:
        prepare()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        del result
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    del result
    with tempfile.TemporaryDirectory() as tmp:
        trace_path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(trace_path)
        with open(trace_path) as fh:
            events = json.load(fh)["traceEvents"]
    allocations = sorted(
        (e["ts"], e["args"]["Bytes"])
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0
    )
    running, peak = 0, 0
    for _, nbytes in allocations:
        running += nbytes
        peak = max(peak, running)
    return peak


# ------------------------------------------------------------------------------------------ bandwidth


@dataclasses.dataclass
class Bandwidth:
    """Measured bytes per second: reading (sum), writing (fill) and copying (read + write)."""

    read: float
    write: float
    copy: float

    def bound_seconds(self, traffic: Traffic) -> float:
        """Least time to move the traffic: reads paired with writes stream like a copy, the rest alone."""
        paired = min(traffic.read, traffic.write)
        return (
            2 * paired / self.copy
            + (traffic.read - paired) / self.read
            + (traffic.write - paired) / self.write
        )


class BandwidthProbe:
    """float32 buffers much larger than the last-level cache, allocated once; measure() streams over
    them (median of repetitions), as often as a run wants a fresh measurement."""

    def __init__(self, device: str, megabytes: int = 256):
        self.device = device
        self.src = torch.rand(megabytes * 2**20 // 4, device=device)
        self.dst = torch.empty_like(self.src)

    def measure(self, config: TimingConfig | None = None) -> Bandwidth:
        config = config or TimingConfig(min_time=0.5)
        nbytes = self.src.numel() * self.src.element_size()

        def seconds(fn):
            median_ms = time_call(fn, [], self.device, config)[0]
            return median_ms / 1e3

        read = nbytes / seconds(lambda: self.src.sum())
        write = nbytes / seconds(lambda: self.dst.fill_(1.0))
        copy = 2 * nbytes / seconds(lambda: self.dst.copy_(self.src))
        return Bandwidth(read, write, copy)


# -------------------------------------------------------------------------------------------- measure


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message
    )


def _error_status(error: BaseException) -> str:
    if _is_out_of_memory(error):
        return "oom"
    if isinstance(error, MismatchError):
        return f"wrong: {error}"
    return f"error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _pass_callables(pass_: str, provider: Provider, args: tuple, native_upstream: list):
    """(fn, prepare): what is timed for the pass, and what runs untimed before each repetition."""
    if pass_ == "fwd":
        return (lambda: provider.fn(*args)), None
    if pass_ == "bwd":
        # A fresh forward per repetition rather than retain_graph=True, which compiled backwards with
        # donated buffers refuse.
        recorded = []

        def prepare():
            recorded[:] = provider.fn(*args)

        return (lambda: _backward(recorded, native_upstream, retain_graph=False)), prepare

    def forward_backward():
        _backward(provider.fn(*args), native_upstream, retain_graph=False)

    return forward_backward, None


def _device_times(pass_: str, fn, leaves, device: str) -> dict:
    """On CUDA, for fwd and fwd+bwd (the backward alone needs a fresh forward per call, which a graph
    would replay too): device_ms and graph_ms, or None for one that failed (said on stderr)."""
    if torch.device(device).type != "cuda" or pass_ == "bwd":
        return {}
    times = {}
    for name, measure_ms in (("device_ms", device_kernel_ms), ("graph_ms", cuda_graph_ms)):
        try:
            times[name] = measure_ms(fn, leaves)
        except Exception as error:  # a provider that cannot be captured is a result, not a crash
            print(f"{name}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                  file=sys.stderr)
            times[name] = None
            torch.cuda.synchronize()
    return times


def measure(
    case: Case,
    provider: Provider,
    expected: Expected,
    dtype: torch.dtype,
    device: str,
    config: TimingConfig,
    bandwidth: Bandwidth | None,
    passes: Sequence[str] = PASSES,
    memory: bool = True,
    package_version: str = "",
) -> list[Row]:
    """Checks the provider against the reference, then times each pass; one row per pass."""
    element_size = torch.empty((), dtype=dtype).element_size()
    traffic = case.traffic(element_size)

    def row(pass_, status, **values):
        min_bytes = traffic[pass_].read + traffic[pass_].write
        bound_ms = None if bandwidth is None else bandwidth.bound_seconds(traffic[pass_]) * 1e3
        median = values.get("median_ms")
        for name in ("device", "graph"):
            ms = values.get(f"{name}_ms")
            if ms is not None and bound_ms:
                values[f"{name}_x_bound"] = ms / bound_ms
        return Row(
            op=case.op, size=case.size, provider=provider.name, dtype=_dtype_name(dtype),
            device=device, pass_=pass_, status=status, min_bytes=min_bytes, bound_ms=bound_ms,
            x_bound=None if median is None or not bound_ms else median / bound_ms,
            package_version=package_version, threads=torch.get_num_threads(), **values,
        )

    if provider.unavailable is not None:
        return [row(p, provider.unavailable) for p in passes]
    try:
        native_upstream, checked = check_provider(case, provider, expected, dtype, device)
    except Exception as error:  # every failure is a result: the row says what happened
        if not isinstance(error, MismatchError) and not _is_out_of_memory(error):
            traceback.print_exc(file=sys.stderr)
        return [row(p, _error_status(error)) for p in passes]

    rows = []
    for pass_ in passes:
        try:
            args, leaves = case.make_args(dtype, device)
            fn, prepare = _pass_callables(pass_, provider, args, native_upstream)
            median, q20, q80, repeats = time_call(fn, leaves, device, config, provider.slow, prepare)
            peak = peak_extra_bytes(fn, leaves, device, prepare) if memory else None
            device_times = _device_times(pass_, fn, leaves, device)
            rows.append(row(pass_, "ok", checked=checked, median_ms=median, q20_ms=q20, q80_ms=q80,
                            repeats=repeats, peak_extra_bytes=peak, **device_times))
        except Exception as error:
            if not _is_out_of_memory(error):
                traceback.print_exc(file=sys.stderr)
            rows.append(row(pass_, _error_status(error), checked=checked))
        finally:
            args = leaves = fn = prepare = None
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
    return rows


def format_ms(value) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return ""
    value = float(value)
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"
