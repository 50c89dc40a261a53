"""Figures from training runs' metrics.jsonl files.

    alphadecay plot-runs RUN [RUN ...] --out OUTDIR [--labels L ...] [--smooth 0.6]

RUN is a run folder holding metrics.jsonl, or the file itself. Writes loss.png, eval_ppl.png,
type_mean_alpha.png, weight_decay.png and, for LLR runs, learning_rate.png (the assigned base LRs, before the
schedule); a figure whose records no run has is skipped, with a note.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .. import plots
from ..analysis import MODULE_TYPES, module_type
from ..metrics import read_metrics
from . import OneLineParser


@dataclass
class Run:
    label: str
    path: str
    config: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)   # type -> records sorted by step
    skipped_lines: int = 0

    def series(self, kind: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        pairs = [(r["step"], _num(r.get(key))) for r in self.records.get(kind, [])]
        pairs = [(s, v) for s, v in pairs if v is not None]
        if not pairs:
            return np.zeros(0), np.zeros(0)
        steps, values = zip(*pairs)
        return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def read_run(path: str, label: str | None = None) -> Run:
    """One run's records (alphadecay.metrics: for a repeated (type, step), the last record wins)."""
    log = read_metrics(path)
    return Run(label or os.path.basename(log.folder) or log.path, log.path, log.config or {}, log.records,
               log.bad_lines)


def _unique_labels(runs: list[Run]) -> None:
    # Two runs named "seed5" under different sweeps would be indistinguishable in a legend.
    seen = defaultdict(list)
    for r in runs:
        seen[r.label].append(r)
    for label, same in seen.items():
        if len(same) > 1:
            for r in same:
                parent = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(r.path))))
                r.label = f"{parent}/{label}"


def plot_loss(runs: list[Run], path: str, smooth: float = 0.0) -> str | None:
    data = [(r, *r.series("train", "loss")) for r in runs]
    data = [d for d in data if d[1].size]
    if not data:
        return None
    fig, axes = plots.new_figure(8, 4.8)
    ax = axes[0, 0]
    handles, labels, tops = [], [], []
    for k, (run, steps, loss) in enumerate(data):
        color = f"C{k % 10}"
        if smooth > 0:
            ax.plot(steps, loss, color=plots.faint(color, 0.25), lw=0.8)
        (line,) = ax.plot(steps, plots.smooth(loss, smooth), color=color, lw=1.6)
        handles.append(line)
        labels.append(run.label)
        # The first few percent of training (loss ~ ln vocab) would squash the interesting part.
        late = loss[steps >= steps.min() + 0.05 * (steps.max() - steps.min())]
        tops.append(np.nanpercentile(late if late.size else loss, 99))
    finite = np.concatenate([d[2][np.isfinite(d[2])] for d in data])
    if finite.size and tops:
        lo, hi = float(finite.min()), float(max(tops))
        pad = 0.05 * (hi - lo) if hi > lo else 0.1
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss" + (f" (EMA {smooth:g}, raw faint)" if smooth > 0 else ""))
    ax.set_title("Training loss")
    ax.grid(True, alpha=0.3)
    plots.style_legend(fig, handles, labels, title="run")
    return plots.save(fig, path)


def plot_eval_ppl(runs: list[Run], path: str) -> str | None:
    data = [(r, *r.series("eval", "eval_ppl"), *r.series("final", "eval_ppl")) for r in runs]
    data = [d for d in data if d[1].size or d[3].size]
    if not data:
        return None
    fig, axes = plots.new_figure(8, 4.8)
    ax = axes[0, 0]
    handles, labels = [], []
    for k, (run, steps, ppl, fsteps, fppl) in enumerate(data):
        color = f"C{k % 10}"
        (line,) = ax.plot(steps, ppl, color=color, marker="o", ms=3.5, lw=1.6)
        if fsteps.size:
            ax.plot(fsteps, fppl, color=color, marker="*", ms=13, ls="none", markeredgecolor="black", mew=0.6)
            label = f"{run.label} (final {fppl[-1]:.2f})"
        else:
            label = f"{run.label} (last {ppl[-1]:.2f})"
        handles.append(line)
        labels.append(label)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation perplexity (log scale)")
    ax.set_title("Validation perplexity (star: final evaluation)")
    ax.grid(True, which="both", alpha=0.3)
    plots.style_legend(fig, handles, labels, title="run")
    return plots.save(fig, path)


