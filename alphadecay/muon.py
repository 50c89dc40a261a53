"""Muon for the hidden matrices, AdamW for everything else, as one optimizer the policies write into.

    policy = alphadecay.AlphaDecay(model, weight_decay=0.1)          # or LLR, Combined, any strategy
    muon_groups, adamw_groups = alphadecay.split_muon_groups(policy.param_groups(), model)
    optimizer = alphadecay.MuonWithAdamW(muon_groups, adamw_groups, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, S)      # one schedule drives both
    policy.initial_assignment(optimizer)
    ...
    policy.step(optimizer, step); optimizer.step(); scheduler.step()

The usual split (Keller Jordan's Muon; Moonshot's "Muon is Scalable for LLM Training"; torchtitan, Megatron):
Muon takes the 2-D weights of the hidden linear modules (q, k, v, o, gate, up, down of every block); AdamW takes
the embeddings, the output layer (also when tied), norms, biases and any other parameter. Each policy group is
split by parameter and both halves keep its ``name`` and values, so a policy's write of ``weight_decay`` or ``lr``
by name reaches whichever optimizer holds the module.

``adjust_lr_fn="match_rms_adamw"`` (the default here; torch's own default is ``"original"``) scales each update
to AdamW's RMS (0.2 * sqrt(max(A, B)), Moonshot's paper), so AdamW's learning rate and decoupled decay carry over
unchanged. The Muon groups' ``lr`` is in the units of ``lr`` (what the scheduler and LLR write); ``muon_lr``
rescales the Muon half at each step by ``muon_lr / lr``, per-module LLR base LRs included.

``ns_dtype="bfloat16"`` (the default) is torch's Newton-Schulz, and without sharding on float32 weights
torch.optim.Muon itself (on bf16 weights ShardedMuon, whose step rounds decay and update once and keeps the
momentum buffer intact without Nesterov: torch's would lose both);
``"float32"`` runs the same iteration in float32 (``alphadecay.newton_schulz``: CPU runs, where bf16 matmuls are
slow, and agreement across ranks) through ShardedMuon, which keeps it in every group and so in the state_dict.

Under DDP (``replicas=Replicas(world_size)``) every path above becomes ReplicatedMuon (``alphadecay.muon_ddp``):
each matrix orthogonalised on one rank and all-gathered, the same state_dict as the unsplit path.
"""
from __future__ import annotations

import math
from collections import ChainMap

import torch
import torch.nn as nn

from .distributed import is_sharded
from .esd import linear_modules
from .llr import output_layer_name
from .muon_ddp import Replicas, ReplicatedMuon
from .muon_fsdp import ShardedMuon, check_same_ns_dtype, low_precision
from .newton_schulz import NS_DTYPES

