"""The tests' forked two-rank launcher (tests/forklaunch.py) gives its ranks what torchrun gives them, and a
rank that fails ends the launch at once with torchrun's exit status."""
import json
import os
import time

import forklaunch

SCRIPT = '''
import json, os, sys
import torch
import torch.distributed as dist
dist.init_process_group("gloo")
rank = dist.get_rank()
if sys.argv[1] == "fail" and rank == 1:
    raise RuntimeError("rank 1 fails on purpose")
if sys.argv[1] == "fail":
    dist.barrier()          # rank 0 would wait here for good
t = torch.tensor([rank + 1.0])
dist.all_reduce(t)
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "MY_FLAG")
print(json.dumps({"sum": t.item(), "threads": torch.get_num_threads(), "argv": sys.argv[1:],
                  "cwd": os.getcwd(), **{k: os.environ.get(k) for k in keys}}))
dist.destroy_process_group()
'''


def test_ranks_see_torchruns_environment_and_reduce_together(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    proc = forklaunch.torchrun(script, ["ok"], 2, {**os.environ, "MY_FLAG": "x", "OMP_NUM_THREADS": "1"},
                               timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["RANK"] for r in rows] == ["0", "1"] and [r["LOCAL_RANK"] for r in rows] == ["0", "1"]
    assert all(r["sum"] == 3.0 and r["WORLD_SIZE"] == r["LOCAL_WORLD_SIZE"] == "2" for r in rows)
    assert rows[0]["TORCHELASTIC_RUN_ID"] == rows[1]["TORCHELASTIC_RUN_ID"] is not None
    assert all(r["threads"] == 1 and r["argv"] == ["ok"] and r["MY_FLAG"] == "x" for r in rows)
    assert all(r["cwd"] == str(tmp_path) for r in rows)


def test_a_failing_rank_ends_the_launch_with_status_1(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    start = time.monotonic()
    proc = forklaunch.torchrun(script, ["fail"], 2, dict(os.environ), timeout=120)
    assert proc.returncode == 1 and "rank 1 fails on purpose" in proc.stderr
    assert time.monotonic() - start < 60          # rank 0, waiting in a barrier, was not waited for


def test_a_changed_environment_goes_to_real_torchrun(monkeypatch):
    monkeypatch.delenv("ALPHADECAY_TEST_LAUNCHER", raising=False)
    forklaunch._context()
    server = dict(forklaunch._env_at_start)        # the environment the server's libraries were imported in
    assert forklaunch.usable(server) and forklaunch.usable({**server, "OMP_NUM_THREADS": "3"})
    assert not forklaunch.usable({**server, "HF_HUB_OFFLINE": "1"})
    assert forklaunch.usable({**server, "MY_RUNTIME_FLAG": "1"}, ignore=("MY_RUNTIME_FLAG",))
    monkeypatch.setenv("ALPHADECAY_TEST_LAUNCHER", "torchrun")
    assert not forklaunch.usable(server)
