"""LLR in the training loop with the release's flags: the records, every group's LR step by step, exact resume."""
import pytest

from conftest import DATA_DIR
from faults import StopAfter
from test_resume import assert_same_run
from trainutil import data_flags, records, run_main, tiny_run_flags

pytestmark = pytest.mark.usefixtures("c4_dir", "t5_dir")
LR = 3e-3
LLR_FLAGS = {"use_modulewise_lr": "", "alpha_positively_with_lr": "", "lr_min_ratio": 1, "lr_max_ratio": 5}
BOTH = {"use_modulewise_wd": "", "alpha_positively_with_WD": "", "unbalancedWD_every": 2, "optimizer": "adamw",
        "weight_decay": 0.1, **LLR_FLAGS}


@pytest.fixture
def group_lrs(monkeypatch):
    """{update: {group name: lr}} as the optimizer steps with them (the loop's own optimizer, hooked)."""
    import alphadecay.training.loop as loop
    seen, build = {}, loop.build_optimizer

    def hooked(*a, **k):
        opt = build(*a, **k)
        opt.register_step_pre_hook(lambda o, args, kw: seen.__setitem__(
            len(seen), {g["name"]: g["lr"] for g in o.param_groups}))
        return opt
    monkeypatch.setattr(loop, "build_optimizer", hooked)
    return seen


def schedule(steps, warmup=2):
    from alphadecay.training.optim import lr_schedule
    return lr_schedule("cosine", total=steps, warmup=warmup, min_ratio=0.1)


def test_release_flags_train_and_every_group_follows_the_ramp(tmp_path, group_lrs):
    steps, L = 8, 2
    flags = {**BOTH, "unbalancedlr_every": 3, "linear_steps": L, "LLR_ratio": 0.5}
    assert run_main(tiny_run_flags(tmp_path, steps=steps, lr=LR, **flags) + data_flags(DATA_DIR)) == 0
    recs = {r["step"]: r for r in records(tmp_path, "decay")}
    assert sorted(recs) == [0, 2, 3, 4, 6]          # decays at 0, 2, 4, 6; LRs at 0, 3 (phase ends at 4)
    first = recs[0]
    lr0 = first["module_lr"]
    assert lr0["model.embed_tokens"] == lr0["lm_head"] == 5 * LR
    tuned = [v for n, v in lr0.items() if n not in ("model.embed_tokens", "lm_head")]
    assert min(tuned) == LR and max(tuned) == 5 * LR and len(set(tuned)) > 2
    assert set(first["module_weight_decay"]) < set(lr0) and len(set(first["module_weight_decay"].values())) > 2
    assert recs[6]["module_lr"] == recs[4]["module_lr"] == recs[3]["module_lr"]   # no LLR after 0.5 x 8

    S = schedule(steps)
    b0, b3 = recs[0]["module_lr"], recs[3]["module_lr"]
    assert b0 != b3
    assert sorted(group_lrs) == list(range(steps))
    for name in b0:
        expected = {t: b0[name] * S(t) for t in range(3)}
        start, target = expected[2], b3[name] * S(3 + L)
        if b3[name] != b0[name]:
            expected.update({t: start + (target - start) * (t - 3 + 1) / (L + 1) for t in range(3, 3 + L + 1)})
        expected.update({t: b3[name] * S(t) for t in range(len(expected), steps)})
        for t in range(steps):
            assert abs(group_lrs[t][name] - expected[t]) <= 1e-15, (name, t)
    assert all(group_lrs[t]["other"] == LR * S(t) for t in range(steps))


