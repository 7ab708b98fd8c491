"""OUTDIR/summary.md from what scripts/gpu_check.sh left in OUTDIR: one page, standard library only.

    python3 scripts/gpu_check/summary.py OUTDIR

Reads OUTDIR/run.env (KEY=VALUE facts of the run), OUTDIR/steps.tsv (one line per finished step:
name, status, exit code, seconds, budget, log, note), the steps' logs and OUTDIR/bench/*.csv. Safe to
run at any time (gpu_check.sh runs it after every step), so a run stopped part-way still has one.
"""

from __future__ import annotations

import csv
import glob
import os
import re
import sys

# Data-sheet peak HBM bandwidth of the H200 SXM (benchmarks/report.py, GPU_PEAK_BANDWIDTH).
H200_BYTES_PER_S = 4.8e12
TEST_LINE = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
# A collection error: "ERROR tests/x.py" in pytest's short summary.
COLLECTION_ERROR = re.compile(r"^ERROR (tests/\S+)")


def _read(path):
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def read_env(outdir):
    env = {}
    for line in _read(os.path.join(outdir, "run.env")).splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def read_steps(outdir):
    """The steps in the order they first ran; a step run again (--only) shows its latest result."""
    steps = {}
    for line in _read(os.path.join(outdir, "steps.tsv")).splitlines():
        parts = line.split("\t")
        if len(parts) >= 6 and parts[0] != "step":
            name, status, rc, seconds, budget, log = parts[:6]
            steps[name] = {"name": name, "status": status, "rc": rc, "seconds": seconds, "budget": budget,
                           "log": log, "note": parts[6] if len(parts) > 6 else ""}
    return list(steps.values())


def pytest_counts(outdir, name):
    """Per-test outcomes from the -v lines of every shard log of step `name` (complete even when a
    shard was stopped), and the failed/errored test ids."""
    counts, failed = {}, []
    paths = sorted(glob.glob(os.path.join(outdir, f"{name}.*.log"))) + [os.path.join(outdir, f"{name}.log")]
    for path in paths:
        seen = set()
        for line in _read(path).splitlines():
            match = TEST_LINE.match(line)
            if match and match.group(1) not in seen:
                seen.add(match.group(1))
                outcome = match.group(2).lower()
                counts[outcome] = counts.get(outcome, 0) + 1
                if outcome in ("failed", "error", "xpass"):
                    failed.append(match.group(1))
            collection = COLLECTION_ERROR.match(line)
            if collection:
                counts["collection errors"] = counts.get("collection errors", 0) + 1
                failed.append(f"{collection.group(1)} (collection)")
    selected = 0
    for path in glob.glob(os.path.join(outdir, f"{name}.*.log")):
        match = re.search(r"collected \d+ items(?: / (\d+) deselected)?(?: / (\d+) selected)?", _read(path))
        if match and match.group(2):
            selected += int(match.group(2))
    return counts, sorted(set(failed)), selected


def step_detail(outdir, step):
    """A short line of what the step's log says."""
    if step["status"] == "skipped" and step["note"]:
        return step["note"]
    name, log = step["name"], _read(os.path.join(outdir, step["log"])) if step["log"] else ""
    if name.startswith("tests_"):
        parts = []
        for label, logs in ((name, name), ("CPU twin", f"{name}_cpu_twin")):
            counts, _, selected = pytest_counts(outdir, logs)
            if label != name and not counts:
                continue
            shown = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no test finished"
            prefix = "" if label == name else f"{label}: "
            parts.append(prefix + shown + (f" (of {selected} selected)" if selected else ""))
        return "; ".join(parts)
    lines = log.splitlines()
    for pattern in (r"ERROR SUMMARY: .*", r"RACECHECK SUMMARY: .*", r"ops_once: .*", r"train_step: .*",
                    r"\[ddpm_pa_fast setup\] .*", r"bench: .*", r"wheels: .*", r"env: .*"):
        found = [m.group(0) for line in lines for m in [re.search(pattern, line)] if m]
        if found:
            return found[-1][:160]
    return step["note"]


