"""--optimizer muon in the real loop: module-wise decays on the Muon-held modules, bit-exact resume (one process
and 2-rank DDP), an AdamW checkpoint refused in one line."""
import shutil

import pytest

from conftest import DATA_DIR
from faults import StopAfter
from test_resume import assert_same_run
from trainutil import data_flags, records, run_cli, run_main, tiny_run_flags

pytestmark = pytest.mark.usefixtures("c4_dir", "t5_dir")

MUON = {"optimizer": "muon", "strategy": "alphadecay", "unbalancedWD_every": 2, "weight_decay": 0.1,
        "eigs_thresh": 1}


def test_resume_is_bit_exact_with_alphadecay_reassigning(tmp_path):
    steps, k = 5, 2
    full, part = tmp_path / "full", tmp_path / "part"
    case = {**MUON, "muon_lr": 4e-3}   # the Muon half at its own LR: the ratio must survive the restart too
    assert run_main(tiny_run_flags(full, steps=steps, **case) + data_flags(DATA_DIR)) == 0
    decays = records(full, "decay")
    assert [r["step"] for r in decays] == [0, 2, 4]
    muon_held = {n: d for n, d in decays[-1]["module_weight_decay"].items() if n != "lm_head"}
    assert len(set(muon_held.values())) > 3      # module-wise decays on q, k, v, o, gate, up, down
    assert run_main(tiny_run_flags(part, steps=steps, save_every=k, **case) + data_flags(DATA_DIR),
                    [StopAfter(k)]) == 0
    assert run_main(tiny_run_flags(part, steps=steps, continue_from=part / f"model_{k}", **case)
                    + data_flags(DATA_DIR)) == 0
    assert_same_run(full, part, steps, k)


def test_two_rank_ddp_resume_is_bit_exact(tmp_path):
    # float32 Newton-Schulz (ShardedMuon on plain tensors): bf16 matmuls are slow on a CPU, and torch's own bf16
    # Muon is resumed bit-exactly in test_resume_is_bit_exact_with_alphadecay_reassigning.
    # Two launches: the run's own checkpoint at k, copied into a new folder, resumed there (test_resume covers a
    # run stopped at k).
    steps, k = 4, 2
    full, part = tmp_path / "full", tmp_path / "part"
    case = {**MUON, "muon_ns_dtype": "float32"}
    run_cli(tiny_run_flags(full, steps=steps, save_every=k, **case) + data_flags(DATA_DIR), nproc=2)
    part.mkdir()
    shutil.copytree(full / f"model_{k}", part / f"model_{k}")
    run_cli(tiny_run_flags(part, steps=steps, continue_from="latest", **case) + data_flags(DATA_DIR), nproc=2)
    assert_same_run(full, part, steps, k)


def test_resuming_an_adamw_checkpoint_with_muon_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    adamw = {**MUON, "optimizer": "adamw"}
    assert run_main(tiny_run_flags(run, steps=2, **adamw) + data_flags(DATA_DIR)) == 0
    capsys.readouterr()
    assert run_main(tiny_run_flags(run, steps=3, continue_from="latest", **MUON) + data_flags(DATA_DIR)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "--optimizer" in err[0] and "adamw" in err[0] and "muon" in err[0]
