"""Pure bf16 under DDP and FSDP2 (2 gloo ranks): the decoupled decay reaches the hidden matrices for AdamW and
Muon (both Newton-Schulz dtypes), the rotary tables of the meta-device start are float32, and the clipping norm
of bf16 (DTensor) gradients is float32 and exact.

torchrun --nproc_per_node=2 tests/dist/bf16_decay.py OUT_DIR
Writes OUT_DIR/rank<r>.json: {"delivered": {layout/optimizer: share}, "norm_error": {layout: relative error},
"rotary": {name: [dtype, equal to the unsharded build]}}.

The measure: the same 16 updates on the same batches from the same bf16 start with wd 1.0 and wd 0; the share of
the implied shrink (1 - (1 - lr wd)^16 of the weights) that the difference of the two runs shows along the
weights (the gradient noise between the runs is almost orthogonal to them).
"""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
from alphadecay.distributed import is_sharded  # noqa: E402
from alphadecay.muon import hidden_matrices  # noqa: E402
from alphadecay.training.loss import NextTokenLoss  # noqa: E402
from alphadecay.training.model import build_model, build_model_on_meta  # noqa: E402
from alphadecay.training.optim import build_optimizer  # noqa: E402
from alphadecay.training.parallel.wrap import parallelize  # noqa: E402
from alphadecay.training.update import clip_gradients  # noqa: E402

CPU = torch.device("cpu")
STEPS, LR = 16, 1e-3
TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
        "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 128, "vocab_size": 500,
        "rms_norm_eps": 1e-6, "pad_token_id": 0, "tie_word_embeddings": False, "use_cache": False}
OPTIMIZERS = {"adamw": ("adamw", {}), "muon": ("muon", {}), "muon-ns-float32": ("muon", {"ns_dtype": "float32"})}


def build(config, layout):
    if layout == "fsdp":
        model, deferred = build_model_on_meta(config, dtype=torch.bfloat16, seed=1)
    else:
        model, deferred = build_model(config, dtype=torch.bfloat16, device=CPU, seed=1), None
    loss_fn = NextTokenLoss(model)
    net = parallelize(loss_fn, world_size=2, device=CPU, fsdp=layout == "fsdp")
    if deferred is not None:
        deferred.materialize(loss_fn, model, CPU, weights=True)
    return model, loss_fn, net


def full(t):
    return (t.full_tensor() if is_sharded(t) else t).detach().double()


def train(config, layout, optimizer, wd, norm_errors):
    model, loss_fn, net = build(config, layout)
    name, muon = OPTIMIZERS[optimizer]
    opt = build_optimizer(name, [{"params": list(model.parameters()), "weight_decay": wd, "name": "all"}], lr=LR,
                          device=CPU, model=model, muon=muon)
    rank = dist.get_rank()
    for t in range(STEPS):
        ids = torch.randint(1, 500, (4, 32), generator=torch.Generator().manual_seed(t))[2 * rank:2 * rank + 2]
        net.forward(**loss_fn.inputs(ids, torch.ones_like(ids), CPU)).backward()
        if t == 0:
            grads = [full(p.grad) for p in model.parameters()]
            exact = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item()
            norm = clip_gradients(list(model.parameters()), 1.0)
            assert norm.dtype == torch.float32 and not is_sharded(norm), (norm.dtype, type(norm))
            norm_errors[layout] = abs(norm.item() / exact - 1)
        else:
            clip_gradients(list(model.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, [full(w) for w in hidden_matrices(model)]


def main(out):
    dist.init_process_group("gloo")
    os.makedirs(out, exist_ok=True)
    config = os.path.join(out, "tiny.json")
    if dist.get_rank() == 0:
        with open(config, "w") as f:
            json.dump(TINY, f)
    dist.barrier()
    reference = build_model(config, dtype=torch.bfloat16, device=CPU, seed=1)
    report = {"delivered": {}, "norm_error": {}, "rotary": {}}
    shrink = 1 - (1 - LR * 1.0) ** STEPS
    for layout in ("ddp", "fsdp"):
        for optimizer in OPTIMIZERS:
            model, decayed = train(config, layout, optimizer, 1.0, report["norm_error"])
            _, kept = train(config, layout, optimizer, 0.0, report["norm_error"])
            along = sum(((k - d) * k).sum() for k, d in zip(kept, decayed))
            report["delivered"][f"{layout}/{optimizer}"] = float(along / (shrink * sum((k * k).sum() for k in kept)))
        if layout == "fsdp":
            for name, buffer in model.named_buffers():
                report["rotary"][name] = [str(buffer.dtype), torch.equal(buffer, reference.get_buffer(name))]
    with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
