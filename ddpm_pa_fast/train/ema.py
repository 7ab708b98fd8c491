"""Exponential moving average of the trained parameters, with store/restore for sampling."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class EMA:
    """Shadow copies of the trained parameters, updated after every optimizer step.

    parameters: the tensors the optimizer updates (all of a fully fine-tuned model; the adapter weights
    alone under LoRA, whose frozen base needs no average). The EMA keeps references to them: update(),
    copy_to(), store() and restore() act on those same tensors.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, as diffusers' EMAModel does,
    so that a short few-shot run is not dominated by the initial (source) weights.
    """

    def __init__(self, parameters: Iterable[torch.Tensor], decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.num_updates = 0
        self.parameters = list(parameters)
        self.shadow = [p.detach().clone() for p in self.parameters]
        self._stored: list[torch.Tensor] | None = None

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        self.num_updates += 1
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.parameters], 1.0 - decay)

    @torch.no_grad()
    def copy_to(self) -> None:
        """The parameters take the EMA's values."""
        torch._foreach_copy_([p.data for p in self.parameters], self.shadow)

    @torch.no_grad()
    def store(self) -> None:
        """Saves the parameters' current (training) values so that restore() can bring them back."""
        self._stored = [p.detach().clone() for p in self.parameters]

    @torch.no_grad()
    def restore(self) -> None:
        if self._stored is None:
            raise RuntimeError("EMA.restore() called without a preceding store()")
        torch._foreach_copy_([p.data for p in self.parameters], self._stored)
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
                f"EMA state holds {len(state['shadow'])} tensors, the model has {len(self.shadow)} trained "
                "parameters"
            )
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        torch._foreach_copy_(self.shadow, list(state["shadow"]))
