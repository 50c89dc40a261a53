"""Atomic, resumable checkpoints: a Hugging Face model folder plus the full training state.

<save_dir>/model_<update_step>/
    config.json, model.safetensors, generation_config.json   <- AutoModelForCausalLM.from_pretrained
    tokenizer files                                          <- AutoTokenizer.from_pretrained
    (both made right for evaluation tools with default arguments: export.clean_for_evaluation)
    training_state.pt    optimizer, scheduler, strategy, per-rank data position and RNG, counters
                         (plain tensors and containers: loads with torch.load(weights_only=True))
    training_state.json  the counters, human-readable
    optimizer/           under FSDP2 only: the sharded optimizer state (torch.distributed.checkpoint), each
                         rank writing its own shard, instead of the optimizer entry of training_state.pt

Under FSDP2 the model folder is still one full Hugging Face checkpoint, written tensor by tensor
(hf_shards: each gathered to rank 0, files of 2 GB with an index json, as save_pretrained shards), so no
rank ever holds the whole model; a resume reads only each rank's rows. The optimizer state (twice the
parameters for Adam) is written sharded through DCP.

A checkpoint is written to a hidden temporary folder and renamed into place only when complete, so
a process killed mid-save leaves the previous checkpoints intact and never a half-written one
that ``latest`` could pick up.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time

import torch
import torch.distributed as dist
from safetensors import safe_open

from ...distributed import has_sharded_params, is_sharded, local_part
from ...errors import ConfigError, one_line, require_writable_folder
from .export import clean_for_evaluation
from .hf_shards import write_hf_shards
from ..parallel.meta_init import row_mesh_dim, shard_row_range, shard_rows
from .rng import rng_state, set_rng_state
from .run_lock import LOCK_FILE

STATE_FILE = "training_state.pt"
OPTIMIZER_DIR = "optimizer"
_CKPT_RE = re.compile(r"^model_(\d+)$")


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


def save_hf_model(model, folder: str, weights: dict | None) -> None:
    """A transformers model folder (``from_pretrained`` reads it)."""
    model.save_pretrained(folder, safe_serialization=True, state_dict=weights)


def save(path_dir: str, step: int, *, model, optimizer, tokenizer, training_state: dict, rank: int,
         world_size: int, keep_last: int = 0, write_model=save_hf_model) -> str | None:
    """Collective: every rank calls it; rank 0 writes (every rank writes its optimizer shard under FSDP2).
    ``write_model(model, folder, full_weights_or_None)`` writes the weights in the model family's own format
    (*.safetensors, which ``load_model_weights`` reads back). Returns the checkpoint path on rank 0."""
    per_rank = _gather({"data": training_state.pop("data"), "rng": rng_state(),
                        "local": training_state.pop("local", {}), "pid": os.getpid()}, world_size)
    pid = per_rank[0]["pid"]
    for entry in per_rank:
        del entry["pid"]
    final = os.path.join(path_dir, f"model_{step}")
    tmp = os.path.join(path_dir, f".tmp-model_{step}-{pid}")   # one name on every rank
    sharded = has_sharded_params(model)
    weights, weights_error = None, None
    streamed = sharded and write_model is save_hf_model   # file by file: never the whole model on one rank
    if sharded:
        # FSDP2 keeps the root's parameters gathered after a forward without backward (an evaluation); its
        # state_dict pre-hooks put the sharded ones back, which the optimizer's state dict is keyed by.
        model.state_dict()
        _save_sharded_optimizer(tmp, final, path_dir, model, optimizer, rank, world_size)
        if streamed:
            weights_error = write_hf_shards(model, tmp, rank=rank)
        else:
            weights = _full_weights(model)
        training_state = {**training_state, "optimizer_format": "dcp"}
    else:
        training_state = {**training_state, "optimizer": optimizer.state_dict()}
    failure = None
    if rank == 0:
        if not sharded:
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            if weights_error is not None:
                raise weights_error
            if not streamed:
                write_model(model, tmp, weights)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
                clean_for_evaluation(tmp, vocab_size=model.config.vocab_size, max_length=tokenizer.model_max_length)
            state = {**training_state, "world_size": world_size, "ranks": per_rank}
            torch.save(state, os.path.join(tmp, STATE_FILE))
            counters = {k: v for k, v in training_state.items() if isinstance(v, (int, float, str))}
            with open(os.path.join(tmp, "training_state.json"), "w") as f:
                json.dump(counters, f, indent=2)
            _replace_dir(tmp, final)
        except Exception as e:  # noqa: BLE001 - a full disk is SafetensorError, torch.save's RuntimeError, OSError
            shutil.rmtree(tmp, ignore_errors=True)
            failure = _save_failed(final, path_dir, e, model)
        if failure is None and keep_last > 0:
            for _, old in list_checkpoints(path_dir)[:-keep_last]:
                _remove_dir(old)
    if world_size > 1:   # also the barrier: the others wait until rank 0 has written, and stop with it
        box = [failure]
        dist.broadcast_object_list(box, src=0)
        failure = box[0]
    if failure is not None:
        raise ConfigError(failure)
    return final if rank == 0 else None


def _full_weights(model) -> dict:
    """The whole state dict of a sharded model, on rank 0's CPU (empty elsewhere). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _save_sharded_optimizer(tmp, final, path_dir, model, optimizer, rank, world_size) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    if world_size > 1:
        dist.barrier()
    try:
        dcp.save({"optimizer": get_optimizer_state_dict(model, _dcp_optimizers(optimizer))},
                 checkpoint_id=os.path.join(tmp, OPTIMIZER_DIR))
    except Exception as e:   # noqa: BLE001 - DCP wraps every rank's OSError in its own exception
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(_save_failed(final, path_dir, e, model)) from None


