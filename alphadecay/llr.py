"""LLR: per-module learning rates from the weight spectrum ("One LR Doesn't Fit All: Heavy-Tail Guided Layerwise
Learning Rates for LLMs", He et al., ICML 2026), the AlphaDecay authors' follow-up: the same PL_Alpha_Hill, a
lighter tail (larger alpha) gets a larger learning rate.

    llr = alphadecay.LLR(model, lr=1e-3, total_steps=10_000, schedule=S)   # S(t): the global schedule's multiplier
    optimizer = torch.optim.AdamW(llr.param_groups(), lr=1e-3)
    llr.initial_assignment(optimizer)        # bases from the initial weights; group lrs = b_i * S(0)
    ...
    llr.step(optimizer, step)                # after backward, before optimizer.step(): writes every group's lr

Each group's LR is absolute, ``b_i * S(t)``: the policy writes it into its groups at every ``step`` (so a torch
scheduler over the same optimizer only sets the values LLR then overwrites; give LLR the same S(t) it uses). A
reassignment at t0 after the first one moves each changed group linearly over ``linear_steps`` updates from its
LR at t0 - 1 to b_i' * S(t0 + linear_steps), then on b_i' * S(t). Combine it with a decay strategy through
:class:`alphadecay.combined.Combined` (one ESD pass when both reassign at the same step).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable

import torch
import torch.nn as nn

from .analysis import score_modules
from .assign import ASSIGN_FUNCS, assign
from .esd import linear_modules
from .policy import Assignment, Policy, find_groups, layer_of, module_partition

LR_METRICS = ("alpha", "alphahat", "spectral_norm", "stable_rank", "entropy")


def output_layer_name(model: nn.Module) -> str | None:
    """The name of the model's output layer (transformers' ``get_output_embeddings``), or None."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return None
    return next((n for n, m in model.named_modules() if m is head), None)


