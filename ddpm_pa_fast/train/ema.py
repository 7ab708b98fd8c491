"""Exponential moving average of a model's parameters, with store/restore for sampling."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow copies of `model`'s floating parameters, updated after every optimizer step.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, as diffusers' EMAModel does,
    so that a short few-shot run is not dominated by the initial (source) weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.num_updates = 0
        self.shadow = [p.detach().clone() for p in model.parameters()]
        self._stored: list[torch.Tensor] | None = None

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.num_updates += 1
        params = list(model.parameters())
        torch._foreach_lerp_(self.shadow, [p.detach() for p in params], 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for shadow, p in zip(self.shadow, model.parameters(), strict=True):
            p.copy_(shadow)

    @torch.no_grad()
    def store(self, model: nn.Module) -> None:
        """Saves the model's current (training) weights so that restore() can bring them back."""
        self._stored = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        if self._stored is None:
            raise RuntimeError("EMA.restore() called without a preceding store()")
        for stored, p in zip(self._stored, model.parameters(), strict=True):
            p.copy_(stored)
        self._stored = None

    def state_dict(self) -> dict:
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "shadow": [s.clone() for s in self.shadow],
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(
                f"EMA state holds {len(state['shadow'])} tensors, the model has {len(self.shadow)} parameters"
            )
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        for dst, src in zip(self.shadow, state["shadow"], strict=True):
            dst.copy_(src)
