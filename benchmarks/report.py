"""Markdown from benchmark rows: the machine, the bound, per-op tables; and the GPU table "on paper"."""

from __future__ import annotations

import datetime
import os
import platform
import sys

import torch

from .harness import PASSES, Bandwidth, Row, format_ms

# Peak HBM bandwidth from NVIDIA's data sheets (SXM parts).
GPU_PEAK_BANDWIDTH = {"H100 SXM (HBM3, 3.35 TB/s)": 3.35e12, "H200 SXM (HBM3e, 4.8 TB/s)": 4.8e12}

REGENERATE = """\
Regenerate on a quiet machine (nothing else running), from the repository root, after building the
extension (`pip install --no-build-isolation -e .`):

    python -m benchmarks.bench_ops --device cpu          # -> benchmarks/results/cpu.csv, cpu.md
    python -m benchmarks.bench_ops --device cuda         # on a GPU machine -> cuda.csv, cuda.md
    python -m benchmarks.bench_ops --on-paper            # -> gpu_on_paper.md (no GPU needed)
    python -m benchmarks.plot benchmarks/results/cpu.csv # -> cpu.png
    python -m benchmarks.bench_ops --quick               # smoke test (seconds): cpu_quick.*, not results
"""


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def _our_cpu_isa() -> str:
    try:
        from ddpm_pa_fast import ops
    except ImportError as error:
        return f"unknown ({error})"
    return ops.cpu_isa() or "none (extension not built)"


