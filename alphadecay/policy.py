"""The one interface of a per-module hyper-parameter policy, and the helpers every policy shares.

A policy owns one optimizer group key (``hyperparameter``: ``weight_decay`` for the decay strategies, ``lr`` for
LLR) and writes a value of it per module. What its consumers (the pretraining loop, the ViT loop, the Trainer
callback, :class:`alphadecay.combined.Combined`) call, and nothing else:

* groups: ``model``, ``param_groups()``; for a composition ``grouped_modules()`` (the modules that need a group of
  their own) and ``group_values(name)`` (its keys of the group ``name`` when groups are built);
* the values written: ``hyperparameter`` and ``values()`` (``{hyperparameter: {module: value}}`` now);
* when it is due: ``due(step)``; ``step(optimizer, step, scores=None)`` reassigns when due (after backward, before
  ``optimizer.step()``, with the number of updates already applied) and returns the :class:`Assignment`, else
  None; ``initial_assignment(optimizer, scores=None)`` is the assignment before the first update;
* the ESD: ``needs_esd(step)``, ``score_linears`` (the modules whose spectrum it reads), ``score_metric``,
  ``analysis`` and ``distributed`` (the options of :func:`alphadecay.analysis.score_modules`), so that a
  composition runs one ESD pass for all and hands each its ``scores``;
* the record: ``last``, the newest :class:`Assignment` (``to_record()`` is the run's ``decay`` record);
* the state: ``state_dict()`` / ``load_state_dict()``, plain Python data (``torch.load(weights_only=True)``, JSON);
* ``policy(hyperparameter)`` (the policy inside that writes it, or None) and ``follow(scheduler)`` (take the
  global LR schedule from a host that builds its own; nothing by default).

A new policy subclasses :class:`Policy` and implements ``grouped_modules``, ``group_values``, ``due``,
``reassign`` (the hook of the default ``step`` and ``initial_assignment``), ``state_dict`` and
``load_state_dict``; README's "Your own policy" is one in 25 lines.
"""
from __future__ import annotations

import abc
import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import torch
import torch.nn as nn

from .analysis import MODULE_TYPES, module_type


@dataclass
class Assignment:
    """What a policy assigned at one step: the values it wrote and the scores they came from."""
    step: int
    module_weight_decay: dict[str, float]
    module_alpha: dict[str, float] = field(default_factory=dict)
    module_score: dict[str, float] = field(default_factory=dict)
    metric: str = "alpha"
    module_lr: dict[str, float] = field(default_factory=dict)   # base LR b_i (before the schedule), with LLR
    # A policy's values of any other group key, {key: {module: value}}; recorded as module_<key>.
    module_values: dict[str, dict[str, float]] = field(default_factory=dict)

    def type_mean_alpha(self) -> dict[str, float]:
        """Mean alpha per module type (q, k, v, o, gate, up, down), the paper's balance picture."""
        sums: dict[str, list[float]] = {}
        for name, a in self.module_alpha.items():
            t = module_type(name)
            if t in MODULE_TYPES and math.isfinite(a):
                sums.setdefault(t, []).append(a)
        return {t: sum(v) / len(v) for t, v in sums.items()}

    def type_mean_lr(self) -> dict[str, float]:
        """Mean base LR per module type, embeddings and the output layer (by their names) included."""
        sums: dict[str, list[float]] = {}
        for name, lr in self.module_lr.items():
            sums.setdefault(module_type(name), []).append(lr)
        return {t: sum(v) / len(v) for t, v in sums.items()}

    def to_record(self) -> dict:
        rec = {"step": self.step, "module_weight_decay": self.module_weight_decay,
               "module_alpha": self.module_alpha,
               "type_mean_alpha": self.type_mean_alpha()}
        if self.metric not in ("alpha", None):
            rec["esd_metric_for_tb"] = self.metric
            rec["module_score"] = self.module_score
        if self.module_lr:
            rec["module_lr"] = self.module_lr
            rec["type_mean_lr"] = self.type_mean_lr()
        for key, values in self.module_values.items():
            rec[f"module_{key}"] = values
        return rec

    @classmethod
    def of(cls, step: int, values: Mapping[str, Mapping[str, float]], **scores) -> Assignment:
        """An assignment from ``{hyperparameter: {module: value}}`` (a policy's ``values()``)."""
        rest = {k: dict(v) for k, v in values.items() if k not in ("weight_decay", "lr")}
        return cls(step, dict(values.get("weight_decay", {})), module_lr=dict(values.get("lr", {})),
                   module_values=rest, **scores)


def find_groups(optimizer: torch.optim.Optimizer) -> list[tuple[str, dict]]:
    """(name, group) of every named group of ``optimizer``: where a policy writes its values."""
    # A list, not a dict: a module's group may be split over two optimizers under one name (Muon + AdamW).
    groups = [(g["name"], g) for g in optimizer.param_groups if "name" in g]
    if not groups:
        raise ValueError("the optimizer's parameter groups have no 'name'; build the optimizer from "
                         "strategy.param_groups() so that decays can be written per module")
    return groups


