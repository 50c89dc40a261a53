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
from .policy import Assignment, Policy, module_partition


class Combined(Policy):
    """Several policies, each of a different ``hyperparameter``, as one :class:`~alphadecay.policy.Policy`: any
    subclass of it composes, the built-in ones and a user's own alike."""

    def __init__(self, *policies: Policy):
        bad = [p for p in policies if not isinstance(p, Policy) or isinstance(p, Combined)]
        if bad or not policies:
            raise TypeError(f"Combined composes alphadecay.policy.Policy instances (a Combined's own policies, not "
                            f"the Combined), got {[type(p).__name__ for p in bad] or 'none'}")
        kinds = [p.hyperparameter for p in policies]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"each policy must set a different hyper-parameter, got {kinds}")
        if len({id(p.model) for p in policies}) != 1:
            raise ValueError("the policies of a Combined must be built over the same model")
        self.policies = policies
        self.model = policies[0].model
        self.name = "+".join(p.name for p in policies)
        self.hyperparameter = "+".join(kinds)
        self.linears = linear_modules(self.model)
        self.last: Assignment | None = None

    def policy(self, hyperparameter: str) -> Policy | None:
        return next((p for p in self.policies if p.hyperparameter == hyperparameter), None)

    def follow(self, scheduler) -> None:
        for p in self.policies:
            p.follow(scheduler)

    @property
    def decays(self) -> dict[str, float]:
        decay = self.policy("weight_decay")
        return decay.values()["weight_decay"] if decay is not None else {}

    @property
    def update_every(self) -> int:
        return min(p.update_every for p in self.policies if hasattr(p, "update_every"))

    def values(self) -> dict[str, dict[str, float]]:
        out = {}
        for p in self.policies:
            out.update(p.values())
        return out

    # -- groups ---------------------------------------------------------------------------------
    def grouped_modules(self):
        wanted = {n for p in self.policies for n, _ in p.grouped_modules()}
        return [(n, m) for n, m in self.model.named_modules() if n in wanted]

    def group_values(self, name: str) -> dict[str, float]:
        values = {}
        for p in self.policies:
            values.update(p.group_values(name))
        return values

    # -- one ESD pass for every policy that needs it ---------------------------------------------
    @property
    def score_linears(self):
        wanted = {n for p in self.policies for n, _ in p.score_linears}
        return [(n, m) for n, m in self.linears if n in wanted]

    def due(self, step: int) -> bool:
        return any(p.due(step) for p in self.policies)

    def needs_esd(self, step: int) -> bool:
        return any(p.needs_esd(step) for p in self.policies)

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
        users = [p for p in self.policies if p.score_metric != "gradnorm" and p.score_linears]
        shared = {id(p): scores for p in users} if scores is not None else self._scores(users)
        for p in self.policies:
            p.initial_assignment(optimizer, scores=shared.get(id(p)))
        return self._merge(0, self.policies)

    def reassign(self, optimizer: torch.optim.Optimizer | None, step: int, scores: dict | None = None) -> Assignment:
        """Every policy reassigns now, due or not, from one ESD pass."""
        users = [p for p in self.policies if p.score_metric != "gradnorm" and p.score_linears]
        shared = {id(p): scores for p in users} if scores is not None else self._scores(users)
        for p in self.policies:
            p.reassign(optimizer, step, shared.get(id(p)))
        return self._merge(step, self.policies)

    def step(self, optimizer: torch.optim.Optimizer, step: int, scores: dict | None = None) -> Assignment | None:
        shared = self._scores([p for p in self.policies if p.needs_esd(step)]) if scores is None else \
            {id(p): scores for p in self.policies if p.needs_esd(step)}
        fresh = [p for p in self.policies if p.step(optimizer, step, scores=shared.get(id(p))) is not None]
        return self._merge(step, fresh) if fresh else None

    def _merge(self, step: int, fresh) -> Assignment:
        """One record: every policy's current values, the scores of those that reassigned at this step."""
        alphas, scores, metric = {}, {}, "alpha"
        for p in reversed(fresh):   # the first policy's (the decay strategy's) scores win
            alphas.update(p.last.module_alpha)
            scores.update(p.last.module_score)
            metric = p.last.metric
        self.last = Assignment.of(step, self.values(), module_alpha=alphas, module_score=scores, metric=metric)
        self.last_step = step
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


def combine(decay: Policy, lr_policy: Policy | None = None) -> Policy:
    """``decay`` alone when there is no LR policy, else both composed."""
    return decay if lr_policy is None else Combined(decay, lr_policy)


__all__ = ["Combined", "combine"]
