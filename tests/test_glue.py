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
    # --max_steps: no epoch ends, one evaluation after the last update, both the best and the last
    assert result["best"] == result["last"] and result["last"]["step"] == 6
    assert {"matched_accuracy", "mismatched_accuracy"} <= set(result["last"])
    assert result["score"] == pytest.approx(100 * result["last"]["matched_accuracy"])
    records = _records(out)
    kinds = [r["type"] for r in records]
    assert kinds[0] == "config" and kinds[-1] == "final"
    assert {r["step"] for r in records if r["type"] == "eval"} == {6}   # matched and mismatched: one step
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


def test_stsb_regression_trains_and_scores_pearson(world, tmp_path):
    """STS-B, the one regression task: one output, MSE, Pearson and Spearman (the smoke script below runs MRPC)."""
    out = tmp_path / "stsb"
    result = glue.run(glue.parse_args([
        "--task", "stsb", "--model_name_or_path", str(world / "model"), "--data_dir", str(world / "data" / "stsb"),
        "--output_dir", str(out), "--strategy", "alphadecay", "--max_steps", "4", "--batch_size", "16",
        "--unbalancedWD_every", "2", "--device", "cpu", "--no_wandb", "--lr", "1e-3"]))
    assert {"pearson", "spearman"} <= set(result["last"]) and -1 <= result["last"]["pearson"] <= 1
    assert result["score"] == pytest.approx(100 * result["last"]["pearson"])
    records = _records(out)
    assert [r["step"] for r in records if r["type"] == "decay"] == [0, 2] and records[-1]["type"] == "final"


