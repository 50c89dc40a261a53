"""Per-module analysis of a model: the public ``analyze`` and the scores strategies balance on."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .distributed import is_sharded, local_part, sharded_rows, sharded_weight_rows, squared_norms
from .esd import METRICS, linear_modules, weight_metrics

# The paper's module types and the names LLaMA, GPT-2, BERT-family encoders (RoBERTa) and timm's ViT give them.
MODULE_TYPES = ("q", "k", "v", "qkv", "o", "gate", "up", "down")
_TYPE_OF_SUFFIX = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate",
                   "up_proj": "up", "down_proj": "down", "c_attn": "qkv", "c_fc": "up",
                   "query": "q", "key": "k", "value": "v",            # BERT/RoBERTa self-attention
                   "fc1": "up", "fc2": "down"}                         # timm ViT MLP
# Names whose meaning depends on the parent: (parent, leaf) -> type.
_TYPE_OF_PAIR = {("attn", "c_proj"): "o", ("mlp", "c_proj"): "down",   # GPT-2
                 ("attn", "qkv"): "qkv", ("attn", "proj"): "o",        # timm ViT
                 ("output", "dense"): "down", ("intermediate", "dense"): "up"}   # BERT/RoBERTa


def module_type(name: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> 'q'; GPT-2's attn.c_proj -> 'o', mlp.c_proj -> 'down'; RoBERTa's
    attention.self.query -> 'q', attention.output.dense -> 'o', intermediate.dense -> 'up', output.dense -> 'down';
    timm ViT's attn.qkv -> 'qkv', attn.proj -> 'o', mlp.fc1/fc2 -> 'up'/'down'. Anything else: its last name."""
    parts = name.split(".")
    if len(parts) > 2 and parts[-3:-1] == ["attention", "output"] and parts[-1] == "dense":
        return "o"
    if len(parts) > 1 and (parts[-2], parts[-1]) in _TYPE_OF_PAIR:
        return _TYPE_OF_PAIR[(parts[-2], parts[-1])]
    return _TYPE_OF_SUFFIX.get(parts[-1], parts[-1])


def _cost(weight: torch.Tensor) -> float:
    long, short = max(weight.shape), min(weight.shape)
    return float(short) ** 2 * long + float(short) ** 3


def score_modules(model: nn.Module, metric: str = "alpha", linears=None, *, distributed: bool = True,
                  process_group=None, **options) -> dict[str, dict[str, float]]:
    """{module name: {metric: value}} for every linear module, computed once across ranks.

    ``metric='gradnorm'`` reads the L2 norm of each weight's gradient (NaN where there is none)
    and skips the ESD; any other metric runs the full ESD analysis. Sharded (FSDP2) weights give the same
    numbers: each matrix is assembled on the one rank that analyses it.
    """
    linears = linear_modules(model) if linears is None else linears
    weights = [m.weight for _, m in linears]
    if not weights:
        return {}
    device = local_part(weights[0]).device
    sharded = any(is_sharded(w) for w in weights)
    if metric == "gradnorm" and sharded:
        norms = squared_norms([w.grad for w in weights]).sqrt().cpu()
        return {n: {"gradnorm": float(v)} for (n, _), v in zip(linears, norms)}
    if metric == "gradnorm":
        def compute(idxs):
            return torch.stack([weights[i].grad.detach().double().norm() if weights[i].grad is not None
                                else torch.tensor(math.nan, dtype=torch.float64, device=device)
                                for i in idxs]).reshape(-1, 1).cpu()
        rows = sharded_rows(compute, [float(w.numel()) for w in weights], 1, device=device,
                            group=process_group, shard=distributed)
        return {n: {"gradnorm": float(r[0])} for (n, _), r in zip(linears, rows)}

    costs = [_cost(w) for w in weights]
    if sharded:
        rows = sharded_weight_rows(lambda full: weight_metrics(full, **options), weights, costs, len(METRICS),
                                   group=process_group)
    else:
        rows = sharded_rows(lambda idxs: weight_metrics([weights[i] for i in idxs], **options), costs,
                            len(METRICS), device=device, group=process_group, shard=distributed)
    out = {}
    for (name, _), row in zip(linears, rows.tolist()):
        out[name] = dict(zip(METRICS, row))
        out[name]["num_eigs"] = int(out[name]["num_eigs"])
    return out


@torch.no_grad()
def analyze(model: nn.Module, *, pl_fitting: str = "median", xmin_pos: float = 2, filter_zeros: bool = False,
            evals_thresh: float = 1e-5, bins: int = 100, farms: bool = False, dtype: torch.dtype = torch.float32,
            distributed: bool = True, process_group=None) -> dict[str, dict[str, float]]:
    """ESD metrics of every linear module: {name: {"alpha", "alphahat", "D", "spectral_norm", "fnorm",
    "stable_rank", "entropy", "num_eigs"}}.

    Under torch.distributed the modules are split across ranks and the results all-gathered, so
    every rank returns identical numbers (``distributed=False`` makes each rank compute alone).
    Undefined values are NaN (e.g. alpha of a zero or NaN matrix).
    """
    return score_modules(model, "alpha", distributed=distributed, process_group=process_group,
                         pl_fitting=pl_fitting, xmin_pos=xmin_pos, filter_zeros=filter_zeros,
                         evals_thresh=evals_thresh, bins=bins, farms=farms, dtype=dtype)
