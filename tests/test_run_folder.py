"""The run folder: one run at a time, 'latest' without a checkpoint, saves on a full disk, damaged states."""
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch

from alphadecay.errors import ConfigError
from alphadecay.training.checkpointing import checkpoint
from alphadecay.training.checkpointing.run_lock import LOCK_FILE, RunLock
from conftest import DATA_DIR, REPO
from trainutil import data_flags, records, run_cli, run_main, tiny_run_flags

pytestmark = pytest.mark.usefixtures("c4_dir", "t5_dir")
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def without_save_dir(argv):
    i = argv.index("--save_dir")
    return argv[:i] + argv[i + 2:]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_a_second_launch_into_a_running_folder_fails_at_once(tmp_path):
    """Both launches leave --save_dir out, so both mean checkpoints/test under their working directory."""
    release = tmp_path / "release"
    argv = without_save_dir(tiny_run_flags("unused", steps=4, save_every=2)) + data_flags(DATA_DIR)
    first = subprocess.Popen([sys.executable, str(REPO / "tests" / "dist" / "train_with_faults.py"),
                              f"hold=3:{release}", "--", *argv], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    run = tmp_path / "checkpoints" / "test"
    try:
        deadline = time.time() + 300
        while not ((run / "model_2").is_dir() and records(run, "train")):   # held before update 3
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.2)
        # An auto-resume script's relaunch (--continue_from latest passes the check for a finished run) ...
        second = subprocess.run([sys.executable, str(REPO / "torchrun_main.py"), *argv, "--continue_from", "latest"],
                                cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        holder = f"pid {first.pid} on {socket.gethostname()}"
        assert error_lines(second.stderr) == [line for line in second.stderr.splitlines() if line.strip()][-1:]
        assert "is in use by another run" in second.stderr and holder in second.stderr
        # ... and a two-rank launch: both of its ranks stop.
        third = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                str(REPO / "torchrun_main.py"), *argv], cwd=tmp_path, env=ENV, capture_output=True,
                               text=True, timeout=300)
        assert third.returncode != 0
        assert len([line for line in error_lines(third.stderr) if "is in use by another run" in line]) == 2, \
            third.stderr[-3000:]
        assert len(records(run, "config")) == 1            # neither wrote a line into the run's metrics
    finally:
        release.touch()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert [r["step"] for r in records(run, "train")] == [1, 2, 3, 4] and records(run, "final")
    assert not (run / LOCK_FILE).exists()


def test_a_dead_runs_lock_is_taken_over_and_latest_without_a_checkpoint_starts_a_new_run(tmp_path, capsys):
    """A run killed before its first checkpoint, restarted by an auto-resume script with --continue_from latest."""
    run = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "import os, sys\nfrom alphadecay.training.checkpointing.run_lock import "
                             "RunLock\nRunLock(sys.argv[1]).__enter__()\nos.kill(os.getpid(), 9)", str(run)],
                            cwd=REPO, env=ENV)
    assert dead.wait(timeout=120) == -9 and (run / LOCK_FILE).exists()
    assert run_main(tiny_run_flags(run, steps=1, continue_from="latest") + data_flags(DATA_DIR)) == 0
    err = capsys.readouterr().err
    assert (f"warning: --save_dir {run}: taking over the lock of a run that ended without releasing it "
            f"(pid {dead.pid} on {socket.gethostname()}, started ") in err
    assert f"--continue_from latest: no checkpoint in {run}; a new run starts in that folder" in err
    assert records(run, "final") and not (run / LOCK_FILE).exists()


def test_the_lock_excludes_a_second_holder_and_leaves_no_folder_behind(tmp_path):
    folder = tmp_path / "new"
    with RunLock(str(folder)):
        assert (folder / LOCK_FILE).exists()
        with pytest.raises(ConfigError, match=f"is in use by another run \\(pid {os.getpid()} on "):
            RunLock(str(folder)).__enter__()     # flock: each open file is its own holder, even in one process
    assert not folder.exists()                   # nothing but the lock was written: the folder goes too
    with RunLock(str(folder)):
        (folder / "metrics.jsonl").write_text("")
    assert sorted(os.listdir(folder)) == ["metrics.jsonl"]


