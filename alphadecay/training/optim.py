"""Builders for the weight-decay strategy, the optimizer and the learning-rate schedule."""
from __future__ import annotations

import functools
import math

import torch
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from ..combined import Combined
from ..errors import ConfigError, one_line
from ..llr import LLR, FixedRatioLR
from ..muon import MuonWithAdamW, split_muon_groups
from ..muon_ddp import Replicas
from ..muon_fsdp import low_precision
from ..policy import Policy
from ..strategies import build_strategy


def strategy_from_args(args, model: torch.nn.Module) -> Policy:
    """The library strategy that the command-line flags name (the one place flags meet alphadecay): the decay
    strategy, composed with LLR's per-module learning rates under ``--lr_strategy llr``."""
    common = {"update_every": args.unbalancedWD_every,
              "analysis": {"pl_fitting": args.pl_fitting, "xmin_pos": args.xmin_pos,
                           "filter_zeros": args.filter_zeros, "farms": args.farms,
                           "dtype": torch.float64 if args.esd_float64 else torch.float32}}
    if args.alpha_every is not None:
        common["alpha_every"] = args.alpha_every
    if args.strategy in ("alphadecay", "adadecay"):
        common.update(metric=args.esd_metric_for_tb, assign_func=args.assign_func,
                      wd_min_ratio=args.wd_min_ratio, wd_max_ratio=args.wd_max_ratio,
                      positive=args.alpha_positively_with_WD, eigs_thresh=args.eigs_thresh,
                      remove_first_layer=args.remove_first_layer, remove_last_layer=args.remove_last_layer)
    decay = build_strategy(args.strategy, model, args.weight_decay, **common)
    lr_strategy = getattr(args, "lr_strategy", "uniform")
    if lr_strategy not in ("llr", "sharpness"):
        return decay
    schedule = lr_schedule(args.scheduler, total=args.num_training_steps, warmup=args.warmup_steps,
                           min_ratio=args.min_lr_ratio)
    if lr_strategy == "sharpness":
        return Combined(decay, FixedRatioLR(model, args.lr, total_steps=args.num_training_steps, schedule=schedule))
    llr = LLR(model, args.lr, total_steps=args.num_training_steps,
              schedule=schedule,
              lr_min_ratio=args.lr_min_ratio, lr_max_ratio=args.lr_max_ratio, update_every=args.unbalancedlr_every,
              linear_steps=args.linear_steps, llr_ratio=args.LLR_ratio, assign_func=args.lr_assign_func,
              positive=args.alpha_positively_with_lr, eigs_thresh=args.eigs_thresh, analysis=common["analysis"])
    return Combined(decay, llr)


def build_optimizer(name: str, param_groups: list[dict], *, lr: float, device: torch.device,
                    model: torch.nn.Module | None = None, muon: dict | None = None,
                    betas: tuple[float, float] = (0.9, 0.999),
                    replicas: Replicas | None = None) -> torch.optim.Optimizer:
    """``adam`` (coupled L2 decay, the paper's Table 2) or ``adamw`` (decoupled, Table 12) over the strategy's groups;
    ``muon``: Muon over the hidden matrices of ``model`` and AdamW over the rest (``alphadecay.MuonWithAdamW``, with
    ``muon``: its keyword options muon_lr, momentum, nesterov, ns_steps, adjust_lr_fn, ns_dtype). ``betas``: every Adam(W)
    group's, Muon's AdamW half included. ``replicas``: DDP's ranks (Muon splits its Newton-Schulz over them; None
    under FSDP2 or one process)."""
    # Fused kernels (every device torch has them for): one pass over each tensor for the whole update. On CPU,
    # LLaMA-20M: 10 ms per step against foreach's 30 ms and the for-loop's 62 ms. On bf16 weights they are also
    # the only correct AdamW: decay and update computed in float32 and rounded once, where the unfused paths'
    # separate p * (1 - lr * wd) rounds back to p whenever lr * wd < 2**-9 (docs/results.md, pure bf16).
    fused = device.type in _get_fused_kernels_supported_devices()
    low = any(low_precision(p) for g in param_groups for p in g["params"])
    if low and not fused:
        raise ConfigError(f"torch has no fused AdamW kernel on {device.type}, and its unfused AdamW rounds the "
                          f"decoupled decay of bf16 weights away; use --dtype bf16-mixed or float32 on this device")
    fast = {"fused": True} if fused else {"foreach": True}
    fast["betas"] = tuple(betas)
    if name == "muon":
        if model is None:
            raise ValueError("build_optimizer('muon', ...) needs model= to tell the hidden matrices from the rest")
        try:
            return MuonWithAdamW(*split_muon_groups(param_groups, model), lr=lr, adamw_options=fast,
                                 replicas=replicas, **(muon or {}))
        except ValueError as e:
            raise ConfigError(f"--optimizer muon: {one_line(e)}; use --optimizer adamw for this model, or fix "
                              f"the Muon flags") from None
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(param_groups, lr=lr, **fast)


def lr_lambda(step: int, *, kind: str, total: int, warmup: int, min_ratio: float, cycle: int | None = None) -> float:
    """Multiplier of the peak lr: linear warm-up, then linear / cosine / cosine-with-restarts to min_ratio."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "cosine_restarts":
        cycle = cycle or max(1, (total - warmup) // 4)
        progress = ((step - warmup) % cycle) / cycle
    else:
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_schedule(kind: str, *, total: int, warmup: int, min_ratio: float):
    """S(t): the multiplier of the peak lr at update t, for the scheduler and for LLR's per-module LRs alike."""
    return functools.partial(lr_lambda, kind=kind, total=total, warmup=warmup, min_ratio=min_ratio)


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, *, total: int, warmup: int,
                    min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(kind, total=total, warmup=warmup,
                                                                    min_ratio=min_ratio))
