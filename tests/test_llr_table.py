"""make_tables.py --table llr (the LLR paper's table) on synthetic logs, and scripts/llr_fineweb/run.sh SMOKE=1."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import DATA_DIR, REPO
from test_tables import _env, _make_tables, _rows, _write


def _run(root, name, *, model="llama_60m", params=58_000_000, lr_strategy="uniform", tags="llr_fineweb", seed=5,
         ppl=None, steps=10):
    cfg = {"model_config": f"configs/{model}.json", "optimizer": "adamw", "weight_decay": 0.1, "strategy": "uniform",
           "lr_strategy": lr_strategy, "tags": tags, "seed": seed, "name": name, "num_training_steps": steps,
           "dataset_name": "HuggingFaceFW/fineweb", "batch_size": 2, "gradient_accumulation": 1,
           "total_batch_size": 2}
    recs = [{"type": "config", "step": 0, "resumed": False, "config": cfg,
             "model": {"model_type": "llama", "params": params}}]
    recs += [{"type": "train", "step": s, "loss": 3.0, "lr": 1e-3, "tokens_seen": 100 * s,
              "throughput_tokens": 50.0, "grad_norm": 1.0} for s in range(1, steps + 1)]
    if ppl is not None:
        recs.append({"type": "final", "step": steps, "eval_loss": math.log(ppl), "eval_ppl": ppl, "eval_tokens": 10})
    _write(root / name, recs)


def test_llr_table_rows_columns_and_paper_values(tmp_path):
    root = tmp_path / "runs"
    _run(root, "u60-5", ppl=22.0)
    _run(root, "u60-6", seed=6, ppl=24.0)
    _run(root, "l60-5", lr_strategy="llr", ppl=20.5)
    _run(root, "s60-5", lr_strategy="sharpness", ppl=23.0)
    _run(root, "l130-5", model="llama_130m", params=134_000_000, lr_strategy="llr", ppl=17.5)
    _run(root, "l130-6", model="llama_130m", params=134_000_000, lr_strategy="llr", seed=6)   # unfinished
    out = _make_tables(root, "--table", "llr").stdout     # the repository's paper_tables.json
    rows = _rows(out)
    assert rows["Method"].split("|")[2:4] == [" LLaMa-60M ", " LLaMa-130M "]
    assert "23.00 ± 1.41 (n=2) [paper 21.94]" in rows["Uniform"]
    assert "20.50 (n=1) [paper 20.3]" in rows["LLR"] and "17.50 (n=1) +1 excl. [paper 17.03]" in rows["LLR"]
    assert "23.00 (n=1) [paper 23.28]" in rows["Sharpness"]
    assert "— [paper 17.86]" in rows["Uniform"]         # no 130M Uniform run: the paper's value still shows
    assert "unfinished: l130-6" in out and "which the paper calls LLaMa-135M" in out
    assert "HuggingFaceFW/fineweb" in out

    # The same runs are kept out of Table 12 (an AdamW Uniform run would otherwise land there).
    other = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), str(root)], capture_output=True,
                           text=True, env=_env(), timeout=60)
    assert other.returncode == 0 and "no runs for --table auto" in other.stdout and "### Table 12" not in other.stdout
    paper = json.loads((REPO / "scripts" / "paper_tables.json").read_text())
    assert paper["llr_fineweb_ppl"]["LLaMa-1B"] == {"Uniform": 9.77, "LARS": 11.81, "LAMB": 10.68,
                                                   "Sharpness": 9.77, "LLR": 9.59}
    assert "LLR.md section 7" in paper["llr_fineweb_ppl"]["source"]


def test_llr_table_without_runs_says_so(tmp_path):
    root = tmp_path / "runs"
    _run(root, "plain", tags=None, ppl=30.0)
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), str(root), "--table", "llr"],
                         capture_output=True, text=True, env=_env(), timeout=60)
    assert out.returncode == 1 and "no LLR-table runs" in out.stderr


@pytest.mark.usefixtures("c4_dir", "t5_dir")
def test_smoke_script_trains_the_three_methods_and_prints_the_table(tmp_path):
    env = {**_env(), "SMOKE": "1", "OUT": str(tmp_path / "out"), "ALPHADECAY_DATA_DIR": str(DATA_DIR),
           "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(REPO / "scripts" / "llr_fineweb" / "run.sh")], capture_output=True, text=True,
                         env=env, timeout=240, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-2000:]
    rows = _rows(out.stdout)
    for row in ("Uniform", "LLR", "Sharpness"):
        assert "(n=1)" in rows[row], out.stdout
    runs = sorted(p.name for p in (tmp_path / "out" / "llr_fineweb").iterdir())
    assert runs == [f"llama_9m-adamw-uniform-wd0.1-{m}-s5" for m in ("llr", "sharpness", "uniform")]
    cfg = json.loads((tmp_path / "out" / "llr_fineweb" / runs[0] / "metrics.jsonl").read_text().splitlines()[0])
    assert cfg["config"]["lr_strategy"] == "llr" and cfg["config"]["lr_max_ratio"] == 5
    assert cfg["config"]["grad_clipping"] == 0 and cfg["config"]["optimizer"] == "adamw"
