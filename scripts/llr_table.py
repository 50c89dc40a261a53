"""The LLR paper's validation-perplexity table (``make_tables.py --table llr``) from the runs of scripts/llr_fineweb.

A run belongs here when it ran a per-module LR policy (``--lr_strategy llr`` or ``sharpness``) or carries the
``llr_fineweb`` tag; its row is its LR policy (Uniform, LLR, Sharpness), its column its model. Cells are the mean ±
sample sd over seeds of the final ``eval_ppl`` of finished runs; the paper's value (``llr_fineweb_ppl`` in
paper_tables.json, from the LLR release README) beside it. Unfinished and diverged runs are listed, not averaged.
"""
from __future__ import annotations

from table_runs import Run, fmt_mean_sd, model_label, model_stem, paper_model_key

TAG = "llr_fineweb"
PAPER_KEY = "llr_fineweb_ppl"
ROWS = {"uniform": "Uniform", "llr": "LLR", "sharpness": "Sharpness"}


def is_llr_run(run: Run) -> bool:
    cfg = run.config
    return cfg.get("lr_strategy") in ("llr", "sharpness") or TAG in str(cfg.get("tags") or "").split(",")


def row_of(run: Run) -> str:
    strategy = run.config.get("lr_strategy") or ("llr" if run.config.get("use_modulewise_lr") else "uniform")
    return ROWS.get(strategy, strategy)


def paper_cell(paper, stem: str, row: str):
    try:
        value = paper[PAPER_KEY][paper_model_key(stem)][row]
    except (KeyError, TypeError):
        return None
    return value if isinstance(value, (int, float)) else None


def render(runs: list[Run], paper, digits: int = 2) -> str:
    """The table in Markdown, then the runs not averaged."""
    size = {}
    for r in runs:
        size[model_stem(r.config)] = r.model_info.get("params") or size.get(model_stem(r.config)) or 0
    stems = sorted(size, key=lambda s: (size[s], s))
    found = {row_of(r) for r in runs}
    rows = list(ROWS.values()) + sorted(found - set(ROWS.values()))
    lines = ["### LLR paper table (LLaMA, AdamW 0.1): final validation perplexity", "",
             "| Method | " + " | ".join(model_label(s) for s in stems) + " |", "|" + "---|" * (len(stems) + 1)]
    for row in rows:
        cells = []
        for stem in stems:
            members = [r for r in runs if model_stem(r.config) == stem and row_of(r) == row]
            done = [r.ppl for r in members if r.status == "finished"]
            text = fmt_mean_sd(done, digits)
            left = len(members) - len(done)
            if left:
                text += f" +{left} excl."
            ref = paper_cell(paper, stem, row)
            cells.append(f"{text} [paper {ref:g}]" if ref is not None else text)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: mean ± sample std (ddof=1) over seeds, n = finished runs; [paper x] = the LLR paper's value "
                  "(FineWeb; LLR.md section 7). LARS and LAMB are not run (no maintained implementation in torch)."]
    if "llama_130m" in stems:
        lines.append("LLaMa-130M is configs/llama_130m.json, which the paper calls LLaMa-135M.")
    datasets = sorted({str(r.config.get("dataset_path") or r.config.get("dataset_name") or "allenai/c4")
                       for r in runs})
    lines.append(f"Training data of these runs: {', '.join(datasets)}.")
    excluded = sorted((r for r in runs if r.status != "finished"), key=lambda r: r.path)
    if excluded:
        lines += ["", "Not averaged (unfinished or diverged):", ""]
        lines += [f"- {r.status}: {r.name} ({r.path}): {r.reason}" for r in excluded]
    return "\n".join(lines)
