"""LoRA for the trainer, through PEFT: which modules take adapters, and adapter folders written, loaded
and merged in the format PEFT reads (`PeftModel.from_pretrained`).

Under LoRA the trainer holds one copy of the source model's weights: the adapted model is the base with
adapters, and DDPM-PA's source prediction is that same module with its adapters off
(ddpm_pa_fast.adapters_off). An adapter folder holds adapter_config.json and adapter_model.safetensors
(the EMA weights of the adapters alone); the base is the source model folder it was trained from.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn

from ..lora import PEFT_HINT
from .sampling import ModelFolderError, load_model_folder

# What diffusers' LoRA training scripts target in a UNet: the attention projections
# (train_text_to_image_lora.py, train_dreambooth_lora.py).
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# A UNet with attention in a few blocks only (the DDPM UNets, the bundled model: the mid block alone)
# would adapt a sliver of itself through those: the ResNet blocks' two 3x3 convolutions join them, as in
# the LoRA variants of the convolutional layers that diffusers' and kohya's SDXL scripts offer.
RESNET_TARGETS = ("conv1", "conv2")
# Layer types PEFT's LoRA wraps.
LORA_LAYER_TYPES = (nn.Linear, nn.Conv2d)


def matches(module_name: str, target: str) -> bool:
    # PEFT's rule for a list of target names: the full name or its last dotted components.
    return module_name == target or module_name.endswith("." + target)


def default_targets(unet: nn.Module) -> tuple[str, ...]:
    """The attention projections, plus the ResNet convolutions when some down or up block of `unet` has no
    attention (block type names without "Attn", diffusers' convention)."""
    blocks = tuple(unet.config.down_block_types) + tuple(unet.config.up_block_types)
    attention = tuple(
        t for t in ATTENTION_TARGETS if any(matches(name, t) for name, _ in unet.named_modules())
    )
    return attention + (RESNET_TARGETS if any("Attn" not in block for block in blocks) else ())


def resolve_targets(unet: nn.Module, targets: str) -> tuple[str, ...]:
    """The target module names for `targets` ("auto": default_targets, or names separated by commas).

    Raises ValueError naming --lora-targets for a name that matches no module of `unet`, or a module that
    LoRA cannot wrap (PEFT wraps every module the name matches: each must be a Linear or Conv2d)."""
    if targets == "auto":
        return default_targets(unet)
    names = tuple(name.strip() for name in targets.split(",") if name.strip())
    if not names:
        raise ValueError(f"--lora-targets must name modules (or be 'auto'), got {targets!r}")
    modules = dict(unet.named_modules())
    layer_suffixes = sorted(
        {name.rsplit(".", 1)[-1] for name, module in modules.items() if isinstance(module, LORA_LAYER_TYPES)}
    )
    for target in names:
        matched = [name for name in modules if name and matches(name, target)]
        if not matched:
            raise ValueError(
                f"--lora-targets: no module named {target!r} (or ending in '.{target}') in the "
                f"{type(unet).__name__}; its Linear and Conv2d layers end in {', '.join(layer_suffixes)}"
            )
        others = [name for name in matched if not isinstance(modules[name], LORA_LAYER_TYPES)]
        if others:
            raise ValueError(
                f"--lora-targets: {target!r} also names {others[0]} ({type(modules[others[0]]).__name__}), "
                "which LoRA cannot wrap: name Linear or Conv2d layers only"
            )
    return names


def add_lora(unet: nn.Module, rank: int, alpha: float, dropout: float, targets: tuple[str, ...]) -> nn.Module:
    """`unet` wrapped as a peft.PeftModel with one LoRA adapter ("default") on `targets`: the adapters are
    trainable, every base weight is frozen, and the base's layers are replaced in place (the returned
    model and `unet` share every base weight). B starts at zero, so the adapted model starts as the base."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ImportError(f"--lora-rank needs peft; {PEFT_HINT}") from error
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets))
    return get_peft_model(unet, config)


def load_adapted(model_dir: str | Path, adapter_dir: str | Path):
    """(PeftModel, scheduler): the base model folder with the adapter folder on it, adapters active.

    Raises ModelFolderError naming --adapter-dir when the folder holds no PEFT adapter or the adapter does
    not fit the base (a target module it lacks, or weights of other shapes)."""
    try:
        from peft import PeftModel
    except ImportError as error:
        raise ImportError(f"--adapter-dir needs peft; {PEFT_HINT}") from error
    unet, scheduler = load_model_folder(model_dir)
    folder = Path(adapter_dir)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (folder / name).is_file():
            raise ModelFolderError(
                f"--adapter-dir {str(folder)!r} holds no {name}: expected a PEFT adapter folder (what "
                "`ddpm-pa-fast train --lora-rank` writes in <output-dir>/adapter)"
            )
    from peft import get_peft_model_state_dict
    from safetensors import SafetensorError, safe_open

    def does_not_fit(reason: str) -> ModelFolderError:
        return ModelFolderError(
            f"--adapter-dir {str(folder)!r} does not fit the model in {str(model_dir)!r}: {reason}"
        )

    try:
        # The file's tensor names, from its header (PeftModel.from_pretrained reads the tensors).
        with safe_open(folder / "adapter_model.safetensors", framework="pt") as weights:
            saved = set(weights.keys())
        with warnings.catch_warnings():
            # PEFT's warning of missing or unexpected adapter keys: refused below, in one line.
            warnings.filterwarnings("ignore", message=r".*(missing|unexpected) adapter keys")
            model = PeftModel.from_pretrained(unet, folder)
    except (ValueError, RuntimeError, KeyError, OSError, SafetensorError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        # torch's load_state_dict puts the reason (e.g. "size mismatch for ...") after a header line.
        reasons = [line for line in lines if "mismatch" in line or "not found" in line] or lines
        raise does_not_fit(reasons[0] if reasons else type(error).__name__) from error
    # PEFT only warns when the file's keys and the adapters it built differ (an adapter for a base with its
    # layers elsewhere would load in part, the rest left at B = 0): refused here.
    expected = set(get_peft_model_state_dict(model))
    missing, unexpected = sorted(expected - saved), sorted(saved - expected)
    if missing or unexpected:
        example = f"e.g. missing {missing[0]}" if missing else f"e.g. unexpected {unexpected[0]}"
        raise does_not_fit(
            f"{len(missing)} of the adapters it configures have no weights in the file and {len(unexpected)} "
            f"weights in the file have no adapter ({example})"
        )
    return model.eval(), scheduler


def merge(model_dir: str | Path, adapter_dir: str | Path, output_dir: str | Path) -> Path:
    """Writes the base with the adapter merged into its weights as a plain diffusers model folder (the
    UNet and the scheduler), which load_model_folder and diffusers read without peft."""
    model, scheduler = load_adapted(model_dir, adapter_dir)
    folder = Path(output_dir)
    model.merge_and_unload().save_pretrained(folder, safe_serialization=True)
    scheduler.save_pretrained(folder)
    return folder


__all__ = ["add_lora", "default_targets", "load_adapted", "merge", "resolve_targets"]
