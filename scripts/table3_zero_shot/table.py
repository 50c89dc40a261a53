"""Table 3 in the paper's layout from the zero_shot.json files evaluate.py wrote, the paper's rows beside ours.

    python scripts/table3_zero_shot/table.py FOLDER [FOLDER ...]     # searched recursively

The metric per task: acc_norm where lm-eval gives it (ARC-c, ARC-e, PIQA, HellaSwag, OBQA), acc otherwise
(Winogrande, BoolQ), in percent, as lm-eval's own reports of these tasks usually are. Each row is named by
the run's strategy (its metrics.jsonl) and the folder.
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
    header = "| method | " + " | ".join(name for _, name in COLUMNS) + " | Avg. |"
    lines = [header, "|---" * (len(COLUMNS) + 2) + "|"]
    if args.paper and os.path.isfile(args.paper):
        paper = json.load(open(args.paper))["table3_zero_shot_llama1b"]["rows_in_order_as_printed_method_labels_missing"]
        for i, row in enumerate(paper):
            name = "paper: AlphaDecay" if i == len(paper) - 1 else f"paper: row {i + 1} (label not in our copy)"
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    for path in files:
        record = json.load(open(path))
        values = [score(record["tasks"].get(task, {})) for task, _ in COLUMNS]
        known = [v for v in values if v is not None]
        avg = sum(known) / len(known) if len(known) == len(values) else None
        cells = ["n/a" if v is None else f"{v:.2f}" for v in values + [avg]]
        limit = f", limit {record['limit']}" if record.get("limit") else ""
        lines.append(f"| {label(os.path.dirname(path))}{limit} | " + " | ".join(cells) + " |")
    if not files:
        print(f"error: no zero_shot.json under {', '.join(args.folders)}; run evaluate.py first", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
