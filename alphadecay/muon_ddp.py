"""Muon under DDP: each hidden matrix orthogonalised on one rank, the results all-gathered to every rank.

Under DDP every rank holds the whole model and, after DDP's all-reduce, the same gradients, so torch's Muon would
run Newton-Schulz for every matrix on every rank: the same work ``world`` times over. Here, as ShardedMuon does
for FSDP2's shards: momentum and Nesterov are elementwise and run on every rank (the buffers stay replicated,
bit-identical, in the very state_dict torch's Muon writes); each matrix's Newton-Schulz runs on one owner rank
(``distributed.assign_owners`` over its cost A B min(A, B)); the owners' results cross in a few all-gathers
(buckets of at most ``bucket_bytes`` gathered, at least one matrix per rank), the next bucket's Newton-Schulz
running while the previous one travels; every rank then applies every matrix's decay and step (``muon_fsdp._apply``:
torch's two operations on float32 weights, rounded once on bf16 weights) from the same bits. Each rank's share of
the Newton-Schulz work is about 1/world (bench/muon_step.py --ddp times it).

Exactness: the owner's result is what every rank adds, so the ranks agree bit for bit in either Newton-Schulz
dtype, and with the same gradients a step is a one-process step bit for bit (torch's Muon on float32 weights with
bf16 Newton-Schulz; ShardedMuon otherwise). The ranks must be told (``Replicas``), never guessed from the
environment: a process group whose ranks do not hold the same weights would be given one rank's updates.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .distributed import assign_owners, is_sharded
from .muon_fsdp import ShardedMuon, _apply, _local_update, _orthogonalise, newton_schulz_cost
from .newton_schulz import dtype_of

# Bytes of one all-gather's output: bounds the extra memory to about twice this (one bucket arriving while the
# next is computed). 256 MB: a LLaMA-1B's hidden updates (2 GB in bf16) in about 8 all-gathers.
BUCKET_BYTES = 256 << 20


@dataclass(frozen=True)
class Replicas:
    """The data-parallel ranks that hold the same weights (DDP's): ``world_size`` of them in ``group`` (None: the
    default process group)."""
    world_size: int
    group: dist.ProcessGroup | None = None

    def __post_init__(self):
        if not isinstance(self.world_size, int) or self.world_size < 1:
            raise ValueError(f"Replicas.world_size must be a positive int, got {self.world_size!r}")

    def check(self) -> None:
        """ValueError unless torch.distributed runs ``world_size`` ranks in ``group`` (with more than one)."""
        if self.world_size == 1:
            return
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(f"Replicas(world_size={self.world_size}) needs torch.distributed initialised "
                             f"(init_process_group) before the optimizer is built")
        actual = dist.get_world_size(self.group)
        if actual != self.world_size:
            raise ValueError(f"Replicas(world_size={self.world_size}) but the process group has {actual} ranks")


def _all_gather(out: torch.Tensor, send: torch.Tensor, group):
    # all_gather_single is torch 2.13's name (all_gather_into_tensor, deprecated there, is the floor's).
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return gather(out, send, group=group, async_op=True)


class ReplicatedMuon(ShardedMuon):
    """``torch.optim.Muon`` over DDP-replicated (plain) matrices with each Newton-Schulz on one rank. Collective:
    every rank of ``replicas`` calls ``step``, with the same gradients. ``torch_state``: write torch's Muon's
    state_dict (no ``ns_dtype`` in the groups), the one the unsplit path (torch.optim.Muon) writes, so that its
    checkpoints and these are one format."""

    def __init__(self, params, replicas: Replicas, ns_dtype: str = "bfloat16", torch_state: bool = False,
                 bucket_bytes: int = BUCKET_BYTES, **kwargs):
        replicas.check()
        super().__init__(params, ns_dtype=ns_dtype, **kwargs)
        if any(is_sharded(p) for g in self.param_groups for p in g["params"]):
            raise ValueError("ReplicatedMuon steps DDP's replicated matrices; sharded (DTensor) parameters step "
                             "through ShardedMuon")
        self.replicas = replicas
        self.torch_state = torch_state
        self.bucket_bytes = int(bucket_bytes)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.torch_state:   # packed copies of the groups: the live ones keep their ns_dtype
            for group in state["param_groups"]:
                group.pop("ns_dtype", None)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        items = []
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            items += [(p, g, b, group) for p, g, b in zip(params, grads, bufs)]
        if self.replicas.world_size == 1:
            for param, grad, buf, group in items:
                _apply(param, _orthogonalise(_local_update(grad, buf, group), group), group)
        else:
            for dtype in dict.fromkeys(dtype_of(item[3]["ns_dtype"]) for item in items):
                step_replicated([it for it in items if dtype_of(it[3]["ns_dtype"]) == dtype], self.replicas,
                                bucket_bytes=self.bucket_bytes)
        return loss


def buckets(sizes: list[int], owner: list[int], world: int, segment: int) -> list[list[list[int]]]:
    """Item indices per bucket per rank: each rank's owned items in order, taken until its part of the bucket
    reaches ``segment`` entries (at least one item while it has any)."""
    queues = [[i for i in range(len(sizes)) if owner[i] == r] for r in range(world)]
    out = []
    while any(queues):
        bucket = []
        for q in queues:
            take, held = [], 0
            while q and (not take or held + sizes[q[0]] <= segment):
                held += sizes[q[0]]
                take.append(q.pop(0))
            bucket.append(take)
        out.append(bucket)
    return out


def gather_bytes(shapes, world_size: int, element_size: int = 2, bucket_bytes: int = BUCKET_BYTES) -> int:
    """Bytes each rank passes in to the all-gathers of one update (its padded share of every bucket) for
    replicated matrices of ``shapes``, at ``element_size`` bytes an entry (2: bf16 Newton-Schulz, 4: float32)."""
    if world_size == 1:
        return 0
    sizes = [a * b for a, b in shapes]
    owner = assign_owners([newton_schulz_cost(s) for s in shapes], world_size)
    segment = max(1, bucket_bytes // (world_size * element_size))
    return element_size * sum(max(sum(sizes[i] for i in part) for part in bucket)
                              for bucket in buckets(sizes, owner, world_size, segment))


@torch.no_grad()
def step_replicated(items: list, replicas: Replicas, *, bucket_bytes: int = BUCKET_BYTES,
                    orthogonalise=_orthogonalise) -> dict:
    """Steps the replicated matrices ``items`` ((param, grad, momentum_buffer, group) each, one Newton-Schulz
    dtype). Collective over ``replicas``. Returns what it did: the indices this rank orthogonalised and the
    number of all-gathers (tests count them)."""
    group_pg, world = replicas.group, replicas.world_size
    me = dist.get_rank(group_pg)
    owner = assign_owners([newton_schulz_cost(p.shape) for p, *_ in items], world)
    for i, (_, grad, buf, group) in enumerate(items):
        if owner[i] != me:   # only the momentum: the update is the owner's to compute
            buf.lerp_(grad, 1 - group["momentum"])
    dtype = dtype_of(items[0][3]["ns_dtype"])
    device = items[0][0].device
    sizes = [p.numel() for p, *_ in items]
    segment = max(1, bucket_bytes // (world * torch.empty((), dtype=dtype).element_size()))
    done = {"orthogonalised": [], "all_gathers": 0}

    def launch(bucket):
        length = max(sum(sizes[i] for i in part) for part in bucket)
        send = torch.zeros(length, dtype=dtype, device=device)
        offset = 0
        for i in bucket[me]:
            param, grad, buf, group = items[i]
            ortho = orthogonalise(_local_update(grad, buf, group), group)
            send[offset:offset + sizes[i]].view(param.shape).copy_(ortho)
            offset += sizes[i]
            done["orthogonalised"].append(i)
        out = torch.empty(world * length, dtype=dtype, device=device)
        work = _all_gather(out, send, group_pg)
        done["all_gathers"] += 1
        return bucket, length, out, work

    def finish(bucket, length, out, work):
        work.wait()
        for r, part in enumerate(bucket):
            offset = r * length
            for i in part:
                param, _, _, group = items[i]
                _apply(param, out[offset:offset + sizes[i]].view(param.shape), group)
                offset += sizes[i]

    pending = None
    for bucket in buckets(sizes, owner, world, segment):
        launched = launch(bucket)   # this bucket's Newton-Schulz overlaps the previous one's all-gather
        if pending is not None:
            finish(*pending)
        pending = launched
    if pending is not None:
        finish(*pending)
    return done


__all__ = ["BUCKET_BYTES", "Replicas", "ReplicatedMuon", "buckets", "gather_bytes", "step_replicated"]
