"""Muon on FSDP2's sharded matrices: every update orthogonalised whole, on one owner rank.

torch.optim.Muon on a DTensor row shard would run Newton-Schulz on each rank's rows, a different (and wrong)
update. Here, as in Moonshot's distributed Muon: momentum and Nesterov are elementwise, so they run on each
rank's rows; each matrix's update is gathered to one owner rank, which orthogonalises it with torch's own
``_zeropower_via_newtonschulz``, and scattered back; decay and the step then apply on the local rows with the
group's ``lr`` and ``weight_decay`` (so the policies' per-module values work as on torch's Muon).

The update travels in bfloat16: torch's Newton-Schulz casts its input to bf16 first and returns bf16, so
gathering the bf16 cast and scattering the bf16 result gives the owner the very input torch's Muon would see
and every rank the very rows it would add, at half the bytes of float32.

Owners: ``distributed.assign_owners`` over Newton-Schulz's cost (A B min(A, B)), as the sharded ESD spreads its
matrices, so the ranks orthogonalise in parallel. The matrices go in rounds of at most one per owner: a rank
holds at most one gathered matrix at a time, never the whole model.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.optim._muon import _adjust_lr, _single_tensor_muon, _zeropower_via_newtonschulz
from torch.optim.optimizer import _to_scalar

from .distributed import assign_owners, chunk_rows, full_on, is_sharded


def _row_sharded(param: DTensor) -> bool:
    """FSDP2's layout: rows split over a 1-D mesh (``torch.chunk`` sizes)."""
    return param.device_mesh.ndim == 1 and tuple(param.placements) == (Shard(0),)


def newton_schulz_cost(shape) -> float:
    a, b = shape[0], shape[1]
    return float(a) * b * min(a, b)


def exchange_bytes(shapes, world_size: int) -> int:
    """Bytes sent between ranks per update for row-sharded matrices of ``shapes`` (ShardedMuon's owners): each
    matrix's bf16 update, the rows its owner lacks, to the owner, and as many bf16 rows of the result back."""
    owner = assign_owners([newton_schulz_cost(s) for s in shapes], world_size)
    total = 0
    for (a, b), r in zip(shapes, owner):
        total += 2 * (a - chunk_rows(a, world_size)[1][r]) * b * 2
    return total


