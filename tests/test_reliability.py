"""Preemption, atomic checkpoints, non-finite values, safe loading, logging failures, rank agreement."""
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from alphadecay.training.checkpointing import checkpoint
from conftest import DATA_DIR, REPO
from faults import NanAt
from trainutil import data_flags, records, run_cli, run_main, tiny_run_flags

pytestmark = pytest.mark.usefixtures("c4_dir", "t5_dir")


def popen(argv, env=None):
    return subprocess.Popen([sys.executable, str(REPO / "torchrun_main.py"), *argv], cwd=REPO,
                            env={**os.environ, "WANDB_MODE": "disabled", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_step(save_dir, step, proc, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        path = save_dir / "metrics.jsonl"
        if path.exists() and any(r["step"] >= step for r in records(save_dir, "train")):
            return
        time.sleep(0.2)
    raise AssertionError("run did not reach the step in time")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_update_checkpoints_and_resumes(tmp_path, sig):
    # A DataLoader worker too: Ctrl-C and schedulers signal the whole process group.
    argv = tiny_run_flags(tmp_path, steps=12, strategy="alphadecay", unbalancedWD_every=5, workers=1) + data_flags(DATA_DIR)
    proc = popen(argv)
    wait_for_step(tmp_path, 3, proc)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    last = max(r["step"] for r in records(tmp_path, "train"))
    assert f"--continue_from {tmp_path / f'model_{last}'}" in err and "--continue_from latest" in err
    assert checkpoint.resolve("latest", str(tmp_path)) == str(tmp_path / f"model_{last}")
    assert not records(tmp_path, "final")
    assert run_main(argv + ["--continue_from", "latest"]) == 0
    steps = [r["step"] for r in records(tmp_path, "train")]
    assert steps == list(range(1, 13))                       # nothing replayed, nothing skipped
    assert records(tmp_path, "final")


def test_sigkill_during_saves_never_leaves_a_partial_checkpoint(tmp_path):
    # llama_20m writes ~80 MB per checkpoint: with a save after every update most of the time is saving.
    argv = tiny_run_flags(tmp_path, steps=200, save_every=1, model_config=REPO / "configs" / "llama_20m.json",
                          keep_last_checkpoints=2) + data_flags(DATA_DIR)
    rng = random.Random(0)
    newest = 0
    for attempt in range(2):
        proc = popen(argv + (["--continue_from", "latest"] if attempt else []))
        # A new complete checkpoint first (a save takes seconds on a loaded machine), then a kill at a random
        # point of the back-to-back saves that follow.
        deadline = time.time() + 300
        while not [s for s, _ in checkpoint.list_checkpoints(str(tmp_path)) if s > newest]:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.1)
        time.sleep(rng.uniform(0.1, 1.5))
        proc.kill()
        proc.wait()
        complete = checkpoint.list_checkpoints(str(tmp_path))
        assert complete, "no complete checkpoint survived"
        named = [d for d in os.listdir(tmp_path) if d.startswith("model_")]
        assert len(named) == len(complete) <= 3          # every visible model_* folder is complete
        for _, path in complete:
            state = torch.load(os.path.join(path, "training_state.pt"), weights_only=True)
            from safetensors.torch import load_file
            assert load_file(os.path.join(path, "model.safetensors"))
            assert state["update_step"] == int(path.rsplit("_", 1)[1])
        newest = complete[-1][0]
    # The run resumes from what survived (in this process: a launch fewer).
    assert run_main(argv[:argv.index("--num_training_steps") + 1] + ["8"] + argv[argv.index("--num_training_steps") + 2:]
                    + ["--continue_from", "latest"]) == 0


def test_keep_last_k(tmp_path):
    assert run_main(tiny_run_flags(tmp_path, steps=5, save_every=1, keep_last_checkpoints=2)
                    + data_flags(DATA_DIR)) == 0
    assert [s for s, _ in checkpoint.list_checkpoints(str(tmp_path))] == [4, 5]


def test_nan_on_one_rank_stops_all_ranks_without_a_poisoned_checkpoint(tmp_path):
    argv = tiny_run_flags(tmp_path, steps=6, save_every=1) + data_flags(DATA_DIR)
    proc = run_cli(argv, nproc=2, faults=["nan=3:1"], check=False)
    assert proc.returncode != 0
    assert "non-finite loss at update 3" in proc.stderr
    assert [s for s, _ in checkpoint.list_checkpoints(str(tmp_path))] == [1, 2]
    assert not records(tmp_path, "final")


def test_nan_skip_mode_skips_the_update(tmp_path):
    argv = tiny_run_flags(tmp_path, steps=5, on_nonfinite="skip") + data_flags(DATA_DIR)
    assert run_main(argv, [NanAt(3)]) == 0
    final = records(tmp_path, "final")[0]
    assert final["skipped_updates"] == 1 and final["step"] == 5
    assert all(r["loss"] is not None for r in records(tmp_path, "train"))
    w = load_file(str(tmp_path / "model_5" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in w.values())


def test_training_state_is_safe_to_load(tmp_path):
    assert run_main(tiny_run_flags(tmp_path, steps=2) + data_flags(DATA_DIR)) == 0
    ckpt = tmp_path / "model_2"
    state = torch.load(ckpt / "training_state.pt", weights_only=True)     # no pickle code needed
    assert state["update_step"] == 2 and "optimizer" in state and "strategy" in state
    assert not list(ckpt.glob("*.bin"))                                   # weights are safetensors only
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    with open(ckpt / "training_state.pt", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(Exception, match="cannot be loaded safely"):
        checkpoint.load_state(str(ckpt), 0, 1)
    assert not marker.exists()


def test_wandb_failures_warn_once_and_never_stop_training(tmp_path, monkeypatch):
    import wandb

    class BrokenRun:
        id = "x"

        def log(self, *a, **k):
            raise ConnectionError("upload failed")

        def finish(self, exit_code=0):
            raise ConnectionError("upload failed")
    monkeypatch.setattr(wandb, "init", lambda *a, **k: BrokenRun())
    argv = [a for a in tiny_run_flags(tmp_path, steps=3) if a != "--no_wandb"] + data_flags(DATA_DIR)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.warns(UserWarning, match="wandb disabled") as caught:
        assert run_main(argv) == 0
    assert len([w for w in caught if "wandb" in str(w.message)]) == 1
    assert records(tmp_path, "final")

    monkeypatch.setattr(wandb, "init", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no network")))
    with pytest.warns(UserWarning, match="no network"):
        assert run_main(argv[:argv.index("--save_dir") + 1] + [str(tmp_path / "b")]
                        + argv[argv.index("--save_dir") + 2:]) == 0
    assert records(tmp_path / "b", "final")


def test_wandb_without_network_falls_back_to_offline_quickly(tmp_path, monkeypatch):
    import wandb
    from alphadecay.training import logger
    calls = []

    class Run:
        id = "offline-run"

        def log(self, *a, **k):
            pass

        def finish(self, exit_code=0):
            calls.append(("finish", exit_code))

    def init(**kw):
        calls.append(kw.get("mode") or kw["settings"].init_timeout)
        if kw.get("mode") != "offline":
            raise TimeoutError("no network")
        return Run()
    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setenv("WANDB_MODE", "online")
    argv = [a for a in tiny_run_flags(tmp_path, steps=2) if a != "--no_wandb"] + data_flags(DATA_DIR)
    with pytest.warns(UserWarning, match="logging offline"):
        assert run_main(argv) == 0
    assert calls == [logger.WANDB_INIT_TIMEOUT, "offline", ("finish", 0)] and logger.WANDB_INIT_TIMEOUT <= 30


def test_non_finite_advice_names_the_cause():
    from alphadecay.training.loop import _likely_cause
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([{"params": [w], "weight_decay": 1e-5, "name": "model.layers.0.mlp.up_proj"}])
    assert "nothing to predict" in _likely_cause(0.0, float("nan"), opt)
    assert "nothing to predict" in _likely_cause(512.0, 0.0, opt)
    assert "learning rate" in _likely_cause(512.0, float("nan"), opt)
    opt.param_groups[0]["weight_decay"] = float("inf")
    assert "weight decay of model.layers.0.mlp.up_proj is not finite" in _likely_cause(512.0, float("nan"), opt)


def test_a_loader_error_leaves_no_worker_behind(tmp_path):
    """A data error raised while workers run, its traceback kept (as pytest.raises keeps it), then the iterator
    dropped: torch's own clean-up leaves a worker that ignores SIGTERM, and the process used to hang at exit
    (multiprocessing joins its children forever). The error must stop the workers, and the process exit."""
    tokenizer = DATA_DIR / "tokenizers" / "t5-base"
    if not tokenizer.exists():
        pytest.skip(f"T5 tokenizer not found under {tokenizer}")
    script = tmp_path / "leak.py"
    script.write_text(f"""
import gzip, json, multiprocessing, pathlib, sys
import pytest
from alphadecay.errors import ConfigError
from alphadecay.training.data.batches import TrainBatches, load_tokenizer, make_train_loader
root = pathlib.Path({str(tmp_path)!r})
tok = load_tokenizer({str(tokenizer)!r}, 16)
kept = []
for case in range(4):
    folder = root / f"case{{case}}"
    folder.mkdir()
    with gzip.open(folder / "good.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({{"text": f"doc {{i}} word word"}}) + "\\n" for i in range(10))
    (folder / "broken.jsonl").write_text('{{"text": "fine"}}\\n{{"text": "unterminated\\n')
    loader = make_train_loader(TrainBatches(str(folder), tok, batch_size=2, max_length=16, num_workers=2), 2)
    with pytest.raises(ConfigError) as error:
        for _ in loader:
            pass
    kept = [error]
    print("alive", len(multiprocessing.active_children()), flush=True)
""")
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["alive", "0"] * 4
    assert time.monotonic() - start < 60