def describe_machine(device: str) -> list[tuple[str, str]]:
    """(item, value) pairs: CPU model, cores, memory, cache, torch, threads, our kernels' ISA, load, GPU."""
    cpuinfo = _read("/proc/cpuinfo") or ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    model = models[0] if models else platform.processor() or "unknown"
    meminfo = _read("/proc/meminfo") or ""
    mem_kb = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")),
                  None)
    l3 = _read("/sys/devices/system/cpu/cpu0/cache/index3/size")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    items = [
        ("CPU", model),
        ("logical cores (usable by this process)", f"{os.cpu_count()} ({usable})"),
        ("memory", f"{mem_kb / 2**20:.1f} GiB" if mem_kb else "unknown"),
        ("last-level cache (cpu0, index3)", l3.strip() if l3 else "unknown"),
        ("torch", torch.__version__),
        ("torch threads", str(torch.get_num_threads())),
        ("instruction set of our CPU kernels (ddpm_pa_fast.ops.cpu_isa)", _our_cpu_isa()),
        ("Python", sys.version.split()[0]),
        ("load average (1, 5, 15 min) at the end", ", ".join(f"{v:.2f}" for v in os.getloadavg())),
    ]
    if device == "cuda" and torch.cuda.is_available():
        items.append(("GPU", f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"))
    return items


def _ours_name(rows: list[Row], device: str) -> dict:
    """Per (op, size, pass): the median of our first kernel that ran ('cuda' before 'triton')."""
    order = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}[device]
    ours = {}
    for name in reversed(order):
        for r in rows:
            if r.provider == name and r.status == "ok":
                ours[(r.op, r.size, r.pass_)] = (name, r.median_ms)
    return ours


def _ratio(value, base) -> str:
    if value is None or not base:
        return ""
    return f"{value / base:.3g}"


def markdown_tables(rows: list[Row], device: str) -> list[str]:
    ours = _ours_name(rows, device)
    lines = []
    passes = [p for p in PASSES if any(r.pass_ == p for r in rows)]
    for op in dict.fromkeys(r.op for r in rows):
        op_rows = [r for r in rows if r.op == op]
        lines += [f"### {op}", ""]
        header = ["size", "provider"]
        for p in passes:
            header += [f"{p} ms (q20-q80)", f"{p} / ours", f"{p} / bound"]
        header += ["peak extra MiB (" + passes[-1] + ")", "status"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for size in dict.fromkeys(r.size for r in op_rows):
            by_provider = {}
            for r in op_rows:
                if r.size == size:
                    by_provider.setdefault(r.provider, {})[r.pass_] = r
            any_row = next(iter(next(iter(by_provider.values())).values()))
            bound = ["bound"] + [""] * (len(header) - 2)
            for provider, per_pass in by_provider.items():
                cells = [size, provider]
                statuses = []
                for p in passes:
                    r = per_pass.get(p)
                    if r is None:
                        cells += ["", "", ""]
                        continue
                    if r.status != "ok":
                        statuses.append(r.status)
                        cells += ["", "", ""]
                        continue
                    base = ours.get((op, size, p), (None, None))[1]
                    cells += [
                        f"{format_ms(r.median_ms)} ({format_ms(r.q20_ms)}-{format_ms(r.q80_ms)})",
                        _ratio(r.median_ms, base),
                        "" if r.x_bound is None else f"{r.x_bound:.3g}",
                    ]
                last = per_pass.get(passes[-1])
                peak = None if last is None else last.peak_extra_bytes
                cells.append("" if peak is None else f"{peak / 2**20:.1f}")
                checked = next((r.checked for r in per_pass.values() if r.checked), "")
                status = statuses[0].replace("|", "/") if statuses else "ok"
                cells.append(f"{status} (checked: {checked})" if checked and not statuses else status)
                lines.append("| " + " | ".join(cells) + " |")
            for i, p in enumerate(passes):
                r = next((x for x in op_rows if x.size == size and x.pass_ == p), any_row)
                bound[1 + 3 * i] = f"{format_ms(r.bound_ms)} ({r.min_bytes / 2**20:.1f} MiB)"
            lines.append("| " + " | ".join([size] + bound) + " |")
        lines.append("")
    return lines


# Issue 3's targets on the 2-core CPU, judged on forward+backward (a training step runs both):
# (op, competitor or "bound", least competitor / ours, or most ours / bound, sizes it applies to).
CPU_TARGETS = [
    ("ddpm_pa_loss", "compile", 5.0, None),
    ("ddpm_pa_loss", "authors", 100.0, "8x"),
    ("ddpm_pa_loss", "bound", 2.0, None),
    ("ddpm_pa_high_frequency", "pytorch_wavelets", 5.0, None),
    ("ddpm_pa_high_frequency", "ptwt", 5.0, None),
    ("ddpm_pa_high_frequency", "compile", 1.0, None),
    ("ddpm_pa_high_frequency", "bound", 1.3, None),
    ("pairwise_similarity_kl", "compile", 1.0, None),
    ("pairwise_similarity_kl", "bound", 1.3, None),
    ("haar_dwt2d", "pytorch_wavelets", 3.0, None),
    ("haar_idwt2d", "pytorch_wavelets", 3.0, None),
]


def targets_table(rows: list[Row], pass_: str = "fwd+bwd") -> list[str]:
    """Each target of issue 3 at each measured size: the measured factor and whether it is met."""
    ok = {(r.op, r.size, r.provider): r for r in rows if r.status == "ok" and r.pass_ == pass_}
    lines = [
        f"## Targets (issue 3, CPU, {pass_})",
        "",
        "| op | size | target | measured | met |",
        "|---|---|---|---|---|",
    ]
    for op, competitor, factor, size_prefix in CPU_TARGETS:
        sizes = dict.fromkeys(r.size for r in rows if r.op == op)
        for size in sizes:
            if size_prefix and not size.startswith(size_prefix):
                continue
            ours = ok.get((op, size, "cpu"))
            if competitor == "bound":
                target = f"ours within {factor:g}x of the bound"
                measured = None if ours is None else ours.x_bound
                met = None if measured is None else measured <= factor
            else:
                target = (f"ours {factor:g}x faster than {competitor}" if factor > 1
                          else f"ours not slower than {competitor}")
                other = ok.get((op, size, competitor))
                measured = None if ours is None or other is None else other.median_ms / ours.median_ms
                met = None if measured is None else measured >= factor
            shown = "not measured" if measured is None else f"{measured:.3g}x"
            verdict = "" if met is None else ("yes" if met else "NO")
            lines.append(f"| {op} | {size} | {target} | {shown} | {verdict} |")
    return lines + [""]


def _bandwidth_range(values: list[float]) -> str:
    low, high = min(values) / 1e9, max(values) / 1e9
    return f"{low:.1f} GB/s" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}-{high:.1f} GB/s"


def device_time_table(rows: list[Row]) -> list[str]:
    """CUDA: per op, size, provider and pass (fwd, fwd+bwd), wall time beside the kernels' own time and
    a CUDA graph replay's, each against the memory bound: how much of a call is host path."""
    timed = [r for r in rows if r.status == "ok" and r.pass_ != "bwd" and r.median_ms is not None]
    if not timed:
        return []

    def cell(ms, x_bound):
        return "" if ms is None else f"{format_ms(ms)} ({x_bound:.3g}x)" if x_bound else format_ms(ms)

    lines = [
        "## Wall time, device time and CUDA-graph time",
        "",
        "wall: the median above (events around each call, host path included). device: the profiler's sum",
        "of the call's kernel durations (benchmarks/harness.py, device_kernel_ms). graph: one replay of the",
        "pass captured in a CUDA graph (cuda_graph_ms; empty: it could not be captured, stderr says why).",
        "In brackets: / bound. wall far above device means the call is host-bound.",
        "",
        "| op | size | provider | pass | bound ms | wall ms | device ms | graph ms | wall / device |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in timed:
        lines.append(
            f"| {r.op} | {r.size} | {r.provider} | {r.pass_} | {format_ms(r.bound_ms)} | "
            f"{cell(r.median_ms, r.x_bound)} | {cell(r.device_ms, r.device_x_bound)} | "
            f"{cell(r.graph_ms, r.graph_x_bound)} | {_ratio(r.median_ms, r.device_ms)} |"
        )
    return [*lines, ""]


def write_markdown(path: str, rows: list[Row], bandwidths: list[Bandwidth], args) -> None:
    dtype = rows[0].dtype if rows else args.dtype
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Op benchmarks on {args.device} ({dtype})", ""]
    if args.quick:
        lines += ["**Quick run: small sizes and few repetitions, a smoke test of the harness. "
                  "These are not results.**", ""]
    elif getattr(args, "few_repeats", False):
        lines += ["**Few repetitions (--few-repeats, a time-boxed run): medians over fewer samples than a "
                  "full run; the quantiles show how far to trust them.**", ""]
    lines += [
        f"Measured {when}, ddpm_pa_fast {rows[0].package_version if rows else ''}. Command: "
        f"`python -m benchmarks.bench_ops {' '.join(sys.argv[1:])}`.",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in describe_machine(args.device)],
        "",
        f"Measured bandwidth on {args.device} (float32 buffers far larger than the last-level cache), "
        f"again before each case, whose bound uses its own: read (sum) "
        f"{_bandwidth_range([b.read for b in bandwidths])}, write (fill) "
        f"{_bandwidth_range([b.write for b in bandwidths])}, copy "
        f"{_bandwidth_range([b.copy for b in bandwidths])} (bytes read + written).",
        "",
        "How to read the tables:",
        "- ms: median over repetitions, (20th-80th percentile). fwd runs with autograd recording; bwd is",
        "  the backward alone, after an untimed forward; fwd+bwd both. Every provider was first checked",
        "  against the float64 reference (outputs, and gradients with a random upstream gradient); a wrong",
        "  one is not timed.",
        "- / ours: the provider's median divided by our kernel's (above 1: ours is faster by that factor).",
        "- / bound: the median divided by the memory-traffic bound: the least bytes the pass must move (row",
        "  'bound', in MiB) at the bandwidth measured just before the case (our kernel is timed first),",
        "  reads paired with writes at copy speed, the rest at read or write speed",
        "  (benchmarks/harness.py, Bandwidth.bound_seconds).",
        "- peak extra MiB: bytes allocated during one call above those allocated before it (CPU:",
        "  torch.profiler memory events; CUDA: max_memory_allocated), including outputs and tensors saved",
        "  for backward.",
        "- status: ok (with the dtypes it was checked in against the float64 reference), or why a provider",
        "  has no numbers (unavailable, unsupported, skipped, wrong, oom, error).",
        "",
        REGENERATE,
        *(targets_table(rows) if args.device == "cpu" else []),
        "## Results",
        "",
        *markdown_tables(rows, args.device),
        *(device_time_table(rows) if args.device == "cuda" else []),
    ]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


def write_on_paper(path: str, cases) -> None:
    """Bytes each op must move per pass at the benchmark sizes, and the time that takes at peak HBM rate."""
    gpus = list(GPU_PEAK_BANDWIDTH)
    header = ["op", "size", "pass"]
    for dtype in ("float32", "bf16"):
        header += [f"MiB ({dtype})"] + [f"{gpu.split(' (')[0]} us ({dtype})" for gpu in gpus]
    lines = [
        "# GPU time on paper: bytes moved per op and the time at peak HBM bandwidth",
        "",
        "No GPU was used: for each op, size and pass, the least bytes it must read plus write (the traffic",
        "model of benchmarks/bench_ops.py: fused loss forward reads x_t, eps_ada, eps_src and noise once;",
        "backward reads x_t, eps_ada and noise and writes the gradient; pairwise KL reads both feature sets",
        "forward, ada and its gradient backward; Haar maps read and write each tensor once), divided by the",
        "data-sheet peak bandwidth: " + ", ".join(gpus) + ".",
        "",
        "Caveats: real kernels reach perhaps 80-90% of peak on long streams, and these passes move from",
        "under 1 to 48 MiB, short enough that launch latency (a few us per kernel) is of the same order.",
        "Both GPUs have a 50 MB L2 cache, which holds every input set here: in a training step that has just",
        "produced eps_ada, part of the traffic may hit L2 and beat these times; `--device cuda` times with",
        "triton.testing.do_bench, which flushes L2 before each repetition, so it measures the HBM case.",
        "Measure with `python -m benchmarks.bench_ops --device cuda` on the GPU.",
        "Regenerate: `python -m benchmarks.bench_ops --on-paper`.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for case in cases:
        per_dtype = {size: case.traffic(size) for size in (4, 2)}
        for pass_ in PASSES:
            cells = [case.op, case.size, pass_]
            for element_size in (4, 2):
                traffic = per_dtype[element_size][pass_]
                nbytes = traffic.read + traffic.write
                cells.append(f"{nbytes / 2**20:.1f}")
                cells += [f"{nbytes / bandwidth * 1e6:.1f}" for bandwidth in GPU_PEAK_BANDWIDTH.values()]
            lines.append("| " + " | ".join(cells) + " |")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
