"""Smoke tests of the benchmark harness: small sizes, seconds.

The harness's correctness gate must reject a wrong provider, the authors' formulation must compute the
reference's maths, the peers' Haar maps must be the same maps as ours, failures must become rows, and
the CSV must hold the rows.
"""

from __future__ import annotations

import functools

import pytest
import torch

from benchmarks import authors, bench_ops, peers
from benchmarks.harness import (
    CSV_FIELDS,
    Bandwidth,
    Provider,
    TimingConfig,
    Traffic,
    measure,
    read_csv,
    reference_expectation,
    write_csv,
)
from ddpm_pa_fast import BackendUnavailableError, reference
from tests.common import assert_close, make_loss_sample, similar_features

FAST = TimingConfig(warmup=1, min_repeats=2, max_repeats=3, min_time=0.0, slow_repeats=1)
BANDWIDTH = Bandwidth(read=10e9, write=10e9, copy=10e9)


def _case(op, quick=True, index=0):
    return [c for c in bench_ops.build_cases([op], quick=quick) if c.op == op][index]


def _measure(case, provider, dtype=torch.float32, passes=("fwd",), memory=False):
    expected = reference_expectation(case, dtype)
    return measure(case, provider, expected, dtype, "cpu", FAST, BANDWIDTH, passes=passes, memory=memory)


def _hf_with_band1_sign_flipped(x):
    """band3 + band1 - band2 instead of band3 - band1 - band2."""
    return [reference.ddpm_pa_high_frequency(x) + 2 * reference.haar_dwt2d(x)[1][0][:, :, 0]]


def _kl_halved(src, ada):
    """A scaling error of a tiny value (the KL of similar batches is about 1e-6)."""
    return [0.5 * reference.pairwise_similarity_kl(src, ada)]


def _loss_with_gradient_one_percent_high(*args):
    """Every forward value exact; the gradient of the total 1% too large."""
    out = reference.ddpm_pa_loss(*args)
    return [out.loss + 0.01 * (out.loss - out.loss.detach()), *out[1:]]


@pytest.mark.parametrize(
    "op, wrong",
    [
        ("ddpm_pa_high_frequency", _hf_with_band1_sign_flipped),
        ("pairwise_similarity_kl", _kl_halved),
        ("ddpm_pa_loss", _loss_with_gradient_one_percent_high),
    ],
    ids=["hf-band-sign", "kl-halved", "loss-gradient-1pct"],
)
def test_harness_rejects_a_wrong_provider_and_does_not_time_it(op, wrong):
    case = _case(op)
    rows = _measure(case, Provider("wrong", wrong), passes=("fwd", "bwd"))
    assert [r.pass_ for r in rows] == ["fwd", "bwd"]
    for r in rows:
        assert r.status.startswith("wrong:"), r.status
        assert r.median_ms is None


def test_harness_accepts_and_times_the_reference_in_float32():
    provider = Provider("torch", bench_ops._list_output(reference.pairwise_similarity_kl))
    rows = _measure(_case("pairwise_similarity_kl"), provider, passes=("fwd", "bwd", "fwd+bwd"), memory=True)
    for r in rows:
        assert r.status == "ok", r.status
        assert r.checked == "float64 + float32"
        assert 0 < r.q20_ms <= r.median_ms <= r.q80_ms
        assert r.bound_ms > 0 and r.x_bound == pytest.approx(r.median_ms / r.bound_ms)
        # The forward's outputs and saved tensors are at least the (N, N - 1) similarity matrices.
        assert r.peak_extra_bytes > 0


def test_a_provider_without_float64_is_checked_in_the_benchmarked_dtype_only():
    def float32_only(x):
        if x.dtype == torch.float64:
            raise TypeError("float64 is not supported")
        return [reference.ddpm_pa_high_frequency(x)]

    def float32_only_and_wrong(x):
        return [2 * y for y in float32_only(x)]

    case = _case("ddpm_pa_high_frequency")
    rows = _measure(case, Provider("f32", float32_only))
    assert (rows[0].status, rows[0].checked) == ("ok", "not float64 (TypeError) + float32")
    rows = _measure(case, Provider("f32-wrong", float32_only_and_wrong))
    assert rows[0].status.startswith("wrong: float32 output 0")