ADJUST_LR_FNS = ("match_rms_adamw", "original")


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The trainable 2-D weights of every linear module except the output layer and any weight an embedding shares."""
    head = output_layer_name(model)
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    out, seen = [], set()
    for name, module in linear_modules(model):
        w = getattr(module, "weight", None)
        if (name == head or w is None or not w.requires_grad or w.ndim != 2 or id(w) in embedded
                or id(w) in seen):
            continue
        seen.add(id(w))
        out.append(w)
    return out


def split_muon_groups(param_groups: list[dict], model: nn.Module) -> tuple[list[dict], list[dict]]:
    """(Muon groups, AdamW groups): each group of ``param_groups`` split by parameter, both halves with the group's
    name and values (a linear's weight on Muon, its bias on AdamW at the same decay). ValueError when the model has
    no hidden 2-D matrix for Muon."""
    hidden = {id(p) for p in hidden_matrices(model)}
    if not hidden:
        raise ValueError(f"{type(model).__name__} has no hidden 2-D linear weight for Muon (only embeddings, the "
                         f"output layer or non-2-D parameters)")
    muon, adamw = [], []
    for group in param_groups:
        values = {k: v for k, v in group.items() if k != "params"}
        params = list(group["params"])
        for side, keep in ((muon, True), (adamw, False)):
            part = [p for p in params if (id(p) in hidden) == keep]
            if part:
                side.append({**values, "params": part})
    return muon, adamw


class _States(ChainMap):
    """Both halves' states. A parameter's entry is read from (or, as torch's defaultdict does, created in) the half
    that holds it: ChainMap's own lookup through a defaultdict would add an empty entry to the first half for
    every AdamW parameter read."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        super().__init__(*(opt.state for opt in optimizers))
        self._optimizers = optimizers

    def __getitem__(self, param):
        for opt in self._optimizers:
            if param in opt.state:
                return opt.state[param]
        for opt in self._optimizers:
            if any(param is p for g in opt.param_groups for p in g["params"]):
                return opt.state[param]
        raise KeyError(param)


class MuonWithAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` over ``muon_groups`` and ``torch.optim.AdamW`` over ``adamw_groups``, one Optimizer.

    ``param_groups`` is the union of both (the very same dicts: Muon's first), so LR schedulers, policies and
    ``group["weight_decay"] = ...`` act on the inner optimizers; ``state_dict`` holds both states.
    ``replicas`` (``alphadecay.muon_ddp.Replicas``): the DDP ranks, when the matrices are replicated over more than
    one; each matrix's Newton-Schulz then runs on one of them (``step`` becomes collective over them).
    """

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], *, lr: float, muon_lr: float | None = None,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 adjust_lr_fn: str = "match_rms_adamw", ns_dtype: str = "bfloat16",
                 adamw_options: dict | None = None, replicas: Replicas | None = None):
        if not muon_groups:
            raise ValueError("MuonWithAdamW needs at least one Muon group (split_muon_groups builds them)")
        checks = [(lr > 0 and math.isfinite(lr), f"lr must be positive, got {lr}"),
                  (muon_lr is None or (muon_lr > 0 and math.isfinite(muon_lr)), f"muon_lr must be positive, got "
                                                                                f"{muon_lr}"),
                  (0 <= momentum < 1, f"momentum must be in [0, 1), got {momentum}"),
                  (1 <= ns_steps < 100, f"ns_steps must be in [1, 99], got {ns_steps}"),
                  (adjust_lr_fn in ADJUST_LR_FNS, f"unknown adjust_lr_fn {adjust_lr_fn!r}; choose one of "
                                                  f"{', '.join(ADJUST_LR_FNS)}"),
                  (ns_dtype in NS_DTYPES, f"unknown ns_dtype {ns_dtype!r}; choose one of {', '.join(NS_DTYPES)}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.lr_ratio = 1.0 if muon_lr is None else float(muon_lr) / float(lr)
        self.ns_dtype = ns_dtype
        # Under FSDP2 torch's Newton-Schulz would orthogonalise each rank's row shard: ShardedMuon gathers each
        # matrix's update to one rank instead (same state and groups as torch's Muon). float32 Newton-Schulz is
        # ShardedMuon's too, sharded or not.
        # bf16 weights: torch's Muon rounds its separate decay away and corrupts the momentum without Nesterov;
        # ShardedMuon computes decay and step in float32 and rounds once (muon_fsdp._apply).
        sharded = any(is_sharded(p) for g in muon_groups for p in g["params"])
        low = any(low_precision(p) for g in muon_groups for p in g["params"])
        options = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps,
                   "adjust_lr_fn": adjust_lr_fn}
        # Under DDP (``replicas`` of more than one rank) each matrix's Newton-Schulz runs on one rank
        # (alphadecay.muon_ddp), in the state_dict the unsplit path writes.
        if replicas is not None and replicas.world_size > 1 and not sharded:
            self.muon = ReplicatedMuon(muon_groups, replicas=replicas, ns_dtype=ns_dtype,
                                       torch_state=not (low or ns_dtype != "bfloat16"), **options)
        elif sharded or low or ns_dtype != "bfloat16":
            self.muon = ShardedMuon(muon_groups, ns_dtype=ns_dtype, **options)
        else:
            self.muon = torch.optim.Muon(muon_groups, **options)
        adamw_options = dict(adamw_options or {})
        if any(low_precision(p) for g in adamw_groups for p in g["params"]) and not adamw_options.get("fused"):
            # torch's unfused AdamW decays bf16 weights in a separate multiply, which rounds back to the weight;
            # the fused kernel computes decay and update in float32 and rounds once.
            adamw_options.update(fused=True, foreach=None)
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, **adamw_options) if adamw_groups else None
        super().__init__(self._groups(), defaults={})
        self._sync()
        for opt in self.optimizers:   # a load into either half (DCP's set_optimizer_state_dict) re-points ours
            opt.register_load_state_dict_post_hook(lambda _: self._sync())

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.muon] + ([self.adamw] if self.adamw is not None else [])

    def _groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def _sync(self) -> None:
        # The inner optimizers' load_state_dict replaces their group dicts and state: point at the new ones.
        self.param_groups = self._groups()
        self.state = _States(self.optimizers)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.lr_ratio == 1.0:
            self.muon.step()
        else:
            written = [g["lr"] for g in self.muon.param_groups]
            for g in self.muon.param_groups:
                g["lr"] = g["lr"] * self.lr_ratio
            try:
                self.muon.step()
            finally:   # the written values back exactly: a multiply and a divide would drift
                for g, lr in zip(self.muon.param_groups, written):
                    g["lr"] = lr
        if self.adamw is not None:
            self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": None if self.adamw is None else self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if not isinstance(state_dict, dict) or "muon" not in state_dict or "adamw" not in state_dict:
            raise ValueError("the optimizer state is not a Muon + AdamW state (no 'muon' and 'adamw' entries); "
                             "resume with the --optimizer it was trained with")
        if (state_dict["adamw"] is None) != (self.adamw is None):
            raise ValueError("the optimizer state has " + ("no" if state_dict["adamw"] is None else "an")
                             + " AdamW half, this optimizer " + ("has" if self.adamw is not None else "has none"))
        for saved in state_dict["muon"].get("param_groups", []):   # torch's Muon would ignore a float32 state's
            check_same_ns_dtype(saved.get("ns_dtype", "bfloat16"), self.ns_dtype)
        self.muon.load_state_dict(state_dict["muon"])
        if self.adamw is not None:
            self.adamw.load_state_dict(state_dict["adamw"])
        self._sync()

    def __repr__(self) -> str:
        return f"MuonWithAdamW(muon={len(self.muon.param_groups)} groups, adamw=" \
               f"{0 if self.adamw is None else len(self.adamw.param_groups)} groups, muon_lr_ratio={self.lr_ratio}, " \
               f"ns_dtype={self.ns_dtype})"


__all__ = ["ADJUST_LR_FNS", "MuonWithAdamW", "hidden_matrices", "split_muon_groups"]
