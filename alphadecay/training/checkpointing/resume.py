"""What a resume may change: this launch's flags against the ones the checkpoint's run was trained with.

A flag that may change takes effect from the resumed update and is recorded (a ``resume`` record in
metrics.jsonl and one line on stderr); any other flag that differs is refused with one line naming it and
both values. A flag is never silently ignored: one not listed below is refused when it changes.

May change (``MAY_CHANGE``):
- the schedule: ``--lr`` (the groups' base lr and the scheduler's), ``--num_training_steps`` /
  ``--max_train_tokens``, ``--warmup_steps``, ``--scheduler``, ``--min_lr_ratio``: the lr of the next update is the
  new schedule's at the resumed step;
- ``--weight_decay``: the strategy's base decay and every decay it assigned, scaled by new / old (every mapping
  of ``assign`` is proportional to the base decay; AWD's running average too), ``--unbalancedWD_every``,
  ``--alpha_every``, ``--grad_clipping``, ``--on_nonfinite``;
- cadence and bookkeeping: evaluation, checkpoints, logging, wandb names, ``--save_dir`` (a run continued
  in another folder), ``--device``, ``--dist_timeout_minutes``, ``--compile``, ``--activation_checkpointing``,
  ``--model_config`` (another file describing the same model: compared key by key with the checkpoint's).
Under ``--lr_strategy llr`` or ``--optimizer muon`` the lr is fixed too (LLR's per-module base lrs come from it and
are checkpointed; Muon's groups may have their own ``--muon_lr``).
Not compared (``NOT_COMPARED``): how this launch starts, and the release's switches that ``--strategy`` and
``--lr_strategy`` resolve.
"""
from __future__ import annotations

import functools
import json
import os
import sys

from ...errors import ConfigError
from ...strategies import AWD
from .checkpoint import check_format

SCHEDULE = ("lr", "num_training_steps", "max_train_tokens", "warmup_steps", "scheduler", "min_lr_ratio")
MAY_CHANGE = frozenset(SCHEDULE + (
    "weight_decay", "unbalancedWD_every", "alpha_every", "grad_clipping", "on_nonfinite",
    "eval_every", "target_eval_tokens", "eval_batch_size", "eval_dataset_path", "save_every", "save_dir",
    "keep_last_checkpoints", "log_every", "wandb_name", "wandb_project", "name", "tags", "no_wandb",
    "device", "compile", "activation_checkpointing", "model_config", "dist_timeout_minutes",
    "use_hf_model", "batchnorm", "batchnorm_type"))   # the last three: accepted for the release's scripts only
# LLR's per-module base learning rates are assigned from --lr and checkpointed, and Muon's groups may run at
# their own --muon_lr: one new/old ratio for every group would be wrong there, so another --lr is another run.
_FIXED_UNDER_LLR = frozenset(("lr",))
NOT_COMPARED = frozenset((
    "continue_from", "overwrite", "eval_only", "single_cuda",   # this launch; world size: load_state checks it
    "use_modulewise_wd", "use_AWD_NeurIPS2023",                 # spelled through --strategy, which is compared
    "use_modulewise_lr",                                        # spelled through --lr_strategy, which is compared
    "fsdp"))   # the checkpoint's optimizer format says it (check_format), also for checkpoints without flags
# Flags added after checkpoints began recording theirs, with the value every run before them had: a record
# without one is compared as that value, so an older checkpoint cannot be resumed under another.
ADDED_LATER = {"muon_ns_dtype": "bfloat16",   # torch's bf16 Newton-Schulz was Muon's only one
               "dp_replicate": 1}             # --fsdp sharded over every rank before HSDP


def flags_record(args) -> dict:
    """What every checkpoint keeps of its run's flags (plain values: loads with weights_only=True)."""
    flags = {k: v for k, v in vars(args).items() if v is None or isinstance(v, (bool, int, float, str))}
    return {"args": flags, "model_config_json": _read_json(args.model_config)}


def _read_json(path: str | None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, TypeError, ValueError):
        return None


def saved_flags(state: dict, path: str) -> dict | None:
    """The checkpoint's record, or (checkpoints written before it) the flags its run logged in metrics.jsonl."""
    if isinstance(state.get("run_flags"), dict):
        return state["run_flags"]
    metrics, found = os.path.join(os.path.dirname(os.path.abspath(path)), "metrics.jsonl"), None
    if os.path.isfile(metrics):
        with open(metrics, encoding="utf-8", errors="replace") as f:
            for line in f:
                if '"type": "config"' not in line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("step", 0) <= state.get("update_step", 0) and isinstance(rec.get("config"), dict):
                    found = {"args": rec["config"], "model_config_json": None}
    return found


def _describe(flag: str, value) -> str:
    if flag in _store_true():
        return f"--{flag}" if value else f"no --{flag}"
    return f"--{flag} {value}"


def _fix(flag: str, value) -> str:
    if flag in _store_true():
        return f"resume {'with' if value else 'without'} --{flag}"
    return f"resume with --{flag} {value}"


