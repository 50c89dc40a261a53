"""LLR's command-line flags (the release's names) and their checks; read by ``optim.strategy_from_args``."""
from __future__ import annotations

import argparse

from ...assign import ASSIGN_FUNCS
from ...errors import ConfigError
from .checks import check_numbers

LR_STRATEGIES = ("uniform", "llr", "sharpness")


def add_lr_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("learning rate per module (LLR, He et al., ICML 2026)")
    g.add_argument("--lr_strategy", default=None, choices=LR_STRATEGIES,
                   help="uniform: every group at --lr x the schedule; llr: per-module base LRs from alpha, x the "
                        "schedule (combines with every --strategy); sharpness: the LLR paper's fixed-ratio baseline "
                        "(q/k x8, v/o x4, MLP x6, embeddings/head x10, norms x1 of --lr); derived from "
                        "--use_modulewise_lr when omitted")
    g.add_argument("--use_modulewise_lr", action="store_true",
                   help="LLR: a learning rate per linear module and per embedding (the release's switch); without "
                        "it every group follows --lr")
    g.add_argument("--alpha_positively_with_lr", action="store_true",
                   help="LLR: larger alpha -> larger LR (LLR's direction); without it the map is reversed")
    g.add_argument("--unbalancedlr_every", type=int, default=100,
                   help="LLR: reassign the per-module LRs every N updates (while within --LLR_ratio)")
    g.add_argument("--lr_min_ratio", type=float, default=1.0,
                   help="LLR: per-module base LR of the smallest alpha, x --lr (a module's ratio, not the "
                        "schedule's final value: that is --min_lr_ratio)")
    g.add_argument("--lr_max_ratio", type=float, default=5.0,
                   help="LLR: per-module base LR of the largest alpha, and of the embeddings and output layer, x --lr")
    g.add_argument("--lr_assign_func", default="tb_linear_map", choices=ASSIGN_FUNCS,
                   help="LLR: score -> base LR map (--assign_func is the decays')")
    g.add_argument("--linear_steps", type=int, default=50,
                   help="LLR: updates over which a reassigned module's LR moves linearly to its new base x schedule")
    g.add_argument("--LLR_ratio", type=float, default=0.2,
                   help="LLR: reassign only while the update is within this fraction of --num_training_steps; the "
                        "last base LRs stay for the rest (1 = throughout)")


_RULES = [("unbalancedlr_every", lambda v: v >= 1, ">= 1"), ("lr_min_ratio", lambda v: v >= 0, ">= 0"),
          ("lr_max_ratio", lambda v: v >= 0, ">= 0"), ("linear_steps", lambda v: v >= 0, ">= 0"),
          ("LLR_ratio", lambda v: 0 <= v <= 1, "in [0, 1]")]


def check_lr_flags(args) -> None:
    """Validates the LLR flags and sets ``args.lr_strategy`` (``llr`` with --use_modulewise_lr, else uniform)."""
    check_numbers(args, _RULES)
    if args.lr_min_ratio > args.lr_max_ratio:
        raise ConfigError(f"need --lr_min_ratio <= --lr_max_ratio, got {args.lr_min_ratio} and {args.lr_max_ratio}")
    derived = "llr" if args.use_modulewise_lr else "uniform"
    if args.lr_strategy is not None and args.use_modulewise_lr and args.lr_strategy != derived:
        raise ConfigError(f"--lr_strategy {args.lr_strategy} contradicts --use_modulewise_lr (which means llr); "
                          f"drop one of them")
    args.lr_strategy = args.lr_strategy or derived
