"""Reading training logs for make_tables.py: one ``Run`` per metrics.jsonl, its cell key, the paper's values.

A run's key is (model stem, optimizer, decay, method, unbalancedWD_every); ``paper_value`` looks a cell up in
the paper's tables (``scripts/paper_tables.json``: the numbers of He et al. 2025, kept in the repository;
``ALPHADECAY_PAPER_TABLES`` names another copy).
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from alphadecay.metrics import read_metrics

DEFAULT_PAPER = os.environ.get("ALPHADECAY_PAPER_TABLES", str(Path(__file__).resolve().parent / "paper_tables.json"))
OPT_LABEL = {"adam": "Adam", "adamw": "AdamW"}
METHODS = ["WD=0", "Uniform", "AWD", "AdaDecay", "AlphaDecay"]
STRATEGY_LABEL = {"none": "WD=0", "uniform": "Uniform", "awd": "AWD", "adadecay": "AdaDecay",
                  "alphadecay": "AlphaDecay"}
# Settings that must agree between the runs averaged in one cell (a warning names any that do not).
RECIPE_KEYS = ["num_training_steps", "lr", "total_batch_size", "max_length", "warmup_steps", "scheduler",
               "min_lr_ratio", "target_eval_tokens", "dtype", "packing", "dataset_path", "eval_dataset_path",
               "grad_clipping"]
MODULEWISE_KEYS = ["wd_min_ratio", "wd_max_ratio", "esd_metric_for_tb", "assign_func", "pl_fitting"]


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ---------------------------------------------------------------------------------------------------
# Reading runs
# ---------------------------------------------------------------------------------------------------
@dataclass
class Run:
    path: str                      # folder holding metrics.jsonl
    config: dict
    model_info: dict
    final: dict | None
    status: str                    # finished | unfinished | diverged | unreadable
    reason: str = ""
    last_step: int = 0
    train_seconds: float = 0.0     # sum of per-update wall time found in train records
    world_size: int = 1
    key: tuple | None = None       # (model_stem, optimizer, decay, method, every)
    warnings: list = field(default_factory=list)

    @property
    def ppl(self) -> float | None:
        if self.final is None:
            return None
        v = self.final.get("eval_ppl")
        if not finite(v) and finite(self.final.get("eval_loss")):
            v = math.exp(min(self.final["eval_loss"], 700))
        return v if finite(v) else None

    @property
    def name(self) -> str:
        return self.config.get("name") or os.path.basename(self.path)


def read_run(metrics_file: str) -> Run:
    log = read_metrics(metrics_file)
    folder, config, model_info, final = log.folder, log.config, log.model, log.last("final")
    train = {r["step"]: r for r in log.records.get("train", [])}
    evals = {r["step"]: r for r in log.records.get("eval", [])}
    bad_lines = log.bad_lines
    if config is None:
        return Run(folder, {}, {}, None, "unreadable", "no config record in metrics.jsonl")
    run = Run(folder, config, model_info, final, "finished")
    if bad_lines:
        run.warnings.append(f"{bad_lines} unreadable line(s) skipped")
    steps = [s for s in train if isinstance(s, int)]
    run.last_step = max(steps) if steps else 0
    bs, accum, total = config.get("batch_size"), config.get("gradient_accumulation"), config.get("total_batch_size")
    if all(isinstance(v, int) and v > 0 for v in (bs, accum, total)) and total % (bs * accum) == 0:
        run.world_size = total // (bs * accum)
    prev_tokens = 0
    for s in sorted(steps):
        r = train[s]
        tok, thr = r.get("tokens_seen"), r.get("throughput_tokens")
        if finite(tok) and finite(thr) and thr > 0:
            run.train_seconds += max(0.0, tok - prev_tokens) / thr
        if finite(tok):
            prev_tokens = tok

    bad_train = [s for s in sorted(steps) if "loss" in train[s] and not finite(train[s]["loss"])]
    bad_eval = [s for s, r in sorted(evals.items(), key=lambda x: (x[0] is None, x[0]))
                if not (finite(r.get("eval_loss")) and finite(r.get("eval_ppl")))]
    if bad_train:
        run.status, run.reason = "diverged", f"non-finite training loss at update {bad_train[0]}"
    elif bad_eval:
        run.status, run.reason = "diverged", f"non-finite evaluation at update {bad_eval[0]}"
    elif final is not None and (run.ppl is None or not finite(final.get("eval_loss", 0.0))):
        run.status, run.reason = "diverged", "non-finite final evaluation"
    elif final is None:
        run.status = "unfinished"
        target = config.get("num_training_steps")
        run.reason = f"no final record (last logged update {run.last_step} of {target})"
        failed = os.path.join(folder, "FAILED")
        if os.path.isfile(failed):
            with open(failed, errors="replace") as f:
                note = f.read().strip().splitlines()
            if note:
                run.reason += f"; FAILED: {note[0][:200]}"
            if note and "non-finite" in note[0]:
                run.status = "diverged"
    run.key = run_key(run)
    return run


def metrics_files(folders: list[str]) -> list[str]:
    """Every metrics.jsonl under the folders (or the .jsonl files given), each once, in a stable order."""
    seen, out = set(), []
    for folder in folders:
        if os.path.isfile(folder) and folder.endswith(".jsonl"):
            files = [folder]
        else:
            files = []
            for root, dirs, names in os.walk(folder):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not re.match(r"model_\d+$", d)
                                 and d != "wandb")
                if "metrics.jsonl" in names:
                    files.append(os.path.join(root, "metrics.jsonl"))
        for file in sorted(files):
            real = os.path.realpath(file)
            if real not in seen:
                seen.add(real)
                out.append(file)
    return out


def is_downstream(config: dict | None) -> bool:
    """A GLUE or ViT run (alphadecay.tasks), which the pretraining tables leave to downstream_tables.py."""
    return bool(config) and "task" in config


def find_runs(folders: list[str]) -> list[Run]:
    runs = [read_run(f) for f in metrics_files(folders)]
    return [r for r in runs if not is_downstream(r.config)]


# ---------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------
def method_of(cfg: dict) -> str:
    strategy = cfg.get("strategy")
    wd = cfg.get("weight_decay", 0.0) or 0.0
    if strategy is None:   # logs of an older version: derive as torchrun_main.py does
        if cfg.get("use_AWD_NeurIPS2023"):
            strategy = "awd"
        elif cfg.get("use_modulewise_wd"):
            strategy = "adadecay" if cfg.get("esd_metric_for_tb") == "gradnorm" else "alphadecay"
        else:
            strategy = "uniform"
    if strategy in ("none", "uniform") and wd == 0:
        return "WD=0"
    return STRATEGY_LABEL.get(strategy, strategy)


def model_stem(cfg: dict) -> str:
    return os.path.splitext(os.path.basename(str(cfg.get("model_config", "unknown"))))[0]


def model_label(stem: str) -> str:
    m = re.fullmatch(r"llama_(\d+(?:\.\d+)?)([mbk])", stem, re.I)
    if m:
        return f"LLaMa-{m.group(1)}{m.group(2).upper()}"
    if stem.lower().startswith("llama_"):
        return "LLaMa-" + stem[6:]
    if stem.lower() == "gpt_nano":
        return "GPT-nano"
    return stem


def paper_model_key(stem: str) -> str:
    label = model_label(stem)
    return "LLaMa-135M" if label == "LLaMa-130M" else label   # the paper calls the 130M config 135M


def is_llama(run: Run) -> bool:
    mt = str(run.model_info.get("model_type", "")).lower()
    return mt == "llama" if mt else model_stem(run.config).lower().startswith("llama")


def fmt_mean_sd(values: list[float], digits: int = 2) -> str:
    """'mean ± sample sd (n=N)' of a cell's values ('—' for none, no sd for one)."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (n=1)"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} (n={len(values)})"