@functools.lru_cache(maxsize=1)
def _store_true() -> frozenset[str]:
    import argparse
    from ..flags.args import build_parser
    return frozenset(a.dest for a in build_parser()._actions if isinstance(a, argparse._StoreTrueAction))


def compare(path: str, state: dict, args) -> dict[str, list]:
    """{flag: [checkpoint's value, this run's]} for the flags that may change; ConfigError for any other."""
    check_format(path, state, args.fsdp)
    saved = saved_flags(state, path)
    if saved is None:
        print(f"warning: checkpoint {path} records no flags (written by an older version): the flags of this run "
              f"are taken as they are", file=sys.stderr)
        return {}
    old, new = {**ADDED_LATER, **saved["args"]}, vars(args)
    per_group_lrs = getattr(args, "lr_strategy", None) in ("llr", "sharpness") or args.optimizer == "muon"
    may_change = MAY_CHANGE - _FIXED_UNDER_LLR if per_group_lrs else MAY_CHANGE
    if _prepared(args.dataset_path):   # batches by global index: the update's sequences stay those of the run
        may_change = may_change | BY_GLOBAL_INDEX
    for flag in sorted(set(old) & set(new) - may_change - NOT_COMPARED):
        if not _same_value(flag, old[flag], new[flag]):
            raise ConfigError(f"--{flag} cannot change on resume: checkpoint {path!r} was trained with "
                              f"{_describe(flag, old[flag])}, this run has {_describe(flag, new[flag])}; "
                              f"{_fix(flag, old[flag])}, or start a new run in another --save_dir")
    _same_model(path, saved, args)
    step = int(state.get("update_step", 0))
    if args.num_training_steps < step:
        raise ConfigError(f"--num_training_steps {args.num_training_steps} is below checkpoint {path!r}'s update "
                          f"{step}; pass at least {step} (the schedule's length counts the updates already done)")
    return {f: [old[f], new[f]] for f in sorted(set(old) & set(new) & may_change) if old[f] != new[f]}


# With a prepared folder (--total_batch_size, compared, fixes the sequences of an update) these only split the work.
BY_GLOBAL_INDEX = frozenset(("batch_size", "gradient_accumulation", "workers"))


def _prepared(path) -> bool:
    from ..data.prepared import is_prepared
    return is_prepared(path)


# Flags naming a file or folder: the same place spelled another way (another working directory, a '..') is the same.
PATHS = frozenset(("dataset_path", "eval_dataset_path", "tokenizer"))


def _same_value(flag: str, before, now) -> bool:
    if before == now:
        return True
    if flag in PATHS and isinstance(before, str) and isinstance(now, str):
        return os.path.realpath(before) == os.path.realpath(now)
    return False


def _same_model(path: str, saved: dict, args) -> None:
    before, now = saved.get("model_config_json"), _read_json(args.model_config)
    if not isinstance(before, dict) or not isinstance(now, dict) or before == now:
        return
    key = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))[0]
    raise ConfigError(f"checkpoint {path!r} holds a different model than --model_config {args.model_config!r} "
                      f"({key}: {before.get(key)!r} there, {now.get(key)!r} here); resume with the --model_config it "
                      f"was trained with ({saved['args'].get('model_config')})")


def apply(changed: dict[str, list], *, optimizer, scheduler, strategy) -> None:
    """Make the changed flags act from the resumed update on (after everything was restored)."""
    if "lr" in changed:
        old, new = changed["lr"]
        scheduler.base_lrs = [base * new / old for base in scheduler.base_lrs]
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["initial_lr"] = base
    if any(flag in changed for flag in SCHEDULE):
        # The scheduler object is this run's (its lambda has the new length, warm-up, kind); only its position
        # and base lrs came from the checkpoint.
        lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = lrs
    if "weight_decay" in changed:
        old, new = changed["weight_decay"]
        _rescale_decays(strategy, optimizer, old, new)


def _rescale_decays(strategy, optimizer, old: float, new: float) -> None:
    if hasattr(strategy, "policy"):   # Combined (a decay strategy with LLR): its decay policy
        strategy = strategy.policy("weight_decay")
        if strategy is None:
            return
    scale = (lambda d: d * new / old) if old > 0 else (lambda d: strategy.weight_decay)
    strategy.decays = {n: scale(d) for n, d in strategy.decays.items()}
    if isinstance(strategy, AWD):   # its running average sets every group's decay at each update
        strategy.lambda_bar = scale(strategy.lambda_bar) if old > 0 else 0.0
        for group in optimizer.param_groups:
            group["weight_decay"] = strategy.lambda_bar
    else:
        strategy.write(optimizer)


def announce(path: str, step: int, changed: dict[str, list]) -> str:
    what = ", ".join(f"--{f} {a} -> {b}" for f, (a, b) in changed.items()) or "no flag changed"
    return f"resuming from {path} at update {step}: {what}"