def _save_failed(final: str, folder: str, error: Exception, model) -> str:
    # Weights plus Adam's two moments: about three times the parameters' bytes.
    need = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    free = shutil.disk_usage(folder).free if os.path.isdir(folder) else 0
    cause = getattr(error, "strerror", None) or one_line(error, 200)
    return (f"writing checkpoint {final!r} failed ({cause}); about {need / 1e9:.2f} GB "
            f"needed, {free / 1e9:.2f} GB free in {folder!r}; the previous checkpoints are kept: free space or fix "
            f"the permissions, then resume with --continue_from latest")


def _replace_dir(tmp: str, final: str) -> None:
    if os.path.exists(final):
        _remove_dir(final)
    os.replace(tmp, final)


def _remove_dir(path: str) -> None:
    # Rename first so that a kill mid-delete never leaves a partial checkpoint under its real name.
    trash = os.path.join(os.path.dirname(path), f".trash-{os.path.basename(path)}-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


GLOBAL_DATA_FORMAT = "alphadecay.token_batches.v1"   # data/tokens.py's STATE_FORMAT


def load_state(path: str, rank: int, world_size: int) -> dict:
    file = os.path.join(path, STATE_FILE)
    if not os.path.isfile(file):
        raise ConfigError(f"{path!r} is not a training checkpoint (no {STATE_FILE}); pass a <save_dir>/model_<step> "
                          f"folder written by this program, or 'latest'")
    try:
        # weights_only: a checkpoint from an untrusted source cannot run code when it is loaded.
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"{file!r} cannot be loaded safely ({one_line(e, 200)}); "
                          f"it is damaged or was not written by this program") from None
    _require_entries(file, state)
    ranks = state.pop("ranks")
    if state["world_size"] != world_size:
        # A prepared folder's position is global (the same on every rank): any world size continues it. The
        # generators then come from rank 0's entry (the models here draw nothing at random while training).
        if not all(r["data"].get("format") == GLOBAL_DATA_FORMAT for r in ranks if isinstance(r.get("data"), dict)):
            raise ConfigError(f"checkpoint {path!r} was written by {state['world_size']} ranks, this run has "
                              f"{world_size}, and its data (streamed text) has a position per rank; resume with "
                              f"--nproc_per_node={state['world_size']}, or train from a folder written by "
                              f"'alphadecay prepare-data', whose runs resume on any number of ranks")
        state.update(ranks[rank] if rank < len(ranks) else ranks[0])
        return state
    state.update(ranks[rank])
    return state


# What every training state holds (per-rank entries under "ranks"); "optimizer" unless DCP wrote it.
_STATE_ENTRIES = ("update_step", "tokens_seen", "skipped_updates", "scheduler", "strategy", "world_size", "ranks")
_RANK_ENTRIES = ("data", "rng")


def _damaged(file: str, missing: str) -> ConfigError:
    return ConfigError(f"{file!r} is damaged or was not written by this program (it has no {missing} entry); "
                       f"resume from an earlier checkpoint")


def _require_entries(file: str, state) -> None:
    if not isinstance(state, dict):
        raise _damaged(file, "training-state")
    needed = _STATE_ENTRIES + (() if state.get("optimizer_format") == "dcp" else ("optimizer",))
    for key in needed:
        if key not in state:
            raise _damaged(file, repr(key))
    ranks = state["ranks"]
    if not isinstance(ranks, list) or len(ranks) != state["world_size"] or not all(isinstance(r, dict) for r in ranks):
        raise _damaged(file, "per-rank 'ranks'")
    for key in _RANK_ENTRIES:
        if any(key not in r for r in ranks):
            raise _damaged(file, f"per-rank {key!r}")


