"""End-to-end training on real C4 + the T5 tokenizer (skipped when the shared data are absent)."""
import math

import pytest
import torch

import forklaunch
from conftest import DATA_DIR
from trainutil import EVAL_TOKENS, data_flags, records, run_cli, run_main, tiny_run_flags

pytestmark = pytest.mark.usefixtures("c4_dir", "t5_dir")
WD = 1e-2


@pytest.mark.parametrize("strategy", ["none", "uniform", "alphadecay", "awd", "adadecay"])
def test_each_strategy_trains_and_logs(tmp_path, strategy):
    steps = 16
    # module-wise flags only where they are read: elsewhere they are refused (training/flags/features.py)
    modulewise = {"unbalancedWD_every": 5, "alpha_positively_with_WD": ""} if strategy in ("alphadecay", "adadecay") \
        else {}
    argv = tiny_run_flags(tmp_path, steps=steps, eval_every=8, weight_decay=WD, strategy=strategy,
                          **modulewise) + data_flags(DATA_DIR)
    if strategy == "none":
        argv[argv.index("--weight_decay") + 1] = "0"
    assert run_main(argv) == 0

    recs = records(tmp_path)
    assert recs[0]["type"] == "config" and recs[0]["config"]["strategy"] == strategy
    train = records(tmp_path, "train")
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    for r in train:
        assert {"step", "loss", "lr", "tokens_seen", "throughput_tokens"} <= set(r)
    losses = [r["loss"] for r in train]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5        # the loss falls
    assert train[-1]["tokens_seen"] > train[0]["tokens_seen"] > 0

    evals = records(tmp_path, "eval")
    assert [r["step"] for r in evals] == [8]
    final = records(tmp_path, "final")[0]
    for r in evals + [final]:
        # The rows' tokens reach --target_eval_tokens; the first of each row is not predicted.
        assert math.isclose(r["eval_ppl"], math.exp(r["eval_loss"]), rel_tol=1e-9)
        assert EVAL_TOKENS - EVAL_TOKENS // 64 - 4 <= r["eval_tokens"] < 2 * EVAL_TOKENS
    assert final["eval_loss"] < evals[0]["eval_loss"]

    decays = records(tmp_path, "decay")
    expected_steps = [0, 5, 10, 15] if strategy in ("alphadecay", "adadecay") else [0]
    assert [r["step"] for r in decays] == expected_steps
    first = decays[0]
    linears = [n for n in first["module_weight_decay"]]
    assert len(linears) == 4 * 7 + 1 and linears[-1] == "lm_head"
    assert set(first["type_mean_alpha"]) == {"q", "k", "v", "o", "gate", "up", "down"}
    if strategy != "adadecay":
        assert set(first["module_alpha"]) == set(linears)
    wds = set(decays[-1]["module_weight_decay"].values())
    if strategy == "alphadecay":
        assert max(wds) == pytest.approx(3.0 * WD) and min(wds) == pytest.approx(0.6666 * WD)
    elif strategy == "adadecay":
        assert len(wds) > 2      # gradient norms differ within blocks after the first update
    elif strategy == "awd":
        assert wds == {100 * WD}  # the initial record: the release starts AWD at 100 x wd
    else:
        assert wds == {0.0 if strategy == "none" else WD}

    from transformers import AutoModelForCausalLM, AutoTokenizer
    ckpt = tmp_path / f"model_{steps}"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    ids = tok("The quick brown fox", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()


RELEASE_README = ("--model_config configs/llama_130m.json --optimizer adam --seed 5 --lr 0.001 --batch_size 256 "
                  "--total_batch_size 512 --num_training_steps 20000 --warmup_steps 2000 --weight_decay 0.000005 "
                  "--use_modulewise_wd --alpha_positively_with_WD --unbalancedWD_every 500 --esd_metric_for_tb alpha "
                  "--assign_func tb_linear_map --wd_min_ratio 0.6666 --wd_max_ratio 3 --dtype bfloat16 "
                  "--eval_every 1000 --wandb_name AlphaDecay-130M --target_eval_tokens 10000000 --save_every 10000")
SHRINK = {"--model_config": "configs/llama_9m.json", "--batch_size": "2", "--total_batch_size": "4",
          "--num_training_steps": "4", "--warmup_steps": "1", "--unbalancedWD_every": "2", "--eval_every": "2",
          "--target_eval_tokens": "500", "--save_every": "2"}


def shrunk_release_command(save_dir, modulewise=True):
    argv = RELEASE_README.split()
    for flag, value in SHRINK.items():
        argv[argv.index(flag) + 1] = value
    if not modulewise:   # the Uniform run only has to show its decays: half as long (bf16 is slow on a CPU)
        # The release's Uniform scripts: no switch, no module-wise flags but the --alpha_positively_with_WD they
        # all pass (a warning here; the others would be refused without --use_modulewise_wd).
        for flag in ("--unbalancedWD_every", "--esd_metric_for_tb", "--assign_func", "--wd_min_ratio",
                     "--wd_max_ratio"):
            del argv[argv.index(flag):argv.index(flag) + 2]
        argv.remove("--use_modulewise_wd")
        argv[argv.index("--num_training_steps") + 1] = "2"
    return argv + ["--max_length", "32", "--workers", "0", "--save_dir", str(save_dir), "--no_wandb"] + data_flags(DATA_DIR)


def test_release_readme_command_runs_alphadecay_and_uniform_without_the_switch(tmp_path, capsys):
    assert run_main(shrunk_release_command(tmp_path / "ad")) == 0
    assert "warning: --alpha_positively_with_WD" not in capsys.readouterr().err
    assert run_main(shrunk_release_command(tmp_path / "uni", modulewise=False)) == 0
    assert "warning: --alpha_positively_with_WD does nothing without --use_modulewise_wd" in capsys.readouterr().err
    ad, uni = records(tmp_path / "ad", "config")[0], records(tmp_path / "uni", "config")[0]
    assert ad["config"]["strategy"] == "alphadecay" and uni["config"]["strategy"] == "uniform"
    assert ad["config"]["gradient_accumulation"] == 2
    ad_wd = set(records(tmp_path / "ad", "decay")[-1]["module_weight_decay"].values())
    uni_wd = set(records(tmp_path / "uni", "decay")[-1]["module_weight_decay"].values())
    assert max(ad_wd) == pytest.approx(3 * 5e-6) and min(ad_wd) == pytest.approx(0.6666 * 5e-6)
    assert uni_wd == {5e-6}
    assert [r["step"] for r in records(tmp_path / "ad", "decay")] == [0, 2]
    assert [r["step"] for r in records(tmp_path / "ad", "eval")] == [2]
    assert (tmp_path / "ad" / "model_2").is_dir() and (tmp_path / "ad" / "model_4").is_dir()


def test_two_ranks_hold_identical_weights_and_match_one_process_on_the_same_checkpoint(tmp_path, capsys):
    import json

    from conftest import REPO

    argv = tiny_run_flags(tmp_path, steps=4, strategy="alphadecay", unbalancedWD_every=2) + data_flags(DATA_DIR)
    # The loop under torchrun, each rank then writing a digest of its weights and its decays.
    forklaunch.run_two_ranks(REPO / "tests" / "dist" / "rank_state.py", tmp_path, *argv, timeout=600,
                             env={"WANDB_MODE": "disabled"})
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["weights"] == r1["weights"] and r0["decays"] == r1["decays"]
    assert len(set(r0["decays"].values())) > 2
    final = records(tmp_path, "final")[0]
    ckpt = str(tmp_path / "model_4")
    evals = {}
    for n in (1, 2):
        eval_only = tiny_run_flags(tmp_path / f"eval{n}") + data_flags(DATA_DIR) + ["--eval_only", "--continue_from", ckpt]
        if n == 1:   # in this process: one launch fewer
            capsys.readouterr()
            assert run_main(eval_only) == 0
            stdout = capsys.readouterr().out
        else:
            stdout = run_cli(eval_only, nproc=n).stdout
        evals[n] = json.loads(stdout.strip().splitlines()[-1])
    assert evals[1]["eval_tokens"] == evals[2]["eval_tokens"] == final["eval_tokens"]
    assert math.isclose(evals[1]["eval_loss"], evals[2]["eval_loss"], rel_tol=1e-6)
    assert math.isclose(evals[1]["eval_loss"], final["eval_loss"], rel_tol=1e-6)


def test_compile_trains_like_eager(tmp_path):
    # --compile compiles the decoder in place (torch.compile, inductor's C++ code on CPU): same losses, and
    # the checkpoint keeps transformers' parameter names. The compiled run in a subprocess, to keep dynamo's
    # state out of pytest; the eager one here.
    runs = {}
    for name, extra in [("eager", []), ("compiled", ["--compile"])]:
        argv = tiny_run_flags(tmp_path / name, steps=4, target_eval_tokens=500) + data_flags(DATA_DIR) + extra
        if extra:
            run_cli(argv)
        else:
            assert run_main(argv) == 0
        runs[name] = [r["loss"] for r in records(tmp_path / name, "train")] + \
            [records(tmp_path / name, "final")[0]["eval_loss"]]
    assert runs["compiled"] == pytest.approx(runs["eager"], rel=1e-4)
    from transformers import AutoModelForCausalLM
    _, info = AutoModelForCausalLM.from_pretrained(tmp_path / "compiled" / "model_4", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_activation_checkpointing_trains_like_without(tmp_path):
    # Recomputing the activations in backward must not change what is learned: same losses, same evaluation.
    from alphadecay.training.flags.args import parse_args
    from alphadecay.training.loop import train
    runs = {}
    for name, extra in [("plain", []), ("recompute", ["--activation_checkpointing"])]:
        out = train(parse_args(tiny_run_flags(tmp_path / name, steps=4, target_eval_tokens=500) + data_flags(DATA_DIR)
                               + extra, world_size=1))
        assert out["model"].is_activation_checkpointing == (name == "recompute")
        runs[name] = [r["loss"] for r in records(tmp_path / name, "train")] + \
            [records(tmp_path / name, "final")[0]["eval_loss"]]
    assert runs["recompute"] == pytest.approx(runs["plain"], rel=1e-5)
