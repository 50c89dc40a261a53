"""--compile under FSDP2 (2 ranks, gloo): each decoder block compiled, then sharded; a few AdamW updates give
the eager run's losses. The backend is ALPHADECAY_COMPILE_BACKEND's (the suite's: inductor, aot_eager in smoke).

torchrun --nproc_per_node=2 tests/dist/fsdp_compile.py OUT_DIR CONFIG.json
"""
import functools
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
from alphadecay.training.loss import NextTokenLoss  # noqa: E402
from alphadecay.training.model import build_model_on_meta  # noqa: E402
from alphadecay.training.parallel.wrap import decoder_layers, parallelize  # noqa: E402

CPU = torch.device("cpu")
BACKEND = os.environ.get("ALPHADECAY_COMPILE_BACKEND", "inductor")


def losses(config, compile: bool, rank: int) -> list[float]:
    model, deferred = build_model_on_meta(config, dtype=torch.float32, seed=5)
    loss_fn = NextTokenLoss(model)
    net = parallelize(loss_fn, world_size=2, device=CPU, fsdp=True, compile=compile)
    deferred.materialize(loss_fn, model, CPU)
    compiled = [getattr(layer, "_compiled_call_impl", None) is not None for layer in decoder_layers(model)]
    assert all(compiled) if compile else not any(compiled), compiled
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.Generator().manual_seed(rank)
    out = []
    for _ in range(3):
        ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=data)
        mask = torch.ones_like(ids)
        mask[1, 12:] = 0                       # a padded row: the mask path as training batches have it
        loss = net.forward(**net.loss.inputs(ids, mask, CPU))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        out.append(loss.item())
    return out


def main(out, config):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.nn.Module.compile = functools.partialmethod(torch.nn.Module.compile, backend=BACKEND)
    from torch._dynamo.utils import counters

    result = {"eager": losses(config, False, rank), "compiled": losses(config, True, rank), "backend": BACKEND,
              "graphs": counters["stats"]["unique_graphs"]}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
