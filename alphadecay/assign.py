"""Maps from per-module scores to per-module weight decays (the paper's assignment functions, He et al. 2025; tb_linear_map is AlphaDecay's).

All functions take plain Python floats and return plain floats so that every rank, given the same
scores, computes the same decays bit for bit.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

ASSIGN_FUNCS = ("tb_linear_map", "tb_sqrt", "tb_log2", "layerwise_sigmoid")


def tb_linear_map(scores: Sequence[float], wd: float, wd_min_ratio: float, wd_max_ratio: float,
                  positive: bool = True) -> list[float]:
    """Linear interpolation of the scores onto [wd_min_ratio*wd, wd_max_ratio*wd].

    positive=True (AlphaDecay): the largest score gets wd_max_ratio*wd. All-equal scores give every
    module wd: with no spread there is nothing to balance (the release's np.interp would give them
    all wd_max_ratio*wd instead).
    """
    lo, hi = min(scores), max(scores)
    if hi == lo:
        return [wd] * len(scores)
    low_wd, high_wd = wd_min_ratio * wd, wd_max_ratio * wd
    if not positive:
        low_wd, high_wd = high_wd, low_wd
    # The endpoints are returned exactly (not through the rounding of the interpolation).
    return [low_wd if s == lo else high_wd if s == hi else low_wd + (s - lo) / (hi - lo) * (high_wd - low_wd)
            for s in scores]


def _normalised(values: list[float], wd: float) -> list[float]:
    total = sum(values) + 1e-8  # the release's guard against a zero sum
    return [v / total * len(values) * wd for v in values]


def tb_sqrt(scores: Sequence[float], wd: float, positive: bool = True) -> list[float]:
    """wd_k = sqrt(s_k) / sum_j sqrt(s_j) * K * wd (with 1/s for the negative direction)."""
    return _normalised([math.sqrt(s if positive else 1 / s) for s in scores], wd)


def tb_log2(scores: Sequence[float], wd: float, positive: bool = True) -> list[float]:
    """wd_k = log2(s_k) / sum_j log2(s_j) * K * wd (with 1/s for the negative direction)."""
    return _normalised([math.log2(s if positive else 1 / s) for s in scores], wd)


def layerwise_sigmoid(scores: Sequence[float], layers: Sequence[str], wd: float, sigmoid_alpha: float = 4,
                      positive: bool = True) -> list[float]:
    """Within each transformer block, z-score the scores and map theta = 2 / (1 + exp(-a z)) to theta*wd.

    Population std plus 1e-8, as the release; a block of equal scores gets theta = 1, i.e. wd.
    """
    members = defaultdict(list)
    for k, layer in enumerate(layers):
        members[layer].append(k)
    out = [wd] * len(scores)
    sign = 1.0 if positive else -1.0
    for idxs in members.values():
        vals = [scores[k] for k in idxs]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)) + 1e-8
        for k in idxs:
            z = sign * (scores[k] - mean) / std
            out[k] = 2 / (1 + math.exp(-sigmoid_alpha * z)) * wd
    return out


def assign(assign_func: str, scores: Sequence[float], wd: float, *, layers: Sequence[str] = (),
           wd_min_ratio: float = 0.6666, wd_max_ratio: float = 3.0, positive: bool = True,
           sigmoid_alpha: float = 4) -> list[float]:
    if not scores:
        return []
    if assign_func == "tb_linear_map":
        return tb_linear_map(scores, wd, wd_min_ratio, wd_max_ratio, positive)
    if assign_func == "tb_sqrt":
        return tb_sqrt(scores, wd, positive)
    if assign_func == "tb_log2":
        return tb_log2(scores, wd, positive)
    if assign_func == "layerwise_sigmoid":
        return layerwise_sigmoid(scores, layers, wd, sigmoid_alpha, positive)
    raise ValueError(f"unknown assign_func {assign_func!r}; choose one of {', '.join(ASSIGN_FUNCS)}")
