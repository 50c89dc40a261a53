"""HSDP (--fsdp --dp_replicate R): the flag's checks in-process; 2 x 2 against 1 x 4 on 4 gloo ranks in one launch."""
import json
import os

import pytest

import forklaunch
from conftest import DATA_DIR, REPO

CFG = ["--model_config", str(REPO / "configs" / "llama_9m.json")]


def test_a_bad_replica_count_is_one_line_naming_the_fix():
    from alphadecay.errors import ConfigError
    from alphadecay.training.flags.args import parse_args

    assert parse_args(CFG + ["--fsdp", "--dp_replicate", "2"], world_size=4).dp_replicate == 2
    assert parse_args(CFG + ["--fsdp"], world_size=4).dp_replicate == 1
    for argv, world, fix in ((["--fsdp", "--dp_replicate", "3"], 4, "pass a divisor of the world size"),
                             (["--fsdp", "--dp_replicate", "0"], 4, "pass the number of replicas"),
                             (["--dp_replicate", "2"], 4, "--dp_replicate needs --fsdp; add it or drop the flag")):
        with pytest.raises(ConfigError, match=fix) as e:
            parse_args(CFG + argv, world_size=world)
        assert "\n" not in str(e.value) and "--dp_replicate" in str(e.value)


def _relative(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_hsdp_equals_fsdp_on_four_ranks_and_resumes_bit_exactly(tmp_path):
    """One launch (tests/dist/hsdp.py): the meta start on the 2-D mesh, then AlphaDecay (ESD every 3 updates) and
    Muon under 2 x 2 and 1 x 4, and a 2 x 2 resume from update 2 (across the reassignment at 3)."""
    import torch
    from safetensors.torch import load_file

    from trainutil import records

    if not (DATA_DIR / "tokenizers" / "t5-base").exists():
        pytest.skip("T5 tokenizer and C4 sample not found (set ALPHADECAY_DATA_DIR)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = forklaunch.launch(REPO / "tests" / "dist" / "hsdp.py", [tmp_path, DATA_DIR], 4, env, 600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    for r in ranks:
        assert r["differ"] == []                          # the meta start: the unsharded build's rows, bit for bit
        assert r["mesh"] == [2, 2] and r["mesh_dims"] == ["replicate", "shard"] and r["placements"] == ["R", "S(0)"]
        assert r["local_rows"] * 2 == r["rows"]           # sharded over the 2 ranks of a replica, not all 4
        assert r["gathered_after_forward"] == [False, False, False, True]   # the last block is not resharded
        # per-tensor gradient norms on the 2-D mesh: summed over the shards only (over all 4 ranks: twice)
        assert all(abs(a - b) <= 1e-3 * b for a, b in zip(r["norms"], r["full_norms"]))
    assert ranks[0]["norms"] == ranks[3]["norms"]

    fsdp, hsdp, resumed = (tmp_path / d for d in ("fsdp4", "hsdp", "hsdp-resumed"))
    assert (hsdp / "model_2" / "optimizer").is_dir()
    losses = [[x["loss"] for x in records(d, "train")] for d in (fsdp, hsdp)]
    assert len(losses[0]) == 4 and all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(*losses))   # equal, measured
    decays = [records(d, "decay") for d in (fsdp, hsdp)]
    assert [x["step"] for x in decays[1]] == [0, 3] and [x["step"] for x in records(resumed, "decay")] == [3]
    assert records(resumed, "decay")[0]["module_weight_decay"] == decays[1][1]["module_weight_decay"]
    assert decays[0][0]["module_weight_decay"] == decays[1][0]["module_weight_decay"]   # the same start, bit for bit
    assert len(set(decays[1][1]["module_weight_decay"].values())) > 2                   # really module-wise
    for a, b in zip(*decays):   # the ESD of weights 1e-6 apart: 1.5e-5 measured at update 3
        a, b = a["module_weight_decay"], b["module_weight_decay"]
        assert all(abs(a[k] - b[k]) <= 5e-5 * abs(b[k]) for k in b)

    for one, two in ((fsdp / "model_4", hsdp / "model_4"), (tmp_path / "muon-fsdp4" / "model_2",
                                                             tmp_path / "muon-hsdp" / "model_2")):
        a, b = (load_file(d / "model.safetensors") for d in (one, two))
        assert a.keys() == b.keys()
        # float32, per tensor: 8e-7 measured (relative norm of the difference). Elementwise: 2e-8 on Muon's
        # matrices; AdamW's near-zero gradients (another reduction order: 1 x 4 averages once, 2 x 2 twice) moved
        # single embedding entries by 1.6e-6 to 1.9e-5 across runs (an Adam step is lr-sized whatever the
        # gradient's size).
        for k in a:
            assert _relative(b[k], a[k]) <= 1e-5 and (a[k] - b[k]).abs().max() <= 5e-5, (one, k)

    whole, again = (load_file(d / "model_4" / "model.safetensors") for d in (hsdp, resumed))
    assert whole.keys() == again.keys() and all(torch.equal(whole[k], again[k]) for k in whole)
    assert [x["loss"] for x in records(resumed, "train")] == losses[1][2:]


def test_a_resume_keeps_the_replica_count(tmp_path):
    """The layout is refused when it changes on resume (the flag is not in resume.MAY_CHANGE), in one line."""
    from alphadecay.errors import ConfigError
    from alphadecay.training.checkpointing.resume import compare, flags_record
    from alphadecay.training.flags.args import parse_args

    saved = parse_args(CFG + ["--fsdp", "--dp_replicate", "2"], world_size=4)
    state = {"run_flags": flags_record(saved), "optimizer_format": "dcp", "update_step": 0}
    assert compare(str(tmp_path), state, saved) == {}
    with pytest.raises(ConfigError, match="--dp_replicate cannot change on resume.*resume with --dp_replicate 2"):
        compare(str(tmp_path), state, parse_args(CFG + ["--fsdp"], world_size=4))
    older = {**state, "run_flags": {**state["run_flags"], "args": {k: v for k, v in state["run_flags"]["args"].items()
                                                                  if k != "dp_replicate"}}}
    with pytest.raises(ConfigError, match="resume with --dp_replicate 1"):   # written before the flag existed
        compare(str(tmp_path), older, saved)