class LLR(Policy):
    """Per-module learning rates: every linear module and every embedding its own group, the rest (norms) one group.

    * embeddings and the output layer: ``lr_max_ratio * lr`` explicitly (no ESD; the release gives them the largest
      alpha, which under its positive linear map is exactly that); with ``remove_last_layer`` the output layer is
      left untuned instead;
    * the other linear modules: ``assign_func`` of their ``metric`` (PL_Alpha_Hill) onto ``[lr_min_ratio,
      lr_max_ratio] * lr``; ``positive=False`` reverses the direction;
    * untuned (``lr``, following ``lr * S(t)``, never ramped): the rest group, modules with fewer than
      ``eigs_thresh`` eigenvalues, a non-finite score, the first tuned linear with ``remove_first_layer``.

    Assignments: the first one (from the initial weights), then every ``update_every`` updates while
    ``step <= llr_ratio * total_steps``; afterwards the last bases stay.
    """
    name = "llr"
    hyperparameter = "lr"

    def __init__(self, model: nn.Module, lr: float, *, total_steps: int,
                 schedule: Callable[[int], float] | None = None, lr_min_ratio: float = 1.0,
                 lr_max_ratio: float = 5.0, update_every: int = 100, linear_steps: int = 50, llr_ratio: float = 0.2,
                 assign_func: str = "tb_linear_map", positive: bool = True, metric: str = "alpha",
                 eigs_thresh: int = 50, remove_first_layer: bool = False, remove_last_layer: bool = False,
                 sigmoid_alpha: float = 4.0, analysis: dict | None = None, distributed: bool = True):
        checks = [(lr > 0 and math.isfinite(lr), f"lr must be positive, got {lr}"),
                  (0 <= lr_min_ratio <= lr_max_ratio and math.isfinite(lr_max_ratio),
                   f"need 0 <= lr_min_ratio <= lr_max_ratio, got {lr_min_ratio} and {lr_max_ratio}"),
                  (update_every >= 1, f"update_every must be >= 1, got {update_every}"),
                  (linear_steps >= 0, f"linear_steps must be >= 0, got {linear_steps}"),
                  (0 <= llr_ratio <= 1, f"llr_ratio must be in [0, 1], got {llr_ratio}"),
                  (total_steps >= 1, f"total_steps must be >= 1, got {total_steps}"),
                  (assign_func in ASSIGN_FUNCS, f"unknown assign_func {assign_func!r}; choose one of "
                                                f"{', '.join(ASSIGN_FUNCS)}"),
                  (metric in LR_METRICS, f"unknown metric {metric!r} for LLR; choose one of {', '.join(LR_METRICS)}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.model, self.lr, self.schedule = model, float(lr), schedule
        self.lr_min_ratio, self.lr_max_ratio = float(lr_min_ratio), float(lr_max_ratio)
        self.update_every, self.linear_steps = int(update_every), int(linear_steps)
        self.llr_ratio, self.total_steps = float(llr_ratio), int(total_steps)
        # Exact for the decimal ratios people type: 0.29 * 100 is 28.999... in floats but the phase ends at 29.
        self.phase_end = math.floor(Fraction(repr(self.llr_ratio)) * self.total_steps)
        self.assign_func, self.positive, self.metric = assign_func, positive, metric
        self.eigs_thresh, self.sigmoid_alpha = int(eigs_thresh), float(sigmoid_alpha)
        self.remove_first_layer, self.remove_last_layer = remove_first_layer, remove_last_layer
        self.analysis, self.distributed = dict(analysis or {}), distributed

        trainable = lambda m: any(p.requires_grad for p in m.parameters())  # noqa: E731
        self.linears = [(n, m) for n, m in linear_modules(model) if trainable(m)]
        linear_names = {n for n, _ in self.linears}
        self.modules = [(n, m) for n, m in model.named_modules()
                        if (n in linear_names or isinstance(m, nn.Embedding)) and trainable(m)]
        head = output_layer_name(model)
        self.explicit = {n for n, m in self.modules if isinstance(m, nn.Embedding)}
        if head in linear_names and not remove_last_layer:
            self.explicit.add(head)
        self._score_linears = [(n, m) for n, m in self.linears if n not in self.explicit and n != head]
        self.bases = {n: self.lr for n, _ in self.modules}
        self.ramp_from: int | None = None
        self.ramp: dict[str, tuple[float, float]] = {}   # group -> (LR at ramp_from - 1, target)
        self.last: Assignment | None = None
        self.last_step: int | None = None

    # -- groups and the interface the decay strategies share ------------------------------------
    def grouped_modules(self) -> list[tuple[str, nn.Module]]:
        return self.modules

    def group_values(self, name: str) -> dict[str, float]:
        # Groups start at the peak lr (a scheduler built over them scales that); the policy writes b_i * S(t).
        return {"lr": self.lr}

    def param_groups(self) -> list[dict]:
        """One group per linear module and per embedding, plus ``other``; no analysis here."""
        return [{"params": params, **self.group_values(name), "name": name}
                for name, params in module_partition(self.model, self.modules)]

    @property
    def score_linears(self) -> list[tuple[str, nn.Module]]:
        """The modules whose spectrum LLR reads (not the embeddings or the output layer)."""
        return self._score_linears

    @property
    def score_metric(self) -> str:
        return self.metric

    # -- the schedule ---------------------------------------------------------------------------
    def s(self, step: int) -> float:
        """The global schedule's multiplier S(step) (1 without a schedule)."""
        return 1.0 if self.schedule is None else float(self.schedule(step))

    def follow(self, scheduler) -> None:
        """Take S(t) from a ``LambdaLR`` (e.g. the one transformers' Trainer builds) over the same optimizer, when
        built without ``schedule``."""
        if self.schedule is not None:
            return
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if not lambdas:
            raise ValueError(f"LLR reads S(t) from a LambdaLR; {type(scheduler).__name__} has no lr_lambdas: pass "
                             f"schedule=<the multiplier function> instead")
        self.schedule = lambdas[0]

    def lr_at(self, name: str, step: int) -> float:
        """The LR of group ``name`` at ``step`` (>= the last assignment) under the current state."""
        if name in self.ramp and self.ramp_from <= step <= self.ramp_from + self.linear_steps:
            start, target = self.ramp[name]
            if step == self.ramp_from + self.linear_steps:
                return target            # the endpoint itself, not start + (target - start) rounded
            return start + (target - start) * (step - self.ramp_from + 1) / (self.linear_steps + 1)
        return self.bases.get(name, self.lr) * self.s(step)

    def write(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        for name, group in find_groups(optimizer):
            group["lr"] = self.lr_at(name, step)

    # -- assignments ----------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return self.last_step is None or (step % self.update_every == 0 and step <= self.phase_end)

    def needs_esd(self, step: int) -> bool:
        return step != self.last_step and self.due(step)

    def step(self, optimizer: torch.optim.Optimizer | None, step: int,
             scores: dict | None = None) -> Assignment | None:
        """Reassigns when due, then writes every group's LR for this update; the Assignment when it reassigned."""
        out = self.reassign(None, step, scores) if self.needs_esd(step) else None
        if optimizer is not None:
            self.write(optimizer, step)
        return out

    def initial_assignment(self, optimizer: torch.optim.Optimizer | None = None, *,
                           scores: dict | None = None) -> Assignment:
        """Bases from the initial weights (``scores``: a table of :func:`alphadecay.analyze` to reuse)."""
        return self.reassign(optimizer, 0, scores)

    def tuned(self, scores: dict[str, dict]) -> list[str]:
        names = [n for n, _ in self._score_linears]
        skip = {names[0]} if self.remove_first_layer and names else set()
        return [n for n in names if n not in skip and math.isfinite(scores[n][self.metric])
                and scores[n]["num_eigs"] >= self.eigs_thresh
                and not (self.assign_func in ("tb_sqrt", "tb_log2") and scores[n][self.metric] <= 0)]

    def reassign(self, optimizer: torch.optim.Optimizer | None, step: int, scores: dict | None = None) -> Assignment:
        """New bases now (the ramp from the current LRs when it is not the first assignment); with ``optimizer``
        every group's LR at ``step`` written."""
        if scores is None:
            scores = score_modules(self.model, self.metric, self._score_linears, distributed=self.distributed,
                                   **self.analysis)
        chosen = self.tuned(scores)
        values = assign(self.assign_func, [scores[n][self.metric] for n in chosen], self.lr,
                        layers=[layer_of(n) for n in chosen], wd_min_ratio=self.lr_min_ratio,
                        wd_max_ratio=self.lr_max_ratio, positive=self.positive, sigmoid_alpha=self.sigmoid_alpha)
        bases = {n: self.lr for n, _ in self.modules}
        bases.update({n: self.lr_max_ratio * self.lr for n in self.explicit})
        bases.update(zip(chosen, values))
        if self.last_step is None:   # the first assignment: its ramp is the schedule's warm-up itself
            self.ramp_from, self.ramp = None, {}
        else:
            L = self.linear_steps
            ramping = {n for n in self.ramp if step <= self.ramp_from + L}
            start = {n: self.lr_at(n, step - 1) for n in bases}
            target = self.s(step + L)
            self.ramp = {n: (start[n], b * target) for n, b in bases.items() if b != self.bases[n] or n in ramping}
            self.ramp_from = step
        self.bases = bases
        self.last_step = step
        alphas = {n: scores[n]["alpha"] for n, _ in self._score_linears if "alpha" in scores[n]}
        metric_scores = {n: scores[n][self.metric] for n, _ in self._score_linears}
        self.last = Assignment(step, {}, alphas, metric_scores, self.metric, module_lr=dict(bases))
        if optimizer is not None:
            self.write(optimizer, step)
        return self.last

    def values(self) -> dict[str, dict[str, float]]:
        return {"lr": dict(self.bases)}

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"policy": self.name, "lr": self.lr, "bases": dict(self.bases),
                "ramp_from": -1 if self.ramp_from is None else self.ramp_from,
                "ramp": {n: [a, b] for n, (a, b) in self.ramp.items()},
                "last_step": -1 if self.last_step is None else self.last_step}

    def load_state_dict(self, state: dict) -> None:
        if state.get("policy") != self.name:
            raise ValueError(f"the checkpoint holds no LLR state ({state.get('policy', state.get('strategy'))!r}); "
                             f"resume with the LR flags it was trained with")
        if float(state["lr"]) != self.lr or set(state["bases"]) != set(self.bases):
            raise ValueError(f"the LLR state was saved for lr {state['lr']} and {len(state['bases'])} modules, this "
                             f"run has lr {self.lr} and {len(self.bases)} modules; resume with the same lr and model")
        self.bases = {n: float(v) for n, v in state["bases"].items()}
        self.ramp_from = None if state["ramp_from"] < 0 else int(state["ramp_from"])
        self.ramp = {n: (float(a), float(b)) for n, (a, b) in state["ramp"].items()}
        self.last_step = None if state["last_step"] < 0 else int(state["last_step"])


# The LLR paper's "Sharpness" baseline (its section 7 table): AdamW with fixed per-type multipliers of a base lr.
SHARPNESS_RATIOS = {"q": 8.0, "k": 8.0, "v": 4.0, "o": 4.0, "gate": 6.0, "up": 6.0, "down": 6.0, "embed": 10.0}


class FixedRatioLR(LLR):
    """LLR's groups with fixed bases ``ratios[module_type] * lr`` and no spectrum: the LLR paper's Sharpness baseline.

    ``ratios`` maps :func:`alphadecay.analysis.module_type` names (and ``embed`` for the embeddings and the output
    layer) to multipliers; the rest (norms) and any unlisted type stay at ``lr``. One assignment, at the start; every
    group then follows ``b_i * S(t)``.
    """
    name = "sharpness"

    def __init__(self, model: nn.Module, lr: float, *, total_steps: int,
                 schedule: Callable[[int], float] | None = None, ratios: dict[str, float] | None = None,
                 distributed: bool = True):
        super().__init__(model, lr, total_steps=total_steps, schedule=schedule, distributed=distributed)
        self.ratios = dict(SHARPNESS_RATIOS if ratios is None else ratios)
        bad = {k: v for k, v in self.ratios.items() if not (v > 0 and math.isfinite(v))}
        if bad:
            raise ValueError(f"fixed lr ratios must be positive, got {bad}")
        self._score_linears = []   # no ESD: Combined and score_modules read nothing

    def due(self, step: int) -> bool:
        return self.last_step is None

    def reassign(self, optimizer: torch.optim.Optimizer | None, step: int, scores: dict | None = None) -> Assignment:
        from .analysis import module_type
        kind = lambda n: "embed" if n in self.explicit else module_type(n)  # noqa: E731
        self.bases = {n: self.ratios.get(kind(n), 1.0) * self.lr for n, _ in self.modules}
        self.ramp_from, self.ramp, self.last_step = None, {}, step
        self.last = Assignment(step, {}, {}, {}, "alpha", module_lr=dict(self.bases))
        if optimizer is not None:
            self.write(optimizer, step)
        return self.last
