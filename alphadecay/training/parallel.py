"""Parallelism applied to the model from outside the loop: the loop calls what ``parallelize`` returns.

Today: DDP over every rank (NCCL on GPUs, gloo on CPU), or nothing in one process.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from .loss import NextTokenLoss


@dataclass
class Parallelized:
    forward: torch.nn.Module                     # forward(**loss_fn.inputs(...)) -> mean loss of the micro-batch
    no_sync: Callable[[], ContextManager]        # gradients stay local inside it (all micro-steps but the last)


def parallelize(loss_fn: NextTokenLoss, *, world_size: int, device: torch.device, compile: bool = False) -> Parallelized:
    if compile:
        loss_fn.compile()
    if world_size == 1:
        return Parallelized(loss_fn, contextlib.nullcontext)
    # No buffer broadcast before every forward: LLaMA's only buffers are the rotary tables, identical on every
    # rank (synced once at init).
    ddp = DDP(loss_fn, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False)
    return Parallelized(ddp, ddp.no_sync)
