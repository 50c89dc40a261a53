"""The accelerator paths: bf16 weights and autocast-free bf16 compute, bf16-mixed (autocast), fused AdamW, SDPA, torch.compile, a
one-rank process group (NCCL on CUDA), FSDP2 with bf16 mixed precision.

They run on CUDA (bench/gpu_suite.sh runs them there) and skip without it; ``ALPHADECAY_TEST_DEVICE=cpu``
runs the same code on the CPU (the suite's SMOKE mode does, with the compile backend ``aot_eager``
instead of inductor so that no C++ toolchain is needed).
"""
import os
from pathlib import Path
import socket

import pytest
import torch
import torch.distributed as dist

import alphadecay
from alphadecay.training.loss import NextTokenLoss
from alphadecay.training.optim import build_optimizer
from alphadecay.training.parallel.wrap import parallelize
from conftest import tiny_llama

DEVICE = torch.device(os.environ.get("ALPHADECAY_TEST_DEVICE", "cuda"))
COMPILE_BACKEND = os.environ.get("ALPHADECAY_COMPILE_BACKEND", "inductor")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")]


def batch(n=4, length=32, vocab=500):
    torch.manual_seed(0)
    ids = torch.randint(2, vocab, (n, length))
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0                       # one right-padded row
    return ids.masked_fill(mask == 0, 0), mask


def train_steps(loss_fn, optimizer, steps=3):
    ids, mask = batch()
    losses = []
    for _ in range(steps):
        loss = loss_fn(**loss_fn.inputs(ids, mask, DEVICE))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_pure_low_precision_training_with_fused_adamw(dtype):
    model = tiny_llama().to(DEVICE, dtype)
    assert model.config._attn_implementation == "sdpa"
    policy = alphadecay.AlphaDecay(model, weight_decay=0.1, update_every=2)
    optimizer = build_optimizer("adamw", policy.param_groups(), lr=1e-3, device=DEVICE)
    assert optimizer.defaults["fused"] is True
    policy.initial_assignment(optimizer)
    losses = train_steps(NextTokenLoss(model), optimizer)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert all(p.dtype == dtype and p.device.type == DEVICE.type for p in model.parameters())


def test_bf16_mixed_float32_master_weights_under_autocast_with_fused_adamw():
    """--dtype bf16-mixed under DDP: float32 weights, gradients and Adam moments, bf16 matmuls (autocast)."""
    from alphadecay.training.parallel.precision import resolve_precision

    precision = resolve_precision("bf16-mixed", DEVICE)
    model = tiny_llama().to(DEVICE, precision.weights)
    optimizer = build_optimizer("adamw", [{"params": list(model.parameters())}], lr=1e-3, device=DEVICE)
    loss_fn = NextTokenLoss(model, autocast=precision.autocast_dtype(fsdp=False))
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        assert model.model.layers[0].mlp.up_proj(torch.ones(1, 64, device=DEVICE)).dtype == torch.bfloat16
    losses = train_steps(loss_fn, optimizer)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    state = next(iter(optimizer.state.values()))
    assert state["exp_avg_sq"].dtype == torch.float32 and all(p.dtype == torch.float32 for p in model.parameters())


def test_fused_loss_equals_transformers_loss_in_bf16():
    model = tiny_llama().to(DEVICE, torch.bfloat16)
    ids, mask = batch()
    loss_fn = NextTokenLoss(model)
    ours = loss_fn(**loss_fn.inputs(ids, mask, DEVICE)).float()
    labels = ids.masked_fill(mask == 0, -100).to(DEVICE)
    reference = model(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE), labels=labels).loss.float()
    assert torch.allclose(ours, reference, rtol=2e-2)


def test_compiled_decoder_matches_eager():
    model = tiny_llama().to(DEVICE)
    loss_fn = NextTokenLoss(model)
    ids, mask = batch()
    eager = loss_fn(**loss_fn.inputs(ids, mask, DEVICE)).item()
    loss_fn.compile(backend=COMPILE_BACKEND)
    compiled = loss_fn(**loss_fn.inputs(ids, mask, DEVICE))
    compiled.backward()
    assert abs(compiled.item() - eager) < 1e-4 * abs(eager)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.fixture