@contextlib.contextmanager
def small_disk(folder, size_mb):
    """A tmpfs of ``size_mb`` mounted on ``folder`` (we run as root), or None when mounting is not allowed."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    try:
        yield (lambda mb: subprocess.run(["mount", "-o", f"remount,size={mb}m", str(folder)], check=True)) \
            if mounted.returncode == 0 else None
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", str(folder)], check=True)


# One llama_9m checkpoint (float32, Adam): model.safetensors 36 MB, the tokenizer 2.4 MB, training_state.pt 72 MB
# (110 MB in all: `du -sb model_2` of a tiny run). The disks below hold the first one plus about half of what
# the second save writes first (the weights) or last (the training state).
FULL_AT = {"weights": (130, 10_000_000), "training_state": (186, 50_000_000)}   # (tmpfs MB, RLIMIT_FSIZE bytes)


@pytest.mark.parametrize("fails_at", sorted(FULL_AT))
def test_a_save_on_a_full_disk_leaves_no_debris_and_the_run_resumes(tmp_path, capsys, fails_at):
    """A really full file system: a tmpfs mounted for the test. Where mounting is not permitted, the same run
    under RLIMIT_FSIZE (set from update 2 on in its own process: every file write past the limit fails with
    EFBIG) instead. safetensors reports a full disk as SafetensorError, torch.save as RuntimeError."""
    disk, fsize = FULL_AT[fails_at]
    with small_disk(tmp_path / "disk", disk) as grow:
        run = tmp_path / "disk" / "run"
        argv = tiny_run_flags(run, steps=3, save_every=1) + data_flags(DATA_DIR)
        if grow:
            code, stderr = run_main(argv), capsys.readouterr().err
        else:
            proc = run_cli(argv, check=False, faults=[f"fsize=2:{fsize}"])
            code, stderr = proc.returncode, proc.stderr
        assert code == 2, stderr[-3000:]
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert "Traceback" not in stderr and lines[-1].startswith("error: writing checkpoint"), lines[-3:]
        assert f"{run / 'model_2'}" in lines[-1] and "GB needed" in lines[-1] and f"GB free in '{run}'" in lines[-1]
        if fails_at == "weights":
            assert "Error while serializing" in lines[-1]          # safetensors' own error type
        assert sorted(p.name for p in run.iterdir() if p.name.startswith(("model_", ".tmp", ".trash"))) == ["model_1"]
        if grow:
            grow(512)                                     # room for the resumed run's checkpoints
        assert run_main(argv + ["--continue_from", "latest"]) == 0
        assert [r["step"] for r in records(run, "train")] == [1, 2, 2, 3]   # update 2 again: its save had failed
        assert [s for s, _ in checkpoint.list_checkpoints(str(run))] == [1, 2, 3] and records(run, "final")


@pytest.fixture(scope="module")
def one_update(tmp_path_factory):
    run = tmp_path_factory.mktemp("state") / "run"
    assert run_main(tiny_run_flags(run, steps=1) + data_flags(DATA_DIR)) == 0
    return run


@pytest.mark.parametrize("entry", ["scheduler", "strategy", "ranks", "optimizer"])
def test_a_training_state_missing_an_entry_is_a_damaged_checkpoint(tmp_path, capsys, one_update, entry):
    run = tmp_path / "run"
    shutil.copytree(one_update, run)
    state_file = run / "model_1" / "training_state.pt"
    state = torch.load(state_file, weights_only=True)
    del state[entry]
    torch.save(state, state_file)
    capsys.readouterr()
    assert run_main(tiny_run_flags(run, steps=2, continue_from="latest") + data_flags(DATA_DIR)) == 2
    last = [line for line in capsys.readouterr().err.splitlines() if line.strip()][-1]
    assert last == (f"error: {str(state_file)!r} is damaged or was not written by this program (it has no "
                    f"{entry!r} entry); resume from an earlier checkpoint")