def fmt_decay(d: float) -> str:
    if d == 0:
        return "0"
    s = f"{d:g}"
    return re.sub(r"e([-+])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), s)


def run_key(run: Run):
    cfg = run.config
    method = method_of(cfg)
    decay = 0.0 if method == "WD=0" else float(cfg.get("weight_decay") or 0.0)
    every = int(cfg.get("unbalancedWD_every", 500)) if method == "AlphaDecay" else None
    return (model_stem(cfg), str(cfg.get("optimizer", "adam")).lower(), decay, method, every)


# ---------------------------------------------------------------------------------------------------
# Paper values
# ---------------------------------------------------------------------------------------------------
def load_paper(path: str | None):
    if not path:
        return None, "paper values: not requested"
    try:
        with open(path) as f:
            return json.load(f), f"paper values: {path}"
    except (OSError, ValueError) as e:
        return None, f"paper values: not available ({path}: {e.__class__.__name__})"


def _by_decay(block: dict, decay: float):
    for k, v in block.items():
        try:
            if math.isclose(float(k), decay, rel_tol=1e-6):
                return v
        except ValueError:
            continue
    return None


def paper_value(paper, table: str, stem: str, decay: float, row: str):
    """The paper's number for one cell, or None."""
    if not paper:
        return None
    try:
        if table in ("2", "12"):
            block = paper["table2_adam_c4_ppl" if table == "2" else "table12_adamw_c4_ppl"][paper_model_key(stem)]
            if row == "WD=0":
                return block.get("WD=0")
            d = _by_decay(block, decay)
            return d.get(row) if isinstance(d, dict) else None
        if table == "11":
            d = _by_decay(paper["table11_update_interval_ppl"][paper_model_key(stem)], decay)
            return d.get(row) if isinstance(d, dict) else None
        if table == "5":
            if model_label(stem) != "GPT-nano":
                return None
            for k, v in paper["table5_other_architectures"].items():
                if k.startswith("GPT-nano"):
                    return v.get(row)
    except (KeyError, TypeError, AttributeError):
        return None
    return None
