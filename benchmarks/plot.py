"""Bar charts from a benchmark CSV: one panel per op, sizes on the x axis, one bar per provider.

    python -m benchmarks.plot benchmarks/results/cpu.csv [--pass fwd+bwd] [-o benchmarks/results/cpu.png]

Bars are medians with 20-80% quantile whiskers on a log scale; a black dash marks the memory-traffic
bound of each size. Providers without numbers (unavailable, wrong, oom, ...) are left out.
"""

from __future__ import annotations

import argparse
import os

from .harness import PASSES, read_csv


def plot(csv_path: str, out_path: str, pass_: str = "fwd+bwd") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_csv(csv_path) if r["pass"] == pass_ and r["status"] == "ok"]
    if not rows:
        raise SystemExit(f"{csv_path}: no successful rows for pass {pass_!r}")
    ops = list(dict.fromkeys(r["op"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    colors = {p: f"C{i}" for i, p in enumerate(providers)}
    fig, axes = plt.subplots(len(ops), 1, figsize=(11, 3.2 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops, strict=True):
        op_rows = [r for r in rows if r["op"] == op]
        sizes = list(dict.fromkeys(r["size"] for r in op_rows))
        width = 0.8 / len(providers)
        for i, provider in enumerate(providers):
            xs, medians, low, high = [], [], [], []
            for j, size in enumerate(sizes):
                r = next((r for r in op_rows if r["size"] == size and r["provider"] == provider), None)
                if r is None:
                    continue
                median = float(r["median_ms"])
                xs.append(j - 0.4 + (i + 0.5) * width)
                medians.append(median)
                low.append(median - float(r["q20_ms"]))
                high.append(float(r["q80_ms"]) - median)
            if xs:
                ax.bar(xs, medians, width, yerr=[low, high], color=colors[provider], label=provider,
                       capsize=2)
        for j, size in enumerate(sizes):
            bound = next(float(r["bound_ms"]) for r in op_rows if r["size"] == size)
            ax.hlines(bound, j - 0.45, j + 0.45, colors="black", linewidth=2,
                      label="memory bound" if j == 0 else None)
        ax.set_xticks(range(len(sizes)), sizes)
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(f"{op} ({pass_}, {op_rows[0]['dtype']}, {op_rows[0]['device']})")
        ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__.split("\n")[0])
    parser.add_argument("csv")
    parser.add_argument("--pass", dest="pass_", default="fwd+bwd", choices=PASSES)
    parser.add_argument("-o", "--out", help="image path (default: the CSV's path with .png)")
    args = parser.parse_args(argv)
    out = args.out or os.path.splitext(args.csv)[0] + ".png"
    plot(args.csv, out, args.pass_)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
