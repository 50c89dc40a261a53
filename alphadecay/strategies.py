"""Weight-decay strategies (AlphaDecay and the baselines of He et al., 2025), each an :class:`alphadecay.policy.Policy`
whose ``hyperparameter`` is ``weight_decay``.

Beyond the interface: ``param_groups()`` holds the groups at the current decays and nothing else (every parameter
in exactly one group, every group named by a linear module, ``"other"`` or ``"all"``); ``initial_assignment``
starts from the initial weights as the paper does (decays for the module-wise strategies, the initial alphas for
the record for the others); ``decays`` holds the current per-module decays and ``write(optimizer)`` puts them into
the optimizer's groups.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .analysis import score_modules
from .distributed import is_sharded, squared_norms
from .assign import ASSIGN_FUNCS, assign
from .policy import BLOCK, Assignment, Policy, find_groups, layer_of, module_partition

ESD_METRICS = ("alpha", "alphahat", "spectral_norm", "stable_rank", "entropy", "gradnorm")


class DecayStrategy(Policy):
    """Base class: one decay for everything, re-analysed only for monitoring (``alpha_every``)."""
    name = "uniform"
    hyperparameter = "weight_decay"

    def __init__(self, model: nn.Module, weight_decay: float, *, update_every: int = 500,
                 alpha_every: int = 0, analysis: dict | None = None, distributed: bool = True):
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        self.model = model
        self.weight_decay = float(weight_decay)
        self.update_every = int(update_every)
        self.alpha_every = int(alpha_every)
        self.analysis = dict(analysis or {})
        self.distributed = distributed
        from .esd import linear_modules
        self.linears = linear_modules(model)
        self.decays = {n: self.weight_decay for n, _ in self.linears}
        self.last: Assignment | None = None
        self.last_step: int | None = None

    # -- groups -------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": self.weight_decay, "name": "all"}]

    def grouped_modules(self) -> list[tuple[str, nn.Module]]:
        """The modules that need an optimizer group of their own (none: one decay for all)."""
        return []

    def group_values(self, name: str) -> dict[str, float]:
        """This policy's hyper-parameters of the group ``name`` when groups are built."""
        return {"weight_decay": self.decays.get(name, self.weight_decay)}

    def values(self) -> dict[str, dict[str, float]]:
        return {"weight_decay": dict(self.decays)}

    @property
    def score_linears(self) -> list[tuple[str, nn.Module]]:
        return self.linears

    @property
    def score_metric(self) -> str:
        return "alpha"

    # -- per-step ------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return self.alpha_every > 0 and step % self.alpha_every == 0

    def reassign(self, optimizer: torch.optim.Optimizer | None, step: int, scores: dict | None = None) -> Assignment:
        scores = scores if scores is not None else self._scores("alpha")
        alphas = {n: scores[n]["alpha"] for n, _ in self.linears}
        return self._record(step, alphas, {}, "alpha")

    def _scores(self, metric: str) -> dict:
        return score_modules(self.model, metric, self.linears, distributed=self.distributed, **self.analysis)

    def _record(self, step, alphas, scores, metric) -> Assignment:
        self.last_step = step
        self.last = Assignment(step, dict(self.decays), alphas, scores, metric)
        return self.last

    def write(self, optimizer: torch.optim.Optimizer) -> None:
        for name, group in find_groups(optimizer):
            group["weight_decay"] = self.decays.get(name, self.weight_decay)

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"strategy": self.name, "weight_decay": self.weight_decay, "decays": dict(self.decays),
                "last_step": -1 if self.last_step is None else self.last_step}

    def load_state_dict(self, state: dict) -> None:
        if state.get("strategy") != self.name:
            saved = state.get("strategy")
            hint = f" (--strategy {saved})" if saved in STRATEGIES else ""
            raise ValueError(f"the checkpoint holds the state of strategy {saved!r}, not {self.name!r}; resume with "
                             f"the same strategy flags{hint}")
        self.decays = {n: float(v) for n, v in state["decays"].items()}
        self.last_step = None if state["last_step"] < 0 else int(state["last_step"])


class Uniform(DecayStrategy):
    """One decay for every parameter (the paper's Uniform baseline)."""
    name = "uniform"


class NoDecay(Uniform):
    """WD=0."""
    name = "none"

    def __init__(self, model: nn.Module, weight_decay: float = 0.0, **kw):
        super().__init__(model, 0.0, **kw)


