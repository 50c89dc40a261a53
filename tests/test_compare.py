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
