"""Muon on FSDP2's sharded matrices: every update orthogonalised whole, on one owner rank.

torch.optim.Muon on a DTensor row shard would run Newton-Schulz on each rank's rows, a different (and wrong)
update. Here, as in Moonshot's distributed Muon: momentum and Nesterov are elementwise, so they run on each
rank's rows; each matrix's update is gathered to one owner rank, which orthogonalises it with torch's own
``_zeropower_via_newtonschulz``, and scattered back; decay and the step then apply on the local rows with the
group's ``lr`` and ``weight_decay`` (so the policies' per-module values work as on torch's Muon).

The update travels in the group's ``ns_dtype``. bfloat16 (torch's): torch's Newton-Schulz casts its input to bf16
first and returns bf16, so gathering the bf16 cast and scattering the bf16 result gives the owner the very input
torch's Muon would see and every rank the very rows it would add, at half the bytes of float32. float32
(``alphadecay.newton_schulz``): the same iteration in float32, at twice the bytes; plain tensors then step through
it too, so ``MuonWithAdamW(ns_dtype="float32")`` uses this class also without sharding.

Owners: ``distributed.assign_owners`` over Newton-Schulz's cost (A B min(A, B)), as the sharded ESD spreads its
matrices, so the ranks orthogonalise in parallel. The matrices go in rounds of at most one per owner: a rank
holds at most one gathered matrix at a time, never the whole model.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.optim._muon import _adjust_lr, _single_tensor_muon
from torch.optim.optimizer import _to_scalar

from .distributed import assign_owners, chunk_rows, full_on, is_sharded, local_part
from .newton_schulz import dtype_of, newton_schulz


def _row_sharded(param: DTensor) -> bool:
    """FSDP2's layout: rows split over a 1-D mesh (``torch.chunk`` sizes)."""
    return param.device_mesh.ndim == 1 and tuple(param.placements) == (Shard(0),)


def newton_schulz_cost(shape) -> float:
    a, b = shape[0], shape[1]
    return float(a) * b * min(a, b)


def exchange_bytes(shapes, world_size: int, element_size: int = 2) -> int:
    """Bytes sent between ranks per update for row-sharded matrices of ``shapes`` (ShardedMuon's owners): each
    matrix's update, the rows its owner lacks, to the owner, and as many rows of the result back, at
    ``element_size`` bytes an entry (2: bfloat16, torch's Newton-Schulz; 4: ``ns_dtype="float32"``)."""
    owner = assign_owners([newton_schulz_cost(s) for s in shapes], world_size)
    total = 0
    for (a, b), r in zip(shapes, owner):
        total += 2 * (a - chunk_rows(a, world_size)[1][r]) * b * element_size
    return total


class ShardedMuon(torch.optim.Muon):
    """``torch.optim.Muon`` (the same groups, defaults, state and state_dict) whose step orthogonalises each sharded
    matrix whole. Collective: every rank of the parameters' mesh calls ``step``. Parameters that are not DTensors
    step as in torch's Muon, on every rank (through torch's own code on float32 weights with bf16 Newton-Schulz;
    on bf16 weights with decay and update rounded once, see ``_apply``); DTensors in another layout than FSDP2's row shards are gathered on
    every rank (``full_tensor``) and each rank keeps its part of the result. ``ns_dtype`` ("bfloat16": torch's,
    or "float32") is kept in every group, so the state_dict records it and a load of another is refused."""

    def __init__(self, params, ns_dtype: str = "bfloat16", **kwargs):
        dtype_of(ns_dtype)
        super().__init__(params, **kwargs)
        self.defaults["ns_dtype"] = ns_dtype
        for group in self.param_groups:
            group.setdefault("ns_dtype", ns_dtype)
            dtype_of(group["ns_dtype"])
        meshes = {p.device_mesh for g in self.param_groups for p in g["params"] if is_sharded(p)}
        if len(meshes) > 1:
            # Each matrix's gather is a collective of its mesh: ranks outside one would wait on another.
            raise ValueError(f"Muon's sharded matrices must share one device mesh, found {len(meshes)}")

    def load_state_dict(self, state_dict: dict) -> None:
        # torch's load takes every group's values from the state: another ns_dtype would switch silently.
        # A state without the key is torch's Muon's or an older ShardedMuon's: bfloat16.
        mine = self.defaults["ns_dtype"]
        for saved in state_dict.get("param_groups", []):
            check_same_ns_dtype(saved.get("ns_dtype", "bfloat16"), mine)
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group.setdefault("ns_dtype", mine)

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
            # torch's Muon is kept bit for bit where it is exact: float32 weights and its own Newton-Schulz. On
            # bf16 weights its separate decay rounds away and, without Nesterov, it normalises the momentum
            # buffer in place; our per-tensor path fixes both.
            if plain and (group["ns_dtype"] != "bfloat16" or any(low_precision(params[i]) for i in plain)):
                for i in plain:
                    _apply(params[i], _orthogonalise(_local_update(grads[i], bufs[i], group), group), group)
            elif plain:
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


