"""Exact resume: stop at k, continue from model_k, and end bit for bit where the uninterrupted run ends."""
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import DATA_DIR
from faults import StopAfter
from trainutil import data_flags, records, run_cli, run_main, tiny_run_flags

pytestmark = pytest.mark.usefixtures("c4_dir", "t5_dir")


def weights(ckpt):
    return load_file(str(ckpt / "model.safetensors"))


def assert_same_run(full_dir, resumed_dir, steps, k):
    a, b = weights(full_dir / f"model_{steps}"), weights(resumed_dir / f"model_{steps}")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    full = {r["step"]: r["loss"] for r in records(full_dir, "train")}
    resumed = {r["step"]: r["loss"] for r in records(resumed_dir, "train")}
    assert all(full[s] == resumed[s] for s in range(k + 1, steps + 1))   # the same logged losses
    fd = {r["step"]: r["module_weight_decay"] for r in records(full_dir, "decay")}
    rd = {r["step"]: r["module_weight_decay"] for r in records(resumed_dir, "decay")}
    assert all(fd[s] == rd[s] for s in rd)
    assert records(full_dir, "final")[0]["eval_loss"] == records(resumed_dir, "final")[0]["eval_loss"]


@pytest.mark.parametrize("case", [
    # A reassignment after k, gradient accumulation and two DataLoader workers together.
    {"strategy": "alphadecay", "unbalancedWD_every": 3, "gradient_accumulation": 2, "workers": 2},
    # AWD's running average must survive the restart; packing carries tokens across batches.
    {"strategy": "awd", "weight_decay": 1e-3, "packing": ""},
    {"strategy": "adadecay", "unbalancedWD_every": 2, "workers": 1},
])
def test_resume_is_bit_exact(tmp_path, case):
    steps, k = 6, 2
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_main(tiny_run_flags(full, steps=steps, **case) + data_flags(DATA_DIR)) == 0
    # The first leg is a run to k with the same schedule (same --num_training_steps), saved at k.
    stopped = tiny_run_flags(part, steps=steps, save_every=k, **case) + data_flags(DATA_DIR)
    assert run_main(stopped, [StopAfter(k)]) == 0
    assert not (part / f"model_{steps}").exists() and (part / f"model_{k}").is_dir()
    assert run_main(tiny_run_flags(part, steps=steps, continue_from=part / f"model_{k}", **case)
                    + data_flags(DATA_DIR)) == 0
    assert_same_run(full, part, steps, k)


def test_two_rank_resume_is_bit_exact(tmp_path):
    steps, k = 4, 2
    case = {"strategy": "alphadecay", "unbalancedWD_every": 3}
    full, part = tmp_path / "full", tmp_path / "part"
    # The uninterrupted run saves at k too; the resumed run starts from a copy of that checkpoint (stopping a run
    # at k is tested in one process above).
    run_cli(tiny_run_flags(full, steps=steps, save_every=k, **case) + data_flags(DATA_DIR), nproc=2)
    part.mkdir()
    shutil.copytree(full / f"model_{k}", part / f"model_{k}")
    run_cli(tiny_run_flags(part, steps=steps, continue_from="latest", **case) + data_flags(DATA_DIR), nproc=2)
    assert_same_run(full, part, steps, k)
