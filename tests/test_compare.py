"""scripts/compare_strategies.sh (its commands) and scripts/compare_report.py (its statistics)."""
import json
import os
import shlex
import subprocess
import sys

from alphadecay.training.flags.args import parse_args
from conftest import REPO


def test_comparison_commands_parse_and_share_the_data_order(tmp_path):
    out = subprocess.run(["bash", str(REPO / "scripts" / "compare_strategies.sh")], capture_output=True, text=True,
                         env={**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path)}, check=True).stdout
    commands = [shlex.split(line) for line in out.splitlines() if "torchrun_main.py" in line]
    assert len(commands) == 15
    parsed = [parse_args(c[c.index("torchrun_main.py") + 1:]) for c in commands]
    grid = sorted((a.optimizer, a.strategy, a.weight_decay, a.seed) for a in parsed)
    assert grid.count(("adamw", "none", 0.0, 5)) == 1
    assert {(o, s, w) for o, s, w, _ in grid} == {("adamw", "none", 0.0), ("adamw", "uniform", 0.1),
                                                  ("adamw", "alphadecay", 0.1), ("adam", "uniform", 1e-5),
                                                  ("adam", "alphadecay", 1e-5)}
    # identical data and schedule for every run: only method flags and the seed differ
    assert len({(a.dataset_path, a.eval_dataset_path, a.num_training_steps, a.batch_size, a.max_length, a.packing,
                 a.lr) for a in parsed}) == 1


def _run(folder, optimizer, strategy, decay, seed, ppl):
    folder.mkdir(parents=True)
    records = [{"type": "config", "config": {"optimizer": optimizer, "strategy": strategy, "weight_decay": decay,
                                             "seed": seed}},
               {"type": "decay", "step": 0, "strategy": strategy, "module_alpha": {"a": 3.0},
                "module_weight_decay": {"a": decay}, "type_mean_alpha": {"q": 3.0}},
               {"type": "final", "step": 10, "eval_loss": 1.0, "eval_ppl": ppl, "eval_tokens": 100}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_separates_a_resolved_difference_from_seed_noise(tmp_path):
    runs = tmp_path / "compare"
    for seed, (zero, uniform, alpha) in {5: (30.0, 29.9, 28.0), 6: (30.6, 30.7, 28.9), 7: (29.8, 29.7, 27.9)}.items():
        _run(runs / f"z{seed}", "adamw", "none", 0.0, seed, zero)
        _run(runs / f"u{seed}", "adamw", "uniform", 0.1, seed, uniform)
        _run(runs / f"a{seed}", "adamw", "alphadecay", 0.1, seed, alpha)
    _run(runs / "unfinished", "adamw", "uniform", 0.1, 8, float("nan"))
    (runs / "unfinished" / "metrics.jsonl").write_text(json.dumps({"type": "config", "config": {}}) + "\n")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_report.py"), str(runs), "--out",
                           str(tmp_path)], capture_output=True, text=True, check=True)
    rows = {line.split("|")[3].strip(): line for line in done.stdout.splitlines() if "−" in line}
    assert "-1.800" in rows["AlphaDecay − Uniform"] and rows["AlphaDecay − Uniform"].endswith("resolved |")
    assert rows["Uniform − WD=0"].endswith("within seed noise |")      # +/- mixed signs
    assert "| adamw | 0.1 | AlphaDecay | 3 | 28.267 ± 0.551 |" in done.stdout
    assert (tmp_path / "report.md").read_text().startswith("| optimizer")


def test_llr_grid_runs_the_four_methods_on_one_data_order(tmp_path):
    """GRID=llr: Uniform, LLR, AlphaDecay, AlphaDecay + LLR under AdamW 0.1; LLR as the release runs it."""
    out = subprocess.run(["bash", str(REPO / "scripts" / "compare_strategies.sh")], capture_output=True, text=True,
                         env={**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path), "GRID": "llr"}, check=True).stdout
    commands = [shlex.split(line) for line in out.splitlines() if "torchrun_main.py" in line]
    parsed = [parse_args(c[c.index("torchrun_main.py") + 1:]) for c in commands]
    assert sorted((a.strategy, a.lr_strategy, a.seed) for a in parsed) == sorted(
        (s, lr, seed) for s in ("uniform", "alphadecay") for lr in ("uniform", "llr") for seed in (5, 6, 7))
    assert {(a.optimizer, a.weight_decay, a.lr) for a in parsed} == {("adamw", 0.1, 1e-3)}
    llr = [a for a in parsed if a.lr_strategy == "llr"]
    assert {(a.lr_min_ratio, a.lr_max_ratio, a.unbalancedlr_every, a.linear_steps, a.LLR_ratio) for a in llr} == \
        {(1.0, 5.0, 100, 50, 0.2)}
    assert len({(a.dataset_path, a.num_training_steps, a.batch_size, a.max_length, a.packing) for a in parsed}) == 1
    only = subprocess.run(["bash", str(REPO / "scripts" / "compare_strategies.sh")], capture_output=True, text=True,
                          env={**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path), "GRID": "llr",
                               "ONLY": "alphadecay llr 7 "}, check=True).stdout
    assert [line for line in only.splitlines() if "torchrun_main.py" in line] == \
        [line for line in out.splitlines() if "alphadecay-wd0.1-every50-llr-s7" in line and "torchrun_main.py" in line]


def test_report_pairs_llr_with_its_baselines(tmp_path):
    runs = tmp_path / "compare"
    for seed in (5, 6):
        for strategy, lrs, ppl in (("uniform", None, 30.0), ("uniform", "llr", 29.0), ("alphadecay", None, 30.5),
                                   ("alphadecay", "llr", 28.0)):
            folder = runs / f"{strategy}-{lrs}-{seed}"
            _run(folder, "adamw", strategy, 0.1, seed, ppl + seed / 10)
            if lrs:
                text = (folder / "metrics.jsonl").read_text().replace('"seed": ', '"lr_strategy": "llr", "seed": ', 1)
                (folder / "metrics.jsonl").write_text(text)
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_report.py"), str(runs), "--out",
                           str(tmp_path)], capture_output=True, text=True, check=True)
    rows = {line.split("|")[3].strip(): line for line in done.stdout.splitlines() if "−" in line}
    assert "-1.000, -1.000" in rows["LLR − Uniform"]
    assert "-2.500, -2.500" in rows["AlphaDecay + LLR − AlphaDecay"]
    assert "| adamw | 0.1 | AlphaDecay + LLR | 2 | 28.550 ± 0.071 |" in done.stdout


def test_muon_grid_runs_uniform_alphadecay_and_llr_under_muon(tmp_path):
    out = subprocess.run(["bash", str(REPO / "scripts" / "compare_strategies.sh")], capture_output=True, text=True,
                         env={**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path), "GRID": "muon"}, check=True).stdout
    commands = [shlex.split(line) for line in out.splitlines() if "torchrun_main.py" in line]
    parsed = [parse_args(c[c.index("torchrun_main.py") + 1:]) for c in commands]
    assert sorted((a.optimizer, a.strategy, a.lr_strategy, a.seed) for a in parsed) == sorted(
        ("muon", s, lr, seed) for s, lr in (("uniform", "uniform"), ("alphadecay", "uniform"), ("uniform", "llr"))
        for seed in (5, 6, 7))
    assert {(a.wd_min_ratio, a.wd_max_ratio) for a in parsed if a.strategy == "alphadecay"} == {(0.6666, 5.0)}
