"""Table 4 (GLUE) and the ViT row of Table 5 from the runs' metrics.jsonl (alphadecay.tasks.glue / .vit), mean ±
sample sd over seeds per cell, the paper's number beside it.

    python scripts/make_tables.py runs/table4_glue --table 4                    # each run's best dev epoch
    python scripts/make_tables.py runs/table4_glue --table 4 --glue_epoch last  # each run's last epoch
    python scripts/make_tables.py runs/table5_vit_tiny --table vit

A cell is a (method, base weight decay) row and a task (Table 4) or a decay column (ViT). A run without a
final record is counted as unfinished and left out of the means. A GLUE run's number is its best dev epoch by
default, as fairseq reports and the paper's Table 4 (RoBERTa's recipe) shows; the title says which.
"""
from __future__ import annotations

import math
import statistics
import sys

from table_runs import METHODS, STRATEGY_LABEL, fmt_decay, fmt_mean_sd, is_downstream, load_paper, metrics_files

from alphadecay.metrics import read_metrics

GLUE_TASKS = ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb"]
GLUE_NAMES = {"cola": "CoLA (mcc)", "mnli": "MNLI (m acc)", "mrpc": "MRPC (acc)", "qnli": "QNLI (acc)",
              "qqp": "QQP (acc)", "rte": "RTE (acc)", "sst2": "SST-2 (acc)", "stsb": "STS-B (pearson)"}


def read_downstream(folders: list[str], kind: str):
    """[(config, final record or None)] of the GLUE (kind 'glue') or ViT ('vit') runs under the folders."""
    out = []
    for file in metrics_files(folders):
        log = read_metrics(file)
        cfg = log.config
        if not is_downstream(cfg) or (cfg["task"] == "image_classification") != (kind == "vit"):
            continue
        out.append((cfg, log.last("final")))
    return out


def _row(cfg: dict) -> tuple[str, float]:
    return STRATEGY_LABEL.get(cfg.get("strategy"), str(cfg.get("strategy"))), float(cfg.get("weight_decay", 0))


def _row_order(key):
    method, decay = key
    return (METHODS.index(method) if method in METHODS else len(METHODS), decay)


def glue_score(final: dict | None, epoch: str) -> float | None:
    """The run's score at its ``epoch`` ('best' or 'last') dev evaluation; None when unfinished or not finite.
    A final record without per-epoch entries (written before they existed) has one score, its last evaluation."""
    if final is None:
        return None
    entry = final.get(epoch)
    score = entry.get("score") if isinstance(entry, dict) else final.get("score")
    return float(score) if isinstance(score, (int, float)) and math.isfinite(score) else None


def glue_table(folders: list[str], paper: dict | None, epoch: str = "best") -> tuple[str, int]:
    runs = read_downstream(folders, "glue")
    cells: dict = {}
    unfinished = single = 0
    for cfg, final in runs:
        score = glue_score(final, epoch)
        if score is None:
            unfinished += 1
            continue
        single += epoch not in final
        cells.setdefault(_row(cfg), {}).setdefault(cfg["task"], []).append(score)
    tasks = [t for t in GLUE_TASKS if any(t in row for row in cells.values())]
    if not tasks:
        return f"no finished GLUE runs under {', '.join(folders)} ({unfinished} unfinished)", 1
    ref = (paper or {}).get("table4_glue_roberta_base")
    which = ("best dev epoch of each run, as the paper and fairseq report" if epoch == "best"
             else "last epoch of each run")
    lines = [f"Table 4: GLUE dev scores of roberta-base fine-tuned with each method (x100; {which}; mean ± sd over "
             f"seeds)", "",
             "| method | wd | " + " | ".join(GLUE_NAMES[t] for t in tasks) + " | Avg. |",
             "|---|---|" + "---|" * (len(tasks) + 1)]
    for key in sorted(cells, key=_row_order):
        method, decay = key
        means = [statistics.fmean(cells[key][t]) for t in tasks if cells[key].get(t)]
        avg = f"{statistics.fmean(means):.2f}" if len(means) == len(tasks) else "—"
        lines.append(f"| {method} | {fmt_decay(decay)} | " + " | ".join(fmt_mean_sd(cells[key].get(t, [])) for t in tasks)
                     + f" | {avg} |")
    if ref:
        for method in METHODS:
            if method in ref:
                values = dict(zip(ref["tasks"], ref[method]))
                lines.append(f"| paper: {method} | ? | " + " | ".join(f"{values[t]:.2f}" for t in tasks)
                             + f" | {values['Avg.']:.2f} |")
    other = "last" if epoch == "best" else "best"
    older = (f" {single} run(s) logged only their last evaluation (no per-epoch scores): that one is shown."
             if single else "")
    lines += ["", f"{len(runs)} run(s) read, {unfinished} unfinished.{older} The paper does not state its fine-tuning "
                  f"decay or recipe; its Avg. is over all eight tasks. --glue_epoch {other}: each run's {other} epoch."]
    return "\n".join(lines), 0


def vit_table(folders: list[str], paper: dict | None) -> tuple[str, int]:
    runs = read_downstream(folders, "vit")
    cells: dict = {}
    unfinished = 0
    for cfg, final in runs:
        if final is None or not isinstance(final.get("top1"), (int, float)):
            unfinished += 1
            continue
        method, decay = _row(cfg)
        cells.setdefault(method, {}).setdefault(decay, []).append(100 * final["top1"])
    decays = sorted({d for row in cells.values() for d in row})
    if not decays:
        return f"no finished ViT runs under {', '.join(folders)} ({unfinished} unfinished)", 1
    ref = (paper or {}).get("vit_tiny_imagenet_top1_adam", {})
    lines = ["Table 5 (ViT row): top-1 accuracy (%) of ViT-tiny on the image folder, mean ± sd over seeds", "",
             "| method | " + " | ".join(f"Top-1 @ wd {fmt_decay(d)}" for d in decays) + " |",
             "|---|" + "---|" * len(decays)]
    for method in sorted(cells, key=lambda m: METHODS.index(m) if m in METHODS else len(METHODS)):
        row = []
        for d in decays:
            paper_value = ref.get(fmt_decay(d), {}).get(method if d else "Uniform") if d or method == "WD=0" else None
            cell = fmt_mean_sd(cells[method].get(d, []))
            row.append(f"{cell} [paper {paper_value:g}]" if paper_value is not None else cell)
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    lines += ["", f"{len(runs)} run(s) read, {unfinished} unfinished. Paper: ViT-tiny on ImageNet-1K with Adam "
                  f"(its tables.json key vit_tiny_imagenet_top1_adam)."]
    return "\n".join(lines), 0


def main(folders: list[str], which: str, paper_path: str | None, glue_epoch: str = "best") -> int:
    paper, _ = load_paper(paper_path)
    text, code = glue_table(folders, paper, glue_epoch) if which == "4" else vit_table(folders, paper)
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code
