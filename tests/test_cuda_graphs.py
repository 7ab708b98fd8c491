"""CUDA-graph readiness (issue 23, item 2): every op's forward and backward can be captured.

A host synchronisation (`.item()`, a device-to-host copy), a pageable host-to-device copy or a CPU
tensor made per call raises during stream capture ("operation not permitted when stream is
capturing"), and a data-dependent shape cannot be captured at all. So each test captures the ops'
forward and backward, replays with new values written into the static inputs, and compares with an
eager run on those values; the compiled variant checks that torch.compile(mode="reduce-overhead")
really ran the step as a CUDA graph (no cudagraph skip). On a machine without a GPU these tests do not
run; what was checked without one (each launcher read for host syncs and host tensors) is in
docs/gpu_checklist.md.
"""

from __future__ import annotations

import pytest
import torch

import ddpm_pa_fast as D
from tests.common import make_loss_sample

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]

GPU_BACKENDS = [pytest.param("cuda", id="cuda-kernels"), pytest.param("triton", id="cuda-triton")]
SHAPE = (4, 3, 16, 16)


def _inputs(seed: int):
    s = make_loss_sample(SHAPE, seed=seed, dtype=torch.float32, device="cuda")
    return [s.x_t, s.eps_ada, s.eps_src, s.noise, s.a_t, s.b_t]


def _total(backend: str, loss_module, x_t, eps_ada, eps_src, noise, a_t, b_t):
    """Every op once, summed into one scalar that depends on eps_ada through each."""
    out = loss_module(x_t, eps_ada, eps_src, noise, a_t, b_t)
    hf = D.ddpm_pa_high_frequency(eps_ada, backend=backend)
    yl, yh = D.haar_dwt2d(eps_ada, 2, backend=backend)
    back = D.haar_idwt2d(yl, yh, backend=backend)
    kl = D.pairwise_similarity_kl(eps_src.flatten(1), eps_ada.flatten(1), backend=backend)
    return out.loss + hf.square().mean() + back.square().mean() + kl


def _step(backend: str, loss_module, x_t, eps_ada, eps_src, noise, a_t, b_t):
    """_total forward and backward into eps_ada; returns (total, its gradient)."""
    total = _total(backend, loss_module, x_t, eps_ada, eps_src, noise, a_t, b_t)
    (grad,) = torch.autograd.grad(total, eps_ada)
    return total, grad


def _eager(backend: str, values):
    eps_ada = values[1].detach().clone().requires_grad_(True)
    args = [*values[:1], eps_ada, *values[2:]]
    total, grad = _step(backend, D.DDPMPALoss(backend=backend), *args)
    return total.detach(), grad


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_forward_and_backward_of_every_op_capture_and_replay(backend):
    static = [t.clone() for t in _inputs(0)]
    static[1].requires_grad_(True)
    loss_module = D.DDPMPALoss(backend=backend)
    # Warm-up on a side stream, as torch.cuda.graphs asks: compiles Triton kernels, fills the caches.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            _step(backend, loss_module, *static)
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_total, static_grad = _step(backend, loss_module, *static)

    for seed in (1, 2):
        values = _inputs(seed)
        with torch.no_grad():
            for dst, src in zip(static, values, strict=True):
                dst.copy_(src)
        graph.replay()
        torch.cuda.synchronize()
        total, grad = _eager(backend, values)
        torch.testing.assert_close(static_total, total, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(static_grad, grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_reduce_overhead_compile_runs_the_step_as_a_cuda_graph(backend):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    loss_module = D.DDPMPALoss(backend=backend)

    def forward(x_t, eps_ada, eps_src, noise, a_t, b_t):
        return _total(backend, loss_module, x_t, eps_ada, eps_src, noise, a_t, b_t)

    # The forward compiled whole; its backward is the compiled backward graph, which inductor also runs
    # as a CUDA graph under reduce-overhead.
    compiled = torch.compile(forward, mode="reduce-overhead", fullgraph=True)
    for seed in range(4):
        values = _inputs(seed)
        eps_ada = values[1].clone().requires_grad_(True)
        total = compiled(values[0], eps_ada, *values[2:])
        total.backward()
        expected_total, expected_grad = _eager(backend, values)
        torch.testing.assert_close(total.detach(), expected_total, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(eps_ada.grad, expected_grad, rtol=1e-5, atol=1e-6)
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
    # And a graph was recorded: the CUDA-graph tree of this device holds a root (torch's private
    # bookkeeping, read only here; a skip or a fallback to eager would leave it empty).
    from torch._inductor import cudagraph_trees

    manager = cudagraph_trees.get_manager(torch.cuda.current_device(), create_if_none_exists=False)
    assert manager is not None and any(manager.roots.values())
