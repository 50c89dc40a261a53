"""Computing per-module numbers once across ranks so that every rank holds bit-identical values.

The release recomputes the ESD on every rank; round-off differences between ranks can then give
different decays and silently desynchronise DDP replicas. Here the modules are split across ranks
(each analyses ~1/world_size of the work), each rank fills only its own rows of a zero tensor and
one SUM all-reduce assembles the table: x + 0.0 is exact, so every rank ends with the same bits.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.distributed as dist


def active_world(group=None) -> tuple[int, int]:
    """(rank, world_size) of the default or given process group; (0, 1) outside torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def assign_owners(costs: Sequence[float], world_size: int) -> list[int]:
    """Greedy longest-processing-time split of the items over ranks (deterministic on every rank)."""
    load = [0.0] * world_size
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += costs[i]
    return owner


def _reduce_device(group, fallback: torch.device) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return fallback if fallback.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sharded_rows(compute: Callable[[list[int]], torch.Tensor], costs: Sequence[float], width: int, *,
                 device: torch.device = torch.device("cpu"), group=None, shard: bool = True) -> torch.Tensor:
    """Rows ``compute(indices)`` for all items, each computed on one rank and shared with all.

    ``compute`` gets a list of item indices and returns a (len(indices), width) float64 tensor.
    ``shard=False`` computes everything locally with no communication (ranks may then disagree).
    """
    rank, world = active_world(group)
    n = len(costs)
    if world == 1 or not shard:
        return compute(list(range(n))) if n else torch.zeros(0, width, dtype=torch.float64)
    owner = assign_owners(costs, world)
    mine = [i for i in range(n) if owner[i] == rank]
    table = torch.zeros(n, width, dtype=torch.float64, device=_reduce_device(group, device))
    if mine:
        table[mine] = compute(mine).to(table.device, torch.float64)
    dist.all_reduce(table, op=dist.ReduceOp.SUM, group=group)
    return table.cpu()