def speed_table(outdir):
    """fwd+bwd per op and size: our kernels, eager torch and torch.compile, and time / bound."""
    rows = []
    for path in sorted(glob.glob(os.path.join(outdir, "bench", "*.csv"))):
        with open(path, newline="") as fh:
            rows += list(csv.DictReader(fh))
    rows = [r for r in rows if r.get("pass") == "fwd+bwd"]
    if not rows:
        return ["No benchmark results (see the bench step above)."]
    present = {r["provider"] for r in rows}
    providers = [p for p in ("cuda", "triton", "cpu", "torch", "compile") if p in present]
    ours = [p for p in providers if p in ("cuda", "triton", "cpu")]
    header = ["op", "size"] + [f"{p} ms" for p in providers]
    header += [f"{p} / bound" for p in ours]
    # The kernels' own time and a CUDA-graph replay's, each / bound (CUDA rows; empty elsewhere).
    header += [f"{p} {kind} / bound" for p in ours for kind in ("device", "graph")]
    header += ["bound ms (measured BW)", "H200 data-sheet bound us"]
    header += [f"{p} / data-sheet bound" for p in ours]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for op, size in dict.fromkeys((r["op"], r["size"]) for r in rows):
        by = {r["provider"]: r for r in rows if r["op"] == op and r["size"] == size}
        any_row = next(iter(by.values()))

        def ms(p, by=by):
            r = by.get(p)
            if r is None:
                return ""
            if r["status"] != "ok":
                return r["status"].split(":")[0]
            return f"{float(r['median_ms']):.3g}"

        cells = [op, size] + [ms(p) for p in providers]
        for p in ours:
            r = by.get(p)
            cells.append(f"{float(r['x_bound']):.3g}x" if r and r["status"] == "ok" and r["x_bound"] else "")
        for p in ours:
            r = by.get(p)
            for kind in ("device", "graph"):
                x = r.get(f"{kind}_x_bound") if r and r["status"] == "ok" else None
                cells.append(f"{float(x):.3g}x" if x else "")
        bound_ms = any_row.get("bound_ms")
        cells.append(f"{float(bound_ms):.3g}" if bound_ms else "")
        paper_s = int(any_row["min_bytes"]) / H200_BYTES_PER_S if any_row.get("min_bytes") else None
        cells.append(f"{paper_s * 1e6:.1f}" if paper_s else "")
        for p in ours:
            r = by.get(p)
            ok = r and r["status"] == "ok" and paper_s
            cells.append(f"{float(r['median_ms']) / 1e3 / paper_s:.3g}x" if ok else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_summary(outdir):
    env, steps = read_env(outdir), read_steps(outdir)
    rehearsal = env.get("MODE") == "cpu-rehearsal"
    bad = [s for s in steps if s["status"] not in ("pass", "skipped")]
    finished = env.get("FINISHED")
    verdict = "RUNNING (or stopped before the end)" if not finished else ("PASS" if not bad else "FAIL")
    lines = [
        f"# GPU check{' (CPU rehearsal: GPU steps replaced by their CPU equivalents)' if rehearsal else ''}",
        "",
        f"**{verdict}**" + (f": {', '.join(s['name'] + ' ' + s['status'] for s in bad)}" if bad else ""),
        "",
        "| | |",
        "|---|---|",
    ]
    for key in ("MODE", "DEVICE", "TORCH", "TRITON", "NVCC", "PYTHON", "COMMIT", "STARTED", "CORES",
                "ARCH", "WHEELS", "TOTAL_BUDGET_S", "WALL_S"):
        if key in env:
            lines.append(f"| {key.lower()} | {env[key]} |")
    lines += [
        "",
        "## Steps",
        "",
        "| step | status | seconds / budget | result | log |",
        "|---|---|---|---|---|",
    ]
    for s in steps:
        detail = step_detail(outdir, s).replace("|", "/")
        if s["status"] == "timeout" and detail != s["note"]:
            detail = f"{s['note']}; so far: {detail}"
        cells = [s["name"], s["status"], f"{s['seconds']} / {s['budget']}", detail, s["log"]]
        lines.append("| " + " | ".join(cells) + " |")
    for s in steps:
        if s["name"].startswith("tests_"):
            failed = pytest_counts(outdir, s["name"])[1] + pytest_counts(outdir, f"{s['name']}_cpu_twin")[1]
            if failed:
                lines += ["", f"### {s['name']}: failed tests ({len(failed)})", ""]
                lines += [f"- `{t}`" for t in failed[:30]]
                if len(failed) > 30:
                    lines.append(f"- ... {len(failed) - 30} more in {s['name']}.*.log")
    lines += ["", "## Speed (forward + backward, median ms)", ""]
    lines += speed_table(outdir)
    overhead = _read(os.path.join(outdir, "bench", f"overhead_{'cpu' if rehearsal else 'cuda'}.md"))
    if overhead:
        lines += ["", "## Per-call host cost (bench_ops --overhead)", ""]
        lines += [line for line in overhead.splitlines() if line.startswith("|")]
    lines += [
        "",
        "time / bound: the median over the least bytes the pass must move at the bandwidth measured just",
        "before the case (bench/*.md has every pass, quantiles and peak memory); the data-sheet columns use",
        "the H200's 4.8 TB/s instead.",
        "",
        "Rerun one step alone (the build is kept): `bash scripts/gpu_check.sh OUTDIR --only STEP`, STEP one",
        "of: env wheels build tests_cuda tests_triton memcheck racecheck memcheck_triton train bench",
        "(docs/gpu_checklist.md).",
    ]
    # Steps run side by side each rewrite the summary: write a copy, then rename it into place.
    path = os.path.join(outdir, "summary.md")
    with open(f"{path}.{os.getpid()}.tmp", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(f"{path}.{os.getpid()}.tmp", path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python3 scripts/gpu_check/summary.py OUTDIR")
    write_summary(sys.argv[1])