class ModuleWise(DecayStrategy):
    """Per-module decays from a per-module score (an ESD metric or the gradient norm).

    Modules left out of the balancing keep ``weight_decay``: the first and last linear module
    (``remove_first_layer``/``remove_last_layer``), frozen modules (weight with ``requires_grad``
    False: no optimizer group holds them), modules with fewer than ``eigs_thresh`` eigenvalues (ESD
    metrics only), and modules whose score is not finite (zero or NaN weights, no gradient yet) or,
    for tb_sqrt/tb_log2, not positive.
    """
    name = "modulewise"

    def __init__(self, model: nn.Module, weight_decay: float, *, metric: str = "alpha",
                 assign_func: str = "tb_linear_map", wd_min_ratio: float = 0.6666, wd_max_ratio: float = 3.0,
                 positive: bool = True, remove_first_layer: bool = True, remove_last_layer: bool = True,
                 eigs_thresh: int = 50, sigmoid_alpha: float = 4.0, update_every: int = 500,
                 alpha_every: int | None = None, **kw):
        if metric not in ESD_METRICS:
            raise ValueError(f"unknown esd_metric_for_tb {metric!r}; choose one of {', '.join(ESD_METRICS)}")
        if assign_func not in ASSIGN_FUNCS:
            raise ValueError(f"unknown assign_func {assign_func!r}; choose one of {', '.join(ASSIGN_FUNCS)}")
        if not 0 <= wd_min_ratio <= wd_max_ratio:
            raise ValueError(f"need 0 <= wd_min_ratio <= wd_max_ratio, got {wd_min_ratio} and {wd_max_ratio}")
        super().__init__(model, weight_decay, update_every=update_every,
                         alpha_every=update_every if alpha_every is None else alpha_every, **kw)
        self.metric, self.assign_func, self.positive = metric, assign_func, positive
        self.wd_min_ratio, self.wd_max_ratio = float(wd_min_ratio), float(wd_max_ratio)
        self.remove_first_layer, self.remove_last_layer = remove_first_layer, remove_last_layer
        self.eigs_thresh, self.sigmoid_alpha = int(eigs_thresh), float(sigmoid_alpha)
        if assign_func == "layerwise_sigmoid" and not any(BLOCK.search(n) for n, _ in self.linears):
            raise ValueError("assign_func 'layerwise_sigmoid' z-scores within transformer blocks, but no linear module "
                             "name holds a block index (like 'layers.3.'); use tb_linear_map for this model")

    def param_groups(self) -> list[dict]:
        """One group per linear module plus ``other``, at the current decays (no analysis here)."""
        return [{"params": params, **self.group_values(name), "name": name}
                for name, params in module_partition(self.model, self.linears)]

    def grouped_modules(self) -> list[tuple[str, nn.Module]]:
        return self.linears

    @property
    def score_metric(self) -> str:
        return self.metric

    def due(self, step: int) -> bool:
        return step % self.update_every == 0

    def balanced(self, scores: dict[str, dict]) -> list[str]:
        names = [n for n, _ in self.linears]
        skip = set()
        if self.remove_first_layer and names:
            skip.add(names[0])
        if self.remove_last_layer and names:
            skip.add(names[-1])
        chosen, frozen = [], {n for n, m in self.linears if not m.weight.requires_grad}
        for n in names:
            s = scores[n][self.metric]
            if n in skip or not math.isfinite(s) or n in frozen:
                continue
            if self.metric != "gradnorm" and scores[n]["num_eigs"] < self.eigs_thresh:
                continue
            if self.assign_func in ("tb_sqrt", "tb_log2") and s <= 0:
                continue
            chosen.append(n)
        return chosen

    def reassign(self, optimizer, step: int, scores: dict | None = None) -> Assignment:
        if scores is not None and self.metric == "gradnorm":
            raise ValueError("gradnorm scores come from the gradients; call initial_assignment without scores")
        scores = scores if scores is not None else self._scores(self.metric)
        chosen = self.balanced(scores)
        values = assign(self.assign_func, [scores[n][self.metric] for n in chosen], self.weight_decay,
                        layers=[layer_of(n) for n in chosen], wd_min_ratio=self.wd_min_ratio,
                        wd_max_ratio=self.wd_max_ratio, positive=self.positive, sigmoid_alpha=self.sigmoid_alpha)
        self.decays = {n: self.weight_decay for n, _ in self.linears}
        self.decays.update(zip(chosen, values))
        if optimizer is not None:
            self.write(optimizer)
        alphas = {n: scores[n]["alpha"] for n, _ in self.linears if "alpha" in scores[n]}
        metric_scores = {n: scores[n][self.metric] for n, _ in self.linears}
        return self._record(step, alphas, metric_scores, self.metric)


