"""The LLR paper's Sharpness baseline (--lr_strategy sharpness): fixed per-type LR ratios on LLR's groups."""
import pytest

from alphadecay.analysis import module_type
from alphadecay.llr import SHARPNESS_RATIOS, FixedRatioLR
from conftest import DATA_DIR, tiny_llama
from test_llr_train import group_lrs, schedule  # noqa: F401 - the fixture is used by name
from trainutil import data_flags, records, run_main, tiny_run_flags

LR = 1e-4   # the paper's Sharpness base lr


def expected_ratio(name):
    if name in ("model.embed_tokens", "lm_head"):
        return 10.0
    return {"q": 8, "k": 8, "v": 4, "o": 4, "gate": 6, "up": 6, "down": 6}.get(module_type(name), 1.0)


def test_bases_are_the_fixed_ratios_and_no_spectrum_is_read():
    policy = FixedRatioLR(tiny_llama(), LR, total_steps=100)
    assert policy.score_linears == []   # nothing for the ESD to read
    out = policy.initial_assignment()
    assert set(out.module_lr) == {n for n, _ in policy.modules}
    for name, base in out.module_lr.items():
        assert base == pytest.approx(expected_ratio(name) * LR), name
    assert sorted(set(SHARPNESS_RATIOS.values())) == [4.0, 6.0, 8.0, 10.0]
    assert not policy.needs_esd(100) and policy.step(None, 100) is None   # never reassigned
    with pytest.raises(ValueError, match="positive"):
        FixedRatioLR(tiny_llama(), LR, total_steps=10, ratios={"q": 0})


@pytest.mark.usefixtures("c4_dir", "t5_dir")
def test_sharpness_trains_and_every_group_follows_its_ratio(tmp_path, group_lrs):  # noqa: F811
    steps = 4
    argv = tiny_run_flags(tmp_path, steps=steps, lr=LR, optimizer="adamw", weight_decay=0.1,
                          lr_strategy="sharpness") + data_flags(DATA_DIR)
    assert run_main(argv) == 0
    decay = records(tmp_path, "decay")
    assert [r["step"] for r in decay] == [0]
    S = schedule(steps)
    for t in range(steps):
        for name, lr in group_lrs[t].items():
            ratio = 1.0 if name == "other" else expected_ratio(name)
            assert lr == pytest.approx(ratio * LR * S(t), rel=1e-12, abs=1e-18), (name, t)
    assert sorted(group_lrs) == list(range(steps))
