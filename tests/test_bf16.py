"""Pure bf16 (--dtype bfloat16) trains the method, not another one: decoupled decay reaches bf16 weights on every
optimizer path, Muon's momentum survives nesterov=False, the rotary tables stay float32, the clipping norm is
accumulated in float32. The 2-rank DDP and FSDP2 paths: tests/dist/bf16_decay.py (test_bf16_decay_under_ddp_and_fsdp2).

The measure is bench/bf16_decay.py's ``delivered`` (16 updates at lr 1e-3, wd 1.0 against 0, on a fixed sequence of
gradients, bf16 against float64 weights): lr x wd = 1e-3 is below 2**-9, where ``p * (1 - lr * wd)`` alone
rounds back to ``p`` in bf16.
"""
import json
import sys

import pytest
import torch

from alphadecay.training.flags.args import parse_args
from alphadecay.training.optim import build_optimizer, strategy_from_args
from alphadecay.training.update import clip_gradients
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from bf16_decay import delivered, paths  # noqa: E402

CPU = torch.device("cpu")
LR = 1e-3
PATHS = paths(LR)
OURS = {name: make for name, make in PATHS.items() if name.startswith("ours")}


@pytest.mark.parametrize("path", list(OURS))
def test_decay_reaches_bf16_weights_on_every_optimizer_path(path):
    share = delivered(OURS[path])
    assert 0.5 <= share <= 1.5, f"{path}: {share:.1%} of the decay reached the bf16 weights"


@pytest.mark.parametrize("path", ["release: torch AdamW, foreach", "release: torch AdamW, for-loop", "torch Muon"])
def test_the_unfused_update_order_rounds_the_decay_away(path):
    """What the measure sees on the release's update order (model in bf16, torch's AdamW with foreach, as its
    torchrun_main builds it on CUDA) and on torch's own Muon: nothing."""
    assert abs(delivered(PATHS[path])) < 0.05


def test_per_module_decays_of_alphadecay_and_llr_reach_bf16_weights_under_muon():
    """Combined(AlphaDecay, LLR), built from the flags: each module's own decay and lr are what the bf16 step uses."""
    def flags(wd):
        return parse_args(["--model_config", str(REPO / "configs" / "llama_9m.json"), "--optimizer", "muon",
                           "--lr", str(LR), "--weight_decay", str(wd), "--use_modulewise_wd",
                           "--alpha_positively_with_WD", "--use_modulewise_lr", "--num_training_steps", "16",
                           "--warmup_steps", "0", "--dtype", "bfloat16"])
    strategies, zero = {}, set()

    def groups(model, wd):   # the wd-0 run: the same policy and lrs, its decays set to 0 once assigned
        strategies[id(model)] = strategy_from_args(flags(1.0), model)
        if wd == 0:
            zero.add(id(model))
        return strategies[id(model)].param_groups()

    def make(model, param_groups):
        optimizer = build_optimizer("muon", param_groups, lr=LR, device=CPU, model=model)
        strategies[id(model)].initial_assignment(optimizer)
        decays = {g["weight_decay"] for g in optimizer.muon.param_groups}
        assert len(decays) > 1, decays                      # module-wise decays written into the Muon groups
        assert len({g["lr"] for g in optimizer.muon.param_groups}) > 1     # and LLR's module-wise lrs
        for group in optimizer.param_groups if id(model) in zero else ():
            group["weight_decay"] = 0.0
        return optimizer

    share = delivered(make, groups=groups)
    assert 0.5 <= share <= 1.5, share


def test_muon_momentum_survives_nesterov_false_in_bf16():
    """torch's Muon normalises its own momentum buffer in place when nesterov=False and the weights are bf16
    (``grad.bfloat16()`` is the buffer itself): the buffer's norm is Newton-Schulz's 1 after one step. Ours keeps
    the momentum, 0.05 * the first gradient."""
    def buffer_after_one_step(make):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(32, 16).bfloat16())
        optimizer = make([w])
        w.grad = (torch.randn(32, 16) * 3).bfloat16()
        optimizer.step()
        return optimizer.state[w]["momentum_buffer"].float(), w.grad.float()

    torch_buf, grad = buffer_after_one_step(lambda p: torch.optim.Muon(p, lr=LR, nesterov=False))
    assert abs(torch_buf.norm().item() - 1.0) < 1e-2          # the bug this works around (torch 2.13)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32, bias=False))

    def ours(params):
        model[0].weight = params[0]
        return build_optimizer("muon", [{"params": params, "weight_decay": 0.0}], lr=LR, device=CPU,
                               model=torch.nn.ModuleDict({"body": model, "lm_head": torch.nn.Linear(32, 4)}),
                               muon={"nesterov": False}).muon
    our_buf, grad = buffer_after_one_step(ours)
    torch.testing.assert_close(our_buf, 0.05 * grad, rtol=1e-2, atol=1e-3)