def module_partition(model: nn.Module, modules) -> list[tuple[str, list[nn.Parameter]]]:
    """(name, trainable parameters) of each module in ``modules`` and ``"other"`` for the rest; empty ones dropped.

    A parameter shared by two modules (a tied output layer) belongs to the first.
    """
    groups, seen = [], set()
    for name, module in modules:
        params = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(map(id, params))
        groups.append((name, params))
    groups.append(("other", [p for p in model.parameters() if p.requires_grad and id(p) not in seen]))
    return [(n, ps) for n, ps in groups if ps]


BLOCK = re.compile(r"\.(\d+)\.")


def layer_of(name: str) -> str:
    """The transformer block index of a module name: "model.layers.3.mlp.up_proj" -> "3" (the release splits on
    '.'); the name itself when it holds none."""
    m = BLOCK.search(name)
    return m.group(1) if m else name


class Policy(abc.ABC):
    """A per-module hyper-parameter policy (see the module's docstring for what each member is for)."""
    name: str = "policy"                  # saved in its state, so that a resume with another policy is refused
    hyperparameter: str = "weight_decay"  # the optimizer group key it writes
    model: nn.Module
    last: Assignment | None = None
    last_step: int | None = None          # the step of the newest assignment (set by the default step)
    analysis: Mapping = MappingProxyType({})   # score_modules options
    distributed: bool = True

    # -- groups ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def grouped_modules(self) -> list[tuple[str, nn.Module]]:
        """The modules that need an optimizer group of their own (the rest share ``other``)."""

    @abc.abstractmethod
    def group_values(self, name: str) -> dict[str, float]:
        """This policy's keys of the group ``name`` (``other`` included) when groups are built."""

    def param_groups(self) -> list[dict]:
        """One group per grouped module plus ``other``, each with its ``name`` and ``group_values``."""
        return [{"params": params, **self.group_values(name), "name": name}
                for name, params in module_partition(self.model, self.grouped_modules())]

    def values(self) -> dict[str, dict[str, float]]:
        """``{hyperparameter: {module: value}}``: what the policy writes now, for the record."""
        return {self.hyperparameter: {n: self.group_values(n)[self.hyperparameter] for n, _ in self.grouped_modules()}}

    # -- the ESD --------------------------------------------------------------------------------
    @property
    def score_linears(self) -> list[tuple[str, nn.Module]]:
        """The linear modules whose spectrum the policy reads (none: it needs no ESD)."""
        return []

    @property
    def score_metric(self) -> str:
        return "alpha"

    def needs_esd(self, step: int) -> bool:
        """Whether ``step(optimizer, step)`` would run the ESD (so that a composition can run it once for all)."""
        return bool(self.score_linears) and step != self.last_step and self.due(step) \
            and self.score_metric != "gradnorm"

    # -- per step -------------------------------------------------------------------------------
    @abc.abstractmethod
    def due(self, step: int) -> bool:
        """Whether the policy reassigns before update ``step + 1``."""

    @abc.abstractmethod
    def reassign(self, optimizer: torch.optim.Optimizer | None, step: int, scores: dict | None = None) -> Assignment:
        """New values now, written into ``optimizer``'s named groups when given. ``scores``: a table of
        :func:`alphadecay.analysis.score_modules` over ``score_linears`` to use instead of computing one."""

    def step(self, optimizer: torch.optim.Optimizer, step: int, scores: dict | None = None) -> Assignment | None:
        if step == self.last_step or not self.due(step):
            return None
        return self._assigned(step, self.reassign(optimizer, step, scores))

    def initial_assignment(self, optimizer: torch.optim.Optimizer | None = None, *,
                           scores: dict | None = None) -> Assignment:
        """The assignment before the first update, from the initial weights (the run's first record).

        ``scores``: a table from :func:`alphadecay.analyze` of the same model and options, reused instead of a
        second ESD pass. With ``optimizer`` the values are written into its named groups.
        """
        return self._assigned(0, self.reassign(optimizer, 0, scores))

    def _assigned(self, step: int, assignment: Assignment) -> Assignment:
        self.last_step, self.last = step, assignment
        return assignment

    # -- state ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def state_dict(self) -> dict:
        """Plain Python data (numbers, strings, lists, dicts) from which ``load_state_dict`` resumes."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``'s state; raise ValueError naming the flags when it is another policy's."""

    # -- composition ----------------------------------------------------------------------------
    def policy(self, hyperparameter: str) -> Policy | None:
        """The policy in this one that writes ``hyperparameter`` (itself, or one of a composition's), or None."""
        return self if self.hyperparameter == hyperparameter else None

    def follow(self, scheduler) -> None:
        """Called with the LR scheduler a host built itself (transformers' Trainer): a policy that writes absolute
        LRs from the global schedule and has none takes it from there. Nothing by default."""


__all__ = ["Assignment", "Policy", "find_groups", "layer_of", "module_partition"]
