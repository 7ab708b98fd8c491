"""A pytest plugin that keeps one shard of the selected tests: GPU_CHECK_SHARD=K/N (K in 1..N).

    PYTHONPATH=scripts/gpu_check GPU_CHECK_SHARD=2/6 python3 -m pytest -p pytest_shard ...

Tests are grouped by test function (its parametrizations share compiled Triton kernels, so one
process compiles them once) and the groups are dealt to the N shards largest first, each to the shard
with the fewest tests so far. Every process computes the same split from the same collection.
"""

from __future__ import annotations

import os


def _shard():
    value = os.environ.get("GPU_CHECK_SHARD", "")
    if not value:
        return None
    k, n = (int(part) for part in value.split("/"))
    if not 1 <= k <= n:
        raise ValueError(f"GPU_CHECK_SHARD={value}: expected K/N with 1 <= K <= N")
    return k, n


def pytest_collection_modifyitems(config, items):
    shard = _shard()
    if shard is None:
        return
    k, n = shard
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(item.nodeid.split("[", 1)[0], []).append(item)
    loads = [0] * n
    owner = {}
    for name in sorted(groups, key=lambda g: (-len(groups[g]), g)):
        target = min(range(n), key=lambda s: (loads[s], s))
        owner[name] = target
        loads[target] += len(groups[name])
    keep = [item for item in items if owner[item.nodeid.split("[", 1)[0]] == k - 1]
    dropped = [item for item in items if owner[item.nodeid.split("[", 1)[0]] != k - 1]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


def pytest_report_header(config):
    shard = _shard()
    return None if shard is None else f"gpu_check shard {shard[0]}/{shard[1]}"
