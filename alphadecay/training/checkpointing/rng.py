"""The random generators a checkpoint saves per rank (torch, CUDA, Python, numpy when loaded), so that a resumed
run draws what the uninterrupted one would have."""
from __future__ import annotations

import random
import sys

import torch


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        # This rank's own GPU only (torchrun gives each rank one): a list of every visible device would not
        # fit a resume that sees another number of them.
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    np = sys.modules.get("numpy")
    if np is not None:   # timm's augmentations and Mixup draw from numpy's global generator
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = [name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss)]
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_current_device_entry(state["cuda"]), torch.cuda.current_device())
    if "numpy" in state:
        import numpy as np
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def _current_device_entry(saved):
    """The generator state of the current device: the saved one, or from a checkpoint that saved one per
    visible device (a list), the entry of the current device index if it has one, else the first."""
    if isinstance(saved, torch.Tensor):
        return saved
    index = torch.cuda.current_device()
    return saved[index] if index < len(saved) else saved[0]


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


__all__ = ["rng_state", "set_rng_state"]
