"""Run logging: always <save_dir>/metrics.jsonl; wandb when it works; never a reason to stop training.

Each metrics.jsonl line is one JSON object with a "type":
  config  {"config": {...flags...}, "model": {...}}
  train   step, loss (per predicted token), lr, tokens_seen (non-pad), tokens_learned (predicted), throughput_tokens,
          throughput_learned_tokens, grad_norm, weight_decay, [mfu (from the computed tokens, pads included)];
          under --lr_strategy llr / sharpness also type_lr (module type -> mean LR this update stepped with; lr is
          the global schedule's next value), wandb lr_applied/<type>
  eval    step, eval_loss, eval_ppl, eval_tokens
  decay   step, strategy, module_alpha, module_weight_decay, type_mean_alpha (at every assignment);
          with LLR also module_lr (module -> base LR before the schedule), type_mean_lr
  final   step, eval_loss, eval_ppl, eval_tokens (the run finished)
A resumed run appends to the same file; readers keep the last record of a (type, step).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass

from ..errors import one_line
from ..policy import Assignment


def _clean(v):
    # JSON has no NaN/Inf: undefined values (e.g. alpha of a zero matrix) are written as null.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


def _numbers(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}


WANDB_INIT_TIMEOUT = 20   # seconds


@dataclass
class WandbSettings:
    project: str
    name: str
    tags: list[str] | None = None


class RunLogger:
    """metrics.jsonl (rank 0) and wandb when ``wandb`` is given; a context manager that closes both.

    Leaving it on an exception finishes wandb with exit code 1, so the run shows as failed there.
    """

    def __init__(self, save_dir: str, *, enabled: bool, run_config: dict, resumed: bool,
                 wandb: WandbSettings | None = None):
        self.enabled = enabled
        self.wandb = None
        self._warned = False
        self.file = None
        if not enabled:
            return
        os.makedirs(save_dir, exist_ok=True)
        self.file = open(os.path.join(save_dir, "metrics.jsonl"), "a", encoding="utf-8")
        self.write({"type": "config", "step": run_config.get("start_step", 0), "resumed": resumed,
                    "config": run_config["args"], "model": run_config["model"], "time": time.time()})
        if wandb is not None and os.environ.get("WANDB_MODE") != "disabled":
            self._start_wandb(save_dir, wandb, run_config)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(exit_code=0 if exc_type is None else 1)

    def _start_wandb(self, save_dir: str, settings: WandbSettings, run_config: dict):
        id_file = os.path.join(save_dir, "wandb.json")
        try:
            import wandb
            run_id = None
            if os.path.isfile(id_file):
                with open(id_file) as f:
                    run_id = json.load(f).get("wandb_id")
            kwargs = dict(project=settings.project, name=settings.name, id=run_id, resume="allow",
                          config={**run_config["args"], "model": run_config["model"]}, tags=settings.tags,
                          dir=save_dir)
            try:
                # A bounded wait: without a network wandb would otherwise hold the start for its 90 s default.
                self.wandb = wandb.init(**kwargs, settings=wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT))
            except Exception as e:  # noqa: BLE001 - no network, no key, a server error: go on offline
                warnings.warn(f"wandb could not start online ({one_line(e, 150)}); logging offline to {save_dir} "
                              f"(upload later with `wandb sync`)", stacklevel=3)
                self.wandb = wandb.init(**kwargs, mode="offline")
            with open(id_file, "w") as f:
                json.dump({"wandb_id": self.wandb.id}, f)
        except Exception as e:  # wandb must never stop a training run
            self._warn(e)

    def _warn(self, e: Exception) -> None:
        self.wandb = None
        if not self._warned:
            self._warned = True
            msg = one_line(e)
            warnings.warn(f"wandb disabled for this run ({msg}); metrics.jsonl is still written", stacklevel=3)

    def write(self, record: dict, wandb_data: dict | None = None) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(_clean(record)) + "\n")
        self.file.flush()
        if self.wandb is not None:
            data = wandb_data if wandb_data is not None else _numbers(record)
            try:
                self.wandb.log(data, step=record["step"])
            except Exception as e:
                self._warn(e)

    def train(self, record: dict, group_lrs: dict[str, float] | None = None) -> None:
        """A train record; ``group_lrs`` (group name -> the LR its update stepped with) adds each module type's mean,
        so that per-module LRs (LLR's ramps included) are seen at every log interval, not only at assignments."""
        if not group_lrs:
            return self.write(record)
        rec = {**record, "type_lr": Assignment(record["step"], {}, module_lr=group_lrs).type_mean_lr()}
        self.write(rec, {**_numbers(record), **{f"lr_applied/{t}": v for t, v in rec["type_lr"].items()}})

    def decay(self, a: Assignment, strategy: str) -> None:
        rec = {"type": "decay", "strategy": strategy, **a.to_record()}
        data = {f"alpha/{t}": v for t, v in rec["type_mean_alpha"].items()}
        data.update({f"lr/{t}": v for t, v in rec.get("type_mean_lr", {}).items()})
        if self.wandb is not None:
            try:
                import wandb
                rows = [[n, a.module_alpha.get(n), wd] for n, wd in a.module_weight_decay.items()]
                data["module_decay"] = wandb.Table(columns=["module", "alpha", "weight_decay"], data=rows)
            except Exception as e:
                self._warn(e)
        self.write(rec, data)

    def close(self, exit_code: int = 0) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()
        if self.wandb is not None:
            run, self.wandb = self.wandb, None
            try:
                run.finish(exit_code=exit_code)
            except Exception as e:
                self._warn(e)


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc="update steps", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, mininterval=1.0)
