"""Every public function and module on meta and fake tensors, forward and backward (issue 21 I):
shape inference without data, as `torch.device("meta")` model construction and FakeTensorMode use.
pytorch/pytorch#144727's kind: a data-dependent op (torch.nonzero of a boolean mask) in the reference
made pairwise_similarity_kl and the loss raise on meta tensors."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import ddpm_pa_fast as D

N, C, H, W = 3, 2, 8, 8

CASES = {
    "ddpm_pa_high_frequency": lambda t: D.ddpm_pa_high_frequency(t(N, C, H, W)),
    "haar_dwt2d": lambda t: D.haar_dwt2d(t(N, C, H - 1, W), 2)[1][1],
    "haar_idwt2d": lambda t: D.haar_idwt2d(t(N, C, 4, 4), [t(N, C, 3, 4, 4)]),
    "pairwise_similarity_kl": lambda t: D.pairwise_similarity_kl(
        t(N, C, H, W), t(N, C, H, W), reduction="none"
    ),
    "ddpm_pa_loss": lambda t: D.ddpm_pa_loss(*(t(N, C, H, W) for _ in range(4)), t(N), t(N)).hf_mse,
    "ddpm_pa_loss weighted": lambda t: (
        D.ddpm_pa_loss(
            *(t(N, C, H, W) for _ in range(4)), t(N), t(N), mse_weight=t(N), hf_mse_weight=t(N)
        ).loss
    ),
    "DDPMPALoss": lambda t: D.DDPMPALoss()(*(t(N, C, H, W) for _ in range(4)), t(N), t(N)).loss,
    "PairwiseSimilarityKL": lambda t: D.PairwiseSimilarityKL()(t(N, 5), t(N, 5)),
    "DDPMPAHighFrequency": lambda t: D.DDPMPAHighFrequency()(t(N, C, H, W)),
    "DWTForward": lambda t: D.DWTForward(J=2)(t(N, C, H, W))[0],
    "DWTInverse": lambda t: D.DWTInverse()((t(N, C, 4, 4), [t(N, C, 3, 4, 4)])),
}


def _real_shape(case) -> torch.Size:
    g = torch.Generator().manual_seed(0)
    return CASES[case](lambda *shape: torch.rand(*shape, generator=g) + 0.5).shape


@pytest.mark.parametrize("case", list(CASES))
def test_public_api_on_meta_tensors_forward_and_backward(case):
    inputs = []

    def meta(*shape):
        inputs.append(torch.empty(*shape, device="meta", requires_grad=True))
        return inputs[-1]

    out = CASES[case](meta)
    assert out.device.type == "meta" and out.shape == _real_shape(case)
    out.sum().backward()
    assert any(x.grad is not None and x.grad.device.type == "meta" for x in inputs)


@pytest.mark.parametrize("case", list(CASES))
def test_public_api_on_fake_tensors_forward_and_backward(case):
    expected = _real_shape(case)
    with FakeTensorMode():
        inputs = []

        def fake(*shape):
            inputs.append(torch.empty(*shape, requires_grad=True))
            return inputs[-1]

        out = CASES[case](fake)
        assert out.shape == expected
        out.sum().backward()
        assert any(x.grad is not None and x.grad.shape == x.shape for x in inputs)
