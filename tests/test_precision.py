"""--dtype: pure bf16 (the paper's), bf16-mixed (float32 master weights and Adam moments) and float32, with one
meaning under DDP and FSDP2; the fused loss under autocast; DDP's buffer flag on older torch."""
import inspect
import json

import pytest
import torch

from alphadecay.training.flags.args import parse_args
from alphadecay.training.optim import build_optimizer
from alphadecay.training.parallel.precision import resolve_precision
from conftest import DATA_DIR, REPO, tiny_llama

CPU = torch.device("cpu")


def test_modes_aliases_and_defaults(monkeypatch):
    assert parse_args(["--dtype", "bf16_mixed"]).dtype == "bf16-mixed"
    assert parse_args(["--dtype", "bf16"]).dtype == "bfloat16"
    pure, mixed, full = (resolve_precision(m, CPU) for m in ("bfloat16", "bf16-mixed", "float32"))
    assert (pure.weights, pure.compute, pure.autocast_dtype(fsdp=False), pure.fsdp_param_dtype()) == \
        (torch.bfloat16, torch.bfloat16, None, None)                 # bf16 throughout: nothing to cast
    assert (mixed.weights, mixed.autocast_dtype(fsdp=False), mixed.autocast_dtype(fsdp=True),
            mixed.fsdp_param_dtype()) == (torch.float32, torch.bfloat16, None, torch.bfloat16)
    assert (full.weights, full.autocast_dtype(fsdp=False), full.fsdp_param_dtype()) == (torch.float32, None, None)
    assert resolve_precision(None, CPU).mode == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision(None, torch.device("cuda", 0)).mode == "bf16-mixed"


def _second_moment(mode: str) -> float:
    """Adam's mean second moment after 100 updates at gradient std 1e-2, then 3000 at 1e-3, with the weights
    (and so the optimizer state) in the dtype --dtype gives them."""
    weights = torch.zeros(4096, dtype=resolve_precision(mode, CPU).weights, requires_grad=True)
    optimizer = build_optimizer("adamw", [{"params": [weights], "weight_decay": 0.0}], lr=1e-6, device=CPU)
    gen = torch.Generator().manual_seed(0)
    for step in range(3100):
        std = 1e-2 if step < 100 else 1e-3
        weights.grad = (torch.randn(weights.shape, generator=gen) * std).to(weights.dtype)
        optimizer.step()
    return optimizer.state[weights]["exp_avg_sq"].float().mean().item()


def test_adam_second_moment_decays_under_bf16_mixed_and_freezes_in_pure_bf16():
    mixed, pure = _second_moment("bf16-mixed"), _second_moment("bfloat16")
    # float32: v -> 1e-6 + (9.5e-6 - 1e-6) * 0.999^3000 = 1.42e-6; bf16: 0.999 * v rounds back to v
    assert abs(mixed - 1.42e-6) < 0.1e-6, mixed
    assert pure > 5 * mixed and pure > 8e-6, (pure, mixed)


def test_fused_loss_under_autocast_keeps_float32_gradients_and_is_as_close_as_transformers():
    from test_loss import hf_loss_and_grads, max_relative_error, padded_batch

    from alphadecay.training.loss import NextTokenLoss

    model = tiny_llama()
    ids, mask = padded_batch([24, 13, 24, 3], seed=1)
    _, exact = hf_loss_and_grads(model, ids, mask)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hf = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    hf.backward()
    hf_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    loss_fn = NextTokenLoss(model, autocast=torch.bfloat16)
    loss = loss_fn(**loss_fn.inputs(ids, mask, CPU))
    loss.backward()
    ours = {k: p.grad.clone() for k, p in model.named_parameters()}
    assert loss.dtype == torch.float32 and all(g.dtype == torch.float32 for g in ours.values())
    assert abs(loss.item() - hf.item()) < 1e-2
    error = max_relative_error(ours, exact)
    assert 1e-4 < error < 2 * max_relative_error(hf_grads, exact) + 1e-3    # bf16 matmuls really ran


def test_ddp_skips_the_buffer_broadcast_on_torch_without_forward_sync_buffers(monkeypatch):
    from alphadecay.training.parallel import wrap as parallel

    assert parallel._no_buffer_sync() == {"forward_sync_buffers": False}        # torch 2.13
    real = inspect.signature(parallel.DDP.__init__)
    older = real.replace(parameters=[p for p in real.parameters.values() if p.name != "forward_sync_buffers"])
    monkeypatch.setattr(parallel.inspect, "signature", lambda fn: older if fn is parallel.DDP.__init__ else real)
    assert parallel._no_buffer_sync() == {"broadcast_buffers": False}


def _moment_dtypes(checkpoint) -> set:
    """The dtypes of Adam's moments in a checkpoint: training_state.pt (DDP) or the DCP folder (FSDP2)."""
    if (checkpoint / "optimizer").is_dir():
        from torch.distributed.checkpoint import FileSystemReader
        meta = FileSystemReader(str(checkpoint / "optimizer")).read_metadata().state_dict_metadata
        return {m.properties.dtype for k, m in meta.items() if k.endswith(("exp_avg", "exp_avg_sq"))}
    state = torch.load(checkpoint / "training_state.pt", weights_only=True)["optimizer"]["state"]
    return {s[k].dtype for s in state.values() for k in ("exp_avg", "exp_avg_sq")}


@pytest.mark.parametrize("dtype,expected", [("bfloat16", torch.bfloat16), ("bf16-mixed", torch.float32)])
def test_ddp_and_fsdp_checkpoints_hold_adam_moments_of_the_same_dtype(tmp_path, dtype, expected):
    from safetensors.torch import load_file

    from trainutil import data_flags, run_cli, tiny_run_flags

    if not (DATA_DIR / "tokenizers" / "t5-base").exists():
        pytest.skip("T5 tokenizer and C4 sample not found (set ALPHADECAY_DATA_DIR)")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**json.loads((REPO / "configs" / "llama_9m.json").read_text()),
                                  "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                                  "num_hidden_layers": 2}))
    for layout, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        run_cli(tiny_run_flags(tmp_path / layout, steps=2, batch_size=2, max_length=32, target_eval_tokens=64,
                               model_config=config, save_every=0, dtype=dtype) + data_flags(DATA_DIR) + extra,
                nproc=2)
    for layout in ("ddp", "fsdp"):
        checkpoint = tmp_path / layout / "model_2"
        assert _moment_dtypes(checkpoint) == {expected}, layout
        assert {t.dtype for t in load_file(checkpoint / "model.safetensors").values()} == {expected}, layout
    assert (tmp_path / "fsdp" / "model_2" / "optimizer").is_dir()
