"""Per-module hyper-parameter policies composed: a decay strategy and an LR policy on one optimizer.

    policy = alphadecay.Combined(alphadecay.AlphaDecay(model, 0.1, update_every=500),
                                 alphadecay.LLR(model, 1e-3, total_steps=10_000, schedule=S))
    optimizer = torch.optim.AdamW(policy.param_groups(), lr=1e-3)
    policy.initial_assignment(optimizer)
    ...
    policy.step(optimizer, step)

The groups are the finest partition of what the policies need (each linear module, each embedding, the rest);
each policy writes its own key (``weight_decay``, ``lr``) into the groups it names. When several policies need the
ESD at the same step it runs once, over the union of their modules, and every one of them reads it.
"""
from __future__ import annotations

import torch

from .analysis import score_modules
from .esd import linear_modules
from .strategies import Assignment, module_partition


class Combined:
    """The interface of one strategy (``param_groups``, ``initial_assignment``, ``step``, ``last``, ``state_dict``)
    over several policies, each of a different ``hyperparameter``."""

    def __init__(self, *policies):
        kinds = [p.hyperparameter for p in policies]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"each policy must set a different hyper-parameter, got {kinds}")
        if len({id(p.model) for p in policies}) != 1:
            raise ValueError("the policies of a Combined must be built over the same model")
        self.policies = policies
        self.model = policies[0].model
        self.name = "+".join(p.name for p in policies)
        self.linears = linear_modules(self.model)
        self.last: Assignment | None = None

    def policy(self, hyperparameter: str):
        return next((p for p in self.policies if p.hyperparameter == hyperparameter), None)

    @property
    def decays(self) -> dict[str, float]:
        decay = self.policy("weight_decay")
        return dict(decay.decays) if decay is not None else {}

    @property
    def update_every(self) -> int:
        return min(p.update_every for p in self.policies)

    # -- groups ---------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        wanted = {n for p in self.policies for n, _ in p.grouped_modules()}
        modules = [(n, m) for n, m in self.model.named_modules() if n in wanted]
        groups = []
        for name, params in module_partition(self.model, modules):
            values = {}
            for p in self.policies:
                values.update(p.group_values(name))
            groups.append({"params": params, **values, "name": name})
        return groups

    # -- one ESD pass for every policy that needs it ---------------------------------------------
    def _scores(self, users) -> dict[int, dict]:
        """{id(policy): scores}: one score_modules call per distinct set of analysis options."""
        by_options: dict[tuple, list] = {}
        for p in users:
            key = (repr(sorted(p.analysis.items())), p.distributed)
            by_options.setdefault(key, []).append(p)
        out = {}
        for same in by_options.values():
            wanted = {n for p in same for n, _ in p.score_linears}
            union = [(n, m) for n, m in self.linears if n in wanted]
            scores = score_modules(self.model, "alpha", union, distributed=same[0].distributed, **same[0].analysis)
            out.update({id(p): scores for p in same})
        return out

    def initial_assignment(self, optimizer: torch.optim.Optimizer | None = None, *,
                           scores: dict | None = None) -> Assignment:
        users = [p for p in self.policies if p.score_metric != "gradnorm"]
        shared = {id(p): scores for p in users} if scores is not None else self._scores(users)
        for p in self.policies:
            p.initial_assignment(optimizer, scores=shared.get(id(p)))
        return self._merge(0, self.policies)

    def step(self, optimizer: torch.optim.Optimizer, step: int) -> Assignment | None:
        shared = self._scores([p for p in self.policies if p.needs_esd(step)])
        fresh = [p for p in self.policies if p.step(optimizer, step, scores=shared.get(id(p))) is not None]
        return self._merge(step, fresh) if fresh else None

    def _merge(self, step: int, fresh) -> Assignment:
        """One record: every policy's current values, the scores of those that reassigned at this step."""
        alphas, scores, metric = {}, {}, "alpha"
        for p in reversed(fresh):   # the first policy's (the decay strategy's) scores win
            alphas.update(p.last.module_alpha)
            scores.update(p.last.module_score)
            metric = p.last.metric
        lr = self.policy("lr")
        self.last = Assignment(step, self.decays, alphas, scores, metric,
                               module_lr=dict(lr.bases) if lr is not None else {})
        return self.last

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"strategy": self.name, "policies": [p.state_dict() for p in self.policies]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("strategy") != self.name or "policies" not in state:
            raise ValueError(f"the checkpoint holds the state of {state.get('strategy')!r}, not {self.name!r}; "
                             f"resume with the flags it was trained with")
        for p, s in zip(self.policies, state["policies"]):
            p.load_state_dict(s)


def combine(decay, lr_policy=None):
    """``decay`` alone when there is no LR policy, else both composed."""
    return decay if lr_policy is None else Combined(decay, lr_policy)


__all__ = ["Combined", "combine"]
