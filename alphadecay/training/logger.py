"""Run logging: always <save_dir>/metrics.jsonl; wandb when it works; never a reason to stop training.

Each metrics.jsonl line is one JSON object with a "type":
  config  {"config": {...flags...}, "model": {...}}
  train   step, loss, lr, tokens_seen, throughput_tokens, grad_norm, weight_decay, [mfu]
  eval    step, eval_loss, eval_ppl, eval_tokens
  decay   step, strategy, module_alpha, module_weight_decay, type_mean_alpha (at every assignment)
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

from ..strategies import Assignment


def _clean(v):
    # JSON has no NaN/Inf: undefined values (e.g. alpha of a zero matrix) are written as null.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


class RunLogger:
    def __init__(self, args, *, enabled: bool, run_config: dict, resumed: bool):
        self.enabled = enabled
        self.wandb = None
        self._warned = False
        self.file = None
        if not enabled:
            return
        os.makedirs(args.save_dir, exist_ok=True)
        self.file = open(os.path.join(args.save_dir, "metrics.jsonl"), "a", encoding="utf-8")
        self.write({"type": "config", "step": run_config.get("start_step", 0), "resumed": resumed,
                    "config": run_config["args"], "model": run_config["model"], "time": time.time()})
        if not (args.no_wandb or os.environ.get("WANDB_MODE") == "disabled"):
            self._start_wandb(args, run_config)

    def _start_wandb(self, args, run_config):
        id_file = os.path.join(args.save_dir, "wandb.json")
        try:
            import wandb
            run_id = None
            if os.path.isfile(id_file):
                with open(id_file) as f:
                    run_id = json.load(f).get("wandb_id")
            self.wandb = wandb.init(project=args.wandb_project, name=args.wandb_name, id=run_id, resume="allow",
                                    config={**run_config["args"], "model": run_config["model"]},
                                    tags=args.tags.split(",") if args.tags else None, dir=args.save_dir)
            with open(id_file, "w") as f:
                json.dump({"wandb_id": self.wandb.id}, f)
        except Exception as e:  # wandb must never stop a training run
            self._warn(e)

    def _warn(self, e: Exception) -> None:
        self.wandb = None
        if not self._warned:
            self._warned = True
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            warnings.warn(f"wandb disabled for this run ({msg}); metrics.jsonl is still written", stacklevel=3)

    def write(self, record: dict, wandb_data: dict | None = None) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(_clean(record)) + "\n")
        self.file.flush()
        if self.wandb is not None:
            data = wandb_data if wandb_data is not None else {k: v for k, v in record.items()
                                                             if isinstance(v, (int, float)) and k != "step"}
            try:
                self.wandb.log(data, step=record["step"])
            except Exception as e:
                self._warn(e)

    def decay(self, a: Assignment, strategy: str) -> None:
        rec = {"type": "decay", "strategy": strategy, **a.to_record()}
        data = {f"alpha/{t}": v for t, v in rec["type_mean_alpha"].items()}
        if self.wandb is not None:
            try:
                import wandb
                rows = [[n, a.module_alpha.get(n), wd] for n, wd in a.module_weight_decay.items()]
                data["module_decay"] = wandb.Table(columns=["module", "alpha", "weight_decay"], data=rows)
            except Exception as e:
                self._warn(e)
        self.write(rec, data)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as e:
                self._warn(e)


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc="update steps", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, mininterval=1.0)
