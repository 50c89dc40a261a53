"""Command-line tools (analyze, plot_runs) and the transformers.Trainer integration."""
import json
import math
import random
import subprocess
import sys

import pytest
import torch
from PIL import Image

import alphadecay
from alphadecay.analysis import analyze as analyze_fn
from alphadecay.cli import main as cli_main
from alphadecay.cli import plot_runs

from conftest import REPO, tiny_llama

LLAMA_TYPES = ("q", "k", "v", "o", "gate", "up", "down")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model = tiny_llama(layers=2, hidden=64, vocab=500)
    path = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(path)
    return model, path


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= 100


def same(stats_row, json_row):
    for key, v in stats_row.items():
        j = json_row[key]
        if isinstance(v, float) and math.isnan(v):
            assert j is None, key
        else:
            assert j == v, (key, j, v)   # JSON round-trips floats exactly: no tolerance


def test_analyze_cli_json_csv_plots(saved_model, tmp_path):
    model, path = saved_model
    out = tmp_path / "plots"
    proc = subprocess.run([sys.executable, "-m", "alphadecay", "analyze", str(path), "--json", "-",
                           "--csv", str(tmp_path / "t.csv"), "--plot", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)          # stdout holds only the JSON; the table went to stderr
    assert "mean alpha per type" in proc.stderr
    stats = analyze_fn(model)
    assert list(report["modules"]) == list(stats)
    for name, row in stats.items():
        same(row, report["modules"][name])
    # The decays are those AlphaDecay assigns at the start of training with the same defaults.
    policy = alphadecay.AlphaDecay(model, 1e-5, wd_min_ratio=0.6666, wd_max_ratio=3.0)
    policy.initial_assignment()
    assert {n: r["weight_decay"] for n, r in report["modules"].items()} == policy.decays
    first, last = next(iter(report["modules"].values())), report["modules"]["lm_head"]
    assert not first["balanced"] and not last["balanced"] and first["weight_decay"] == 1e-5
    wds = [r["weight_decay"] for r in report["modules"].values() if r["balanced"]]
    assert min(wds) == pytest.approx(0.6666e-5) and max(wds) == pytest.approx(3e-5)
    assert set(report["type_mean_alpha"]) == set(LLAMA_TYPES)
    rows = (tmp_path / "t.csv").read_text().strip().splitlines()
    assert rows[0].startswith("module,layer,type,shape,alpha") and len(rows) == 1 + len(stats)
    # Default ESD plots: the seven modules of the middle layer, plus the heatmap.
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "alpha_heatmap.png" in pngs
    assert sorted(p for p in pngs if p.startswith("esd_")) == sorted(
        f"esd_{n}.png" for n in stats if ".layers.1." in n)
    for p in out.glob("*.png"):
        assert_png(p)


def test_analyze_options_follow_analyze(saved_model, tmp_path):
    """Estimator flags reach the analysis: FARMS + goodness-of-fit in float64 match analyze() with them."""
    model, path = saved_model
    dest = tmp_path / "r.json"
    rc = cli_main(["analyze", str(path), "-q", "--json", str(dest), "--farms", "--pl_fitting", "goodness-of-fit",
                           "--float64", "--remove_first_layer", "false", "--modules", "lm_head",
                           "--plot", str(tmp_path / "p")])
    assert rc == 0
    report = json.loads(dest.read_text())
    stats = analyze_fn(model, farms=True, pl_fitting="goodness-of-fit", dtype=torch.float64)
    for name, row in stats.items():
        same(row, report["modules"][name])
    assert report["modules"]["model.layers.0.self_attn.q_proj"]["balanced"]   # --remove_first_layer false
    assert sorted(p.name for p in (tmp_path / "p").glob("esd_*.png")) == ["esd_lm_head.png"]


def test_analyze_bad_path_is_one_line_exit_2(tmp_path, capsys):
    missing = tmp_path / "no_such_model"
    proc = subprocess.run([sys.executable, "-m", "alphadecay", "analyze", str(missing)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: no model found at {missing}"), proc.stderr
    assert "save_pretrained" in lines[0] and proc.stdout == ""
    # A folder that exists but holds no model is reported the same way.
    assert cli_main(["analyze", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no config.json" in err[0]


def test_analyze_is_a_plain_function():
    import types
    assert isinstance(alphadecay.analyze, types.FunctionType) and alphadecay.analyze is analyze_fn
    model = tiny_llama(layers=1)
    stats = alphadecay.analyze(model, xmin_pos=4)
    assert stats == analyze_fn(model, xmin_pos=4)
    assert set(next(iter(stats.values()))) == {"alpha", "alphahat", "D", "spectral_norm", "fnorm", "stable_rank",
                                               "entropy", "num_eigs"}


def write_metrics(run_dir, seed):
    """A run's metrics.jsonl as the trainer writes it, including a resume and a truncated last line."""
    run_dir.mkdir(parents=True)
    rnd = random.Random(seed)
    names = [f"model.layers.{l}.{p}" for l in range(3) for p in
             ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")] + ["lm_head"]
    recs = [{"type": "config", "step": 0, "config": {"name": run_dir.name, "weight_decay": 0.1}}]
    for s in range(0, 101, 10):
        recs.append({"type": "train", "step": s, "loss": 3 + 7 * math.exp(-s / 30) + rnd.random() * 0.1,
                     "lr": 1e-3, "tokens_seen": 512 * s, "throughput_tokens": 1e4})
        if s % 50 == 0:
            recs.append({"type": "eval", "step": s, "eval_loss": 3 + 5 * math.exp(-s / 30),
                         "eval_ppl": math.exp(3 + 5 * math.exp(-s / 30)), "eval_tokens": 4096})
            alpha = {n: (2.0 if "attn" in n else 3.0) + rnd.random() * 0.2 for n in names}
            alpha["lm_head"] = None    # undefined values are logged as null
            recs.append({"type": "decay", "step": s, "strategy": "alphadecay", "module_alpha": alpha,
                         "module_weight_decay": {n: 0.1 * (0.67 if "attn" in n else 3.0) for n in names},
                         "type_mean_alpha": {t: 2.0 + k / 10 for k, t in enumerate(LLAMA_TYPES)}})
    recs.append({"type": "train", "step": 100, "loss": 1.25, "lr": 1e-4, "tokens_seen": 51200,
                 "throughput_tokens": 1e4})   # resumed run re-logs step 100: this one must win
    recs.append({"type": "final", "step": 100, "eval_loss": 3.05, "eval_ppl": math.exp(3.05)})
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + '\n{"type": "tra')
    return run_dir


def test_plot_runs(tmp_path, capsys):
    a = write_metrics(tmp_path / "alphadecay_s5", 0)
    b = write_metrics(tmp_path / "uniform_s5", 1)
    run = plot_runs.read_run(str(a))
    assert run.label == "alphadecay_s5" and run.skipped_lines == 1
    steps, loss = run.series("train", "loss")
    assert list(steps) == list(range(0, 101, 10)) and loss[-1] == 1.25
    assert set(plot_runs.type_series(run, "module_weight_decay")) == set(LLAMA_TYPES)
    out = tmp_path / "figs"
    assert plot_runs.main([str(a), str(b / "metrics.jsonl"), "--out", str(out), "--smooth", "0.6"]) == 0
    expected = {"loss.png", "eval_ppl.png", "type_mean_alpha.png", "weight_decay.png"}
    assert {p.name for p in out.iterdir()} == expected
    for name in expected:
        assert_png(out / name)
    assert cli_main(["plot-runs", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_trainer_callback_reassigns_decays(tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    from transformers import Trainer, TrainingArguments
    from alphadecay.integrations import AlphaDecayCallback, create_optimizer

    model = tiny_llama(layers=2, hidden=64, vocab=500)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 500, (24, 32), generator=gen)
    data = [{"input_ids": x, "labels": x.clone()} for x in ids]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=5e-3,
                             logging_steps=3, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True)
    policy = alphadecay.AlphaDecay(model, weight_decay=0.1, update_every=2)
    optimizer = create_optimizer(policy, args)
    initial = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    callback = AlphaDecayCallback(policy)
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None), callbacks=[callback])
    trainer.train()

    # Reassigned before the optimizer step at updates 2 and 4 (0 is the initial assignment).
    assert [a.step for a in callback.assignments] == [0, 2, 4]
    final = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert final == {**policy.decays, "other": 0.1}
    assert final != initial
    balanced = [final[n] for n, _ in policy.linears[1:-1]]   # all but the first Linear and lm_head
    assert len(set(balanced)) > 2 and min(balanced) == pytest.approx(0.06666) and max(balanced) == pytest.approx(0.3)
    logged = [h for h in trainer.state.log_history if "alphadecay/alpha_q" in h]
    assert logged and {"alphadecay/wd_gate", "alphadecay/assigned_at_step"} <= set(logged[-1])


def test_plot_runs_refuses_a_file_as_out_and_an_empty_log(tmp_path, capsys):
    a = write_metrics(tmp_path / "a", 0)
    taken = tmp_path / "figs.png"
    taken.write_text("not a folder")
    assert cli_main(["plot-runs", str(a), "--out", str(taken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "must be a folder" in err[0]
    assert taken.read_text() == "not a folder"

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    out = tmp_path / "figs"
    assert cli_main(["plot-runs", str(empty), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: nothing was logged in") and "empty" in err[0]
    assert not out.exists()
    assert cli_main(["plot-runs", str(empty), str(a), "--out", str(out)]) == 0     # the other run is plotted
    assert "nothing was logged" in capsys.readouterr().err and (out / "loss.png").is_file()
