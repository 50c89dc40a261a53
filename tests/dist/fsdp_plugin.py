"""The plug-in on a model sharded with FSDP2 (fully_shard per decoder layer, then the root) in a loop of
the user's own: analyze and every strategy equal the unsharded model's, on every rank; AdamW then steps.

torchrun --nproc_per_node=2 tests/dist/fsdp_plugin.py OUT_DIR   (CPU, gloo)
"""
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import alphadecay  # noqa: E402
from conftest import tiny_llama  # noqa: E402

STRATEGIES = {"alphadecay": dict(weight_decay=0.1), "uniform": dict(weight_decay=0.1),
              "none": dict(weight_decay=0.0), "awd": dict(weight_decay=1e-3),
              "adadecay": dict(weight_decay=0.1)}


def decays(model, name, with_grads):
    strategy = alphadecay.build_strategy(name, model, **STRATEGIES[name])
    optimizer = torch.optim.AdamW(strategy.param_groups(), lr=1e-3)
    strategy.initial_assignment(optimizer)
    if with_grads is not None:
        with_grads(model)
        strategy.step(optimizer, strategy.update_every if name != "awd" else 1)
    return {g["name"]: g["weight_decay"] for g in optimizer.param_groups}, strategy, optimizer


def backward(model):
    torch.manual_seed(1)
    ids = torch.randint(0, 500, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()


def main(out):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    plain = tiny_llama(layers=3)
    sharded = tiny_llama(layers=3)
    for layer in sharded.model.layers:
        fully_shard(layer)
    fully_shard(sharded)
    assert all(alphadecay.distributed.is_sharded(p) for p in sharded.parameters())
    result = {"analyze": [alphadecay.analyze(plain, distributed=False), alphadecay.analyze(sharded)], "decays": {}}
    for name in STRATEGIES:
        result["decays"][name] = [decays(m, name, backward)[0] for m in (plain, sharded)]
    groups, strategy, optimizer = decays(sharded, "alphadecay", None)
    losses = []
    for _ in range(3):   # the user's own loop
        ids = torch.randint(0, 500, (2, 16))
        loss = sharded(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    result["losses"] = losses
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