def one_rank_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if DEVICE.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            device_id=DEVICE if DEVICE.type == "cuda" else None)
    yield backend
    dist.destroy_process_group()


def test_one_rank_process_group_analysis_and_fsdp_bf16(one_rank_group):
    model = tiny_llama().float().to(DEVICE)
    alone = alphadecay.analyze(model, distributed=False)
    assert alphadecay.analyze(model) == alone                  # through the process group, same numbers
    net = parallelize(NextTokenLoss(model), world_size=1, device=DEVICE, fsdp=True, param_dtype=torch.bfloat16)
    assert alphadecay.distributed.has_sharded_params(net.loss) and all(p.dtype == torch.float32 for p in model.parameters())   # float32 shards
    sharded = alphadecay.analyze(model)
    assert all(abs(sharded[n]["alpha"] - alone[n]["alpha"]) <= 1e-6 * abs(alone[n]["alpha"]) for n in alone)
    policy = alphadecay.AlphaDecay(model, weight_decay=0.1)
    optimizer = build_optimizer("adamw", policy.param_groups(), lr=1e-3, device=DEVICE)
    policy.initial_assignment(optimizer)
    losses = train_steps(net.forward, optimizer)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_fsdp2_meta_start_compiled_blocks_and_its_memory(one_rank_group, monkeypatch):
    """The --fsdp start as the loop makes it: built on the meta device, each decoder block compiled then sharded,
    the shard materialised on the device. Same weights and loss as the eager unsharded build; on CUDA the
    device never held more than the model plus one tensor (no whole-model copy before sharding)."""
    import functools

    from alphadecay.training.model import build_model, build_model_on_meta

    # The loop compiles with the default backend; the suite's choice (aot_eager in SMOKE) reaches it here.
    monkeypatch.setattr(torch.nn.Module, "compile", functools.partialmethod(torch.nn.Module.compile,
                                                                            backend=COMPILE_BACKEND))
    config = str(Path(__file__).resolve().parents[1] / "configs" / "llama_9m.json")
    reference = build_model(config, dtype=torch.float32, device=DEVICE, seed=3)
    want = NextTokenLoss(reference)
    ids, mask = batch(vocab=reference.config.vocab_size)
    eager = want(**want.inputs(ids, mask, DEVICE)).item()
    ref_state = {k: v.detach().cpu() for k, v in reference.state_dict().items()}
    del reference, want
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(DEVICE)
        before = torch.cuda.memory_allocated(DEVICE)
    model, deferred = build_model_on_meta(config, dtype=torch.float32, seed=3)
    loss_fn = NextTokenLoss(model)
    net = parallelize(loss_fn, world_size=1, device=DEVICE, compile=True, fsdp=True)
    deferred.materialize(loss_fn, model, DEVICE)
    if DEVICE.type == "cuda":
        grown = torch.cuda.max_memory_allocated(DEVICE) - before
        model_bytes = sum(v.numel() * v.element_size() for v in ref_state.values())
        largest = max(v.numel() * v.element_size() for v in ref_state.values())
        assert grown <= model_bytes + largest + (16 << 20), (grown, model_bytes)
    got = {k: alphadecay.distributed.local_part(v).detach().cpu() for k, v in model.state_dict().items()}
    assert set(got) == set(ref_state) and all(torch.equal(got[k], ref_state[k]) for k in ref_state)
    from torch._dynamo.utils import counters
    counters.clear()
    compiled = net.forward(**loss_fn.inputs(ids, mask, DEVICE)).item()
    assert counters["stats"]["unique_graphs"] > 0       # the blocks ran compiled
    assert abs(compiled - eager) <= 1e-4 * abs(eager), (compiled, eager)
