"""Parallelism applied to the model from outside the loop: the loop calls what ``parallelize`` returns.

DDP (the default): every rank holds the whole model, gradients are all-reduced (NCCL on GPUs, gloo on CPU).
FSDP2 (``fsdp=True``, torchtitan's layout): ``fully_shard`` on every decoder layer, then on the loss
module that wraps the model, so that the embedding, final norm and output layer (read by the fused loss
outside the output layer's own forward) are gathered for the whole forward. Each rank holds 1/N of the
parameters, gradients and optimizer state.
HSDP (``fsdp=True, dp_replicate=R``, torchtitan's data_parallel_replicate x shard): a 2-D device mesh
("replicate", "shard") of R replicas, each FSDP2-sharded over world/R ranks. FSDP2 reduce-scatters the
gradients over "shard" and all-reduces the shards over "replicate" (both averaging: the mean over every rank);
parameters are DTensors placed (Replicate(), Shard(0)), so the all-gathers stay inside a replica (one node)
and only 1/(world/R) of the gradient crosses between replicas.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ...errors import ConfigError
from ..loss import NextTokenLoss


@dataclass
class Parallelized:
    forward: torch.nn.Module                     # forward(**loss_fn.inputs(...)) -> mean loss of the micro-batch
    no_sync: Callable[[], ContextManager]        # gradients stay local inside it (all micro-steps but the last)
    loss: NextTokenLoss                          # the same loss without DDP's wrapper: evaluation calls it


def parallelize(loss_fn: NextTokenLoss, *, world_size: int, device: torch.device, compile: bool = False,
                fsdp: bool = False, param_dtype: torch.dtype | None = None, dp_replicate: int = 1) -> Parallelized:
    """``param_dtype`` (FSDP only, bf16-mixed): the dtype the gathered parameters compute in, gradients reduced
    in float32 while the sharded parameters and optimizer state stay float32 (FSDP2's MixedPrecisionPolicy).
    None: the shards' own dtype throughout (pure bfloat16 shards for --dtype bfloat16). ``dp_replicate`` (FSDP
    only): HSDP's replicas (``device_mesh``)."""
    if fsdp:
        return _fully_shard(loss_fn, device=device, compile=compile, param_dtype=param_dtype,
                            mesh=device_mesh(device, world_size, dp_replicate))
    if compile:
        loss_fn.compile()
    if world_size == 1:
        return Parallelized(loss_fn, contextlib.nullcontext, loss_fn)
    ddp = DDP(loss_fn, device_ids=[device.index] if device.type == "cuda" else None, **_no_buffer_sync())
    return Parallelized(ddp, ddp.no_sync, loss_fn)


def _no_buffer_sync() -> dict:
    """No buffer broadcast before every forward: LLaMA's only buffers are the rotary tables, identical on every
    rank (synced once at init). torch 2.13 names that ``forward_sync_buffers=False``; older versions (the floor
    is 2.6) only have ``broadcast_buffers=False``, which skips the same broadcast."""
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks: LLaMA's ``model.layers``, GPT-2's ``transformer.h``."""
    base = model.base_model
    layers = getattr(base, "layers", None) or getattr(base, "h", None)
    if layers is None:
        raise ConfigError(f"--fsdp does not know the decoder layers of a {type(model).__name__}; train it without "
                          f"--fsdp")
    return list(layers)


def device_mesh(device: torch.device, world_size: int, dp_replicate: int = 1):
    """FSDP2's mesh: None (fully_shard's default, one dimension over every rank) for ``dp_replicate`` 1, else
    HSDP's 2-D mesh of ``dp_replicate`` replicas x world/R shards (ranks r*S .. r*S+S-1 form replica r, so with
    S = GPUs per node a replica's all-gathers stay on NVLink)."""
    if dp_replicate == 1:
        return None
    if dp_replicate < 1 or world_size % dp_replicate:
        raise ConfigError(f"--dp_replicate {dp_replicate} does not divide the {world_size} ranks; pass a divisor of "
                          f"the world size")
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh(device.type, (dp_replicate, world_size // dp_replicate),
                            mesh_dim_names=("replicate", "shard"))


def _fully_shard(loss_fn: NextTokenLoss, *, device, compile: bool, param_dtype, mesh=None) -> Parallelized:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    on = {} if mesh is None else {"mesh": mesh}
    layers = decoder_layers(loss_fn.model)
    for i, layer in enumerate(layers):
        if compile:   # each block compiled in place, then sharded (torchtitan's order): FSDP2's hooks stay
            layer.compile()   # outside the compiled graph, and every block reuses one compiled code
        # torchtitan's reshard choice: the last block stays gathered after forward, since backward would
        # all-gather it again at once. The root (embedding, final norm, output layer) is never resharded after
        # forward either (FSDP2's root rule). torchtitan's own group for norm and output layer does not fit here:
        # the fused loss reads the output weight outside the layer's forward, so it stays in the root's group.
        fully_shard(layer, mp_policy=policy, reshard_after_forward=i < len(layers) - 1, **on)
    fully_shard(loss_fn, mp_policy=policy, **on)

    # Gradients are reduce-scattered after every micro-batch and accumulate sharded (torchtitan's choice):
    # skipping the sync would hold the whole float32 gradient (4 bytes per parameter) between micro-batches.
    return Parallelized(loss_fn, contextlib.nullcontext, loss_fn)