def test_clipping_norm_of_bf16_gradients_is_accumulated_in_float32():
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(100, 100, dtype=torch.bfloat16)) for _ in range(50)]
    for p in params:
        p.grad = (torch.randn(100, 100, generator=gen) * 3).bfloat16()
    exact = torch.linalg.vector_norm(torch.cat([p.grad.double().flatten() for p in params])).item()
    torchs = torch.nn.utils.get_total_norm([p.grad for p in params]).item()
    ours = clip_gradients(params, 1.0)
    assert ours.dtype == torch.float32 and abs(ours.item() / exact - 1) < 1e-5
    assert abs(torchs / exact - 1) > 1e-3                     # torch's rounds each tensor's norm to bf16
    clipped = torch.linalg.vector_norm(torch.cat([p.grad.double().flatten() for p in params])).item()
    assert abs(clipped - 1.0) < 1e-2


def test_rotary_tables_stay_float32_under_bf16():
    from alphadecay.training.model import build_model, build_model_on_meta

    config = str(REPO / "configs" / "llama_9m.json")
    full = build_model(config, dtype=torch.float32, device=CPU, seed=1)
    pure = build_model(config, dtype=torch.bfloat16, device=CPU, seed=1)
    meta, _ = build_model_on_meta(config, dtype=torch.bfloat16, seed=1)
    assert {p.dtype for p in pure.parameters()} == {p.dtype for p in meta.parameters()} == {torch.bfloat16}
    for name, buffer in full.named_buffers():
        assert "inv_freq" in name
        assert pure.get_buffer(name).dtype == meta.get_buffer(name).dtype == torch.float32, name
        assert torch.equal(pure.get_buffer(name), buffer), name


def test_no_fused_kernel_and_bf16_weights_is_refused(monkeypatch):
    from alphadecay.errors import ConfigError
    from alphadecay.training import optim

    monkeypatch.setattr(optim, "_get_fused_kernels_supported_devices", lambda: ["cuda"])
    w = torch.nn.Parameter(torch.zeros(4, 4, dtype=torch.bfloat16))
    with pytest.raises(ConfigError, match="bf16-mixed"):
        build_optimizer("adamw", [{"params": [w], "weight_decay": 0.1}], lr=LR, device=CPU)
    full = torch.nn.Parameter(torch.zeros(4, 4))
    assert build_optimizer("adamw", [{"params": [full], "weight_decay": 0.1}], lr=LR, device=CPU).defaults["foreach"]


def test_bf16_decay_under_ddp_and_fsdp2(tmp_path):
    import forklaunch

    forklaunch.run_two_ranks(REPO / "tests" / "dist" / "bf16_decay.py", tmp_path)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert reports[0] == reports[1]                                     # every rank measured the same weights
    delivered = reports[0]["delivered"]
    assert set(delivered) == {f"{layout}/{opt}" for layout in ("ddp", "fsdp")
                              for opt in ("adamw", "muon", "muon-ns-float32")}
    assert all(0.5 <= share <= 1.5 for share in delivered.values()), delivered
    assert all(error < 1e-5 for error in reports[0]["norm_error"].values()), reports[0]["norm_error"]
    assert reports[0]["rotary"] and all(v == ["torch.float32", True] for v in reports[0]["rotary"].values())


def _bf16_run(save, steps=2, **over):
    from alphadecay.training.loop import train
    from alphadecay.training.flags.args import parse_args as parse
    from trainutil import data_flags, tiny_run_flags

    from conftest import DATA_DIR
    if not (DATA_DIR / "tokenizers" / "t5-base").exists():
        pytest.skip("T5 tokenizer and C4 sample not found (set ALPHADECAY_DATA_DIR)")
    return train(parse(tiny_run_flags(save, steps=steps, dtype="bfloat16", **over) + data_flags(DATA_DIR)))


def test_exported_bf16_checkpoint_reloads_with_the_trained_logits(tmp_path):
    """from_pretrained rebuilds the rotary tables in float32 whatever the dtype: with bf16 tables in training the
    reloaded model would score another positional encoding (0.24 rad of rotation apart at position 64)."""
    from transformers import AutoModelForCausalLM

    result = _bf16_run(tmp_path / "run", max_length=64)
    trained = result["model"].eval()
    ids = torch.randint(2, 32000, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        for dtype in ("auto", torch.bfloat16):
            loaded = AutoModelForCausalLM.from_pretrained(result["checkpoint"], dtype=dtype).eval()
            assert loaded.dtype == torch.bfloat16 and loaded.model.rotary_emb.inv_freq.dtype == torch.float32
            assert torch.equal(loaded(input_ids=ids).logits, expected), dtype


def test_a_checkpoint_written_with_bf16_rotary_tables_still_resumes(tmp_path, monkeypatch):
    """Before the fix the whole model was cast (buffers too); the tables are not saved (non-persistent), so such a
    checkpoint resumes and trains on with float32 tables."""
    from alphadecay.training import model as model_module

    with monkeypatch.context() as old:
        old.setattr(model_module, "cast_parameters", lambda model, dtype: model.to(dtype=dtype))
        first = _bf16_run(tmp_path / "run", steps=2)
        assert first["model"].model.rotary_emb.inv_freq.dtype == torch.bfloat16     # the old behaviour
    resumed = _bf16_run(tmp_path / "run", steps=4, continue_from=first["checkpoint"])
    assert resumed["update_step"] == 4 and resumed["model"].model.rotary_emb.inv_freq.dtype == torch.float32

