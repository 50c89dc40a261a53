"""Muon's command-line flags (``--optimizer muon``) and their checks; read by ``muon_options`` for build_optimizer.

Defaults: momentum 0.95, Nesterov, 5 Newton-Schulz steps are torch.optim.Muon's (Keller Jordan's Muon);
``match_rms_adamw`` is Moonshot's update scaling ("Muon is Scalable for LLM Training", 2025), under which Muon
reuses AdamW's learning rate and decoupled decay, so ``--muon_lr`` defaults to ``--lr``.
"""
from __future__ import annotations

import argparse
import math

from ...cli import parse_bool
from ...muon import ADJUST_LR_FNS
from ...newton_schulz import NS_DTYPES
from .checks import require


def add_muon_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Muon (--optimizer muon)")
    g.add_argument("--muon_lr", type=float, default=None,
                   help="Muon's peak LR (default: --lr, which match_rms_adamw makes right); scales every Muon-held "
                        "module's LR by muon_lr / lr, LLR's per-module base LRs included; same schedule as --lr")
    g.add_argument("--muon_momentum", type=float, default=0.95, help="Muon's momentum (torch's default)")
    g.add_argument("--muon_nesterov", type=parse_bool, default=True, help="Nesterov momentum in Muon (torch's default)")
    g.add_argument("--muon_ns_steps", type=int, default=5, help="Newton-Schulz iterations per update (torch's default)")
    g.add_argument("--muon_adjust_lr_fn", default="match_rms_adamw", choices=ADJUST_LR_FNS,
                   help="match_rms_adamw: updates at AdamW's RMS, 0.2 sqrt(max(A, B)) (Moonshot), so --lr and "
                        "--weight_decay carry over; original: Keller Jordan's sqrt(max(1, A/B)) (needs a larger "
                        "--muon_lr, e.g. 0.02)")
    g.add_argument("--muon_ns_dtype", default="bfloat16", choices=tuple(NS_DTYPES),
                   help="dtype of the Newton-Schulz iteration (default bfloat16, torch's); float32 for CPU runs "
                        "(bf16 matmuls are slow there) and for exact agreement across ranks (FSDP2 against one "
                        "process); under --fsdp the update then crosses ranks in float32, twice the bytes")


def check_muon_flags(args) -> None:
    # Without --optimizer muon these flags are refused as passed (features.NEEDS), whatever their values.
    require(args.muon_lr is None or (math.isfinite(args.muon_lr) and args.muon_lr > 0),
            f"--muon_lr must be positive and finite, got {args.muon_lr}; pass a value such as --lr's, or drop it")
    require(math.isfinite(args.muon_momentum) and 0 <= args.muon_momentum < 1,
            f"--muon_momentum must be in [0, 1), got {args.muon_momentum}; pass e.g. 0.95")
    require(1 <= args.muon_ns_steps < 100, f"--muon_ns_steps must be in [1, 99], got {args.muon_ns_steps}; pass e.g. 5")


def muon_options(args) -> dict | None:
    """MuonWithAdamW's options from the flags (None unless --optimizer muon)."""
    if args.optimizer != "muon":
        return None
    return {"muon_lr": args.muon_lr, "momentum": args.muon_momentum, "nesterov": args.muon_nesterov,
            "ns_steps": args.muon_ns_steps, "adjust_lr_fn": args.muon_adjust_lr_fn, "ns_dtype": args.muon_ns_dtype}
