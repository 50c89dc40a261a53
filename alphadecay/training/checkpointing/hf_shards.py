"""A Hugging Face model folder written from FSDP2 shards without the whole model on any rank.

Every rank walks the weights in the state dict's order; each tensor is gathered to rank 0 alone
(``distributed.full_on``), and rank 0 writes a file once it holds ``max_shard_bytes`` of them:
``model-0000k-of-0000n.safetensors`` plus ``model.safetensors.index.json``, the layout of transformers'
``save_pretrained(max_shard_size=...)``, which ``from_pretrained`` (and lm-eval, vLLM) read. A model smaller
than one file gets a single ``model.safetensors``, as ``save_pretrained`` writes it. Rank 0 holds at most
one file's tensors at a time.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

from ...distributed import full_on, is_sharded

SHARD_BYTES = 2 << 30
INDEX_FILE = "model.safetensors.index.json"


def unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each tensor once (a tied output layer is saved through its embedding, first in
    order, as save_pretrained keeps it)."""
    out, seen = {}, set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = t
    return out


def plan_files(state: dict[str, torch.Tensor], max_shard_bytes: int) -> list[list[str]]:
    """The tensors of each file, in order, a new file once the current one would pass ``max_shard_bytes``."""
    files, size = [[]], 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if files[-1] and size + nbytes > max_shard_bytes:
            files.append([])
            size = 0
        files[-1].append(name)
        size += nbytes
    return files


def write_config(model, folder: str) -> None:
    """config.json (with the weights' dtype and architecture, as save_pretrained records them) and
    generation_config.json."""
    model.config.dtype = str(next(p.dtype for p in model.parameters() if p.is_floating_point())).split(".")[1]
    model.config.architectures = [type(model).__name__.removeprefix("FSDP")]
    model.config.save_pretrained(folder)
    if model.can_generate() and getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)


def write_hf_shards(model, folder: str, *, rank: int, max_shard_bytes: int = SHARD_BYTES) -> Exception | None:
    """Collective: every rank calls it. Rank 0 writes ``folder`` and returns the error that stopped it (it
    still takes part in every gather, so the other ranks never wait on it); the others return None."""
    state = unique_state(model)
    files = plan_files(state, max_shard_bytes)
    error = None
    if rank == 0:
        try:
            os.makedirs(folder, exist_ok=True)
            write_config(model, folder)
        except Exception as e:  # noqa: BLE001 - reported by the caller as one line
            error = e
    weight_map, total = {}, 0
    for k, names in enumerate(files, 1):
        file = "model.safetensors" if len(files) == 1 else f"model-{k:05d}-of-{len(files):05d}.safetensors"
        tensors = {}
        for name in names:
            t = state[name]
            full = full_on(t, 0) if is_sharded(t) else (t.detach() if rank == 0 else None)
            if full is not None:
                tensors[name] = full.to("cpu").contiguous()
                weight_map[name] = file
                total += full.numel() * full.element_size()
        if tensors and error is None:
            try:
                save_file(tensors, os.path.join(folder, file), metadata={"format": "pt"})
            except Exception as e:  # noqa: BLE001 - a full disk is a SafetensorError
                error = e
        del tensors
    if rank == 0 and error is None and len(files) > 1:
        try:
            with open(os.path.join(folder, INDEX_FILE), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        except OSError as e:
            error = e
    return error