def check_same_ns_dtype(saved: str, mine: str) -> None:
    """ValueError when an optimizer state's Newton-Schulz dtype ``saved`` is not this optimizer's ``mine``."""
    if saved != mine:
        raise ValueError(f"the optimizer state's Muon ran Newton-Schulz in {saved}, this optimizer in {mine}; "
                         f"resume with --muon_ns_dtype {saved}")


def _options(group) -> dict:
    return {"lr": group["lr"], "weight_decay": group["weight_decay"], "momentum": group["momentum"],
            "nesterov": group["nesterov"], "ns_coefficients": group["ns_coefficients"], "ns_steps": group["ns_steps"],
            "eps": group["eps"], "adjust_lr_fn": group["adjust_lr_fn"]}


def _local_update(grad: torch.Tensor, buf: torch.Tensor, group) -> torch.Tensor:
    """torch's _single_tensor_muon momentum and Nesterov lines on this rank's rows (a plain tensor: all of it),
    cast as Newton-Schulz casts (to the group's ns_dtype)."""
    g, b = local_part(grad), local_part(buf)
    momentum = group["momentum"]
    b.lerp_(g, 1 - momentum)
    update = g.lerp(b, momentum) if group["nesterov"] else b
    # copy: without Nesterov the update is the buffer itself, and torch's bf16 Newton-Schulz would normalise
    # its input in place (``grad.bfloat16()`` returns a bf16 buffer, not a copy), leaving the momentum at norm 1.
    return update.to(dtype_of(group["ns_dtype"]), copy=update is b)


def _orthogonalise(full: torch.Tensor, group) -> torch.Tensor:
    return newton_schulz(full, group["ns_coefficients"], group["ns_steps"], group["eps"],
                         dtype_of(group["ns_dtype"]))


def _apply(param: torch.Tensor, ortho_local: torch.Tensor, group) -> None:
    """torch's decoupled decay and step, on the local rows, at the lr adjusted for the whole matrix's shape.

    On float32 weights, torch's two in-place operations. On bf16 weights the two are computed in float32 and
    rounded once: alone, ``p * (1 - lr * wd)`` rounds back to ``p`` whenever lr * wd < 2**-9 (every decay the
    papers use), so the decay would never reach the weights; rounded with the update, it does in expectation, as
    in fused AdamW. Cost: one float32 copy of the local rows per matrix per step (transient)."""
    lr = _to_scalar(group["lr"])
    local = local_part(param)
    step = _adjust_lr(lr, group["adjust_lr_fn"], param.shape)
    if not low_precision(local):
        local.mul_(1 - lr * group["weight_decay"])
        local.add_(ortho_local, alpha=-step)
        return
    local.copy_(local.float().mul_(1 - lr * group["weight_decay"]).add_(ortho_local.float(), alpha=-step))


def low_precision(tensor: torch.Tensor) -> bool:
    """bf16 or fp16: a dtype in which a small decay or update, applied alone, rounds away."""
    return tensor.dtype in (torch.bfloat16, torch.float16)


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
    ``orthogonalise(full, group)``: the group's Newton-Schulz (bench/muon_fsdp_comm.py times the exchange alone)."""
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
            _apply(param, _scatter_rows(ortho if owner[i] == me else None, param, owner[i], mesh_group,
                                         dtype_of(group["ns_dtype"])), group)


def _scatter_rows(full: torch.Tensor | None, param: DTensor, src: int, group, dtype: torch.dtype) -> torch.Tensor:
    """This rank's rows of ``full``, which group rank ``src`` holds. Collective. As ``distributed.full_on`` in
    reverse: each rank's rows sent point-to-point, no padded copy and no staging buffer."""
    world, me = dist.get_world_size(group), dist.get_rank(group)
    rows, count = chunk_rows(param.shape[0], world)
    out = torch.empty((count[me], *param.shape[1:]), dtype=dtype, device=param.to_local().device)
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


__all__ = ["ShardedMuon", "check_same_ns_dtype", "exchange_bytes", "low_precision", "newton_schulz_cost"]
