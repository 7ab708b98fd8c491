"""DDPM-PA with LoRA and one copy of the weights: the source model is the adapted model, adapters off.

DDPM-PA reads the frozen source model's prediction at every step. With full fine-tuning that needs a
second copy of the model; with LoRA (PEFT's adapters on a frozen base) it does not: the base with its
adapters disabled *is* the source model, bit for bit.

    from peft import LoraConfig
    unet.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    ...
    with adapters_off(unet):                                  # the source model, no gradient
        eps_src = unet(x_t, t, encoder_hidden_states=text).sample
    eps_ada = unet(x_t, t, encoder_hidden_states=text).sample  # the adapted model
    loss = DDPMPALoss()(x_t, eps_ada, eps_src, noise, a_t, b_t).loss
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

PEFT_HINT = "install peft (`pip install peft`, or the package's extra: `pip install ddpm_pa_fast[train]`)"


def _adapter_layers(modules: list[nn.Module]) -> list:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError as error:
        raise ImportError(f"adapters_off needs peft; {PEFT_HINT}") from error
    return [module for module in modules if isinstance(module, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_off(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, `model` is its base model: every PEFT adapter layer (LoRA and the other PEFT
    tuners) disabled, every module in eval mode (no dropout, LoRA's included), gradients off
    (torch.no_grad, not inference mode, so the prediction can enter the loss's autograd graph as a
    constant). On leaving, even by an exception, each adapter layer that was enabled is enabled again,
    each adapter parameter gets back its requires_grad, and each module its own training flag.

    model: an nn.Module holding PEFT adapter layers, however they were added: peft.get_peft_model,
    peft.inject_adapter_in_model, or diffusers' add_adapter (UNet2DConditionModel and the other models
    with PeftAdapterMixin). DDP-wrapped models work (their modules are walked).

    The prediction with adapters off equals the base model's exactly: PEFT's layers call the base layer
    alone when disabled (tests/test_lora.py checks it bit for bit in float32).

    Raises ImportError without peft, and ValueError when `model` holds no adapter layer (its prediction
    would be the adapted one, not the source's: full fine-tuning needs a frozen copy of the source).
    """
    # One walk of the module tree serves the layers and the modes (each walk of a UNet's ~400 modules
    # costs about a millisecond on a CPU, per step).
    modules = list(model.modules())
    layers = _adapter_layers(modules)
    if not layers:
        raise ValueError(
            f"model ({type(model).__name__}) holds no PEFT adapter layer, so disabling adapters would leave "
            "the adapted model: add LoRA with peft (get_peft_model, inject_adapter_in_model, or diffusers' "
            "add_adapter), or keep a frozen copy of the source model for full fine-tuning"
        )
    enabled = [layer for layer in layers if not layer.disable_adapters]
    # enable_adapters(True) marks every active adapter trainable: the flags are restored one by one.
    adapter_parameters = [
        (parameter, parameter.requires_grad)
        for layer in layers
        for name in layer.adapter_layer_names
        for parameter in getattr(layer, name).parameters()
    ]
    modes = [(module, module.training) for module in modules]
    try:
        for layer in enabled:
            layer.enable_adapters(False)
        model.eval()
        with torch.no_grad():
            yield model
    finally:
        for layer in enabled:
            layer.enable_adapters(True)
        for parameter, requires_grad in adapter_parameters:
            parameter.requires_grad_(requires_grad)
        for module, training in modes:
            module.training = training