def test_lr_flags_are_checked():
    from alphadecay.training.flags.args import parse_args
    from alphadecay.errors import ConfigError
    base = tiny_run_flags("/tmp/unused-llr", steps=4) + data_flags(DATA_DIR)
    args = parse_args(base + ["--use_modulewise_lr"])
    assert args.lr_strategy == "llr" and (args.lr_min_ratio, args.lr_max_ratio) == (1.0, 5.0)
    assert (args.unbalancedlr_every, args.linear_steps, args.LLR_ratio) == (100, 50, 0.2)
    assert parse_args(base).lr_strategy == "uniform"
    for extra, match in [(["--lr_min_ratio", "6"], "--lr_min_ratio <= --lr_max_ratio"),
                         (["--LLR_ratio", "2"], "--LLR_ratio"), (["--linear_steps", "-1"], "--linear_steps"),
                         (["--use_modulewise_lr", "--lr_strategy", "uniform"], "contradicts")]:
        with pytest.raises(ConfigError, match=match):
            parse_args(base + extra)


@pytest.mark.parametrize("case", [
    {"linear_steps": 3, "k": 3},      # stopped in the middle of the ramp that started at update 2
    {"linear_steps": 1, "k": 6},      # after the LLR phase (it ends at 4) and its last ramp
])
def test_resume_with_alphadecay_and_llr_is_bit_exact(tmp_path, case):
    steps, k = 8, case["k"]
    flags = {**BOTH, "unbalancedlr_every": 2, "linear_steps": case["linear_steps"], "LLR_ratio": 0.5, "lr": LR}
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_main(tiny_run_flags(full, steps=steps, **flags) + data_flags(DATA_DIR)) == 0
    assert run_main(tiny_run_flags(part, steps=steps, save_every=k, **flags) + data_flags(DATA_DIR),
                    [StopAfter(k)]) == 0
    assert run_main(tiny_run_flags(part, steps=steps, continue_from=part / f"model_{k}", **flags)
                    + data_flags(DATA_DIR)) == 0
    assert_same_run(full, part, steps, k)
    fl = {r["step"]: r["module_lr"] for r in records(full, "decay")}
    assert {r["step"]: r["module_lr"] for r in records(part, "decay")} == fl


def test_resume_without_the_lr_flags_is_refused(tmp_path, capsys):
    steps, k = 4, 2
    flags = {**LLR_FLAGS, "unbalancedlr_every": 2}
    assert run_main(tiny_run_flags(tmp_path, steps=steps, save_every=k, **flags) + data_flags(DATA_DIR),
                    [StopAfter(k)]) == 0
    capsys.readouterr()
    assert run_main(tiny_run_flags(tmp_path, steps=steps, continue_from="latest") + data_flags(DATA_DIR)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    # The loop's flag check (or the strategy's state, whichever speaks first) names what differs.
    assert err.startswith("error: ") and any(w in err for w in ("uniform+llr", "--use_modulewise_lr",
                                                                 "--alpha_positively_with_lr"))


def test_two_ranks_ddp_and_fsdp_assign_the_same_lrs(tmp_path):
    """The release's LLR flags with AlphaDecay under 2-rank DDP and FSDP2 (gloo): the same base LRs and decays."""
    from trainutil import run_cli
    flags = {**BOTH, "unbalancedlr_every": 2, "linear_steps": 1, "LLR_ratio": 1.0}
    runs = {}
    for kind, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        run_cli(tiny_run_flags(tmp_path / kind, steps=3, lr=LR, **flags) + data_flags(DATA_DIR) + extra, nproc=2)
        runs[kind] = {r["step"]: r for r in records(tmp_path / kind, "decay")}
    assert sorted(runs["ddp"]) == sorted(runs["fsdp"]) == [0, 2]
    for step, ddp in runs["ddp"].items():
        fsdp = runs["fsdp"][step]
        for key in ("module_lr", "module_weight_decay"):
            assert ddp[key].keys() == fsdp[key].keys()
            assert all(abs(ddp[key][n] - fsdp[key][n]) <= 1e-4 * abs(ddp[key][n]) for n in ddp[key]), (step, key)
    assert len(set(runs["fsdp"][0]["module_lr"].values())) > 2
