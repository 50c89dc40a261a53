"""Atomic, resumable checkpoints: a Hugging Face model folder plus the full training state.

<save_dir>/model_<update_step>/
    config.json, model.safetensors, generation_config.json   <- AutoModelForCausalLM.from_pretrained
    tokenizer files                                          <- AutoTokenizer.from_pretrained
    training_state.pt    optimizer, scheduler, strategy, per-rank data position and RNG, counters
                         (plain tensors and containers: loads with torch.load(weights_only=True))
    training_state.json  the counters, human-readable

A checkpoint is written to a hidden temporary folder and renamed into place only when complete, so
a process killed mid-save leaves the previous checkpoints intact and never a half-written one
that ``latest`` could pick up.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from .errors import ConfigError

STATE_FILE = "training_state.pt"
_CKPT_RE = re.compile(r"^model_(\d+)$")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _gather(obj, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def list_checkpoints(save_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints in save_dir as (step, path), oldest first."""
    if not os.path.isdir(save_dir):
        return []
    found = []
    for name in os.listdir(save_dir):
        m = _CKPT_RE.match(name)
        path = os.path.join(save_dir, name)
        if m and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def resolve(continue_from: str | None, save_dir: str) -> str | None:
    if continue_from != "latest":
        return continue_from
    found = list_checkpoints(save_dir)
    return found[-1][1] if found else None   # 'latest' with nothing saved yet starts fresh


def save(path_dir: str, step: int, *, model, tokenizer, training_state: dict, rank: int, world_size: int,
         keep_last: int = 0) -> str | None:
    """Collective: every rank calls it; rank 0 writes. Returns the checkpoint path on rank 0."""
    per_rank = _gather({"data": training_state.pop("data"), "rng": rng_state(),
                        "local": training_state.pop("local", {})}, world_size)
    final = os.path.join(path_dir, f"model_{step}")
    if rank == 0:
        tmp = os.path.join(path_dir, f".tmp-model_{step}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        state = {**training_state, "world_size": world_size, "ranks": per_rank}
        torch.save(state, os.path.join(tmp, STATE_FILE))
        counters = {k: v for k, v in training_state.items() if isinstance(v, (int, float, str))}
        with open(os.path.join(tmp, "training_state.json"), "w") as f:
            json.dump(counters, f, indent=2)
        _replace_dir(tmp, final)
        if keep_last > 0:
            for _, old in list_checkpoints(path_dir)[:-keep_last]:
                _remove_dir(old)
    if world_size > 1:
        dist.barrier()
    return final if rank == 0 else None


def _replace_dir(tmp: str, final: str) -> None:
    if os.path.exists(final):
        _remove_dir(final)
    os.replace(tmp, final)


def _remove_dir(path: str) -> None:
    # Rename first so that a kill mid-delete never leaves a partial checkpoint under its real name.
    trash = os.path.join(os.path.dirname(path), f".trash-{os.path.basename(path)}-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def load_state(path: str, rank: int, world_size: int) -> dict:
    file = os.path.join(path, STATE_FILE)
    if not os.path.isfile(file):
        raise ConfigError(f"{path!r} is not a training checkpoint (no {STATE_FILE}); pass a <save_dir>/model_<step> "
                          f"folder written by this program, or 'latest'")
    try:
        # weights_only: a checkpoint from an untrusted source cannot run code when it is loaded.
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"{file!r} cannot be loaded safely ({str(e).splitlines()[0][:200]}); "
                          f"it is damaged or was not written by this program") from None
    if state["world_size"] != world_size:
        raise ConfigError(f"checkpoint {path!r} was written by {state['world_size']} ranks, this run has {world_size}; "
                          f"resume with --nproc_per_node={state['world_size']} (the data position is per rank)")
    state.update(state.pop("ranks")[rank])
    return state


def load_model_weights(model: torch.nn.Module, path: str) -> None:
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise ConfigError(f"no model weights (*.safetensors) in {path!r}; pass a checkpoint folder written by this program")
    weights = {}
    for f in files:
        weights.update(load_file(os.path.join(path, f)))
    own = model.state_dict()
    wrong = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    unknown = [k for k in weights if k not in own]
    if wrong or unknown:
        k = (wrong or unknown)[0]
        got = tuple(weights[k].shape)
        raise ConfigError(f"checkpoint {path!r} holds a different model ({k}: {got}"
                          f"{' vs ' + str(tuple(own[k].shape)) if k in own else ' unknown here'}); "
                          f"pass the --model_config it was trained with")
    missing = set(own) - set(weights)
    # Tied weights (GPT-2's lm_head) are saved once; they are present through their twin.
    loaded_ptrs = {own[k].data_ptr() for k in weights}
    really_missing = [k for k in missing if own[k].data_ptr() not in loaded_ptrs]
    if really_missing:
        raise ConfigError(f"checkpoint {path!r} lacks {really_missing[0]}; pass the --model_config it was trained with")
    with torch.no_grad():
        for k, v in weights.items():
            own[k].copy_(v)
