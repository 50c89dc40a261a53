"""FSDP2 (CPU, gloo, 2 ranks): the plug-in on a user's sharded model, and the training loop under --fsdp."""
import json
import math
import subprocess

import forklaunch
from conftest import REPO


def _torchrun(script, *args, timeout=300):
    return forklaunch.run_two_ranks(script, *args, timeout=timeout)


def _rel(a, b):
    return abs(a - b) / max(abs(a), 1e-30)


def test_plugin_on_a_fully_sharded_model_equals_the_unsharded_model(tmp_path):
    _torchrun(REPO / "tests" / "dist" / "fsdp_plugin.py", tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1                                   # every rank holds the same numbers, bit for bit
    plain, sharded = r0["analyze"]
    assert plain.keys() == sharded.keys() and len(plain) == 22   # 3 layers x 7, and lm_head
    for name in plain:
        for key, value in plain[name].items():
            if math.isfinite(value):
                assert _rel(value, sharded[name][key]) < 1e-4, (name, key)
    for strategy, (unsharded, on_shards) in r0["decays"].items():
        assert unsharded.keys() == on_shards.keys()
        assert all(_rel(unsharded[g], on_shards[g]) < 1e-4 for g in unsharded), strategy
    assert len(set(r0["decays"]["alphadecay"][1].values())) > 2      # really module-wise
    assert len(r0["losses"]) == 3 and all(math.isfinite(x) for x in r0["losses"])


def test_fsdp_training_equals_ddp_resumes_bit_exactly_and_saves_loadable_checkpoints(tmp_path):
    """The loop under --fsdp (2 ranks, AlphaDecay reassigned every 3 updates, so across the resume point at 4):
    the same decays and losses as DDP, Hugging Face checkpoints, and a resume that reaches the same weights."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from conftest import DATA_DIR
    from trainutil import data_flags, records, run_cli, tiny_run_flags

    if not (DATA_DIR / "tokenizers" / "t5-base").exists():
        import pytest
        pytest.skip("T5 tokenizer and C4 sample not found (set ALPHADECAY_DATA_DIR)")

    def flags(save_dir, *extra):
        return tiny_run_flags(save_dir, steps=8, save_every=4, eval_every=4, strategy="alphadecay",
                              weight_decay=0.1, unbalancedWD_every=3) + data_flags(DATA_DIR) + list(extra)

    fsdp, ddp, resumed = tmp_path / "fsdp", tmp_path / "ddp", tmp_path / "resumed"
    run_cli(flags(fsdp, "--fsdp"), nproc=2)
    run_cli(flags(ddp), nproc=2)
    assert (fsdp / "model_4" / "optimizer").is_dir() and not (ddp / "model_4" / "optimizer").exists()

    decays = [[r["module_weight_decay"] for r in records(d, "decay")] for d in (fsdp, ddp)]
    assert [r["step"] for r in records(fsdp, "decay")] == [0, 3, 6]
    assert decays[0][0] == decays[1][0] and len(set(decays[0][0].values())) > 2    # step 0: equal, bit for bit
    for a, b in zip(*decays):
        assert all(abs(a[k] - b[k]) <= 1e-6 * abs(b[k]) for k in b)
    losses = [[r["loss"] for r in records(d, "train")] for d in (fsdp, ddp)]
    assert all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(*losses)) and len(losses[0]) == 8
    assert records(fsdp, "eval") and records(fsdp, "final")

    model = AutoModelForCausalLM.from_pretrained(fsdp / "model_8")
    twin = AutoModelForCausalLM.from_pretrained(ddp / "model_8")
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name

    resumed.mkdir()
    import shutil
    shutil.copytree(fsdp / "model_4", resumed / "model_4")
    run_cli(flags(resumed, "--fsdp", "--continue_from", "latest"), nproc=2)
    whole, again = (load_file(d / "model_8" / "model.safetensors") for d in (fsdp, resumed))
    assert whole.keys() == again.keys() and all(torch.equal(whole[k], again[k]) for k in whole)

    wrong = run_cli(flags(resumed, "--continue_from", str(resumed / "model_4")), nproc=2, check=False)
    assert wrong.returncode != 0 and "was written with --fsdp; resume it with --fsdp" in wrong.stderr


def test_a_checkpoint_resumes_only_in_its_own_layout():
    """The other direction of the launch above (a DDP checkpoint resumed with --fsdp), on the check itself."""
    import pytest

    from alphadecay.errors import ConfigError
    from alphadecay.training.checkpointing.checkpoint import check_format

    check_format("ddp", {}, sharded=False)
    check_format("fsdp", {"optimizer_format": "dcp"}, sharded=True)
    with pytest.raises(ConfigError, match="'ddp' was written without --fsdp; resume it without --fsdp"):
        check_format("ddp", {}, sharded=True)
    with pytest.raises(ConfigError, match="'fsdp' was written with --fsdp; resume it with --fsdp"):
        check_format("fsdp", {"optimizer_format": "dcp"}, sharded=False)


def test_launch_script_commands_parse(tmp_path):
    """scripts/fsdp_llama.sh prints (DRY_RUN=1) torchrun commands whose flags the trainer accepts as written."""
    import os
    import shlex

    from alphadecay.training.flags.args import parse_args

    cases = [({"MODEL": "7b"}, 8, "--standalone"),
             ({"MODEL": "3b", "NNODES": "2", "RDZV_ENDPOINT": "node0:29500", "METHOD": "uniform"}, 16, "c10d"),
             ({"MODEL": "1b", "OPTIMIZER": "adamw", "WD": "0.1", "KEEP_LAST": "0"}, 8, "--standalone")]
    for env, world, launcher in cases:
        out = subprocess.run(["bash", str(REPO / "scripts" / "fsdp_llama.sh")], capture_output=True, text=True,
                             env={**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path), **env}, check=True).stdout
        words = shlex.split(out)
        assert words[0] == "torchrun" and launcher in out
        args = parse_args(words[words.index("torchrun_main.py") + 1:], world_size=world)
        assert args.fsdp and args.dtype == "bf16-mixed" and args.model_config.endswith(f"llama_{env['MODEL']}.json")
        assert args.strategy == env.get("METHOD", "alphadecay")
        assert args.gradient_accumulation * args.batch_size * world == 512
        assert args.keep_last_checkpoints == int(env.get("KEEP_LAST", 2))
    failed = subprocess.run(["bash", str(REPO / "scripts" / "fsdp_llama.sh")], capture_output=True, text=True,
                            env={**os.environ, "DRY_RUN": "1", "NNODES": "2"})
    assert failed.returncode == 2 and "RDZV_ENDPOINT" in failed.stderr
