"""GLUE fine-tuning (alphadecay.tasks.glue, Table 4): metrics, the pipeline on a tiny offline world, the table."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from alphadecay import module_type
from alphadecay.tasks import glue, scores

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts" / "table4_glue"))
import make_glue_world  # noqa: E402


def test_metrics_match_their_definitions():
    pred, label = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    assert scores.accuracy(pred, label) == pytest.approx(0.6)
    assert scores.f1(pred, label) == pytest.approx(2 * 2 / (3 + 3))   # tp 2, 3 predicted, 3 true
    # tp 2, tn 1, fp 1, fn 1: (2 - 1) / sqrt(3 * 3 * 2 * 2)
    assert scores.matthews(pred, label) == pytest.approx(1 / 6)
    assert scores.matthews([1, 1, 1], [1, 0, 1]) == 0.0                # one predicted class: defined as 0
    assert scores.spearman([1, 2, 2, 3], [10, 20, 20, 30]) == pytest.approx(1.0)   # ties share ranks
    assert scores.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    import torch
    logits = torch.tensor([[0.1, 0.5, 0.2, 0.3, 0.0, 0.9], [0.9, 0.1, 0.2, 0.3, 0.4, 0.5]])
    # row 0: target 1 is 2nd (top-5, not top-1); row 1: target 0 is 1st
    assert scores.topk_correct(logits, torch.tensor([1, 0]), (1, 5)).tolist() == [1, 2]
    assert scores.topk_correct(logits[:, :3], torch.tensor([2, 1]), (1, 5)).tolist() == [0, 2]   # k clipped to 3


def test_metrics_agree_with_scikit_learn_and_scipy():
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef
    rng = np.random.default_rng(0)
    pred, label = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert scores.matthews(pred, label) == pytest.approx(matthews_corrcoef(label, pred))
    assert scores.f1(pred, label) == pytest.approx(f1_score(label, pred))
    x = rng.integers(0, 6, 100).astype(float)
    y = x + rng.normal(size=100)
    assert scores.spearman(x, y) == pytest.approx(spearmanr(x, y)[0])
    assert scores.pearson(x, y) == pytest.approx(pearsonr(x, y)[0])


def test_task_metrics_and_scores():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    m = glue.task_metrics("mrpc", logits, [1, 0, 0, 0])
    assert m == pytest.approx({"accuracy": 0.75, "f1": 2 / 3})
    assert glue.task_score("mrpc", m) == pytest.approx(75.0)
    assert set(glue.task_metrics("cola", logits, [1, 0, 1, 0])) == {"accuracy", "matthews"}
    s = glue.task_metrics("stsb", np.array([[1.0], [2.0], [3.0]]), [1.5, 2.5, 2.9])
    assert set(s) == {"pearson", "spearman"} and s["spearman"] == pytest.approx(1.0)


def test_encoder_and_vit_module_names_have_the_papers_types():
    assert [module_type(f"roberta.encoder.layer.0.{n}") for n in
            ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense")] == ["q", "k", "v", "o", "up", "down"]
    assert [module_type(f"blocks.3.{n}") for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")] == \
        ["qkv", "o", "up", "down"]
    assert module_type("model.layers.0.mlp.down_proj") == "down"   # LLaMA unchanged


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue_world")
    make_glue_world.write_data(str(root / "data"))
    make_glue_world.write_model(str(root / "model"))
    return root


def _records(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_mnli_runs_with_both_validation_sets_and_logs_decays(world, tmp_path):
    out = tmp_path / "mnli"
    args = glue.parse_args(["--task", "mnli", "--model_name_or_path", str(world / "model"), "--data_dir",
                            str(world / "data" / "mnli"), "--output_dir", str(out), "--strategy", "alphadecay",
                            "--max_steps", "6", "--batch_size", "16", "--unbalancedWD_every", "3", "--log_every", "3",
                            "--device", "cpu", "--no_wandb", "--lr", "1e-3"])
    result = glue.run(args)
    assert {"matched_accuracy", "mismatched_accuracy"} <= set(result)
    assert result["score"] == pytest.approx(100 * result["matched_accuracy"])
    records = _records(out)
    kinds = [r["type"] for r in records]
    assert kinds[0] == "config" and kinds[-1] == "final"
    decays = [r for r in records if r["type"] == "decay"]
    assert [d["step"] for d in decays] == [0, 3]
    wd = decays[-1]["module_weight_decay"]
    # The first linear (layer 0's query) and the last (the classifier's out_proj) keep the base decay 0.1;
    # the others are balanced within [0.6666, 3] x 0.1 and not all equal.
    assert wd["roberta.encoder.layer.0.attention.self.query"] == pytest.approx(0.1)
    assert wd["classifier.out_proj"] == pytest.approx(0.1)
    balanced = [v for n, v in wd.items() if n not in ("roberta.encoder.layer.0.attention.self.query",
                                                       "classifier.out_proj", "classifier.dense")]
    assert all(0.06666 - 1e-9 <= v <= 0.3 + 1e-9 for v in balanced) and len(set(balanced)) > 1
    assert set(decays[-1]["type_mean_alpha"]) >= {"q", "k", "v", "o", "up", "down"}


def test_bad_glue_input_is_one_line(world, tmp_path):
    data = tmp_path / "broken"
    data.mkdir()
    (data / "train.jsonl").write_text((world / "data" / "mrpc" / "train.jsonl").read_text())
    cmd = [sys.executable, "-m", "alphadecay.tasks.glue", "--task", "mrpc", "--model_name_or_path",
           str(world / "model"), "--data_dir", str(data), "--output_dir", str(tmp_path / "r"), "--no_wandb"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: --data_dir") and "validation" in r.stderr
    cmd[cmd.index("--data_dir") + 1] = str(world / "data" / "mrpc")
    r = subprocess.run(cmd + ["--wd_min_ratio", "4"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "--wd_min_ratio" in r.stderr.splitlines()[-1]


def test_smoke_script_runs_every_method_and_prints_table4(tmp_path):
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path / "t4")}
    r = subprocess.run(["bash", str(REPO / "scripts" / "table4_glue" / "run.sh")], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "| method | wd | MRPC (acc) | STS-B (pearson) | Avg. |" in r.stdout
    for method in ("WD=0", "Uniform", "AWD", "AdaDecay", "AlphaDecay"):
        assert f"| {method} | " in r.stdout
    runs = sorted(p.parent.name for p in (tmp_path / "t4").glob("*/metrics.jsonl"))
    assert len(runs) == 10
    for name in runs:
        records = _records(tmp_path / "t4" / name)
        assert any(x["type"] == "decay" for x in records) and records[-1]["type"] == "final"


def test_resume_from_an_epoch_checkpoint_matches_the_uninterrupted_run(world, tmp_path):
    """AWD (whose running average lives only in the strategy) for two epochs, checkpointing each; a run continued
    from the first epoch's checkpoint ends with the same evaluation and the same decays."""
    def run(out, *extra):
        return glue.run(glue.parse_args([
            "--task", "mrpc", "--model_name_or_path", str(world / "model"), "--data_dir", str(world / "data" / "mrpc"),
            "--output_dir", str(out), "--strategy", "awd", "--epochs", "2", "--batch_size", "32",
            "--save_each_epoch", "--device", "cpu", "--no_wandb", "--lr", "1e-3", "--log_every", "1", *extra]))

    straight = run(tmp_path / "straight")
    first = tmp_path / "straight" / "checkpoint-8"
    assert (first / "alphadecay_strategy.json").is_file()
    import shutil
    shutil.copytree(first, tmp_path / "resumed" / "checkpoint-8")
    resumed = run(tmp_path / "resumed", "--continue_from", "latest")
    assert resumed["loss"] == straight["loss"] and resumed["accuracy"] == straight["accuracy"]
    losses = {r["step"]: r["loss"] for r in _records(tmp_path / "straight") if r["type"] == "train"}
    again = {r["step"]: r["loss"] for r in _records(tmp_path / "resumed") if r["type"] == "train"}
    assert again == {s: v for s, v in losses.items() if s > 8} and len(again) == 8
