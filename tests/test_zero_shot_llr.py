"""The LLR paper's zero-shot task set: evaluate.py --task_set llr and table.py's SIQA column and LLR average."""
import json
import subprocess
import sys

from conftest import REPO

SCRIPTS = REPO / "scripts" / "table3_zero_shot"
sys.path.insert(0, str(SCRIPTS))
import evaluate  # noqa: E402


def test_task_sets():
    assert [t for t, _ in evaluate.task_pairs(None, "llr")] == [
        "openbookqa", "winogrande", "arc_challenge", "arc_easy", "hellaswag", "social_iqa", "piqa"]
    assert [t for t, _ in evaluate.task_pairs(None, "alphadecay")] == list(evaluate.PAPER_TASKS)
    assert evaluate.task_pairs("smoke_piqa:piqa,boolq", "llr") == [("smoke_piqa", "piqa"), ("boolq", "boolq")]


def _record(folder, tasks):
    folder.mkdir(parents=True)
    (folder / "zero_shot.json").write_text(json.dumps({"limit": None, "tasks": {
        t: ({"acc": v} if t in ("winogrande", "boolq", "social_iqa") else {"acc": 0.0, "acc_norm": v})
        for t, v in tasks.items()}}))


def test_table_shows_siqa_and_the_llr_average(tmp_path):
    llr = {"openbookqa": 0.2, "winogrande": 0.5, "arc_challenge": 0.25, "arc_easy": 0.45, "hellaswag": 0.35,
           "social_iqa": 0.4, "piqa": 0.65}
    _record(tmp_path / "run_a" / "model_1", llr)
    _record(tmp_path / "run_b" / "model_1", {**{k: v for k, v in llr.items() if k != "social_iqa"}, "boolq": 0.6})
    out = subprocess.run([sys.executable, str(SCRIPTS / "table.py"), str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == ("| method | ARC-c | ARC-e | PIQA | Hellaswag | OBQA | Winogrande | BoolQ | SIQA | Avg. |"
                      " LLR avg. |")
    a = next(line for line in out if "run_a/model_1" in line).split("|")[2:-1]
    assert [c.strip() for c in a] == ["25.00", "45.00", "65.00", "35.00", "20.00", "50.00", "n/a", "40.00", "n/a",
                                      f"{100 * sum(llr.values()) / 7:.2f}"]
    b = next(line for line in out if "run_b/model_1" in line).split("|")[2:-1]
    assert b[-3].strip() == "n/a" and b[-1].strip() == "n/a" and b[-2].strip() != "n/a"   # no SIQA: AlphaDecay avg
    assert "| LLR paper: Uniform |" in "\n".join(out) and any(l.endswith("| 49.02 |") for l in out)
    assert all(line.count("|") == out[0].count("|") for line in out if line.startswith("|"))
    # Without SIQA anywhere the table is the AlphaDecay paper's, unchanged.
    (tmp_path / "run_a" / "model_1" / "zero_shot.json").unlink()
    plain = subprocess.run([sys.executable, str(SCRIPTS / "table.py"), str(tmp_path)], capture_output=True,
                           text=True, check=True).stdout
    assert "SIQA" not in plain and "LLR paper" not in plain
