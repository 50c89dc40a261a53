"""Table 3 in the paper's layout from the zero_shot.json files evaluate.py wrote, the paper's rows beside ours.

    python scripts/table3_zero_shot/table.py FOLDER [FOLDER ...]     # searched recursively

The metric per task: acc_norm where lm-eval gives it (ARC-c, ARC-e, PIQA, HellaSwag, OBQA), acc otherwise
(Winogrande, BoolQ, SIQA), in percent, as lm-eval's own reports of these tasks usually are. Each row is named by
the run's strategy (its metrics.jsonl) and the folder. When a record has SIQA (``evaluate.py --task_set llr``) the
table adds a SIQA column and "LLR avg." (the LLR paper's seven tasks: no BoolQ), with that paper's averages.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from alphadecay.metrics import read_metrics  # noqa: E402

COLUMNS = [("arc_challenge", "ARC-c"), ("arc_easy", "ARC-e"), ("piqa", "PIQA"), ("hellaswag", "Hellaswag"),
           ("openbookqa", "OBQA"), ("winogrande", "Winogrande"), ("boolq", "BoolQ")]
PAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "paper_tables.json")   # see its "_source"
SIQA = ("social_iqa", "SIQA")
LLR_AVG_TASKS = ("openbookqa", "winogrande", "arc_challenge", "arc_easy", "hellaswag", "social_iqa", "piqa")
LABEL = {"none": "WD=0", "uniform": "Uniform", "awd": "AWD", "adadecay": "AdaDecay", "alphadecay": "AlphaDecay"}


def label(checkpoint: str) -> str:
    run = os.path.dirname(checkpoint)
    strategy = None
    if os.path.isfile(os.path.join(run, "metrics.jsonl")):
        strategy = (read_metrics(run).config or {}).get("strategy")
    return f"{LABEL.get(strategy, strategy or '?')} ({os.path.basename(run)}/{os.path.basename(checkpoint)})"


def score(task: dict) -> float | None:
    value = task.get("acc_norm", task.get("acc"))
    return None if value is None else 100 * value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+")
    p.add_argument("--paper", default=PAPER, help="the paper's tables.json ('' for none)")
    args = p.parse_args(argv)
    files = sorted({f for folder in args.folders
                    for f in glob.glob(os.path.join(folder, "**", "zero_shot.json"), recursive=True)})
    records = [(path, json.load(open(path))) for path in files]
    llr = any(SIQA[0] in record["tasks"] for _, record in records)
    columns = COLUMNS + [SIQA] if llr else COLUMNS
    header = "| method | " + " | ".join(name for _, name in columns) + " | Avg. |" + (" LLR avg. |" if llr else "")
    lines = [header, "|---" * (len(columns) + 2 + llr) + "|"]
    paper = json.load(open(args.paper)) if args.paper and os.path.isfile(args.paper) else None
    if paper:
        rows = paper["table3_zero_shot_llama1b"]["rows_in_order_as_printed_method_labels_missing"]
        for i, row in enumerate(rows):
            name = "paper: AlphaDecay" if i == len(rows) - 1 else f"paper: row {i + 1} (label not in our copy)"
            cells = [f"{v:.2f}" for v in row]
            if llr:   # the AlphaDecay paper has no SIQA and no LLR average
                cells = cells[:len(COLUMNS)] + ["n/a"] + cells[len(COLUMNS):] + ["n/a"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if paper and llr and "llr_zero_shot_llama1b" in paper:
        for method, avg in paper["llr_zero_shot_llama1b"]["Avg."].items():
            lines.append(f"| LLR paper: {method} | " + " | ".join(["n/a"] * (len(columns) + 1)) + f" | {avg:.2f} |")
    for path, record in records:
        values = [score(record["tasks"].get(task, {})) for task, _ in columns]
        known = [v for v in values[:len(COLUMNS)] if v is not None]
        averages = [sum(known) / len(known) if len(known) == len(COLUMNS) else None]
        if llr:
            mine = [score(record["tasks"].get(task, {})) for task in LLR_AVG_TASKS]
            averages.append(sum(mine) / len(mine) if None not in mine else None)
        cells = ["n/a" if v is None else f"{v:.2f}" for v in values + averages]
        limit = f", limit {record['limit']}" if record.get("limit") else ""
        lines.append(f"| {label(os.path.dirname(path))}{limit} | " + " | ".join(cells) + " |")
    if not files:
        print(f"error: no zero_shot.json under {', '.join(args.folders)}; run evaluate.py first", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
