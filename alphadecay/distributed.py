"""Computing per-module numbers once across ranks so that every rank holds bit-identical values.

The release recomputes the ESD on every rank; round-off differences between ranks can then give
different decays and silently desynchronise DDP replicas. Here the modules are split across ranks
(each analyses ~1/world_size of the work), each rank fills only its own rows of a zero tensor and
one SUM all-reduce assembles the table: x + 0.0 is exact, so every rank ends with the same bits.

Sharded weights (FSDP2's DTensors) are assembled on the rank that analyses them (``full_on``), a bounded
number of bytes at a time, and the owners analyse theirs concurrently (``sharded_weight_rows``), so no rank
ever holds the whole model; norms of sharded tensors are summed over ranks.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard


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


def is_sharded(tensor) -> bool:
    return isinstance(tensor, DTensor)


def has_sharded_params(module: torch.nn.Module) -> bool:
    """Whether ``fully_shard`` (FSDP2) made the module's parameters DTensors."""
    return any(is_sharded(p) for p in module.parameters())


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's piece of a DTensor, or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def chunk_rows(n: int, world: int) -> tuple[int, list[int]]:
    """torch.chunk's (FSDP2's) row split of ``n`` rows: the block size and each rank's row count."""
    rows = -(-n // world)
    return rows, [max(0, min(rows, n - r * rows)) for r in range(world)]


def full_on(weight: torch.Tensor, dst: int) -> torch.Tensor | None:
    """The whole of a sharded ``weight`` on global rank ``dst`` (None on other ranks). Collective.

    FSDP2's row sharding (``Shard(0)`` on a 1-D mesh, ``torch.chunk`` sizes) is sent to ``dst`` alone, each
    rank's rows received straight into their rows of the one output tensor: no padded copies and no flat
    receive buffer (gloo's ``gather`` stages the whole matrix once more, 262 MB for a 1B output layer).
    Any other layout goes through ``full_tensor`` (an all-gather).
    """
    mesh = weight.device_mesh
    if mesh.ndim == 1 and tuple(weight.placements) == (Shard(0),):
        return gather_to_owners([weight], [dst], dist.get_rank())[0]
    full = weight.detach().full_tensor()
    return full if dist.get_rank() == dst else None


def gather_to_owners(weights: Sequence[torch.Tensor], owners: Sequence[int], rank: int) -> list:
    """``full_on(weights[k], owners[k])`` for every k (None where this rank is not the owner), FSDP2's row shards
    all sent and received in one ``batch_isend_irecv``: one synchronisation for the lot, not one per matrix.
    Collective. Weights that are not sharded are returned where they are; other layouts go through ``full_on``."""
    out, ops = [], []
    for weight, dst in zip(weights, owners):
        if not is_sharded(weight):
            out.append(weight if dst == rank else None)
            continue
        mesh = weight.device_mesh
        if not (mesh.ndim == 1 and tuple(weight.placements) == (Shard(0),)):
            out.append(full_on(weight, dst))
            continue
        group = mesh.get_group()
        world, me = dist.get_world_size(group), dist.get_rank(group)
        target = dist.get_group_rank(group, dst)
        rows, count = chunk_rows(weight.shape[0], world)
        local = weight.to_local().detach()
        if local.shape[0] != count[me]:
            raise RuntimeError(f"gather_to_owners: rank {me} holds {local.shape[0]} rows of a "
                               f"{tuple(weight.shape)} weight, torch.chunk would give it {count[me]}")
        if me != target:
            if count[me]:
                ops.append(dist.P2POp(dist.isend, local.contiguous(), group=group, group_peer=target))
            out.append(None)
            continue
        full = local.new_empty(tuple(weight.shape))
        full[me * rows:me * rows + count[me]] = local
        ops += [dist.P2POp(dist.irecv, full[r * rows:r * rows + count[r]], group=group, group_peer=r)
                for r in range(world) if r != me and count[r]]
        out.append(full)
    for work in dist.batch_isend_irecv(ops) if ops else []:
        work.wait()
    return out


def sharded_weight_rows(compute: Callable[[list[torch.Tensor]], torch.Tensor], weights: Sequence[torch.Tensor],
                        costs: Sequence[float], width: int, *, group=None,
                        budget_bytes: int = 64 << 20) -> torch.Tensor:
    """``sharded_rows`` for sharded weights: ``compute(full matrices)`` on each module's owner rank.

    The owners' eigensolves run at the same time: the pass goes in phases (``gather_phases``), each one rounds
    of gathers, at most one matrix to each owner per round, until some owner holds ``budget_bytes`` (a phase's
    transfers posted at once, ``gather_to_owners``); then every
    owner computes its phase's matrices in one batched call while the others do theirs, and the next phase's
    gathers start once all have finished, so no gather waits on one owner's eigensolve while the others idle.
    One SUM all-reduce of the table at the end shares the rows (x + 0.0 is exact: the same bits on every rank).
    Extra memory per rank: at most ``budget_bytes`` plus one matrix of gathered weights. 64 MB bounds the ESD's
    share of an FSDP2 start (bench/memory_table.py --measure). With one rank, or weights that are not sharded,
    every matrix is analysed where it is.
    """
    rank, world = active_world(group)
    n = len(weights)
    owner = assign_owners(costs, world) if world > 1 else [0] * n
    device = local_part(weights[0]).device
    table = torch.zeros(n, width, dtype=torch.float64, device=_reduce_device(group, device) if world > 1 else "cpu")
    sizes = [w.numel() * w.element_size() for w in weights]
    for phase in gather_phases(costs, sizes, owner, world, budget_bytes):
        items = [i for batch in phase for i in batch]
        fulls = gather_to_owners([weights[i] for i in items], [owner[i] for i in items], rank)
        held = [(i, full) for i, full in zip(items, fulls) if full is not None]
        if held:   # every owner at once, between the same two gathers
            table[[i for i, _ in held]] = compute([w for _, w in held]).to(table.device, torch.float64)
        del held
    if world > 1:
        dist.all_reduce(table, op=dist.ReduceOp.SUM, group=group)
    return table.cpu()


def _shard_group(tensor: DTensor):
    """The process group over which ``tensor``'s pieces add up to the whole: its mesh's one sharded dimension
    (HSDP's (Replicate(), Shard(0)): the "shard" ranks; summing over the replicas too would count each piece R
    times)."""
    mesh, dims = tensor.device_mesh, [i for i, p in enumerate(tensor.placements) if p.is_shard()]
    if mesh.ndim == 1:
        return mesh.get_group()
    if len(dims) != 1:
        raise NotImplementedError(f"squared_norms: a DTensor sharded over {len(dims)} mesh dimensions "
                                  f"({tensor.placements})")
    return mesh.get_group(dims[0])


def gather_phases(costs: Sequence[float], sizes: Sequence[int], owner: Sequence[int], world: int,
                  budget_bytes: int) -> list[list[list[int]]]:
    """Item indices in phases of rounds: round k holds each owner's k-th item (its items in descending cost, so a
    round's items cost about the same on every owner); a phase ends once some owner holds ``budget_bytes``."""
    owned = [sorted((i for i in range(len(costs)) if owner[i] == r), key=lambda i: (-costs[i], i))
             for r in range(world)]
    phases, phase, held = [], [], [0] * world
    for k in range(max((len(o) for o in owned), default=0)):
        batch = [o[k] for o in owned if k < len(o)]
        phase.append(batch)
        for i in batch:
            held[owner[i]] += sizes[i]
        if max(held) >= budget_bytes:
            phases.append(phase)
            phase, held = [], [0] * world
    if phase:
        phases.append(phase)
    return phases


def squared_norms(tensors: Sequence[torch.Tensor], group=None) -> torch.Tensor:
    """float64 sum of squares of each tensor (sharded ones summed over ranks; NaN for None). Collective when
    any tensor is sharded."""
    present = [t for t in tensors if t is not None]
    device = local_part(present[0]).device if present else torch.device("cpu")
    out = torch.full((len(tensors),), float("nan"), dtype=torch.float64, device=device)
    if present:   # one fused kernel over all local pieces, not one launch and one write per tensor
        norms = torch._foreach_norm([local_part(t).detach() for t in present])
        index = torch.tensor([i for i, t in enumerate(tensors) if t is not None], device=device)
        out[index] = torch.stack(norms).double().square()
    if any(is_sharded(t) for t in present):
        mesh_group = _shard_group(next(t for t in present if is_sharded(t)))
        sharded = torch.tensor([is_sharded(t) for t in tensors], device=device)
        summed = torch.where(sharded, out, torch.zeros_like(out))   # NaN stays NaN after the sum
        dist.all_reduce(summed, group=group or mesh_group)
        out = torch.where(sharded, summed, out)
    return out
