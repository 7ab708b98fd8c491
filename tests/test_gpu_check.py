"""The GPU check's pure-Python parts, on the CPU: the summary, the pytest shard plugin, the carry check.

scripts/gpu_check.sh itself runs end to end in its --cpu-rehearsal mode (docs/gpu_checklist.md); these
tests pin the pieces that decide what the summary says.
"""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys
import zipfile

from benchmarks.harness import Row, write_csv

ROOT = pathlib.Path(__file__).resolve().parent.parent
_SUMMARY = ROOT / "scripts" / "gpu_check" / "summary.py"
_spec = importlib.util.spec_from_file_location("gpu_check_summary", _SUMMARY)
summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summary)


def _bench_row(provider, median_ms, x_bound, status="ok", **device_times):
    return Row(op="ddpm_pa_loss", size="8x3x256x256", provider=provider, dtype="float32", device="cuda",
               pass_="fwd+bwd", status=status, median_ms=median_ms, min_bytes=48 * 2**20, bound_ms=0.0125,
               x_bound=x_bound, **device_times)


def test_summary_names_failures_counts_tests_and_relates_speed_to_the_data_sheet(tmp_path):
    (tmp_path / "run.env").write_text("MODE=gpu\nDEVICE=NVIDIA H200\nFINISHED=1\n")
    (tmp_path / "steps.tsv").write_text(
        "step\tstatus\trc\tseconds\tbudget\tlog\tnote\n"
        "build\tpass\t0\t100\t240\tbuild.log\t\n"
        "tests_cuda\tfail\t1\t90\t170\ttests_cuda.log\texit 1\n"
        "memcheck\ttimeout\t124\t150\t150\tmemcheck.log\tstopped after 150s\n"
        "memcheck\tpass\t0\t60\t150\tmemcheck.log\t\n"  # rerun with --only: the latest result counts
        "bench\tpass\t0\t120\t130\tbench.log\t\n"
    )
    (tmp_path / "build.log").write_text("[ddpm_pa_fast setup] building CPU + CUDA kernels (FORCE_CUDA=1)\n")
    (tmp_path / "memcheck.log").write_text(
        "ops_once: 126 passed, 0 failed\n========= ERROR SUMMARY: 0 errors\n"
    )
    (tmp_path / "tests_cuda.1.log").write_text(
        "collected 900 items / 600 deselected / 300 selected\n"
        "tests/test_ops.py::test_a[cuda] PASSED [ 1%]\n"
        "tests/test_ops.py::test_b[float32-cuda] FAILED [ 2%]\n"
    )
    (tmp_path / "tests_cuda.2.log").write_text("tests/test_ops.py::test_c[cuda] PASSED [ 50%]\n")
    (tmp_path / "bench").mkdir()
    rows = [_bench_row("cuda", 0.0125, 1.0, device_ms=0.00625, device_x_bound=0.5, graph_ms=0.01,
                       graph_x_bound=0.8),
            _bench_row("triton", 0.025, 2.0), _bench_row("torch", 1.0, 80.0),
            _bench_row("compile", 0.0, None, status="error: boom")]
    write_csv(rows, str(tmp_path / "bench" / "cuda.csv"))
    (tmp_path / "bench" / "overhead_cuda.md").write_text(
        "# Per-call cost\n\n| op | ours | us/call |\n|---|---|---|\n"
        "| ddpm_pa_loss | `x` | 31.0 |\n\nMachine:\n"
    )

    summary.write_summary(str(tmp_path))
    text = (tmp_path / "summary.md").read_text()
    assert "**FAIL**: tests_cuda fail" in text and "memcheck timeout" not in text
    assert "| memcheck | pass | 60 / 150 | ERROR SUMMARY: 0 errors |" in text
    assert "2 passed" in text and "1 failed" in text and "(of 300 selected)" in text
    assert "- `tests/test_ops.py::test_b[float32-cuda]`" in text
    row = next(line for line in text.splitlines() if line.startswith("| ddpm_pa_loss | 8x3x256x256 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # cuda, triton, torch, compile ms; cuda and triton / bound; their device and graph time / bound;
    # bound; data-sheet us; / data-sheet bound.
    assert cells[2:6] == ["0.0125", "0.025", "1", "error"]
    assert cells[6:8] == ["1x", "2x"]
    assert cells[8:12] == ["0.5x", "0.8x", "", ""]
    assert cells[13] == f"{48 * 2**20 / 4.8e12 * 1e6:.1f}"
    assert cells[14] == f"{0.0125e-3 / (48 * 2**20 / 4.8e12):.3g}x"
    assert "## Per-call host cost (bench_ops --overhead)" in text and "| ddpm_pa_loss | `x` | 31.0 |" in text


def test_summary_of_a_run_still_going_says_so(tmp_path):
    (tmp_path / "run.env").write_text("MODE=cpu-rehearsal\n")
    summary.write_summary(str(tmp_path))
    text = (tmp_path / "summary.md").read_text()
    assert "RUNNING (or stopped before the end)" in text and "CPU rehearsal" in text
    assert "No benchmark results" in text


def test_shard_plugin_deals_whole_test_functions_to_shards(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('i', range(5))\ndef test_five(i): pass\n"
        "@pytest.mark.parametrize('i', range(3))\ndef test_three(i): pass\n"
        "@pytest.mark.parametrize('i', range(2))\ndef test_two(i): pass\n"
        "def test_one(): pass\n"
    )
    shards = []
    for k in (1, 2):
        env = {"GPU_CHECK_SHARD": f"{k}/2", "PYTHONPATH": str(ROOT / "scripts" / "gpu_check"),
               "PATH": "/usr/bin:/bin"}
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "pytest_shard", "-p", "no:cacheprovider", "--collect-only",
             "-q", "test_sample.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        shards.append({line for line in result.stdout.splitlines() if "::" in line})
    assert not shards[0] & shards[1]
    assert len(shards[0] | shards[1]) == 11
    functions = [{test.split("::")[1].split("[")[0] for test in shard} for shard in shards]
    assert not functions[0] & functions[1]  # no function split between shards
    assert sorted(len(s) for s in shards) == [5, 6]  # five alone; three, two and one together


def test_carry_check_names_a_requirement_nobody_provides(tmp_path):
    def wheel(name, version, requires):
        path = tmp_path / f"{name}-{version}-py3-none-any.whl"
        metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata)

    wheel("alpha", "1.0", ["beta>=2", "torch", "gamma; python_version < '3.8'"])
    wheel("beta", "2.1", [])
    check = [sys.executable, str(ROOT / "scripts" / "gpu_check" / "check_carry.py"), str(tmp_path)]
    result = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "taken from the machine: torch" in result.stdout
    wheel("delta", "1.0", ["beta>=3", "epsilon"])
    result = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "delta needs beta>=3, carried beta 2.1" in result.stdout
    assert "delta needs epsilon: neither carried nor on the GPU machine" in result.stdout


def test_gpu_scripts_parse():
    for script in ("gpu_check.sh", "gpu_carry.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], check=True, timeout=30)