def type_series(run: Run, key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per module type: steps and the mean of ``key`` over that type's modules at each decay record.

    type_mean_alpha is taken as logged; decays are averaged here from module_weight_decay.
    """
    out = defaultdict(lambda: ([], []))
    for rec in run.records.get("decay", []):
        if key == "type_mean_alpha":
            means = {t: _num(v) for t, v in (rec.get("type_mean_alpha") or {}).items()}
        else:
            groups = defaultdict(list)
            for name, v in (rec.get(key) or {}).items():
                if _num(v) is not None:
                    groups[module_type(name)].append(float(v))
            means = {t: sum(v) / len(v) for t, v in groups.items()}
        for t, v in means.items():
            if t in MODULE_TYPES and v is not None:
                out[t][0].append(rec["step"])
                out[t][1].append(v)
    return {t: (np.asarray(s, float), np.asarray(v, float)) for t, (s, v) in out.items()}


def plot_per_type(runs: list[Run], key: str, path: str, *, title: str, ylabel: str,
                  log: bool = False) -> str | None:
    """One panel per run (types overlaid in fixed colours), shared y so runs compare at a glance."""
    data = [(r, type_series(r, key)) for r in runs]
    data = [d for d in data if d[1]]
    if not data:
        return None
    ncols = min(3, len(data))
    nrows = math.ceil(len(data) / ncols)
    fig, axes = plots.new_figure(4.2 * ncols + 1.4, 3.4 * nrows + 0.6, nrows, ncols, sharey=True)
    present = [t for t in MODULE_TYPES if any(t in s for _, s in data)]
    for k, (run, series) in enumerate(data):
        ax = axes[k // ncols, k % ncols]
        for t in present:
            if t in series:
                steps, values = series[t]
                ax.plot(steps, values, color=plots.type_color(t), lw=1.6, marker="o" if steps.size < 30 else None,
                        ms=3)
        if log:
            ax.set_yscale("log")
        ax.set_title(run.label, fontsize=10)
        ax.set_xlabel("optimizer step")
        if k % ncols == 0:
            ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    for k in range(len(data), nrows * ncols):
        axes[k // ncols, k % ncols].set_visible(False)
    fig.suptitle(title)
    plots.style_legend(fig, *plots.type_handles(present), title="module type")
    return plots.save(fig, path)


def make_plots(runs: list[Run], out_dir: str, smooth: float = 0.0) -> dict[str, str | None]:
    os.makedirs(out_dir, exist_ok=True)
    j = lambda name: os.path.join(out_dir, name)  # noqa: E731
    return {
        "loss.png": plot_loss(runs, j("loss.png"), smooth),
        "eval_ppl.png": plot_eval_ppl(runs, j("eval_ppl.png")),
        "type_mean_alpha.png": plot_per_type(runs, "type_mean_alpha", j("type_mean_alpha.png"),
                                             title="Mean PL alpha per module type over training",
                                             ylabel="mean alpha"),
        "weight_decay.png": plot_per_type(runs, "module_weight_decay", j("weight_decay.png"),
                                          title="Assigned weight decay per module type (mean over modules)",
                                          ylabel="weight decay", log=True),
        "learning_rate.png": plot_per_type(runs, "module_lr", j("learning_rate.png"),
                                           title="Assigned base learning rate per module type (LLR; mean over "
                                                 "modules, before the schedule)", ylabel="base LR", log=True),
    }


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="alphadecay plot-runs",
                                description="Plot loss, perplexity, per-type alpha and decays of training runs.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder containing metrics.jsonl, or the file itself")
    p.add_argument("--out", required=True, metavar="OUTDIR", help="folder for the PNGs")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="one legend label per RUN (default: folder names)")
    p.add_argument("--smooth", type=float, default=0.0,
                   help="EMA factor in [0, 1) for the training loss; raw curve drawn faint (default 0: raw)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"--labels has {len(args.labels)} entries for {len(args.runs)} runs")
    if not 0 <= args.smooth < 1:
        parser.error("--smooth must be in [0, 1)")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        print(f"error: --out {args.out!r} is a file; it must be a folder (the PNGs are written into it)",
              file=sys.stderr)
        return 2
    try:
        runs = [read_run(p, args.labels[k] if args.labels else None) for k, p in enumerate(args.runs)]
    except (FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    empty = [r for r in runs if not r.records]       # a config record alone is a start, not a log
    if len(empty) == len(runs):
        print(f"error: nothing was logged in {', '.join(r.path for r in empty)}; plot runs that have logged "
              f"updates", file=sys.stderr)
        return 2
    for r in empty:
        print(f"note: nothing was logged in {r.path}; left out", file=sys.stderr)
    runs = [r for r in runs if r.records]
    if not args.labels:
        _unique_labels(runs)
    for r in runs:
        if r.skipped_lines:
            print(f"note: {r.path}: skipped {r.skipped_lines} unreadable line(s)", file=sys.stderr)
    for name, written in make_plots(runs, args.out, args.smooth).items():
        if written:
            print(f"wrote {written}")
        else:
            print(f"note: no run has the records for {name}; not written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
