#!/usr/bin/env python
"""Tables of final validation perplexity, in the paper's layout, from training logs.

    python scripts/make_tables.py runs/table2_adam                    # Markdown on stdout
    python scripts/make_tables.py runs/ --table 11 --csv table11.csv  # one table, plus a CSV file

Every ``metrics.jsonl`` under the given folders is one run. A run's cell is
(table, model, optimizer, decay, method[, unbalancedWD_every]); a cell shows the mean and sample
standard deviation (ddof=1) over seeds of the final ``eval_ppl`` of its finished runs, with the
number of runs ``n``, and the paper's value beside it (from tables.json; ``--paper`` to point
elsewhere; the tool works without it). Nothing is typed in: every number of ours comes from a log.

Runs without a final record (unfinished, preempted, crashed) and runs with a non-finite loss or
evaluation (diverged) are listed under the table they belong to and never averaged.

Which table a run belongs to:
  * LLaMA + adam  -> Table 2,  LLaMA + adamw -> Table 12, any other model (GPT-nano) -> Table 5:
    rows WD=0, Uniform, AWD, AdaDecay, AlphaDecay; columns: decay values per model. The AlphaDecay
    row holds the runs re-assigned every ``--main-every`` updates (500, the paper's default).
  * Table 11 (re-assignment interval): rows Uniform and GAP=<unbalancedWD_every> for each interval
    found in AlphaDecay runs. ``--table auto`` prints it when AlphaDecay runs with an interval other
    than ``--main-every`` exist.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from table_runs import (DEFAULT_PAPER, METHODS, MODULEWISE_KEYS, OPT_LABEL, RECIPE_KEYS, Run,  # noqa: E402
                        find_runs, fmt_decay, fmt_mean_sd, is_llama, load_paper, model_label, paper_model_key, paper_value)


# ---------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    runs: list            # finished runs averaged here
    excluded: list        # unfinished / diverged runs of this cell

    @property
    def values(self):
        return [r.ppl for r in self.runs]

    @property
    def n(self):
        return len(self.runs)

    @property
    def mean(self):
        return statistics.fmean(self.values) if self.runs else None

    @property
    def std(self):
        return statistics.stdev(self.values) if self.n >= 2 else None


@dataclass
class Table:
    tid: str               # "2", "12", "11", "5"
    optimizer: str
    title: str
    rows: list             # row labels
    columns: list          # (stem, decay)
    cells: dict            # (row, stem, decay) -> Cell
    notes: list
    row_of: dict           # row label -> (method, every)


def table_id(run: Run) -> str:
    opt = run.key[1]
    if not is_llama(run):
        return "5"
    return "2" if opt == "adam" else ("12" if opt == "adamw" else f"methods-{opt}")


def build_tables(runs: list[Run], which: str, main_every: int) -> list[Table]:
    usable = [r for r in runs if r.key is not None]
    groups: dict[tuple, list[Run]] = {}
    for r in usable:
        groups.setdefault((table_id(r), r.key[1]), []).append(r)
    tables = []
    for (tid, opt), members in sorted(groups.items(), key=lambda kv: _tid_order(kv[0][0])):
        if which in ("auto", tid) or (which == "all"):
            t = _methods_table(tid, opt, members, main_every)
            if t.cells:
                tables.append(t)
        intervals = sorted({r.key[4] for r in members if r.key[3] == "AlphaDecay"}, reverse=True)
        want11 = which in ("11", "all") or (which == "auto" and any(e != main_every for e in intervals))
        if want11 and intervals:
            tables.append(_interval_table(tid, opt, members, intervals))
    return tables


def _tid_order(tid: str):
    return {"2": 0, "12": 1, "5": 3}.get(tid, 2), tid


def _columns(members: list[Run]):
    size = {}
    for r in members:
        size[r.key[0]] = r.model_info.get("params") or size.get(r.key[0]) or 0
    stems = sorted(size, key=lambda s: (size[s], s))
    decays = {s: sorted({r.key[2] for r in members if r.key[0] == s and r.key[3] != "WD=0"}, reverse=True)
              for s in stems}
    cols = []
    for s in stems:
        for d in decays[s] or [0.0]:
            cols.append((s, d))
    return cols


def _fill(rows_spec: dict, members: list[Run], cols):
    """rows_spec: label -> predicate(run). WD=0 runs fill every column of their model."""
    cells = {}
    for label, pred in rows_spec.items():
        for stem, decay in cols:
            chosen = [r for r in members if r.key[0] == stem and pred(r)
                      and (r.key[3] == "WD=0" or math.isclose(r.key[2], decay, rel_tol=1e-9))]
            if not chosen:
                continue
            done = sorted((r for r in chosen if r.status == "finished"), key=lambda r: (r.config.get("seed", 0), r.path))
            other = [r for r in chosen if r.status != "finished"]
            cells[(label, stem, decay)] = Cell(done, other)
    return cells


def _cell_notes(cells: dict) -> list[str]:
    notes = []
    for (label, stem, decay), cell in cells.items():
        seeds = [r.config.get("seed") for r in cell.runs]
        dup = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
        where = f"{model_label(stem)} {label}" + ("" if label == "WD=0" else f" wd={fmt_decay(decay)}")
        if dup:
            note = f"{where}: seed(s) {', '.join(map(str, dup))} appear in more than one run (all averaged)"
            if note not in notes:
                notes.append(note)
        keys = RECIPE_KEYS + (MODULEWISE_KEYS if label not in ("WD=0", "Uniform", "AWD") else [])
        differ = [k for k in keys if len({json.dumps(r.config.get(k)) for r in cell.runs}) > 1]
        if differ:
            note = f"{where}: averaged runs differ in {', '.join(differ)}"
            if note not in notes:
                notes.append(note)
    return notes


def _methods_table(tid: str, opt: str, members: list[Run], main_every: int) -> Table:
    main = [r for r in members if not (r.key[3] == "AlphaDecay" and r.key[4] != main_every)]
    cols = _columns(main)
    spec = {m: (lambda r, m=m: r.key[3] == m) for m in METHODS}
    spec_extra = sorted({r.key[3] for r in main} - set(METHODS))
    for m in spec_extra:
        spec[m] = lambda r, m=m: r.key[3] == m
    cells = _fill(spec, main, cols)
    name = {"2": "Table 2", "12": "Table 12", "5": "Table 5"}.get(tid, "Methods table")
    what = {"2": "LLaMA, Adam (coupled L2 decay)", "12": "LLaMA, AdamW (decoupled decay)",
            "5": f"other architectures, {opt}"}.get(tid, opt)
    title = f"{name} ({what}): final validation perplexity on C4"
    notes = _cell_notes(cells)
    if any(r.key[3] == "AlphaDecay" and r.key[4] != main_every for r in members):
        notes.append(f"AlphaDecay row: runs re-assigned every {main_every} updates; other intervals are in Table 11")
    return Table(tid, opt, title, list(METHODS) + spec_extra, cols, cells, notes,
                 {m: (m, None) for m in list(METHODS) + spec_extra})


def _interval_table(tid: str, opt: str, members: list[Run], intervals: list[int]) -> Table:
    sub = [r for r in members if r.key[3] in ("Uniform", "AlphaDecay")]
    cols = _columns(sub)
    spec = {"Uniform": lambda r: r.key[3] == "Uniform"}
    for e in intervals:
        spec[f"GAP={e}"] = lambda r, e=e: r.key[3] == "AlphaDecay" and r.key[4] == e
    cells = _fill(spec, sub, cols)
    family = "LLaMA" if tid in ("2", "12") else "other architectures"
    title = (f"Table 11 (AlphaDecay re-assignment interval, {family}, {OPT_LABEL.get(opt, opt)}): "
             "final validation perplexity on C4")
    t = Table("11", opt, title, list(spec), cols, cells, _cell_notes(cells),
              {"Uniform": ("Uniform", None), **{f"GAP={e}": ("AlphaDecay", e) for e in intervals}})
    return t


# ---------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------
def fmt_num(x, digits):
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_cell(cell: Cell | None, paper, digits: int) -> str:
    if cell is None or cell.n == 0:
        ours = "—"
        if cell is not None and cell.excluded:
            ours = f"— ({len(cell.excluded)} not finished)"
    else:
        ours = fmt_mean_sd(cell.values, digits)
    if cell is not None and cell.n and cell.excluded:
        ours += f" +{len(cell.excluded)} excl."
    return f"{ours} [paper {paper:g}]" if paper is not None else ours


def table_paper(paper, t: Table, row: str, stem: str, decay: float):
    tid = t.tid if t.tid != "11" else ("11" if t.optimizer == "adam" else None)
    if tid in ("2", "12") and t.optimizer != ("adam" if tid == "2" else "adamw"):
        return None
    return paper_value(paper, tid, stem, decay, row) if tid else None


def render_markdown(t: Table, paper, digits: int) -> str:
    head = ["Method" if t.tid != "11" else "Setting"]
    for stem, decay in t.columns:
        head.append(f"{model_label(stem)} · wd={fmt_decay(decay)}" if decay else f"{model_label(stem)}")
    lines = [f"### {t.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in t.rows:
        cells = [row]
        for stem, decay in t.columns:
            cells.append(fmt_cell(t.cells.get((row, stem, decay)), table_paper(paper, t, row, stem, decay), digits))
        if all(c == "—" for c in cells[1:]) and row not in METHODS:
            continue
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    legend = ("Cells: mean ± sample std (ddof=1) of the final validation perplexity over seeds, n = finished runs; "
              "[paper x] = the paper's value; +k excl. = runs of the cell listed below as unfinished or diverged.")
    if t.tid != "11":
        legend += " WD=0 does not depend on the decay: the same runs fill every column of a model."
    else:
        legend += " GAP=k: AlphaDecay with --unbalancedWD_every k."
    lines.append(legend)
    if any(s == "llama_130m" for s, _ in t.columns):
        lines.append("LLaMa-130M is configs/llama_130m.json, which the paper calls LLaMa-135M.")
    if t.tid == "11":
        hours = _interval_hours(t)
        if hours:
            lines.append("")
            lines.append("Training time per run (device-hours: summed update wall time x processes, evaluation "
                         "excluded; the paper's row is A100 hours):")
            lines.append("")
            stems = sorted({s for s, _ in t.columns}, key=lambda s: [c[0] for c in t.columns].index(s))
            lines.append("| Setting | " + " | ".join(model_label(s) for s in stems) + " |")
            lines.append("|" + "---|" * (len(stems) + 1))
            for row in t.rows:
                vals = []
                for s in stems:
                    v = hours.get((row, s))
                    p = None
                    if paper and t.optimizer == "adam":
                        try:
                            p = paper["table11_update_interval_ppl"][paper_model_key(s)]["hours"].get(row)
                        except (KeyError, TypeError, AttributeError):
                            p = None
                    txt = "—" if v is None else f"{v:.3g}"
                    vals.append(f"{txt} [paper {p:g}]" if p is not None else txt)
                lines.append(f"| {row} | " + " | ".join(vals) + " |")
    for note in t.notes:
        lines.append(f"- note: {note}")
    excluded = [r for c in t.cells.values() for r in c.excluded]
    excluded = sorted({id(r): r for r in excluded}.values(), key=lambda r: r.path)
    if excluded:
        lines.append("")
        lines.append("Not averaged (unfinished or diverged):")
        lines.append("")
        for r in excluded:
            lines.append(f"- {r.status}: {r.name} ({r.path}): {r.reason}")
    return "\n".join(lines)


def _interval_hours(t: Table) -> dict:
    out = {}
    for (row, stem, decay), cell in t.cells.items():
        out.setdefault((row, stem), []).extend(r.train_seconds * r.world_size / 3600 for r in cell.runs
                                               if r.train_seconds > 0)
    return {k: statistics.fmean(v) for k, v in out.items() if v}


CSV_FIELDS = ["table", "optimizer", "model", "model_label", "decay", "method", "unbalancedWD_every", "n",
              "mean_ppl", "std_ppl", "paper_ppl", "seeds", "excluded", "runs"]


def csv_rows(t: Table, paper):
    for row in t.rows:
        method, every = t.row_of.get(row, (row, None))
        for stem, decay in t.columns:
            cell = t.cells.get((row, stem, decay))
            if cell is None:
                continue
            yield {"table": t.tid, "optimizer": t.optimizer, "model": stem, "model_label": model_label(stem),
                   "decay": fmt_decay(decay), "method": method, "unbalancedWD_every": "" if every is None else every,
                   "n": cell.n, "mean_ppl": "" if cell.mean is None else repr(cell.mean),
                   "std_ppl": "" if cell.std is None else repr(cell.std),
                   "paper_ppl": "" if table_paper(paper, t, row, stem, decay) is None
                   else table_paper(paper, t, row, stem, decay),
                   "seeds": " ".join(str(r.config.get("seed")) for r in cell.runs),
                   "excluded": len(cell.excluded),
                   "runs": ";".join(r.path for r in cell.runs)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="folders searched recursively for metrics.jsonl (or .jsonl files)")
    p.add_argument("--table", default="auto", choices=["auto", "all", "2", "12", "11", "5", "3", "4", "vit", "llr"],
                   help="which table(s) to print (default auto: every pretraining table that has runs); llr: the "
                        "LLR paper's table from scripts/llr_fineweb (its runs are in no other table); 3: the "
                        "zero-shot table from the zero_shot.json files of scripts/table3_zero_shot; 4: GLUE "
                        "(scripts/table4_glue); vit: the ViT-tiny row of Table 5 (scripts/table5_vit_tiny)")
    p.add_argument("--paper", default=DEFAULT_PAPER, help="the paper's tables.json ('' for none)")
    p.add_argument("--csv", default=None, help="also write the cells to this CSV file")
    p.add_argument("--digits", type=int, default=2, help="decimals of the perplexities")
    p.add_argument("--main-every", type=int, default=500,
                   help="unbalancedWD_every of the AlphaDecay row in Tables 2/12/5 (the paper's 500)")
    p.add_argument("--glue_epoch", default="best", choices=["best", "last"],
                   help="Table 4: each run's best dev epoch (as the paper and fairseq report) or its last")
    args = p.parse_args(argv)
    if args.table == "3":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "table3_zero_shot"))
        import table as zero_shot
        return zero_shot.main(args.folders + ["--paper", args.paper])
    if args.table in ("4", "vit"):
        import downstream_tables
        return downstream_tables.main(args.folders, args.table, args.paper, glue_epoch=args.glue_epoch)

    missing = [f for f in args.folders if not os.path.exists(f)]
    if missing:
        print(f"error: no such folder: {missing[0]}", file=sys.stderr)
        return 2
    runs = find_runs(args.folders)
    paper, paper_note = load_paper(args.paper)
    if not runs:
        print(f"no pretraining runs (metrics.jsonl) under {', '.join(args.folders)}; GLUE and ViT runs: --table 4, "
              f"--table vit", file=sys.stderr)
        return 1
    import llr_table
    if args.table == "llr":
        mine = [r for r in runs if r.key is not None and llr_table.is_llr_run(r)]
        if not mine:
            print(f"no LLR-table runs (--lr_strategy llr/sharpness or tag {llr_table.TAG}) under "
                  f"{', '.join(args.folders)}", file=sys.stderr)
            return 1
        print(llr_table.render(mine, paper, args.digits) + f"\n\n{len(mine)} run(s) read. {paper_note}.")
        return 0
    runs = [r for r in runs if not llr_table.is_llr_run(r)]   # LLR's own table has them (--table llr)
    tables = build_tables(runs, args.table, args.main_every)
    out = []
    for t in tables:
        out.append(render_markdown(t, paper, args.digits))
    unreadable = [r for r in runs if r.key is None]
    if unreadable:
        out.append("Unreadable runs (not in any table):\n\n" + "\n".join(f"- {r.path}: {r.reason}" for r in unreadable))
    n_fin = sum(r.status == "finished" for r in runs)
    out.append(f"{len(runs)} run(s) read: {n_fin} finished, "
               f"{sum(r.status == 'unfinished' for r in runs)} unfinished, "
               f"{sum(r.status == 'diverged' for r in runs)} diverged. {paper_note}.")
    if not tables:
        out.insert(0, f"no runs for --table {args.table}")
    print("\n\n".join(out))
    if args.csv:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)   # a new folder for it is fine
            with open(args.csv, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
                w.writeheader()
                for t in tables:
                    for row in csv_rows(t, paper):
                        w.writerow(row)
        except OSError as e:
            print(f"error: cannot write --csv {args.csv!r} ({e.strerror or e}); pass a path in a writable folder",
                  file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:          # e.g. piped into head
        sys.stderr.close()
        sys.exit(0)