class ShardedMuon(torch.optim.Muon):
    """``torch.optim.Muon`` (the same groups, defaults, state and state_dict) whose step orthogonalises each sharded
    matrix whole. Collective: every rank of the parameters' mesh calls ``step``. Parameters that are not DTensors
    step as in torch's Muon, on every rank; DTensors in another layout than FSDP2's row shards are gathered on
    every rank (``full_tensor``) and each rank keeps its part of the result."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        meshes = {p.device_mesh for g in self.param_groups for p in g["params"] if is_sharded(p)}
        if len(meshes) > 1:
            # Each matrix's gather is a collective of its mesh: ranks outside one would wait on another.
            raise ValueError(f"Muon's sharded matrices must share one device mesh, found {len(meshes)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sharded = []
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            has_complex = self._init_group(group, params, grads, bufs)
            plain = [i for i, p in enumerate(params) if not is_sharded(p)]
            if plain:
                _single_tensor_muon([params[i] for i in plain], [grads[i] for i in plain], [bufs[i] for i in plain],
                                    **_options(group), has_complex=has_complex)
            sharded += [(params[i], grads[i], bufs[i], group) for i in range(len(params)) if is_sharded(params[i])]
        rows = [item for item in sharded if _row_sharded(item[0])]
        for item in sharded:
            if not _row_sharded(item[0]):
                _step_other_layout(*item)
        if rows:
            _step_row_sharded(rows)
        return loss


def _options(group) -> dict:
    return {"lr": group["lr"], "weight_decay": group["weight_decay"], "momentum": group["momentum"],
            "nesterov": group["nesterov"], "ns_coefficients": group["ns_coefficients"], "ns_steps": group["ns_steps"],
            "eps": group["eps"], "adjust_lr_fn": group["adjust_lr_fn"]}


def _local_update(grad: DTensor, buf: DTensor, group) -> torch.Tensor:
    """torch's _single_tensor_muon momentum and Nesterov lines on this rank's rows, cast as Newton-Schulz casts."""
    g, b = grad.to_local(), buf.to_local()
    momentum = group["momentum"]
    b.lerp_(g, 1 - momentum)
    update = g.lerp(b, momentum) if group["nesterov"] else b
    return update.bfloat16()


def _orthogonalise(full: torch.Tensor, group) -> torch.Tensor:
    return _zeropower_via_newtonschulz(full, group["ns_coefficients"], group["ns_steps"], group["eps"])


def _apply(param: DTensor, ortho_local: torch.Tensor, group) -> None:
    """torch's decoupled decay and step, on the local rows, at the lr adjusted for the whole matrix's shape."""
    lr = _to_scalar(group["lr"])
    local = param.to_local()
    local.mul_(1 - lr * group["weight_decay"])
    local.add_(ortho_local, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))


def _step_other_layout(param: DTensor, grad: DTensor, buf: DTensor, group) -> None:
    update = DTensor.from_local(_local_update(grad, buf, group), param.device_mesh, param.placements,
                                run_check=False, shape=param.shape, stride=param.stride())
    ortho = _orthogonalise(update.full_tensor(), group)
    # src_data_rank=None: every rank computed the same result; each keeps its part, no communication.
    _apply(param, distribute_tensor(ortho.contiguous(), param.device_mesh, param.placements,
                                    src_data_rank=None).to_local(), group)


@torch.no_grad()
def _step_row_sharded(items: list, orthogonalise=_orthogonalise) -> None:
    """Steps FSDP2's row-sharded matrices ``items`` ((param, grad, momentum_buffer, group) each). Collective.
    ``orthogonalise(full, group)``: torch's Newton-Schulz (bench/muon_fsdp_comm.py times the exchange alone)."""
    mesh_group = items[0][0].device_mesh.get_group()
    world, me = dist.get_world_size(mesh_group), dist.get_rank(mesh_group)
    owner = assign_owners([newton_schulz_cost(p.shape) for p, *_ in items], world)
    owned = [[i for i in range(len(items)) if owner[i] == r] for r in range(world)]
    for k in range(max(len(o) for o in owned)):
        batch = [o[k] for o in owned if k < len(o)]   # distinct owners: one gathered matrix per rank
        mine = None
        for i in batch:
            param, grad, buf, group = items[i]
            update = DTensor.from_local(_local_update(grad, buf, group), param.device_mesh, param.placements,
                                        run_check=False, shape=param.shape, stride=param.stride())
            full = full_on(update, dist.get_global_rank(mesh_group, owner[i]))
            if full is not None:
                mine = (i, full)
        ortho = orthogonalise(mine[1], items[mine[0]][3]) if mine is not None else None
        for i in batch:
            param, _, _, group = items[i]
            _apply(param, _scatter_rows(ortho if owner[i] == me else None, param, owner[i], mesh_group), group)


def _scatter_rows(full: torch.Tensor | None, param: DTensor, src: int, group) -> torch.Tensor:
    """This rank's rows of ``full``, which group rank ``src`` holds. Collective. As ``distributed.full_on`` in
    reverse: each rank's rows sent point-to-point, no padded copy and no staging buffer."""
    world, me = dist.get_world_size(group), dist.get_rank(group)
    rows, count = chunk_rows(param.shape[0], world)
    out = torch.empty((count[me], *param.shape[1:]), dtype=torch.bfloat16, device=param.to_local().device)
    if me != src:
        if count[me]:
            dist.batch_isend_irecv([dist.P2POp(dist.irecv, out, group=group, group_peer=src)])[0].wait()
        return out
    full = full.contiguous()   # Newton-Schulz hands a tall matrix back transposed; row blocks must be contiguous
    out.copy_(full[me * rows:me * rows + count[me]])
    ops = [dist.P2POp(dist.isend, full[r * rows:r * rows + count[r]], group=group, group_peer=r)
           for r in range(world) if r != me and count[r]]
    for work in dist.batch_isend_irecv(ops) if ops else []:
        work.wait()
    return out


__all__ = ["ShardedMuon", "exchange_bytes", "newton_schulz_cost"]
