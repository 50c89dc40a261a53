"""Muon under FSDP2 (fully_shard per decoder layer, then the root; 2 gloo ranks, float32) against single-process
torch.optim.Muon: the same weights and momentum after 5 updates on the same batches (Uniform, and AlphaDecay's
per-module decays), and bit for bit the same step when both see the same gradients (uneven row shards, other
layouts, per-group lr and decay). With float32 Newton-Schulz (``ns_dtype="float32"``) FSDP2 against one process
on the whole batch, one backward.

torchrun --nproc_per_node=2 tests/dist/muon_fsdp.py OUT_DIR   (CPU, gloo)
"""
import copy
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.optim._muon import _zeropower_via_newtonschulz

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import alphadecay  # noqa: E402
from alphadecay.muon_fsdp import ShardedMuon  # noqa: E402
from alphadecay.training.optim import build_optimizer, build_scheduler  # noqa: E402
from conftest import tiny_llama  # noqa: E402

CPU = torch.device("cpu")
STRATEGIES = {"uniform": {}, "alphadecay": {"update_every": 2, "eigs_thresh": 1}}


def setup(model, name, ns_dtype="bfloat16"):
    policy = alphadecay.build_strategy(name, model, 0.1, **STRATEGIES[name])
    opt = build_optimizer("muon", policy.param_groups(), lr=3e-3, device=CPU, model=model,
                          muon={"muon_lr": 6e-3, "ns_dtype": ns_dtype})
    policy.initial_assignment(opt)
    return policy, opt, build_scheduler(opt, "cosine", total=8, warmup=2, min_ratio=0.1)


def train_both(name, steps=5):
    """Three runs of one tiny LLaMA on the same batches: FSDP2 (each rank takes half of each batch), single-process
    torch Muon on the mean of the two halves' gradients (``halves``: the same sum as FSDP2's reduce-scatter, so
    the same gradients bit for bit), and single-process torch Muon on the whole batch at once (``plain``); then
    the three again with float32 Newton-Schulz (``fsdp32``, ``halves32``, ``plain32``)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    plain = tiny_llama()
    halves, sharded, plain32, halves32, sharded32 = (copy.deepcopy(plain) for _ in range(5))
    for model in (sharded, sharded32):
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    runs = {k: (m, *setup(m, name, "float32" if k.endswith("32") else "bfloat16")) for k, m in
            (("plain", plain), ("halves", halves), ("fsdp", sharded),
             ("plain32", plain32), ("halves32", halves32), ("fsdp32", sharded32))}
    assert type(runs["fsdp"][2].muon) is ShardedMuon and type(runs["plain"][2].muon) is torch.optim.Muon
    assert all(g["ns_dtype"] == "float32" for k in ("plain32", "halves32", "fsdp32")
               for g in runs[k][2].muon.param_groups)
    losses = {k: [] for k in runs}
    for t in range(steps):
        ids = torch.randint(0, 500, (2 * world, 16), generator=torch.Generator().manual_seed(t))
        for key, (model, policy, opt, sched) in runs.items():
            if key.startswith("fsdp"):   # equal sizes: FSDP2's mean of the ranks' means is the whole batch's mean
                loss = model(input_ids=ids.chunk(world)[rank], labels=ids.chunk(world)[rank]).loss
                loss.backward()
                loss = loss.detach().clone()
                dist.all_reduce(loss)
                loss /= world
            elif key.startswith("halves"):
                loss = sum(model(input_ids=x, labels=x).loss for x in ids.chunk(world)) / world
                loss.backward()
            else:   # plain, plain32: the whole batch, one backward
                loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
            losses[key].append(loss.item())
        for model, policy, opt, sched in runs.values():
            policy.step(opt, t)
            opt.step()
            sched.step()
            opt.zero_grad()

    def gap(a, b):
        (ma, _, oa, _), (mb, _, ob, _) = runs[a], runs[b]
        full = lambda x: x.full_tensor() if alphadecay.distributed.is_sharded(x) else x
        pairs = list(zip(ma.parameters(), mb.parameters()))
        index = {p: q for p, q in pairs}
        states = [(s, ib.state[index[p]][k]) for ia, ib in zip(oa.optimizers, ob.optimizers)   # momentum, moments
                  for p, st in ia.state.items() for k, s in st.items() if s.ndim]
        wd = [{g["name"]: g["weight_decay"] for g in o.muon.param_groups} for o in (oa, ob)]
        muon_held = {id(p) for g in oa.muon.param_groups for p in g["params"]}
        return {"weights": max((full(p) - full(q)).abs().max().item() for p, q in pairs),
                "muon_weights": max((full(p) - full(q)).abs().max().item() for p, q in pairs if id(p) in muon_held),
                "states": max((full(x) - full(y)).abs().max().item() for x, y in states), "n_states": len(states),
                "decays_equal": wd[0] == wd[1]}

    opt = runs["fsdp"][2]
    return {"halves": gap("halves", "fsdp"), "plain": gap("plain", "fsdp"), "plain_halves": gap("plain", "halves"),
            "float32": gap("plain32", "fsdp32"), "float32_halves": gap("halves32", "fsdp32"),
            "float32_plain_halves": gap("plain32", "halves32"),
            "losses": losses, "muon_states": len(opt.muon.state),
            "distinct_decays": len({g["weight_decay"] for g in opt.muon.param_groups})}


def same_gradients(steps=3):
    """ShardedMuon against torch.optim.Muon with the very same gradients: equal bit for bit?"""
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    layouts = [((172, 64), Shard(0)), ((5, 7), Shard(0)), ((3, 9), Shard(0)), ((64, 172), Shard(0)),
               ((6, 4), Shard(1)), ((7, 5), Replicate())]
    torch.manual_seed(5)
    fulls = [torch.randn(shape) for shape, _ in layouts]
    plain = [torch.nn.Parameter(f.clone()) for f in fulls]
    sharded = [torch.nn.Parameter(distribute_tensor(f.clone(), mesh, [pl], src_data_rank=None))
               for f, (_, pl) in zip(fulls, layouts)]
    groups = lambda ps: [{"params": ps[:3], "lr": 1e-2, "weight_decay": 0.1},
                         {"params": ps[3:], "lr": 3e-3, "weight_decay": 0.5}]
    ref = torch.optim.Muon(groups(plain), adjust_lr_fn="match_rms_adamw")
    opt = ShardedMuon(groups(sharded), adjust_lr_fn="match_rms_adamw")
    for _ in range(steps):
        for p, q, (_, pl) in zip(plain, sharded, layouts):
            g = torch.randn(p.shape)
            p.grad, q.grad = g, distribute_tensor(g, mesh, [pl], src_data_rank=None)
        ref.step()
        opt.step()
    equal = [torch.equal(q.full_tensor(), p) for p, q in zip(plain, sharded)]
    moved = [not torch.equal(p, f) for p, f in zip(plain, fulls)]
    # What the test must tell apart: Newton-Schulz of a rank's rows is not the rows of the whole matrix's.
    g = torch.randn(172, 64)
    rows = _zeropower_via_newtonschulz(g.chunk(2)[0], (3.4445, -4.7750, 2.0315), 5, 1e-7)
    whole = _zeropower_via_newtonschulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7).chunk(2)[0]
    return {"equal": equal, "moved": moved, "shardwise_gap": (rows.float() - whole.float()).abs().max().item()}


def main(out):
    dist.init_process_group("gloo")
    result = {"same_gradients": same_gradients()}
    for name in STRATEGIES:
        result[name] = train_both(name)
    with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
