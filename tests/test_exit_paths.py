"""Every way a run ends closes what it opened: data workers, metrics file, wandb, progress bar, process group.

In-process runs with a fake wandb, a one-rank gloo process group made beforehand (the loop destroys it),
and fault injection through callbacks (tests/faults.py). A crash with DataLoader workers running on one
rank of two ends the whole job within seconds.
"""
import itertools
import multiprocessing
import socket
import time

import pytest
import torch.distributed as dist

from alphadecay.training import loop
from conftest import DATA_DIR
from faults import NanAt, RaiseAt, StopAfter
from trainutil import data_flags, records, run_cli, run_main, tiny_run_flags

pytestmark = pytest.mark.usefixtures("c4_dir", "t5_dir")


class FakeWandbRun:
    id = "fake"

    def __init__(self):
        self.finished = None

    def log(self, *a, **k):
        pass

    def finish(self, exit_code=0):
        self.finished = exit_code


class FiniteLoader:
    """The real loader cut to n batches: the data runs out."""

    def __init__(self, inner, n):
        self.inner, self.n = inner, n

    def __iter__(self):
        return itertools.islice(iter(self.inner), self.n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.inner.close()

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def watched(monkeypatch):
    """Captures the run's logger, bar, wandb run and loader; a 1-rank process group exists before the run."""
    seen = {}
    wandb_run = FakeWandbRun()
    import wandb
    monkeypatch.setattr(wandb, "init", lambda **k: wandb_run)
    monkeypatch.setenv("WANDB_MODE", "offline")
    real_logger, real_bar, real_loader = loop._run_logger, loop.progress_bar, loop.make_train_loader

    def logger(*a, **k):
        seen["log"] = real_logger(*a, **k)
        return seen["log"]

    def bar(*a, **k):
        seen["bar"] = real_bar(*a, **k)
        return seen["bar"]

    def loader(*a, **k):
        seen["loader"] = real_loader(*a, **k)
        return FiniteLoader(seen["loader"], seen["finite"]) if "finite" in seen else seen["loader"]
    monkeypatch.setattr(loop, "_run_logger", logger)
    monkeypatch.setattr(loop, "progress_bar", bar)
    monkeypatch.setattr(loop, "make_train_loader", loader)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    seen["wandb"] = wandb_run
    seen["children_before"] = set(multiprocessing.active_children())   # other tests' loaders may still live
    yield seen
    if dist.is_initialized():
        dist.destroy_process_group()


def assert_all_closed(seen, wandb_exit_code):
    assert seen["log"].file.closed
    assert seen["wandb"].finished == wandb_exit_code
    assert seen["bar"].disable                                  # tqdm.close() sets it
    assert seen["loader"]._batches is None                     # workers stopped
    assert not set(multiprocessing.active_children()) - seen["children_before"]
    assert not dist.is_initialized()


def argv(tmp_path, steps=6):
    flags = tiny_run_flags(tmp_path, steps=steps, workers=1) + data_flags(DATA_DIR)
    return [f for f in flags if f != "--no_wandb"]


@pytest.mark.parametrize("path", ["finished", "nan_abort", "data_exhausted", "sigterm", "exception"])
def test_every_exit_path_closes_everything(tmp_path, watched, path):
    callbacks = {"nan_abort": [NanAt(3)], "sigterm": [StopAfter(3)], "exception": [RaiseAt(3)]}.get(path, [])
    if path == "data_exhausted":
        watched["finite"] = 2
    if path == "exception":
        with pytest.raises(RuntimeError, match="injected failure"):
            run_main(argv(tmp_path), callbacks)
    else:
        rc = run_main(argv(tmp_path), callbacks)
        assert rc == {"finished": 0, "sigterm": 0, "nan_abort": 1, "data_exhausted": 2}[path]
    assert_all_closed(watched, 0 if path in ("finished", "sigterm") else 1)
    kinds = [r["type"] for r in records(tmp_path)]
    assert ("final" in kinds) == (path == "finished")
    if path == "nan_abort":
        assert "error" in kinds


def test_a_crash_on_one_rank_with_workers_ends_the_job_promptly(tmp_path):
    # workers=2: a worker is mid-batch when rank 1 raises; nothing may wait on them.
    flags = tiny_run_flags(tmp_path, steps=50, workers=2) + data_flags(DATA_DIR)
    t0 = time.time()
    proc = run_cli(flags, nproc=2, faults=["raise=3:1"], check=False, timeout=120)
    took = time.time() - t0
    assert proc.returncode != 0
    assert took < 60, f"took {took:.0f}s"
    assert proc.stderr.count("RuntimeError: injected failure in update 3") == 1   # one traceback, rank 1's
    assert "rank 0 stopped because another rank failed" in proc.stderr              # the peer: one line


def test_sigterm_during_the_final_evaluation_still_writes_the_final_record(tmp_path, monkeypatch):
    import os
    import signal
    from alphadecay.training.evaluate import Evaluator
    real = Evaluator.__call__

    def evaluate_then_signal(self, model):
        os.kill(os.getpid(), signal.SIGTERM)     # arrives while the final evaluation runs
        return real(self, model)
    monkeypatch.setattr(Evaluator, "__call__", evaluate_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    assert run_main(tiny_run_flags(tmp_path, steps=2) + data_flags(DATA_DIR)) == 0
    assert records(tmp_path, "final") and (tmp_path / "model_2").is_dir()
    assert signal.getsignal(signal.SIGTERM) == before          # the run's handler is gone again
