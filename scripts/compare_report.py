"""Report of scripts/compare_strategies.sh: final validation perplexity per (optimizer, method) over seeds,
paired differences (same seed, same data order), and whether they exceed the seed spread; plots of the
alphas and decays AlphaDecay assigned.

    python scripts/compare_report.py RUNS_FOLDER [--out FOLDER]      # writes FOLDER/report.md (+ PNGs)

A difference is called resolved when every seed's paired difference has the same sign and the mean
paired difference exceeds both methods' seed standard deviations; otherwise it is "within seed noise".
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from alphadecay.metrics import read_metrics  # noqa: E402

METHODS = ("none", "uniform", "alphadecay", "uniform+llr", "alphadecay+llr")
LABEL = {"none": "WD=0", "uniform": "Uniform", "alphadecay": "AlphaDecay", "uniform+llr": "LLR",
         "alphadecay+llr": "AlphaDecay + LLR"}
# (a, b): a − b is reported whenever both have runs; the LLR pairs come from GRID=llr.
PAIRS = (("alphadecay", "uniform"), ("uniform", "none"), ("alphadecay", "none"), ("uniform+llr", "uniform"),
         ("alphadecay+llr", "uniform"), ("alphadecay+llr", "alphadecay"), ("alphadecay+llr", "uniform+llr"))


def method_of(config: dict) -> str:
    """The decay strategy, with ``+llr`` when LLR set the learning rates (older logs have no lr_strategy)."""
    return config["strategy"] + ("+llr" if config.get("lr_strategy") == "llr" else "")


def collect(folder: str) -> dict:
    """{(optimizer, decay): {method: {seed: final ppl}}}; WD=0 runs serve every optimizer."""
    runs, zero = defaultdict(lambda: defaultdict(dict)), {}
    logs = {}
    for path in sorted(glob.glob(os.path.join(folder, "*", "metrics.jsonl"))):
        log = read_metrics(path)
        final = log.last("final")
        if log.config is None or final is None:
            continue
        a = log.config
        logs[path] = log
        if a["strategy"] == "none":
            zero[a["seed"]] = final["eval_ppl"]
        else:
            runs[(a["optimizer"], a["weight_decay"])][method_of(a)][a["seed"]] = final["eval_ppl"]
    for cell in runs.values():
        cell["none"] = dict(zero)
    return runs, logs


def sd(values):
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def verdict(diffs, spread):
    if len(diffs) < 2:
        return "too few seeds"
    same_sign = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
    mean = statistics.mean(diffs)
    return "resolved" if same_sign and abs(mean) > max(spread) else "within seed noise"


def report(runs: dict) -> str:
    lines = ["| optimizer | decay | method | seeds | final val. ppl (mean ± sd) | per seed |", "|---|---|---|---|---|---|"]
    pairs = ["", "| optimizer | decay | comparison | paired differences (ppl) | mean ± sd | seed sd (a, b) | verdict |",
             "|---|---|---|---|---|---|---|"]
    for (opt, decay), cell in sorted(runs.items()):
        for method in METHODS:
            by_seed = cell.get(method, {})
            if not by_seed:
                continue
            v = list(by_seed.values())
            lines.append(f"| {opt} | {decay:g} | {LABEL[method]} | {len(v)} | {statistics.mean(v):.3f} ± {sd(v):.3f} | "
                         + ", ".join(f"s{s}: {p:.3f}" for s, p in sorted(by_seed.items())) + " |")
        for a, b in PAIRS:
            seeds = sorted(set(cell.get(a, {})) & set(cell.get(b, {})))
            if not seeds:
                continue
            diffs = [cell[a][s] - cell[b][s] for s in seeds]
            spread = (sd(list(cell[a].values())), sd(list(cell[b].values())))
            pairs.append(f"| {opt} | {decay:g} | {LABEL[a]} − {LABEL[b]} | "
                         + ", ".join(f"{d:+.3f}" for d in diffs)
                         + f" | {statistics.mean(diffs):+.3f} ± {sd(diffs):.3f} | {spread[0]:.3f}, {spread[1]:.3f} | "
                         f"{verdict(diffs, spread)} |")
    return "\n".join(lines + pairs) + "\n"


def collect_by_dtype(folder: str) -> dict:
    """{dtype: {seed: (final ppl, median seconds per update)}} from FOLDER/*/*/metrics.jsonl
    (scripts/compare_precision.sh: one folder per mode)."""
    runs = defaultdict(dict)
    for path in sorted(glob.glob(os.path.join(folder, "*", "*", "metrics.jsonl"))):
        log = read_metrics(path)
        final = log.last("final")
        if log.config is None or final is None:
            continue
        rates = [r["throughput_tokens"] for r in log.records.get("train", []) if r.get("throughput_tokens")]
        tokens = log.config["total_batch_size"] * log.config["max_length"]
        step_s = tokens / statistics.median(rates) if rates else float("nan")
        runs[log.config["dtype"]][log.config["seed"]] = (final["eval_ppl"], step_s)
    return runs


def dtype_report(runs: dict) -> str:
    lines = ["| --dtype | seeds | final val. ppl (mean ± sd) | per seed | s per update (median) |",
             "|---|---|---|---|---|"]
    for dtype, by_seed in sorted(runs.items()):
        ppl = [p for p, _ in by_seed.values()]
        lines.append(f"| {dtype} | {len(ppl)} | {statistics.mean(ppl):.3f} ± {sd(ppl):.3f} | "
                     + ", ".join(f"s{s}: {p:.3f}" for s, (p, _) in sorted(by_seed.items()))
                     + f" | {statistics.median(t for _, t in by_seed.values()):.3f} |")
    dtypes = sorted(runs)
    if len(dtypes) == 2:
        a, b = dtypes
        seeds = sorted(set(runs[a]) & set(runs[b]))
        if seeds:
            diffs = [runs[a][s][0] - runs[b][s][0] for s in seeds]
            spread = tuple(sd([p for p, _ in runs[d].values()]) for d in (a, b))
            lines += ["", "| comparison | paired differences (ppl) | mean ± sd | seed sd (a, b) | verdict |",
                      "|---|---|---|---|---|",
                      f"| {a} − {b} | " + ", ".join(f"{d:+.3f}" for d in diffs)
                      + f" | {statistics.mean(diffs):+.3f} ± {sd(diffs):.3f} | {spread[0]:.3f}, {spread[1]:.3f} | "
                      f"{verdict(diffs, spread)} |"]
    return "\n".join(lines) + "\n"


def plot(logs: dict, out: str) -> list[str] | None:
    """Per-type mean alpha and the decay range of the AlphaDecay runs over training (None without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    made = []
    for optimizer in ("adamw", "adam", "muon"):
        chosen = [log for log in logs.values() if method_of(log.config) == "alphadecay"   # not AlphaDecay + LLR
                  and log.config["optimizer"] == optimizer]
        if not chosen:
            continue
        from alphadecay.plots import TYPE_COLORS
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for i, log in enumerate(chosen):
            seed = log.config["seed"]
            decays = log.records.get("decay", [])
            steps = [r["step"] for r in decays]
            for kind in ("q", "k", "v", "o", "gate", "up", "down"):   # one colour per type, one line style per seed
                left.plot(steps, [r["type_mean_alpha"].get(kind, float("nan")) for r in decays],
                          color=TYPE_COLORS[kind], linestyle=("-", "--", ":", "-.")[i % 4],
                          label=kind if i == 0 else None)
            right.fill_between(steps, [min(r["module_weight_decay"].values()) for r in decays],
                               [max(r["module_weight_decay"].values()) for r in decays], alpha=0.2)
            right.plot(steps, [statistics.median(r["module_weight_decay"].values()) for r in decays],
                       label=f"seed {seed} (median, min-max band)")
        left.set(xlabel="update", ylabel="mean alpha of the module type",
                 title=f"AlphaDecay, {optimizer}: alphas (seeds: " + ", ".join(
                     f"{log.config['seed']} {('solid', 'dashed', 'dotted', 'dash-dot')[i % 4]}"
                     for i, log in enumerate(chosen)) + ")")
        right.set(xlabel="update", ylabel="weight decay", title=f"AlphaDecay, {optimizer}: assigned decays")
        left.legend(ncol=2, fontsize=8)
        right.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out, f"alphadecay_{optimizer}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", help="folder holding one folder per run (scripts/compare_strategies.sh: OUT/compare)")
    p.add_argument("--out", default=None, help="where report.md and the plots go (default: RUNS)")
    p.add_argument("--by", default="method", choices=["method", "dtype"],
                   help="dtype: RUNS holds one folder per --dtype (scripts/compare_precision.sh)")
    args = p.parse_args()
    out = args.out or args.runs
    os.makedirs(out, exist_ok=True)
    if args.by == "dtype":
        by_dtype = collect_by_dtype(args.runs)
        if not by_dtype:
            print(f"error: no finished runs under {args.runs}/*/", file=sys.stderr)
            return 2
        text = dtype_report(by_dtype)
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write(text)
        print(text)
        return 0
    runs, logs = collect(args.runs)
    if not runs:
        print(f"error: no finished runs under {args.runs}", file=sys.stderr)
        return 2
    text = report(runs)
    plots = plot(logs, out)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text + "".join(f"\n![{os.path.basename(p)}]({os.path.basename(p)})\n" for p in plots or []))
    print(text)
    print("plots: " + (", ".join(plots) if plots else "none (no AlphaDecay run yet)") if plots is not None
          else "plots: none (matplotlib missing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