def test_smoke_script_runs_every_method_and_prints_table4(tmp_path):
    # One task (MRPC): each run is a process paying the imports, and STS-B's path is tested in-process above.
    env = {**os.environ, "SMOKE": "1", "SMOKE_TASKS": "mrpc", "OUT": str(tmp_path / "t4")}
    r = subprocess.run(["bash", str(REPO / "scripts" / "table4_glue" / "run.sh")], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "| method | wd | MRPC (acc) |" in r.stdout
    for method in ("WD=0", "Uniform", "AWD", "AdaDecay", "AlphaDecay"):
        assert f"| {method} | " in r.stdout
    runs = sorted(p.parent.name for p in (tmp_path / "t4").glob("*/metrics.jsonl"))
    assert len(runs) == 5
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
    # Both epochs scored, once each (the last epoch's evaluation is not repeated after training)
    evals = [r for r in _records(tmp_path / "straight") if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [8, 16]
    assert [straight["best"]["step"], straight["last"]["step"]] in ([8, 16], [16, 16])
    assert straight["best"]["score"] == max(100 * r["accuracy"] for r in evals)
    assert straight["last"]["score"] == pytest.approx(100 * evals[-1]["accuracy"])
    assert straight["score"] == straight["best"]["score"] and _records(tmp_path / "straight")[-1]["best"] == \
        straight["best"]
    first = tmp_path / "straight" / "checkpoint-8"
    assert (first / "alphadecay_strategy.json").is_file()
    import shutil
    shutil.copytree(first, tmp_path / "resumed" / "checkpoint-8")
    resumed = run(tmp_path / "resumed", "--continue_from", "latest")
    # the resumed run's best looks back at the epoch before the checkpoint too (Trainer's restored log history)
    assert resumed["best"] == straight["best"] and resumed["last"] == straight["last"]
    losses = {r["step"]: r["loss"] for r in _records(tmp_path / "straight") if r["type"] == "train"}
    again = {r["step"]: r["loss"] for r in _records(tmp_path / "resumed") if r["type"] == "train"}
    assert again == {s: v for s, v in losses.items() if s > 8} and len(again) == 8


def test_one_process_per_gpu_and_the_recipes_batch_per_update(monkeypatch):
    """Several visible GPUs outside torchrun: refused (Trainer would run nn.DataParallel); under torchrun the
    recipe's batch is split over the ranks and the micro-steps, or refused when it does not divide."""
    import torch
    from alphadecay.errors import ConfigError
    for var in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(ConfigError, match="4 GPUs are visible.*torchrun --nproc_per_node=4.*CUDA_VISIBLE_DEVICES"):
        glue.per_device_batch(32, 1, cuda=True)
    assert glue.per_device_batch(32, 2, cuda=False) == 16           # --device cpu: the GPUs are not used
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert glue.per_device_batch(16, 1, cuda=True) == 16            # one GPU per run (the script's lanes)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert glue.per_device_batch(32, 1, cuda=True) == 8             # 8 x 4 ranks = 32 per update
    assert glue.per_device_batch(32, 2, cuda=True) == 4             # 4 x 4 ranks x 2 micro-steps
    with pytest.raises(ConfigError, match="--batch_size 16 .* 4 rank.* --gradient_accumulation 8"):
        glue.per_device_batch(16, 8, cuda=True)


def test_best_and_last_dev_epochs_from_the_log_history():
    history = [{"loss": 0.9, "step": 5, "epoch": 0.5},
               {"eval_matched_accuracy": 0.70, "eval_matched_loss": 0.8, "eval_matched_runtime": 1.0, "epoch": 1.0,
                "step": 10},
               {"eval_mismatched_accuracy": 0.60, "epoch": 1.0, "step": 10},
               {"eval_matched_accuracy": 0.80, "epoch": 2.0, "step": 20},
               {"eval_mismatched_accuracy": 0.75, "epoch": 2.0, "step": 20},
               {"eval_matched_accuracy": 0.80, "epoch": 3.0, "step": 30},
               {"eval_mismatched_accuracy": 0.70, "epoch": 3.0, "step": 30},
               {"eval_matched_accuracy": 0.78, "epoch": 4.0, "step": 40},
               {"eval_mismatched_accuracy": 0.90, "epoch": 4.0, "step": 40}]
    evals = glue.dev_evaluations(history, "mnli")
    assert [e["step"] for e in evals] == [10, 20, 30, 40]
    assert evals[0] == {"step": 10, "epoch": 1.0, "matched_accuracy": 0.70, "matched_loss": 0.8,
                        "mismatched_accuracy": 0.60, "score": pytest.approx(70.0)}
    chosen = glue.best_and_last(evals)
    # best by the task's metric (matched accuracy), the earlier of two equal epochs; not by mismatched accuracy
    assert chosen["best"]["epoch"] == 2.0 and chosen["best"]["score"] == pytest.approx(80.0)
    assert chosen["last"]["epoch"] == 4.0 and chosen["last"]["score"] == pytest.approx(78.0)


def test_table4_shows_the_best_epoch_and_says_so_or_the_last(tmp_path):
    make_tables = REPO / "scripts" / "make_tables.py"
    for seed, (best, last) in enumerate([(80.0, 78.0), (84.0, 84.0)], start=1):
        folder = tmp_path / f"mrpc-alphadecay-s{seed}"
        folder.mkdir()
        records = [{"type": "config", "step": 0, "config": {"task": "mrpc", "strategy": "alphadecay",
                                                            "weight_decay": 0.1, "seed": seed}},
                   {"type": "final", "step": 30, "task": "mrpc", "score": best, "best": {"epoch": 1.0, "score": best},
                    "last": {"epoch": 3.0, "score": last}}]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    older = tmp_path / "mrpc-alphadecay-s3"   # a final record from before best/last: one score, the last epoch's
    older.mkdir()
    (older / "metrics.jsonl").write_text(json.dumps({"type": "config", "step": 0, "config": {
        "task": "mrpc", "strategy": "alphadecay", "weight_decay": 0.1}}) + "\n" + json.dumps(
        {"type": "final", "step": 30, "task": "mrpc", "score": 90.0}) + "\n")

    def table(*flags):
        r = subprocess.run([sys.executable, str(make_tables), str(tmp_path), "--table", "4", "--paper", "", *flags],
                           capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 0, r.stderr
        return r.stdout, next(line for line in r.stdout.splitlines() if line.startswith("| AlphaDecay |"))

    out, row = table()
    assert "best dev epoch of each run" in out.splitlines()[0] and "84.67 ± 5.03 (n=3)" in row   # 80, 84, 90
    assert "1 run(s) logged only their last evaluation" in out and "--glue_epoch last" in out
    out, row = table("--glue_epoch", "last")
    assert "last epoch of each run" in out.splitlines()[0] and "84.00 ± 6.00 (n=3)" in row   # 78, 84, 90


def test_max_length_is_checked_against_the_models_positions_and_long_rows_truncated(world, tmp_path, capsys):
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel
    small = dict(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    assert glue.usable_positions(RobertaModel(RobertaConfig(max_position_embeddings=514, pad_token_id=1,
                                                            **small))) == 512   # roberta-base's table
    assert glue.usable_positions(BertModel(BertConfig(max_position_embeddings=512, **small))) == 512   # no offset
    base = ["--task", "mrpc", "--model_name_or_path", str(world / "model"), "--device", "cpu", "--no_wandb"]
    code = glue.main([*base, "--data_dir", str(world / "data" / "mrpc"), "--output_dir", str(tmp_path / "r"),
                      "--max_length", "65"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: --max_length 65 exceeds the 64 positions") and \
        "--max_length 64 or less" in err[-1]
    # Rows of 200 tokens (the tiny model takes 64): truncated to the model's length by default, training runs.
    data = tmp_path / "long"
    data.mkdir()
    long_rows = [{"sentence1": " ".join(make_glue_world.WORDS * 2), "sentence2": "kab lod", "label": i % 2}
                 for i in range(16)]
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in long_rows))
    result = glue.run(glue.parse_args([*base, "--data_dir", str(data), "--output_dir", str(tmp_path / "long_run"),
                                       "--max_steps", "2", "--batch_size", "8"]))
    assert result["last"]["step"] == 2 and np.isfinite(result["last"]["loss"])


def test_a_used_output_dir_is_named_by_glues_flag(world, tmp_path, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "metrics.jsonl").write_text(json.dumps({"type": "train", "step": 1, "loss": 1.0}) + "\n")
    code = glue.main(["--task", "mrpc", "--model_name_or_path", str(world / "model"), "--data_dir",
                      str(world / "data" / "mrpc"), "--output_dir", str(used), "--no_wandb"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: --output_dir '{used}' already holds a run")
    assert "choose another --output_dir" in err[0] and "--save_dir" not in err[0]