def test_unavailable_failing_and_out_of_memory_providers_become_rows():
    case = _case("ddpm_pa_high_frequency")

    def fails(x):
        raise NotImplementedError("not written yet")

    def out_of_memory(x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    rows = _measure(case, Provider("gone", unavailable="unavailable: not built"))
    assert rows[0].status == "unavailable: not built"
    rows = _measure(case, Provider("fails", fails))
    assert rows[0].status == "error: NotImplementedError: not written yet"
    rows = _measure(case, Provider("oom", out_of_memory))
    assert rows[0].status == "oom"


@pytest.mark.parametrize(
    "error",
    [BackendUnavailableError("backend 'cpu' is not available: not built"), ImportError("no triton_ops")],
    ids=["not-built", "module-missing"],
)
def test_our_backends_that_cannot_run_are_reported_not_raised(monkeypatch, error):
    def resolve_backend(name, device):
        raise error

    monkeypatch.setattr(bench_ops, "resolve_backend", resolve_backend)
    case = _case("ddpm_pa_loss")
    providers = bench_ops.providers_for(case, "cpu", {"ours", "torch"})
    assert [p.name for p in providers] == ["cpu", "torch"]
    assert providers[0].unavailable == f"unavailable: {error}"
    rows = _measure(case, providers[0], passes=("fwd", "bwd"))
    assert [r.status for r in rows] == [f"unavailable: {error}"] * 2


def test_authors_loss_equals_the_reference_in_float64_forward_and_backward():
    sample = make_loss_sample((5, 4, 9, 7), seed=3)
    weights = (1.5, 2.0, 0.7, 0.8)  # w_pair, w_hf_pair, w_hf_mse, tau: all away from the defaults
    ours_eps = sample.eps_ada.clone().requires_grad_()
    ref_eps = sample.eps_ada.clone().requires_grad_()
    args = (sample.x_t, sample.eps_src, sample.noise, sample.a_t, sample.b_t)
    got = authors.ddpm_pa_loss(args[0], ours_eps, *args[1:], *weights)
    want = reference.ddpm_pa_loss(args[0], ref_eps, *args[1:], *weights)
    for name in want._fields:
        assert_close(getattr(got, name), getattr(want, name), torch.float64)
    upstream = torch.tensor(0.37, dtype=torch.float64)
    got.loss.backward(upstream)
    want.loss.backward(upstream)
    assert_close(ours_eps.grad, ref_eps.grad, torch.float64)


def test_authors_pair_kl_and_high_frequency_equal_the_reference_in_float64():
    src, ada = similar_features((4, 3, 6, 6), seed=5)
    ada_a, ada_r = ada.clone().requires_grad_(), ada.clone().requires_grad_()
    got = authors.pairwise_similarity_kl(src, ada_a, 0.5)
    want = reference.pairwise_similarity_kl(src, ada_r, 0.5)
    assert_close(got, want, torch.float64)
    got.backward(torch.tensor(1.7, dtype=torch.float64))
    want.backward(torch.tensor(1.7, dtype=torch.float64))
    assert_close(ada_a.grad, ada_r.grad, torch.float64)
    x = torch.randn(2, 4, 9, 7, dtype=torch.float64)  # 4 channels, odd sizes: last row/column dropped
    assert_close(authors.high_frequency(x), reference.ddpm_pa_high_frequency(x), torch.float64)


@pytest.mark.parametrize("peer", peers.PEERS)
def test_peer_high_frequency_maps_equal_ours(peer):
    provider = next(p for p in peers.high_frequency_providers() if p.name == peer)
    assert provider.unavailable is None, provider.unavailable
    x = torch.randn(3, 2, 8, 10, dtype=torch.float64)
    # pytorch_wavelets rounds its filters to float32.
    assert_close(provider.fn(x)[0], reference.ddpm_pa_high_frequency(x), torch.float32)


@pytest.mark.parametrize("levels", [1, 3])
def test_peer_dwt_providers_pass_the_gate_in_float64(levels):
    case = bench_ops.Case(
        "haar_dwt2d", f"2x2x16x16/J{levels}", functools.partial(bench_ops.image_inputs, (2, 2, 16, 16)),
        bench_ops._dwt_reference(levels), functools.partial(bench_ops.dwt_traffic, (2, 2, 16, 16), levels),
    )
    inverse = bench_ops.Case(
        "haar_idwt2d", case.size, functools.partial(bench_ops.coefficient_inputs, (2, 2, 16, 16), levels),
        bench_ops._idwt_reference, functools.partial(bench_ops.idwt_traffic, (2, 2, 16, 16), levels),
    )
    for c, providers in ((case, peers.dwt_providers(levels)),
                         (inverse, peers.idwt_providers(levels))):
        for provider in providers:
            rows = _measure(c, provider, dtype=torch.float64, passes=("fwd",))
            expected = "ok" if provider.name != "haar_pytorch" or levels == 1 else "unsupported:"
            assert rows[0].status.startswith(expected), (c.op, provider.name, rows[0].status)


def test_traffic_model_and_bound():
    # Fused loss at N=8, 3x256x256 in float32: 4 inputs forward; 3 reads and 1 write backward.
    b = 8 * 3 * 256 * 256 * 4
    traffic = bench_ops.loss_traffic((8, 3, 256, 256), 4)
    assert (traffic["fwd"].read, traffic["fwd"].write) == (4 * b, 0)
    assert (traffic["bwd"].read, traffic["bwd"].write) == (3 * b, b)
    assert (traffic["fwd+bwd"].read, traffic["fwd+bwd"].write) == (7 * b, b)
    # Three Haar levels of 8x8 write 48 + 12 + 3 detail and 1 approximation coefficients per image.
    assert bench_ops._coefficient_numel((1, 1, 8, 8), 3) == 64
    bandwidth = Bandwidth(read=2.0, write=1.0, copy=4.0)
    assert bandwidth.bound_seconds(Traffic(read=6, write=2)) == pytest.approx(2 * 2 / 4 + 4 / 2)
    assert bandwidth.bound_seconds(Traffic(read=1, write=3)) == pytest.approx(2 / 4 + 2 / 1)


def test_csv_rows_are_written_and_read_back(tmp_path):
    case = _case("ddpm_pa_high_frequency")
    rows = _measure(case, Provider("torch", bench_ops._list_output(reference.ddpm_pa_high_frequency)),
                    passes=("fwd", "bwd", "fwd+bwd"))
    rows += _measure(case, Provider("gone", unavailable="unavailable: not built"), passes=("fwd",))
    path = tmp_path / "cpu.csv"
    write_csv(rows, str(path))
    back = read_csv(str(path))
    assert list(back[0]) == CSV_FIELDS
    for key in ("op", "provider", "size", "dtype", "device", "pass", "torch_version", "package_version"):
        assert key in CSV_FIELDS
    assert [(r["provider"], r["pass"], r["status"]) for r in back] == [
        ("torch", "fwd", "ok"), ("torch", "bwd", "ok"), ("torch", "fwd+bwd", "ok"),
        ("gone", "fwd", "unavailable: not built"),
    ]
    assert all(r["op"] == "ddpm_pa_high_frequency" and r["size"] == case.size and r["dtype"] == "float32"
               and r["torch_version"] == torch.__version__ for r in back)
    assert float(back[0]["median_ms"]) > 0 and back[3]["median_ms"] == ""


def test_on_paper_table(tmp_path):
    bench_ops.main(["--on-paper", "--out", str(tmp_path)])
    text = (tmp_path / "gpu_on_paper.md").read_text()
    # N=8, 3x256x256 fused loss forward in float32: 4 x 6 MiB = 24 MiB; at 3.35 TB/s that is 7.5 us.
    assert "| ddpm_pa_loss | 8x3x256x256 | fwd | 24.0 | 7.5 | 5.2 |" in text


def test_plot_draws_from_the_csv(tmp_path):
    from benchmarks import plot

    case = _case("ddpm_pa_high_frequency")
    rows = _measure(case, Provider("torch", bench_ops._list_output(reference.ddpm_pa_high_frequency)),
                    passes=("fwd+bwd",))
    write_csv(rows, str(tmp_path / "cpu.csv"))
    plot.main([str(tmp_path / "cpu.csv")])
    assert (tmp_path / "cpu.png").stat().st_size > 1000


def test_command_measures_bandwidth_per_case_and_reports_it(tmp_path, monkeypatch):
    measured = []

    class FakeProbe:
        def __init__(self, device, megabytes=512):
            pass

        def measure(self, config=None):
            measured.append(Bandwidth(read=(10 + len(measured)) * 1e9, write=5e9, copy=8e9))
            return measured[-1]

    monkeypatch.setattr(bench_ops, "BandwidthProbe", FakeProbe)
    bench_ops.main(["--quick", "--ops", "pairwise_similarity_kl", "--providers", "torch", "--passes", "fwd",
                    "--no-memory", "--out", str(tmp_path)])
    cases = bench_ops.build_cases(["pairwise_similarity_kl"], quick=True)
    assert len(measured) == len(cases) > 1
    rows = read_csv(str(tmp_path / "cpu_quick.csv"))
    for case, bandwidth in zip(cases, measured, strict=True):
        (row,) = [r for r in rows if r["size"] == case.size]
        expected_ms = bandwidth.bound_seconds(case.traffic(4)["fwd"]) * 1e3
        assert float(row["bound_ms"]) == pytest.approx(expected_ms)
    report = (tmp_path / "cpu_quick.md").read_text()
    assert f"read (sum) 10.0-{9 + len(cases)}.0 GB/s" in report
    assert "instruction set of our CPU kernels" in report


def test_sizes_select_cases_and_each_finished_case_is_written(tmp_path, monkeypatch):
    """--sizes gives the cases' sizes, any NxCxHxW (the first GPU run asked for one outside the
    defaults); the CSV and markdown are rewritten after every case, so a run stopped part-way (here the
    second case's bandwidth probe fails) keeps the cases it finished."""
    measured = []

    class SecondProbeFails:
        def __init__(self, device, megabytes=512):
            pass

        def measure(self, config=None):
            if measured:
                raise RuntimeError("stopped part-way")
            measured.append(Bandwidth(read=10e9, write=5e9, copy=8e9))
            return measured[-1]

    monkeypatch.setattr(bench_ops, "BandwidthProbe", SecondProbeFails)
    sizes = ["16x3x64x64/J1", "16x3x64x64/J3"]
    assert [c.size for c in bench_ops.build_cases(["haar_dwt2d"], quick=False, sizes=sizes)] == sizes
    custom = ["5x2x12x10", "5x2x12x10/J2"]
    built = bench_ops.build_cases(["ddpm_pa_loss", "haar_idwt2d"], quick=False, sizes=custom)
    assert [(c.op, c.size) for c in built] == [("ddpm_pa_loss", "5x2x12x10"), ("haar_idwt2d", "5x2x12x10/J2")]
    for bad in ["1x1", "2x3x0x4", "2x3x4x4/J", "2x3x4x4/J0", "axbxcxd"]:
        with pytest.raises(ValueError, match=f"--sizes: '{bad}' is not NxCxHxW"):
            bench_ops.build_cases(["haar_dwt2d"], quick=False, sizes=[bad])
    with pytest.raises(RuntimeError, match="stopped part-way"):
        bench_ops.main(["--few-repeats", "--ops", "haar_dwt2d", "--sizes", *sizes, "--providers", "torch",
                        "--passes", "fwd", "--no-memory", "--out", str(tmp_path)])
    rows = read_csv(str(tmp_path / "cpu.csv"))
    assert [(r["size"], r["provider"], r["status"]) for r in rows] == [("16x3x64x64/J1", "torch", "ok")]
    assert "Few repetitions (--few-repeats" in (tmp_path / "cpu.md").read_text()


def test_train_step_cases_run_the_source_path_their_names_say(tmp_path):
    """bench_train_step's rows time what they name: the authors' way runs the source on the whole batch
    in train mode with autograd; the frozen cases on the pair subset in eval mode without it (the bf16
    one with bfloat16 weights); fine-tuning runs no source at all. The fused cases use the C++ loss."""
    from benchmarks import bench_train_step as B

    from .test_train_common import tiny_config

    base = tiny_config(tmp_path, batch_size=5, pair_size=3)
    cases = B.build_cases(base)
    seen = {name: B.record_source_forwards(trainer) for name, trainer in cases.items()}
    for trainer in cases.values():
        trainer.training_step()
    by_kind = {name.split(" (")[0]: kinds for name, kinds in seen.items()}
    assert by_kind["finetune"] == []
    assert by_kind["authors' way"] == [{"training": True, "grad": True, "rows": 5, "dtype": "float32"}]
    frozen = {"training": False, "grad": False, "rows": 3, "dtype": "float32"}
    assert by_kind["frozen source + unfused loss"] == [frozen]
    assert by_kind["frozen source + fused loss"] == [frozen]
    assert by_kind["frozen bf16 source + fused loss"] == [{**frozen, "dtype": "bfloat16"}]
    assert [t.loss_backend for t in cases.values()][1:] == ["torch", "torch", "cpu", "cpu"]
    assert B.describe_source_forwards(by_kind["authors' way"]) == "train, grad, 5 rows, float32"


# --- bench_ops --overhead (issue 23): each row runs what it names -----------------------------------


def test_overhead_cases_check_their_path_and_time_both_sides():
    from benchmarks import overhead

    cases = overhead.build_cases("cpu", "cpu")
    assert [c.op for c in cases] == list(overhead.TARGETS)
    assert all("backend='cpu'" in c.ours_label for c in cases)
    rows = overhead.measure(cases, "cpu", rounds=2)
    for row in rows:
        assert row["ours_us"] > 0 and row["native_us"] > 0
        assert row["ratio"] == pytest.approx(row["ours_us"] / row["native_us"])
        assert row["meets_target"] == (row["ratio"] <= row["target"])
    text = overhead.markdown(rows, [("CPU", "test")], "cpu", 2)
    assert text.count("\n| ") == 1 + len(rows) and "- CPU: test" in text


def test_overhead_refuses_a_backend_that_runs_something_else():
    from benchmarks import overhead

    with pytest.raises(AssertionError, match="backend 'auto' resolves to 'cpu'"):
        overhead.build_cases("cpu", "auto")


def test_cuda_rows_report_device_and_graph_time_against_the_bound():
    from benchmarks import report
    from benchmarks.harness import Row

    row = Row(op="ddpm_pa_loss", size="32x3x256x256", provider="cuda", dtype="float32", device="cuda",
              pass_="fwd+bwd", status="ok", median_ms=0.4, bound_ms=0.05, x_bound=8.0, device_ms=0.1,
              device_x_bound=2.0, graph_ms=0.12, graph_x_bound=2.4)
    skipped = Row(op="ddpm_pa_loss", size="32x3x256x256", provider="cuda", dtype="float32", device="cuda",
                  pass_="bwd", status="ok", median_ms=0.3)
    lines = report.device_time_table([row, skipped])
    table = [line for line in lines if line.startswith("| ddpm_pa_loss")]
    assert table == [
        "| ddpm_pa_loss | 32x3x256x256 | cuda | fwd+bwd | 0.05 | 0.4 (8x) | 0.1 (2x) | 0.12 (2.4x) | 4 |"
    ]


def test_device_times_are_measured_on_cuda_only():
    from benchmarks.harness import _device_times

    assert _device_times("fwd+bwd", lambda: None, [], "cpu") == {}


def test_lora_table_checks_its_accounting_against_the_trainer(tmp_path):
    pytest.importorskip("peft")
    from benchmarks import bench_lora

    out = tmp_path / "lora.md"
    bench_lora.main(["--rounds", "1", "--warmup", "0", "--out", str(out)])
    table = out.read_text()
    assert "552,812,038 parameters" in table  # guided-diffusion's 256x256 model: 552,814,086
    assert table.count("| LoRA r4 |") == 4 and table.count("| full |") == 4


def test_lora_parameter_count_is_what_peft_adds():
    pytest.importorskip("peft")
    from benchmarks.bench_lora import lora_parameter_count
    from ddpm_pa_fast.train import adapters
    from tests.test_train_common import tiny_unet

    def unet():
        return tiny_unet(
            attention_head_dim=4,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        )

    for rank in (1, 3):
        model = adapters.add_lora(unet(), rank, rank, 0.0, adapters.default_targets(unet()))
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert lora_parameter_count(unet(), rank) == trained > 0
