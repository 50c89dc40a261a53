"""One rule for the flags of a feature that is off: passing one is an error that names the switch.

Every flag of ``torchrun_main.py`` is in exactly one table here (tests/test_flag_rule.py walks the parser, so a new
flag cannot escape): ``NEEDS`` (a method's or optimizer's own flag, with what must be on for it to be read;
``WARN_WHEN_OFF``: those of them the release's scripts pass harmlessly, a one-line warning instead),
``RELEASE_ONLY`` (the release's flags that do nothing here: a one-line warning) or ``ALWAYS_VALID`` (read by every
run, or a switch itself). "Passed" means given on the command line, whatever its value (``passed_flags``), so a
flag written with its default is caught too. Ratios that zero every tuned module's LR or decay are errors as well.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable

from .checks import require

MODULEWISE = ("alphadecay", "adadecay")


def _modulewise(a) -> bool:
    return a.strategy in MODULEWISE


def _llr(a) -> bool:
    return a.lr_strategy == "llr"


@dataclass(frozen=True)
class Need:
    """What must be on for a flag to be read: (switch as the error names it, is it on) pairs, all of them."""
    conditions: tuple[tuple[str, Callable[[argparse.Namespace], bool]], ...]
    enable: tuple[str, ...]   # a command line that turns all of them on (for the tests)

    def missing(self, args) -> str | None:
        return next((switch for switch, on in self.conditions if not on(args)), None)


_MW = ("--use_modulewise_wd (or --strategy alphadecay/adadecay)", _modulewise)
_LLR = ("--use_modulewise_lr (or --lr_strategy llr)", _llr)
MUON = Need((("--optimizer muon", lambda a: a.optimizer == "muon"),), ("--optimizer", "muon"))
MODULEWISE_WD = Need((_MW,), ("--use_modulewise_wd",))
# tb_sqrt, tb_log2 and layerwise_sigmoid normalise the scores themselves and never read the ratios.
LINEAR_MAP_WD = Need((_MW, ("--assign_func tb_linear_map (the only map that reads the ratios)",
                            lambda a: a.assign_func == "tb_linear_map")), ("--use_modulewise_wd",))
LLR = Need((_LLR,), ("--use_modulewise_lr",))
FSDP = Need((("--fsdp", lambda a: a.fsdp),), ("--fsdp",))
# Read by module-wise decay from an ESD metric (gradnorm has no eigenvalues) and by LLR.
ESD_SELECTION = Need((("--use_modulewise_wd (with an ESD metric) or --use_modulewise_lr",
                       lambda a: (_modulewise(a) and a.esd_metric_for_tb != "gradnorm") or _llr(a)),),
                     ("--use_modulewise_wd",))

NEEDS: dict[str, Need] = {
    **{f: MUON for f in ("muon_lr", "muon_momentum", "muon_nesterov", "muon_ns_steps", "muon_adjust_lr_fn",
                         "muon_ns_dtype")},
    **{f: MODULEWISE_WD for f in ("alpha_positively_with_WD", "unbalancedWD_every", "esd_metric_for_tb",
                                  "assign_func", "remove_first_layer", "remove_last_layer")},
    "wd_min_ratio": LINEAR_MAP_WD, "wd_max_ratio": LINEAR_MAP_WD,
    "eigs_thresh": ESD_SELECTION,
    "dp_replicate": FSDP,           # HSDP's replicas of FSDP2's shard groups
    **{f: LLR for f in ("alpha_positively_with_lr", "unbalancedlr_every", "lr_max_ratio", "lr_assign_func",
                        "linear_steps", "LLR_ratio", "lr_min_ratio")},
}

# Feature flags that the release's own scripts pass where they are not read (ALGORITHM.md section 6: its scripts
# pass --alpha_positively_with_WD to every method): without their switch, a one-line warning instead of the error.
WARN_WHEN_OFF = {
    "alpha_positively_with_WD": "the release's scripts pass it to every method",
}

# The release's flags that do nothing here: its command lines still run, with one line saying so.
RELEASE_ONLY = {
    "batchnorm": "LLaMA has no BatchNorm",
    "batchnorm_type": "LLaMA has no BatchNorm",
    "use_hf_model": "models always come from transformers",
}

# Read by every run whatever the method and optimizer (--beta1/--beta2: Adam, AdamW and Muon's AdamW half alike;
# the ESD options: every run logs the alphas of its initial weights), or a switch of the tables above.
ALWAYS_VALID = frozenset((
    "help", "model_config", "optimizer", "lr", "batch_size", "total_batch_size", "gradient_accumulation",
    "num_training_steps", "max_train_tokens", "warmup_steps", "scheduler", "min_lr_ratio", "grad_clipping",
    "beta1", "beta2", "dtype", "max_length", "seed", "activation_checkpointing", "compile", "fsdp",
    "weight_decay", "strategy", "use_modulewise_wd", "use_AWD_NeurIPS2023", "pl_fitting", "xmin_pos",
    "filter_zeros", "farms", "esd_float64", "alpha_every",
    "lr_strategy", "use_modulewise_lr",
    "dataset_path", "eval_dataset_path", "dataset_name", "dataset_config", "text_field", "eval_split", "tokenizer",
    "packing", "workers",
    "eval_every", "target_eval_tokens", "eval_batch_size", "save_every", "save_dir", "keep_last_checkpoints",
    "overwrite", "continue_from", "eval_only", "on_nonfinite", "log_every", "wandb_name", "wandb_project", "name",
    "tags", "no_wandb", "single_cuda", "device", "dist_timeout_minutes",
))


def passed_flags(parser: argparse.ArgumentParser, argv) -> frozenset[str]:
    """The dests given in ``argv`` (already parsed once without error), whatever their values."""
    saved = [(a, a.default) for a in parser._actions]
    try:
        for a, _ in saved:
            a.default = argparse.SUPPRESS   # argparse then sets only what the command line gives
        given, _ = parser.parse_known_args(list(argv))
    finally:
        for a, default in saved:
            a.default = default
    return frozenset(vars(given))


def non_default_flags(parser: argparse.ArgumentParser, args) -> frozenset[str]:
    """For callers without a command line (a Namespace built in code): the flags that differ from the defaults."""
    return frozenset(a.dest for a in parser._actions
                     if a.default is not argparse.SUPPRESS and getattr(args, a.dest, a.default) != a.default)


def check_feature_flags(args, passed, order=None) -> list[str]:
    """ConfigError for a passed flag whose feature is off or for ratios that zero every tuned module; returns the
    warnings (the release's flags that do nothing here). Needs ``args.strategy`` and ``args.lr_strategy`` resolved.
    ``order``: the parser's dests, so that the error names the flags in --help's order."""
    order = list(order or sorted(passed))
    off = [(f, NEEDS[f].missing(args)) for f in order if f in passed and f in NEEDS]
    off = [(f, switch) for f, switch in off if switch is not None]
    warnings = [f"warning: --{f} does nothing without {switch} ({WARN_WHEN_OFF[f]}); this run is --strategy "
                f"{args.strategy}" for f, switch in off if f in WARN_WHEN_OFF]
    off = [(f, switch) for f, switch in off if f not in WARN_WHEN_OFF]
    if off:
        switch = off[0][1]
        flags = [f"--{f}" for f, s in off if s == switch]
        names = flags[0] if len(flags) == 1 else ", ".join(flags[:-1]) + " and " + flags[-1]
        verb, them = ("needs", "the flag") if len(flags) == 1 else ("need", "them")
        require(False, f"{names} {verb} {switch}; add it or drop {them}")
    _check_zero_ratios(args, passed)
    return warnings + [f"warning: --{f} is accepted for the release's command lines and does nothing here ({why})"
            for f, why in RELEASE_ONLY.items() if f in passed]


def _check_zero_ratios(args, passed) -> None:
    # Untuned groups (norms; with AlphaDecay also the first/last linear and the embeddings) still move, but the
    # method itself would do nothing, and its records would name a method that did not run.
    if _llr(args):
        every = "every module LLR tunes" if args.lr_assign_func == "tb_linear_map" else \
            "the embeddings and the output layer"
        require(args.lr_max_ratio > 0,
                f"--lr_max_ratio 0 (so --lr_min_ratio 0) gives {every} a learning rate of 0: they would not train; "
                f"raise --lr_max_ratio (LLR's is 5)")
    if _modulewise(args):
        require(args.weight_decay > 0,
                f"--strategy {args.strategy} with --weight_decay 0 gives every module a decay of 0 (WD=0 under "
                f"another name); drop --use_modulewise_wd for WD=0, or pass a base decay such as 1e-5")
        require(args.assign_func != "tb_linear_map" or args.wd_max_ratio > 0,
                "--wd_max_ratio 0 (so --wd_min_ratio 0) gives every balanced module a decay of 0; pass "
                "--weight_decay 0 without --use_modulewise_wd for WD=0, or raise --wd_max_ratio (the paper's is 3)")
    require(args.strategy != "none" or args.weight_decay == 0 or "weight_decay" not in passed,
            f"--strategy none (WD=0) ignores --weight_decay {args.weight_decay}; pass --weight_decay 0, or another "
            f"--strategy")
    if args.strategy == "awd":
        require(args.weight_decay > 0, "--use_AWD_NeurIPS2023 with --weight_decay 0 gives every group a decay of 0 "
                                       "(AWD scales the base decay); drop it for WD=0, or pass a base decay")


def print_warnings(warnings: list[str]) -> None:
    if os.environ.get("RANK", "0") == "0":   # one line per run, not one per rank
        for line in warnings:
            print(line, file=sys.stderr)
