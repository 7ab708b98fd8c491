"""Checkpoints: one file per save, written atomically, rotated; a corrupt file is reported, never loaded."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "step", "model", "ema", "optimizer", "scaler", "lr_scheduler", "rng")
_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")
# Wrappers that prefix parameter names: torch.compile's OptimizedModule and DistributedDataParallel.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be loaded; the message names the file and the reason."""


def clean_state_dict(state: dict) -> dict:
    """The state dict with torch.compile's and DDP's key prefixes removed, so that a plain model loads it."""
    cleaned = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"checkpoint-{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The checkpoints in `directory`, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict, directory: str | Path, step: int, keep: int) -> Path:
    """Writes state to checkpoint-<step>.pt via a temporary file and os.replace, so that a crash while
    writing leaves the previous checkpoints intact; then deletes all but the newest `keep`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, step)
    tmp = path.with_name(path.name + ".tmp")
    state = {"format_version": FORMAT_VERSION, "step": step, **state}
    state["model"] = clean_state_dict(state["model"])
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if keep > 0:
        for old in list_checkpoints(directory)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Loads and checks a checkpoint; a missing, truncated or incomplete file raises CheckpointError."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"no checkpoint-*.pt file in {str(path)!r} to resume from")
        path = found[-1]
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        # The file holds RNG states and numpy-free Python containers only; weights_only keeps pickle safe.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for damaged zip archives and pickles.
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or unreadable and was not loaded: "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise CheckpointError(
            f"checkpoint {str(path)!r} is incomplete (missing {missing}) and was not loaded"
        )
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {state['format_version']}, this trainer reads "
            f"{FORMAT_VERSION}"
        )
    state["path"] = str(path)
    return state
