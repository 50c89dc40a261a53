"""Spectral analysis of a saved model: per-module PL alpha, the decay AlphaDecay and the base LR LLR would assign.

    alphadecay analyze PATH [--json FILE|-] [--csv FILE|-] [--plot DIR] [options]

PATH is a folder written by ``save_pretrained`` (or a hub name when online). The decays come from
``alphadecay.AlphaDecay`` itself and the learning rates from ``alphadecay.LLR`` (from the same ESD), so the table
shows exactly what training would start from.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys

import torch

from ..analysis import MODULE_TYPES, analyze, module_type
from ..assign import ASSIGN_FUNCS
from ..errors import ConfigError, one_line, require_writable_folder
from ..powerlaw import PL_FITTINGS
from . import OneLineParser, parse_bool

TABLE_METRICS = ("alpha", "alphahat", "spectral_norm", "stable_rank", "entropy")
# Scores that can drive the assignment without gradients (a saved model has none).
WEIGHT_METRICS = ("alpha", "alphahat", "spectral_norm", "stable_rank", "entropy")
NOT_FOUND = "no model found at {path}: {reason}; pass a folder written by save_pretrained or a hub name"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="alphadecay analyze",
                                description="Per-module heavy-tail (ESD) analysis of a Hugging Face causal LM and the "
                                            "weight decays AlphaDecay would assign to it.")
    p.add_argument("path", metavar="PATH", help="folder written by save_pretrained, or a hub model name")
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write the full per-module table as JSON ('-' = stdout)")
    out.add_argument("--csv", metavar="FILE", help="write the per-module table as CSV ('-' = stdout)")
    out.add_argument("--plot", metavar="DIR", help="write esd_<module>.png and alpha_heatmap.png into DIR")
    # Comma-separated (repeatable) rather than nargs="+", which would swallow a PATH written after it.
    out.add_argument("--modules", action="extend", type=lambda s: [x for x in s.split(",") if x], metavar="S1,S2",
                     help="ESD plots for modules whose name contains any of these substrings, e.g. "
                          "'layers.11.,lm_head' (default: every module of the middle layer)")
    out.add_argument("-q", "--quiet", action="store_true", help="no human-readable table")
    wd = p.add_argument_group("decay assignment (as in training)")
    wd.add_argument("--weight_decay", type=float, default=1e-5, help="base decay wd (default 1e-5)")
    wd.add_argument("--wd_min_ratio", type=float, default=0.6666, help="decay of the smallest score, x wd")
    wd.add_argument("--wd_max_ratio", type=float, default=3.0, help="decay of the largest score, x wd")
    wd.add_argument("--assign_func", default="tb_linear_map", choices=ASSIGN_FUNCS)
    wd.add_argument("--esd_metric_for_tb", default="alpha", choices=WEIGHT_METRICS, help="score driving the decays")
    wd.add_argument("--remove_first_layer", type=parse_bool, default=True,
                    help="first linear module keeps wd (true/false, default true)")
    wd.add_argument("--remove_last_layer", type=parse_bool, default=True,
                    help="last linear module (lm_head) keeps wd (true/false, default true)")
    wd.add_argument("--eigs_thresh", type=int, default=50, help="modules with fewer eigenvalues keep wd (and lr)")
    lr = p.add_argument_group("learning-rate assignment (LLR, as in training with --use_modulewise_lr "
                              "--alpha_positively_with_lr)")
    lr.add_argument("--lr", type=float, default=1e-3, help="peak lr the per-module bases scale (default 1e-3)")
    lr.add_argument("--lr_min_ratio", type=float, default=1.0, help="base LR of the smallest alpha, x lr (default 1)")
    lr.add_argument("--lr_max_ratio", type=float, default=5.0,
                    help="base LR of the largest alpha, the embeddings and the output layer, x lr (default 5)")
    lr.add_argument("--lr_assign_func", default="tb_linear_map", choices=ASSIGN_FUNCS)
    est = p.add_argument_group("estimator")
    est.add_argument("--pl_fitting", default="median", choices=PL_FITTINGS)
    est.add_argument("--xmin_pos", type=float, default=2, help="xmin index = N / xmin_pos (median fitting)")
    est.add_argument("--filter_zeros", type=parse_bool, default=False,
                     help="drop eigenvalues <= 1e-5 before fitting")
    est.add_argument("--farms", action="store_true", help="fit alpha on square sub-windows (FARMS)")
    est.add_argument("--float64", "--esd_float64", dest="float64", action="store_true",
                     help="compute eigenvalues in float64")
    return p


# A hub id is "name" or "org/name". Anything else that does not exist locally cannot be on the hub
# either, and saying so at once avoids a network round trip for a mistyped folder.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def _looks_local(path: str) -> bool:
    # "runs/step_1000" whose "runs" folder exists is a mistyped local path, not a hub id.
    return not _HUB_ID.match(path) or ("/" in path and os.path.isdir(path.split("/", 1)[0]))


def load_model(path: str):
    """The model on CPU in the dtype its weights were saved in (no float32 copy of a bf16 checkpoint)."""
    expanded = os.path.expanduser(path)
    if os.path.exists(expanded):
        if not os.path.isdir(expanded):
            raise ConfigError(NOT_FOUND.format(path=path, reason="not a folder"))
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise ConfigError(NOT_FOUND.format(path=path, reason="the folder has no config.json"))
        path = expanded
    elif _looks_local(path):
        raise ConfigError(NOT_FOUND.format(path=path, reason="no such folder"))
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # stderr stays readable; a 1B model loads in seconds anyway
    try:  # huggingface_hub logs every retry of an unreachable hub; the one-line error says it all
        from huggingface_hub.utils import logging as hub_logging
        hub_logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        AutoConfig.from_pretrained(path)
    except Exception as e:  # OSError, ValueError, HTTP errors: all mean "nothing loadable here"
        raise ConfigError(NOT_FOUND.format(path=path, reason=one_line(e))) from None
    try:
        # transformers 5 takes dtype= (torch_dtype= is deprecated) and always loads low-memory;
        # "auto" keeps the saved dtype, so a bf16 1B model takes ~2.5 GB instead of 5.
        model = AutoModelForCausalLM.from_pretrained(path, dtype="auto", device_map=None)
    except Exception as e:
        raise ConfigError(f"cannot load {path} as a causal LM: {one_line(e)}") from None
    return model.eval()


def layer_index(name: str) -> int | None:
    m = re.search(r"\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def estimator_options(args) -> dict:
    return {"pl_fitting": args.pl_fitting, "xmin_pos": args.xmin_pos, "filter_zeros": args.filter_zeros,
            "farms": args.farms, "dtype": torch.float64 if args.float64 else torch.float32}


def build_report(model, args) -> dict:
    """{"modules": {name: metrics + layer/type/shape/weight_decay/balanced}, "type_mean_alpha": ...}."""
    from ..esd import linear_modules
    from ..llr import LLR
    from ..strategies import AlphaDecay
    opts = estimator_options(args)
    stats = analyze(model, distributed=False, **opts)
    policy = AlphaDecay(model, args.weight_decay, wd_min_ratio=args.wd_min_ratio, wd_max_ratio=args.wd_max_ratio,
                        assign_func=args.assign_func, metric=args.esd_metric_for_tb,
                        remove_first_layer=args.remove_first_layer, remove_last_layer=args.remove_last_layer,
                        eigs_thresh=args.eigs_thresh, analysis=opts, distributed=False)
    policy.initial_assignment(scores=stats)   # what training assigns before step 0, from the same ESD
    balanced = set(policy.balanced(stats))
    llr = LLR(model, args.lr, total_steps=1, lr_min_ratio=args.lr_min_ratio, lr_max_ratio=args.lr_max_ratio,
              assign_func=args.lr_assign_func, eigs_thresh=args.eigs_thresh, analysis=opts, distributed=False)
    module_lr = llr.initial_assignment(scores=stats).module_lr
    tuned = set(llr.tuned(stats))
    modules = {}
    for name, module in linear_modules(model):
        modules[name] = {**stats[name], "layer": layer_index(name), "type": module_type(name),
                         "shape": list(module.weight.shape), "weight_decay": policy.decays[name],
                         "balanced": name in balanced, "lr": module_lr.get(name, args.lr),
                         "lr_from": "alpha" if name in tuned else "max" if name in llr.explicit else "base"}
    return {"modules": modules, "type_mean_alpha": policy.last.type_mean_alpha(),
            "weight_decay": args.weight_decay, "lr": args.lr,
            "embedding_lr": {n: v for n, v in module_lr.items() if n not in modules}}


def _finite(v):
    # JSON has no NaN: undefined values (alpha of a zero matrix) become null, as in metrics.jsonl.
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_json(report: dict, meta: dict, dest: str) -> None:
    body = {**meta, "type_mean_alpha": report["type_mean_alpha"], "embedding_lr": report["embedding_lr"],
            "modules": {n: {k: _finite(v) for k, v in row.items()} for n, row in report["modules"].items()}}
    text = json.dumps(body, indent=1, allow_nan=False)
    _write_text(dest, text + "\n")


CSV_COLUMNS = ("module", "layer", "type", "shape", "alpha", "alphahat", "D", "spectral_norm", "fnorm",
               "stable_rank", "entropy", "num_eigs", "weight_decay", "balanced", "lr", "lr_from")


def write_csv(report: dict, dest: str) -> None:
    f = sys.stdout if dest == "-" else open(dest, "w", newline="", encoding="utf-8")
    try:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for name, row in report["modules"].items():
            shape = "x".join(map(str, row["shape"]))
            w.writerow([name if c == "module" else shape if c == "shape" else
                        ("" if row[c] is None else repr(row[c]) if isinstance(row[c], float) else row[c])
                        for c in CSV_COLUMNS])
    finally:
        if f is not sys.stdout:
            f.close()


def _write_text(dest: str, text: str) -> None:
    if dest == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with open(dest, "w", encoding="utf-8") as f:
            f.write(text)


def format_table(report: dict) -> str:
    def num(v, fmt="{:.4g}"):
        return "nan" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)
    header = ("layer", "type", "shape", *TABLE_METRICS, "weight_decay", "lr", "module")
    rows = []
    for name, r in report["modules"].items():
        wd = num(r["weight_decay"], "{:.3e}") + ("" if r["balanced"] else "*")
        lr = num(r["lr"], "{:.3e}") + {"alpha": "", "max": "^", "base": "*"}[r["lr_from"]]
        rows.append(("-" if r["layer"] is None else str(r["layer"]), r["type"], "x".join(map(str, r["shape"])),
                     *(num(r[m]) for m in TABLE_METRICS), wd, lr, name))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(c.ljust(w) if i in (1, 2, len(header) - 1) else c.rjust(w)
                       for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
             for cells in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    tm = report["type_mean_alpha"]
    lines.append("")
    lines.append("* = not balanced (first/last module, too few eigenvalues or undefined score): keeps wd = "
                 f"{report['weight_decay']:.3e}")
    lines.append(f"lr (LLR's base, before the schedule): * = untuned, keeps lr = {report['lr']:.3e}; ^ = the output "
                 f"layer at lr_max_ratio x lr")
    if report["embedding_lr"]:
        lines.append("LLR embeddings: " + ", ".join(f"{n} {v:.3e}" for n, v in report["embedding_lr"].items())
                     + "; norms keep lr")
    if tm:
        lines.append("mean alpha per type: " + ", ".join(f"{t} {tm[t]:.3f}" for t in MODULE_TYPES if t in tm))
    return "\n".join(lines) + "\n"


def _plot_targets(names: list[str], substrings: list[str] | None) -> list[str]:
    if substrings:
        return [n for n in names if any(s in n for s in substrings)]
    layers = sorted({layer_index(n) for n in names} - {None})
    if not layers:
        return names[:4]
    middle = layers[len(layers) // 2]
    return [n for n in names if layer_index(n) == middle]


def write_plots(model, report: dict, args, out_dir: str) -> list[str]:
    import numpy as np

    from .. import plots
    from ..esd import eigenvalues, farms_eigenvalues, linear_modules
    from ..powerlaw import fit_power_law
    os.makedirs(out_dir, exist_ok=True)
    opts = estimator_options(args)
    linears = dict(linear_modules(model))
    targets = _plot_targets(list(linears), args.modules)
    if args.modules and not targets:
        print(f"warning: no module name contains any of {args.modules}; no ESD plots", file=sys.stderr)
    written = []
    for name in targets:
        weight = linears[name].weight
        # Plot the spectrum the fit saw: with FARMS that is the pooled square-window spectrum.
        eigs = (farms_eigenvalues if opts["farms"] else eigenvalues)([weight], opts["dtype"])[0].double()
        alpha, _, xmin = fit_power_law(eigs[None], pl_fitting=opts["pl_fitting"], xmin_pos=opts["xmin_pos"],
                                       filter_zeros=opts["filter_zeros"], eps=torch.finfo(opts["dtype"]).eps)
        row = report["modules"][name]
        shape = "x".join(map(str, row["shape"]))
        title = f"{name}  ({shape}{', FARMS' if opts['farms'] else ''})\nwd = {row['weight_decay']:.3e}"
        safe = re.sub(r"[^\w.\-]", "_", name)
        # 100 bins (the release's) for large matrices; fewer for small ones so bars are not mostly empty.
        bins = int(min(100, max(10, 3 * math.sqrt(eigs.numel()))))
        written.append(plots.esd_plot(eigs.numpy(), float(alpha[0]), float(xmin[0]),
                                      os.path.join(out_dir, f"esd_{safe}.png"), title=title, bins=bins))
    layered = {n: r for n, r in report["modules"].items() if r["layer"] is not None}
    if layered:
        layers = sorted({r["layer"] for r in layered.values()})
        present = {r["type"] for r in layered.values()}
        cols = [t for t in MODULE_TYPES if t in present] + sorted(present - set(MODULE_TYPES))
        grid = np.full((len(layers), len(cols)), np.nan)
        for r in layered.values():
            a = r["alpha"]
            if a is not None and math.isfinite(a):
                grid[layers.index(r["layer"]), cols.index(r["type"])] = a
        written.append(plots.alpha_heatmap(grid, [str(l) for l in layers], cols,
                                           os.path.join(out_dir, "alpha_heatmap.png"),
                                           title=f"PL alpha ({args.pl_fitting}{', FARMS' if args.farms else ''})"))
    return written


def check_args(args) -> None:
    """Everything the ESD pass does not need to know, checked before it runs (minutes on a 1B model)."""
    for flag, ok, need in (("--weight_decay", args.weight_decay >= 0, ">= 0"),
                           ("--wd_min_ratio", 0 <= args.wd_min_ratio <= args.wd_max_ratio, "in [0, --wd_max_ratio]"),
                           ("--xmin_pos", args.xmin_pos >= 1, ">= 1"),
                           ("--eigs_thresh", args.eigs_thresh >= 0, ">= 0"), ("--lr", args.lr > 0, "> 0"),
                           ("--lr_min_ratio", 0 <= args.lr_min_ratio <= args.lr_max_ratio,
                            "in [0, --lr_max_ratio]")):
        if not (ok and math.isfinite(float(getattr(args, flag[2:])))):
            raise ConfigError(f"{flag} must be {need}, got {getattr(args, flag[2:])}; pass a valid value")
    for flag in ("json", "csv"):
        dest = getattr(args, flag)
        if dest and dest != "-":
            parent = os.path.dirname(os.path.abspath(dest))
            if os.path.isdir(dest) or not os.path.isdir(parent) or not os.access(parent, os.W_OK):
                raise ConfigError(f"--{flag} {dest!r} cannot be written (a folder, or its folder is missing or "
                                  f"read-only); pass a file path in a writable folder or '-'")
    if args.plot:
        require_writable_folder(args.plot, "--plot")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json == "-" and args.csv == "-":
        parser.error("--json - and --csv - both want stdout; send one of them to a file")
    check_args(args)
    machine_stdout = "-" in (args.json, args.csv)
    model = load_model(args.path)
    with torch.no_grad():
        report = build_report(model, args)
    meta = {"model": args.path, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "options": {k: v for k, v in vars(args).items() if k not in ("path", "json", "csv", "plot", "modules",
                                                                        "quiet")}}
    if not args.quiet:
        # The human table never shares stdout with machine output, so `--json - | jq` stays valid.
        out = sys.stderr if machine_stdout else sys.stdout
        print(f"{args.path}  ({meta['dtype']}, {len(report['modules'])} linear modules, "
              f"{sum(r['balanced'] for r in report['modules'].values())} balanced, "
              f"{args.assign_func} [{args.wd_min_ratio:g}, {args.wd_max_ratio:g}] x wd)", file=out)
        print(format_table(report), file=out, end="")
    if args.json:
        write_json(report, meta, args.json)
    if args.csv:
        write_csv(report, args.csv)
    if args.plot:
        for path in write_plots(model, report, args, args.plot):
            if not args.quiet:
                print(f"wrote {path}", file=sys.stderr if machine_stdout else sys.stdout)
    return 0


if __name__ == "__main__":
    from . import run_tool
    sys.exit(run_tool(main))
