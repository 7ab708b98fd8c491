"""Benchmarks of ddpm_pa_fast's ops against the reference, torch.compile, the authors' code and peers.

Entry point: `python -m benchmarks.bench_ops` (see its docstring); results in benchmarks/results/.
"""
