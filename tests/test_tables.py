"""scripts/make_tables.py on real training logs.

Four REAL short runs (llama_9m, 6 updates of 4 x 64 tokens, Uniform and AlphaDecay x seeds 5 and 6) are
launched with ``python torchrun_main.py`` on the local C4 sample; an unfinished and a diverged run are
written next to them. The table's cells (mean, sample std, n) must equal the values computed here directly
from the four metrics.jsonl files, the unfinished/diverged runs must be listed and not averaged, and the
CSV must hold the same numbers. A second, synthetic-only test checks the Table 11 grouping and the paper
lookup. Skipped when the shared data folder is absent (conftest: ALPHADECAY_DATA_DIR).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from trainutil import run_main

REPO = Path(__file__).resolve().parents[1]
MAKE_TABLES = REPO / "scripts" / "make_tables.py"
DATA_DIR = Path(os.environ.get("ALPHADECAY_DATA_DIR", REPO.parent / "shared" / "data"))
UPDATES = 6
METHODS = {"Uniform": [], "AlphaDecay": ["--use_modulewise_wd", "--alpha_positively_with_WD",
                                        "--unbalancedWD_every", "3"]}
SEEDS = [5, 6]


def _env():
    env = dict(os.environ)
    # One thread: on a shared 2-core machine two OpenMP threads are several times slower, not faster.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled")
    return env


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _final_ppl(run_dir: Path) -> float:
    finals = [r for r in _records(run_dir / "metrics.jsonl") if r["type"] == "final"]
    assert finals, f"{run_dir} has no final record"
    return finals[-1]["eval_ppl"]


def _make_tables(*args) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(MAKE_TABLES), *map(str, args)], capture_output=True, text=True,
                         timeout=60, env=_env())
    assert out.returncode == 0, out.stderr + out.stdout
    return out


def _rows(text: str) -> dict[str, str]:
    """Rows of the first Markdown table in text, by their first cell."""
    rows, started = {}, False
    for line in text.splitlines():
        if line.startswith("|"):
            started = True
            rows[line.split("|")[1].strip()] = line
        elif started:
            break
    return rows


def _write(path: Path, records: list[dict]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "metrics.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")   # NaN is written as the NaN token, as json.dumps does


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    c4 = DATA_DIR / "c4" / "en"
    tok = DATA_DIR / "tokenizers" / "t5-base"
    train, evalf = c4 / "c4-dev.00000-of-00002.json.gz", c4 / "c4-dev.00001-of-00002.json.gz"
    if not (train.exists() and evalf.exists() and (tok / "spiece.model").exists()):
        pytest.skip(f"local C4 sample / T5 tokenizer not found under {DATA_DIR} (set ALPHADECAY_DATA_DIR)")
    root = tmp_path_factory.mktemp("table_runs")
    runs = {}
    for method, flags in METHODS.items():
        for seed in SEEDS:
            name = f"llama_9m-adam-{method.lower()}-wd1e-5-s{seed}"
            save = root / name
            argv = ["--model_config", str(REPO / "configs" / "llama_9m.json"),
                    "--optimizer", "adam", "--seed", str(seed), "--lr", "1e-3", "--batch_size", "4",
                    "--max_length", "64", "--num_training_steps", str(UPDATES), "--warmup_steps", "1",
                    "--weight_decay", "1e-5", *flags, "--workers", "0", "--no_wandb", "--eval_every", "0",
                    "--save_every", "1000", "--target_eval_tokens", "1000", "--device", "cpu",
                    "--dataset_path", str(train), "--eval_dataset_path", str(evalf), "--tokenizer", str(tok),
                    "--save_dir", str(save), "--name", name]
            assert run_main(argv) == 0   # in this process: four launches' imports saved
            runs[(method, seed)] = save

    # An unfinished run of the Uniform cell: the config of a real run, three updates, no final record.
    recs = _records(runs[("Uniform", 5)] / "metrics.jsonl")
    config = next(r for r in recs if r["type"] == "config")
    trains = [r for r in recs if r["type"] == "train"]
    unf = json.loads(json.dumps(config))
    unf["config"].update(seed=7, name="synthetic-unfinished-s7")
    _write(root / "synthetic-unfinished-s7", [unf, *trains[:3]])

    # A diverged run of the AlphaDecay cell: a NaN and a null training loss; it even has a (finite) final
    # record, which must not be averaged because the loss was not finite.
    recs = _records(runs[("AlphaDecay", 5)] / "metrics.jsonl")
    config = next(r for r in recs if r["type"] == "config")
    div = json.loads(json.dumps(config))
    div["config"].update(seed=8, name="synthetic-diverged-s8")
    bad = [dict(r) for r in recs if r["type"] == "train"][:4]
    bad[2]["loss"] = float("nan")
    bad[3]["loss"] = None
    _write(root / "synthetic-diverged-s8", [div, *bad, {"type": "final", "step": 4, "eval_loss": 5.0,
                                                       "eval_ppl": math.exp(5.0), "eval_tokens": 100}])
    return root, runs


def test_real_runs_table(real_runs, tmp_path):
    root, runs = real_runs
    expected = {}
    for method in METHODS:
        ppl = [_final_ppl(runs[(method, s)]) for s in SEEDS]
        assert all(math.isfinite(p) and p > 1 for p in ppl)
        expected[method] = (statistics.fmean(ppl), statistics.stdev(ppl), len(ppl))
    # The runs really trained: the logs carry UPDATES training records and decays were re-assigned.
    alpha = _records(runs[("AlphaDecay", 5)] / "metrics.jsonl")
    assert max(r["step"] for r in alpha if r["type"] == "train") == UPDATES
    assert sum(r["type"] == "decay" for r in alpha) >= 2
    assert next(r for r in alpha if r["type"] == "config")["config"]["strategy"] == "alphadecay"

    csv_file = tmp_path / "cells.csv"
    # AlphaDecay re-assigned every 3 updates here: that interval is the table's AlphaDecay row.
    out = _make_tables(root, "--csv", csv_file, "--paper", tmp_path / "absent.json", "--main-every", 3).stdout
    assert "### Table 2" in out and "### Table 11" not in out
    assert "not available" in out                      # works without the paper's file

    rows = _rows(out)
    for method, (mean, std, n) in expected.items():
        assert f"{mean:.2f} ± {std:.2f} (n={n})" in rows[method], rows[method]
        assert "+1 excl." in rows[method]              # the synthetic run of that cell is counted apart
    for method in ("WD=0", "AWD", "AdaDecay"):
        assert method in rows and "(n=" not in rows[method]

    # Unfinished and diverged runs are listed below the table, with their reason, and not averaged.
    tail = out.split("Not averaged", 1)[1]
    assert "unfinished: synthetic-unfinished-s7" in tail and "no final record" in tail
    assert "diverged: synthetic-diverged-s8" in tail and "non-finite training loss at update 3" in tail
    assert "6 run(s) read: 4 finished, 1 unfinished, 1 diverged" in out

    with open(csv_file) as f:
        cells = {r["method"]: r for r in csv.DictReader(f)}
    assert set(cells) == set(METHODS)
    for method, (mean, std, n) in expected.items():
        c = cells[method]
        assert int(c["n"]) == n and int(c["excluded"]) == 1
        assert math.isclose(float(c["mean_ppl"]), mean, rel_tol=1e-12)
        assert math.isclose(float(c["std_ppl"]), std, rel_tol=1e-12)
        assert c["seeds"] == "5 6" and c["model"] == "llama_9m" and c["decay"] == "1e-5" and c["table"] == "2"
        assert "synthetic" not in c["runs"]
        assert c["paper_ppl"] == ""

    # The paper's value sits beside ours; its file is chosen with --paper.
    paper = tmp_path / "paper.json"
    paper.write_text(json.dumps({"table2_adam_c4_ppl": {"LLaMa-9M": {"WD=0": 40.0, "1e-5": {"Uniform": 31.5,
                                                                                        "AlphaDecay": 30.25}}}}))
    out = _make_tables(root, "--paper", paper, "--main-every", 3).stdout
    rows = _rows(out)
    assert "[paper 31.5]" in rows["Uniform"] and "[paper 30.25]" in rows["AlphaDecay"]
    assert "[paper 40]" in rows["WD=0"]


def _synthetic(root: Path, name: str, *, model="llama_60m", params=58_000_000, optimizer="adam", wd=1e-5,
               strategy="alphadecay", every=500, seed=5, ppl=None, steps=10):
    cfg = {"model_config": f"configs/{model}.json", "optimizer": optimizer, "weight_decay": wd,
           "strategy": strategy, "seed": seed, "name": name, "num_training_steps": steps,
           "unbalancedWD_every": every, "wd_min_ratio": 0.6666, "wd_max_ratio": 3.0,
           "batch_size": 2, "gradient_accumulation": 1, "total_batch_size": 2}
    recs = [{"type": "config", "step": 0, "resumed": False, "config": cfg,
             "model": {"model_type": "llama", "params": params}}]
    recs += [{"type": "train", "step": s, "loss": 5.0, "lr": 1e-3, "tokens_seen": 100 * s,
              "throughput_tokens": 50.0, "grad_norm": 1.0} for s in range(1, steps + 1)]
    if ppl is not None:
        recs.append({"type": "final", "step": steps, "eval_loss": math.log(ppl), "eval_ppl": ppl, "eval_tokens": 10})
    _write(root / name, recs)


def test_interval_table_and_grouping(tmp_path):
    """Synthetic logs: Table 11 rows per unbalancedWD_every, the AlphaDecay row of Table 2 keeps GAP=500."""
    root = tmp_path / "runs"
    values = {500: [31.0, 32.0], 100: [30.0, 30.5], 1: [33.0, 35.0]}
    for every, ppls in values.items():
        for seed, p in zip((5, 6), ppls):
            _synthetic(root, f"a-{every}-{seed}", every=every, seed=seed, ppl=p)
    _synthetic(root, "u-5", strategy="uniform", seed=5, ppl=40.0)
    _synthetic(root, "u-6", strategy="uniform", seed=6, ppl=42.0)
    _synthetic(root, "w0", strategy="none", wd=0.0, seed=5, ppl=50.0)
    _synthetic(root, "a-100-7", every=100, seed=7)                           # unfinished
    paper = tmp_path / "paper.json"
    paper.write_text(json.dumps({"table11_update_interval_ppl": {"LLaMa-60M": {
        "1e-5": {"Uniform": 32.386, "GAP=500": 31.614, "GAP=100": 31.555}, "hours": {"GAP=1": 9.3}}}}))

    out = _make_tables(root, "--paper", paper, "--csv", tmp_path / "all.csv").stdout   # auto: Tables 2 and 11
    t2, t11 = out.split("### Table 11", 1)
    rows2 = _rows(t2)
    assert "31.50 ± 0.71 (n=2)" in rows2["AlphaDecay"]                      # only the GAP=500 runs
    assert "41.00 ± 1.41 (n=2)" in rows2["Uniform"] and "50.00 (n=1)" in rows2["WD=0"]
    ppl11, time11 = t11.split("Training time", 1)
    rows11 = _rows(ppl11)
    assert "31.50 ± 0.71 (n=2) [paper 31.614]" in rows11["GAP=500"]
    assert "30.25 ± 0.35 (n=2) +1 excl. [paper 31.555]" in rows11["GAP=100"]
    assert "34.00 ± 1.41 (n=2)" in rows11["GAP=1"]
    assert "41.00 ± 1.41 (n=2) [paper 32.386]" in rows11["Uniform"]
    assert "unfinished: a-100-7" in t11 and "last logged update 10 of 10" in t11
    times = _rows(time11)
    assert "[paper 9.3]" in times["GAP=1"]                                   # the time table
    assert f"{10 * 100 / 50 / 3600:.3g}" in times["GAP=1"]                  # mean per run: 10 updates of 2 s

    with open(tmp_path / "all.csv") as f:
        rows = list(csv.DictReader(f))
    gaps = {r["unbalancedWD_every"]: r for r in rows if r["table"] == "11" and r["method"] == "AlphaDecay"}
    assert set(gaps) == {"500", "100", "1"}
    assert math.isclose(float(gaps["1"]["mean_ppl"]), 34.0) and gaps["1"]["n"] == "2"

    only11 = _make_tables(root, "--table", "11", "--paper", "").stdout
    assert "### Table 11" in only11 and "### Table 2" not in only11 and not re.search(r"\[paper \d", only11)


def test_downstream_tables_average_seeds_and_show_the_paper(tmp_path):
    """GLUE and ViT runs: mean ± sample sd per cell over seeds, unfinished runs counted and left out, the paper's
    numbers beside ours, and the pretraining tables leave these runs alone."""
    for seed, (mrpc, rte) in enumerate([(80.0, 60.0), (84.0, 64.0)], start=1):
        for task, score in (("mrpc", mrpc), ("rte", rte)):
            _write(tmp_path / "glue" / f"{task}-alphadecay-s{seed}" / "", [
                {"type": "config", "step": 0, "config": {"task": task, "strategy": "alphadecay", "weight_decay": 0.1,
                                                         "seed": seed}},
                {"type": "final", "step": 10, "task": task, "score": score}])
    _write(tmp_path / "glue" / "rte-uniform-s1" / "", [
        {"type": "config", "step": 0, "config": {"task": "rte", "strategy": "uniform", "weight_decay": 0.1}}])
    r = _make_tables(str(tmp_path / "glue"), "--table", "4")
    assert r.returncode == 0, r.stderr
    row = _rows(r.stdout)["AlphaDecay"]
    assert "82.00 ± 2.83 (n=2)" in row and "62.00 ± 2.83 (n=2)" in row and row.rstrip(" |").endswith("72.00")
    assert "paper: AlphaDecay" in r.stdout and "89.61" in r.stdout and "1 unfinished" in r.stdout

    for seed, top1 in ((0, 0.60), (1, 0.64)):
        _write(tmp_path / "vit" / f"vit-alphadecay-s{seed}" / "", [
            {"type": "config", "step": 0, "config": {"task": "image_classification", "strategy": "alphadecay",
                                                     "weight_decay": 1e-6}},
            {"type": "final", "step": 10, "top1": top1, "top5": 0.9}])
    r = _make_tables(str(tmp_path / "vit"), "--table", "vit")
    assert r.returncode == 0, r.stderr
    assert "Top-1 @ wd 1e-6" in r.stdout and "62.00 ± 2.83 (n=2) [paper 67.73]" in _rows(r.stdout)["AlphaDecay"]
    r = subprocess.run([sys.executable, str(MAKE_TABLES), str(tmp_path)], capture_output=True, text=True, env=_env())
    assert r.returncode == 1 and "--table 4" in r.stderr   # the pretraining tables leave them to --table 4 / vit


def test_paper_values_come_from_the_repository(tmp_path):
    """A copy of scripts/ prints the paper's numbers from its own paper_tables.json (He et al. 2025), for the
    pretraining tables and Table 3: a decoy ../shared/paper/tables.json beside the copy, every number in it
    ten times the paper's, must not be read (a user's clone has no shared/; this machine may have one anywhere)."""
    import shutil
    scripts = tmp_path / "repo" / "scripts"
    shutil.copytree(REPO / "scripts", scripts, ignore=shutil.ignore_patterns("__pycache__"))

    def tenfold(x):
        if isinstance(x, dict):
            return {k: tenfold(v) for k, v in x.items()}
        if isinstance(x, list):
            return [tenfold(v) for v in x]
        return x * 10 if isinstance(x, (int, float)) and not isinstance(x, bool) else x
    decoy = tmp_path / "shared" / "paper" / "tables.json"
    decoy.parent.mkdir(parents=True)
    decoy.write_text(json.dumps(tenfold(json.loads((scripts / "paper_tables.json").read_text()))))
    assert "He et al. 2025" in json.loads((scripts / "paper_tables.json").read_text())["_source"]
    env = {k: v for k, v in _env().items() if k != "ALPHADECAY_PAPER_TABLES"}
    env["PYTHONPATH"] = str(REPO)          # the package, not the tables
    root = tmp_path / "runs"
    for strategy, ppl in (("none", 34.0), ("uniform", 33.0), ("alphadecay", 32.0)):
        _synthetic(root, f"r-{strategy}", strategy=strategy, wd=0.0 if strategy == "none" else 1e-5, ppl=ppl)
    out = subprocess.run([sys.executable, str(scripts / "make_tables.py"), str(root), "--table", "2"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    rows = _rows(out.stdout)
    assert "[paper 33.23]" in rows["WD=0"] and "[paper 32.39]" in rows["Uniform"]   # LLaMa-60M, Adam 1e-5
    assert "[paper 31.56]" in rows["AlphaDecay"]
    record = tmp_path / "zs" / "run" / "model_4" / "zero_shot.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"tasks": {"boolq": {"acc": 0.5}}}))
    out = subprocess.run([sys.executable, str(scripts / "table3_zero_shot" / "table.py"), str(tmp_path / "zs")],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "| paper: AlphaDecay | 20.90 | 48.86 | 68.44 | 34.16 | 19.80 | 50.59 | 60.70 | 43.35 |" in out.stdout


def test_csv_into_a_new_folder_and_into_a_file(tmp_path):
    root = tmp_path / "runs"
    _synthetic(root, "u-5", strategy="uniform", seed=5, ppl=40.0)
    target = tmp_path / "new" / "deeper" / "cells.csv"
    _make_tables(root, "--csv", target)
    assert "Uniform" in target.read_text()                      # the folders were created
    (tmp_path / "plain").write_text("a file")
    r = subprocess.run([sys.executable, str(MAKE_TABLES), str(root), "--csv", str(tmp_path / "plain" / "c.csv")],
                       capture_output=True, text=True, timeout=60, env=_env())
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("error: cannot write --csv"), r.stderr