class AlphaDecay(ModuleWise):
    """AlphaDecay: decays from PL_Alpha_Hill, heavier tails (smaller alpha) get weaker decay."""
    name = "alphadecay"

    def __init__(self, model: nn.Module, weight_decay: float = 1e-5, *, wd_min_ratio: float = 0.6666,
                 wd_max_ratio: float = 3.0, update_every: int = 500, metric: str = "alpha",
                 assign_func: str = "tb_linear_map", **kw):
        super().__init__(model, weight_decay, metric=metric, assign_func=assign_func, wd_min_ratio=wd_min_ratio,
                         wd_max_ratio=wd_max_ratio, update_every=update_every, **kw)


class AdaDecay(ModuleWise):
    """The release's module-wise AdaDecay: gradient norm of each linear weight, z-scored within its
    transformer block and mapped through 2 / (1 + exp(-4 z)). Not Nakamura & Hong's per-parameter form.

    Before the first backward there are no gradients, so the initial assignment is uniform.
    """
    name = "adadecay"

    def __init__(self, model: nn.Module, weight_decay: float, *, update_every: int = 500,
                 metric: str = "gradnorm", assign_func: str = "layerwise_sigmoid", alpha_every: int | None = 0,
                 **kw):
        super().__init__(model, weight_decay, metric=metric, assign_func=assign_func, update_every=update_every,
                         alpha_every=alpha_every, **kw)


class AWD(DecayStrategy):
    """Adaptive Weight Decay (Ghiasi et al., NeurIPS 2023) as the AlphaDecay release runs it.

    Every update: lambda_t = lambda_awd * ||grad|| / (||w|| + 1e-8) over all parameters, and
    lambda_bar <- 0.1 lambda_bar + 0.9 lambda_t becomes every group's decay. The release passes
    lambda_awd = 100 * --weight_decay (``lambda_scale``) and starts the optimizer at that decay
    until the first update overwrites it; both are kept here.
    """
    name = "awd"

    def __init__(self, model: nn.Module, weight_decay: float, *, lambda_scale: float = 100.0, **kw):
        super().__init__(model, weight_decay, **kw)
        self.lambda_awd = lambda_scale * self.weight_decay
        self.lambda_bar = 0.0
        self.decays = {n: self.lambda_awd for n in self.decays}

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        groups[0]["weight_decay"] = self.lambda_awd
        return groups

    def group_values(self, name: str) -> dict[str, float]:
        return {"weight_decay": self.lambda_awd}

    def step(self, optimizer, step: int, scores: dict | None = None):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        weights = [p for p in params if p.grad is not None]
        if grads:
            if any(is_sharded(g) for g in grads):   # FSDP: each rank holds a piece; one sum over ranks for both
                squares = squared_norms(grads + weights)
                norms = torch.stack([squares[:len(grads)].sum(), squares[len(grads):].sum()]).sqrt().tolist()
            else:   # one host sync per update: both norms are reduced on the device first
                norms = torch.stack([torch.linalg.vector_norm(torch.stack(torch._foreach_norm(t)).double())
                                     for t in (grads, weights)]).tolist()
            lambda_t = norms[0] * self.lambda_awd / (norms[1] + 1e-8)
            self.lambda_bar = 0.1 * self.lambda_bar + 0.9 * lambda_t
        for group in optimizer.param_groups:
            group["weight_decay"] = self.lambda_bar
        self.decays = {n: self.lambda_bar for n in self.decays}
        if step != self.last_step and self.due(step):
            return self.reassign(optimizer, step, scores)
        return None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "lambda_bar": self.lambda_bar}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.lambda_bar = float(state["lambda_bar"])


STRATEGIES = {cls.name: cls for cls in (NoDecay, Uniform, AlphaDecay, AWD, AdaDecay)}


def build_strategy(name: str, model: nn.Module, weight_decay: float, **kw) -> DecayStrategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown weight-decay strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](model, weight_decay, **kw)