def check_format(path: str, state: dict, sharded: bool) -> None:
    """The optimizer's format (DCP shards under --fsdp, one state dict otherwise) is this run's."""
    written_sharded = state.get("optimizer_format") == "dcp"
    if sharded != written_sharded:
        raise ConfigError(f"checkpoint {path!r} was written {'with' if written_sharded else 'without'} --fsdp; "
                          f"resume it {'with' if written_sharded else 'without'} --fsdp")


def load_model_weights(model: torch.nn.Module, path: str) -> None:
    """The *.safetensors of ``path`` into ``model``; a sharded parameter reads only this rank's rows."""
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise ConfigError(f"no model weights (*.safetensors) in {path!r}; pass a checkpoint folder written by this program")
    where, shapes = {}, {}
    for f in files:
        try:
            handle = safe_open(os.path.join(path, f), framework="pt", device="cpu")
            for k in handle.keys():
                where[k], shapes[k] = (handle, f), tuple(handle.get_slice(k).get_shape())
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a damaged header
            raise _damaged_weights(path, f, e) from None
    own = model.state_dict(keep_vars=True)
    wrong = [k for k in where if k in own and tuple(own[k].shape) != shapes[k]]
    unknown = [k for k in where if k not in own]
    if wrong or unknown:
        k = (wrong or unknown)[0]
        raise ConfigError(f"checkpoint {path!r} holds a different model ({k}: {shapes[k]}"
                          f"{' vs ' + str(tuple(own[k].shape)) if k in own else ' unknown here'}); "
                          f"pass the --model_config it was trained with")
    # Tied weights (GPT-2's lm_head) are saved once; they are present through their twin.
    loaded = {id(own[k]) for k in where}
    really_missing = [k for k in own if id(own[k]) not in loaded]
    if really_missing:
        raise ConfigError(f"checkpoint {path!r} lacks {really_missing[0]}; pass the --model_config it was trained with")
    with torch.no_grad():
        for k, (handle, f) in where.items():
            t = own[k]
            try:
                if is_sharded(t) and row_mesh_dim(t) is not None:   # FSDP2's and HSDP's rows: read only those
                    v = handle.get_slice(k)[slice(*shard_row_range(t))]
                elif is_sharded(t):
                    v = shard_rows(handle.get_tensor(k), t)
                else:
                    v = handle.get_tensor(k)
            except Exception as e:  # noqa: BLE001 - a truncated file fails here, past its header
                raise _damaged_weights(path, f, e) from None
            local_part(t).copy_(v)


def _damaged_weights(path: str, file: str, error: Exception) -> ConfigError:
    return ConfigError(f"the weights {os.path.join(path, file)!r} are damaged ({one_line(error, 150)}); resume from "
                       f"an earlier checkpoint")


def _has_run(save_dir: str) -> bool:
    """Checkpoints, or a metrics.jsonl with at least one update logged (a start that failed before its first
    update has nothing to lose and must not block the retry)."""
    if any(_CKPT_RE.match(n) for n in (os.listdir(save_dir) if os.path.isdir(save_dir) else ())):
        return True
    metrics = os.path.join(save_dir, "metrics.jsonl")
    if not os.path.isfile(metrics):
        return False
    with open(metrics, encoding="utf-8", errors="replace") as f:
        return any('"type": "train"' in line for line in f)


