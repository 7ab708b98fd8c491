"""ddpm_pa_fast.adapters_off: the source prediction of DDPM-PA from the LoRA-adapted model itself.

Checked on the two UNets of the field: diffusers' UNet2DModel with LoRA injected by peft (it has no
add_adapter), and a tiny text-conditioned UNet2DConditionModel (DomainStudio's setting) through
diffusers' own add_adapter.
"""

from __future__ import annotations

import copy

import diffusers
import peft
import pytest
import torch

import ddpm_pa_fast as D
from ddpm_pa_fast.testing import ddpm_like_batch

SIZE = 8


# Both UNets at a tiny size, attention in one block of each (LoRA's usual targets).
TINY = dict(
    sample_size=SIZE, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4
)


def _unet2d():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        dropout=0.1,
        **TINY,
    )


def _unet2d_condition():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12,
        **TINY,
    )


# LoRA B starts at zero in PEFT (the adapted model starts as the source); init_lora_weights=False
# draws it at random, so that adapters on and off really differ here.
LORA = dict(r=4, lora_alpha=4, lora_dropout=0.1, init_lora_weights=False)


def _adapted_unet2d():
    base = _unet2d()
    model = copy.deepcopy(base)
    config = peft.LoraConfig(target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"], **LORA)
    model = peft.inject_adapter_in_model(config, model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return base, model, {}


def _adapted_unet2d_condition():
    base = _unet2d_condition()
    model = copy.deepcopy(base)
    model.add_adapter(peft.LoraConfig(target_modules=["to_q", "to_k", "to_v", "to_out.0"], **LORA))
    text = torch.randn(4, 5, 12, generator=torch.Generator().manual_seed(1))
    return base, model, {"encoder_hidden_states": text}


MODELS = [
    pytest.param(_adapted_unet2d, id="UNet2DModel-peft"),
    pytest.param(_adapted_unet2d_condition, id="UNet2DConditionModel-add_adapter"),
]


def _batch(model, seed=0):
    channels = model.config.in_channels
    x_t, eps_ada, eps_src, noise, a_t, b_t = (
        t.float() for t in ddpm_like_batch((4, channels, SIZE, SIZE), seed)
    )
    t = torch.tensor([3, 250, 600, 999])
    return x_t, t, noise, a_t.float(), b_t.float()


def _lora_parameters(model):
    return {name: p for name, p in model.named_parameters() if "lora_" in name}


@pytest.mark.parametrize("make", MODELS)
def test_adapters_off_is_the_base_model_bit_for_bit_and_everything_comes_back(make):
    base, model, kwargs = make()
    base.eval()
    model.train()
    x_t, t, *_ = _batch(model)
    with torch.no_grad():
        adapted_before = model.eval()(x_t, t, **kwargs).sample
        source = base(x_t, t, **kwargs).sample
    model.train()
    assert not torch.equal(adapted_before, source)  # the adapters do change the prediction
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    with D.adapters_off(model) as source_model:
        assert source_model is model and not model.training and not torch.is_grad_enabled()
        off = model(x_t, t, **kwargs).sample
    assert torch.equal(off, source)  # float32, exactly the base model's prediction
    assert not off.requires_grad
    assert model.training and all(m.training for m in model.modules())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    with torch.no_grad():
        assert torch.equal(model.eval()(x_t, t, **kwargs).sample, adapted_before)


@pytest.mark.parametrize("make", MODELS)
def test_ddpm_pa_with_one_copy_equals_the_two_copy_way(make):
    """The loss and the adapter gradients with the source from adapters_off equal those with a separate
    frozen source model, and only adapter parameters get a gradient."""
    base, model, kwargs = make()
    model.eval()  # no dropout: both ways see the same adapted prediction
    x_t, t, noise, a_t, b_t = _batch(model, seed=3)
    loss_fn = D.DDPMPALoss()
    results = []
    for source in ("adapters_off", "frozen copy"):
        model.zero_grad(set_to_none=True)
        if source == "adapters_off":
            with D.adapters_off(model):
                eps_src = model(x_t, t, **kwargs).sample
        else:
            with torch.no_grad():
                eps_src = base.eval()(x_t, t, **kwargs).sample
        eps_ada = model(x_t, t, **kwargs).sample
        out = loss_fn(x_t, eps_ada, eps_src, noise, a_t, b_t)
        out.loss.backward()
        grads = {name: p.grad.clone() for name, p in _lora_parameters(model).items()}
        results.append((out.loss.detach(), grads))
    (loss_one, grads_one), (loss_two, grads_two) = results
    assert torch.equal(loss_one, loss_two)
    assert grads_one.keys() == grads_two.keys() and grads_one
    for name in grads_one:
        assert torch.equal(grads_one[name], grads_two[name]), name
    assert all(p.grad is None for name, p in model.named_parameters() if "lora_" not in name)


def test_a_model_without_adapters_is_refused_by_name():
    with pytest.raises(ValueError, match=r"model \(UNet2DModel\) holds no PEFT adapter layer"):
        with D.adapters_off(_unet2d()):
            pass


def test_state_comes_back_after_an_exception_and_per_module_modes_are_kept():
    _, model, kwargs = _adapted_unet2d()
    model.train()
    model.mid_block.eval()  # a module the user keeps in eval mode stays so
    frozen = next(iter(_lora_parameters(model).values()))
    frozen.requires_grad_(False)  # an adapter parameter the user froze stays frozen
    with pytest.raises(RuntimeError, match="inside"):
        with D.adapters_off(model):
            raise RuntimeError("inside")
    assert model.training and not model.mid_block.training
    assert not frozen.requires_grad
    assert all(p.requires_grad for p in list(_lora_parameters(model).values())[1:])
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert all(not m.disable_adapters for m in model.modules() if isinstance(m, BaseTunerLayer))