class Checkpointer:
    """The run folder of one training run: guards it, finds, writes and restores its checkpoints.

    Collective where noted: every rank calls ``save`` and ``restore``; rank 0 alone writes.
    """

    def __init__(self, save_dir: str, *, rank: int, world_size: int, keep_last: int = 0, tokenizer=None,
                 write_model=save_hf_model, flag: str = "--save_dir"):
        """``flag``: the command's name for the run folder, for its error messages (GLUE's is --output_dir)."""
        self.save_dir, self.rank, self.world_size, self.flag = save_dir, rank, world_size, flag
        self.keep_last, self.tokenizer, self.write_model = keep_last, tokenizer, write_model
        self._loaded: tuple[str, dict] | None = None

    def prepare(self, *, resuming: bool, overwrite: bool) -> None:
        """Before any work: the folder is writable, and a new run never lands on top of another run.

        A folder that already holds checkpoints or a metrics.jsonl is another run's: continue it
        (``--continue_from latest``) or, with ``--overwrite``, move it aside to ``<save_dir>.replaced-<time>``.
        """
        if _has_run(self.save_dir) and not resuming:
            if not overwrite:
                raise ConfigError(f"{self.flag} {self.save_dir!r} already holds a run (checkpoints or logged updates); "
                                  f"continue it with --continue_from latest, pass --overwrite to move it aside, or "
                                  f"choose another {self.flag}")
            if self.rank == 0:
                aside = f"{self.save_dir.rstrip(os.sep)}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
                os.makedirs(aside)
                for name in os.listdir(self.save_dir):   # the run lock stays: this run holds it
                    if name != LOCK_FILE:
                        os.replace(os.path.join(self.save_dir, name), os.path.join(aside, name))
                print(f"--overwrite: the previous run in {self.save_dir} was moved to {aside}", flush=True)
        if self.rank == 0:   # nothing is created: a start that fails later leaves no empty folder behind
            require_writable_folder(self.save_dir, self.flag)

    def resolve(self, continue_from: str | None, *, announce: bool = True) -> str | None:
        """The checkpoint to continue from. ``latest`` in a folder without one starts a new run there, and
        says so (``announce``): auto-resume scripts rely on that start, and a mistyped folder shows."""
        path = resolve(continue_from, self.save_dir)
        if continue_from == "latest" and path is None and announce and self.rank == 0:
            print(f"--continue_from latest: no checkpoint in {os.path.abspath(self.save_dir)}; a new run starts in "
                  f"that folder", file=sys.stderr, flush=True)
        return path

    def load(self, path: str) -> dict:
        """This rank's training state of checkpoint ``path``, read once (``restore`` reuses it)."""
        if self._loaded is None or self._loaded[0] != path:
            self._loaded = (path, load_state(path, self.rank, self.world_size))
        return self._loaded[1]

    def save(self, step: int, model, optimizer, training_state: dict) -> str | None:
        """Collective. Returns the checkpoint path on rank 0 (None elsewhere)."""
        return save(self.save_dir, step, model=model, optimizer=optimizer, tokenizer=self.tokenizer,
                    training_state=training_state, rank=self.rank, world_size=self.world_size,
                    keep_last=self.keep_last, write_model=self.write_model)

    def restore(self, path: str, *, model, optimizer, scheduler, strategy, loader, optimizer_name: str) -> dict:
        """Everything a run continues from; returns the counters (update_step, tokens_seen, skipped_updates)."""
        state, self._loaded = self.load(path), None
        saved = state.get("optimizer_name", optimizer_name)
        if saved != optimizer_name:
            raise ConfigError(f"checkpoint {path!r} was trained with --optimizer {saved}, this run asks for "
                              f"{optimizer_name}; resume with --optimizer {saved}")
        sharded = has_sharded_params(model)
        check_format(path, state, sharded)
        load_model_weights(model, path)
        try:   # the strategy first: its mismatch explains an optimizer whose groups differ
            strategy.load_state_dict(state["strategy"])
            if sharded:
                _load_sharded_optimizer(path, model, optimizer)
            else:
                optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            loader.load_state_dict(state["data"])
            set_rng_state(state["rng"])
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"{path!r} does not match this run: {one_line(e)}; resume with the flags it was "
                              f"trained with") from None
        except KeyError as e:   # an entry missing inside the strategy's, optimizer's, scheduler's or RNG state
            raise _damaged(os.path.join(path, STATE_FILE), repr(e.args[0]) if e.args else "expected") from None
        # tokens_learned: absent from checkpoints written before it was counted
        return {k: state[k] for k in ("update_step", "tokens_seen", "skipped_updates", "tokens_learned") if k in state}


def _load_sharded_optimizer(path: str, model, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    # The template has this run's shapes and shards (it initialises the state with a zero-lr step that
    # leaves the weights as they are); DCP fills it from whatever sharding wrote the checkpoint.
    state = {"optimizer": get_optimizer_state_dict(model, _dcp_optimizers(optimizer))}
    try:
        dcp.load(state, checkpoint_id=os.path.join(path, OPTIMIZER_DIR))
    except Exception as e:  # noqa: BLE001 - DCP wraps every rank's error in its own exception
        raise ConfigError(f"the sharded optimizer state in {os.path.join(path, OPTIMIZER_DIR)!r} cannot be loaded "
                          f"({one_line(e, 200)}); resume from an earlier checkpoint") from None
    set_optimizer_state_dict(model, _dcp_optimizers(optimizer), state["optimizer"])


def _dcp_optimizers(optimizer) -> tuple:
    """What DCP reads and writes: MuonWithAdamW's two halves (its own state_dict nests them, which DCP cannot key
    by parameter name), each keyed by parameter name into one state; any other optimizer as it is."""
    return tuple(getattr(optimizer, "optimizers", (optimizer,)))
