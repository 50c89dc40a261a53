"""Run under torchrun (2 CPU ranks, gloo): each rank writes the decays it would apply, and what
``distributed.full_on`` assembled from row-sharded DTensors of uneven and empty shards, and where each rank's
eigensolves fall among the sharded pass's collectives (one launch for all three)."""
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
import alphadecay  # noqa: E402
from alphadecay.distributed import full_on  # noqa: E402
from conftest import tiny_llama  # noqa: E402


def full_on_failures(rank: int) -> list[str]:
    mesh = init_device_mesh("cpu", (2,))
    failures = []
    for shape in [(6, 3), (5, 3), (1, 3), (3, 2, 2)]:       # even, uneven, rank 1 empty, a 3-D weight
        whole = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
        sharded = distribute_tensor(whole, mesh, [Shard(0)])
        for dst in (0, 1):
            got = full_on(sharded, dst)
            if rank == dst and (got is None or not torch.equal(got, whole)):
                failures.append(f"{shape} to rank {dst}: {got}")
            if rank != dst and got is not None:
                failures.append(f"{shape}: rank {rank} got a tensor meant for rank {dst}")
    return failures


def concurrent_phases(rank: int, model) -> dict:
    """sharded_weight_rows over row-sharded linear weights with a small budget (several phases): where each
    rank's compute falls in the sequence of collectives (``gather_to_owners``: one batch of transfers per
    phase, the same sequence on every rank, counted in matrices), and the rows against one process's."""
    from alphadecay import distributed as d
    from alphadecay.esd import METRICS, linear_modules, weight_metrics
    mesh = init_device_mesh("cpu", (2,))
    fulls = [m.weight.detach() for _, m in linear_modules(model)]
    pieces = [distribute_tensor(w, mesh, [Shard(0)]) for w in fulls]
    events, real_gather, real_all_reduce = [], d.gather_to_owners, d.dist.all_reduce
    gathers = [0]

    def counting_gather(ws, *a, **k):
        gathers[0] += len(ws)
        events.append(("gather", len(ws)))
        return real_gather(ws, *a, **k)

    def counting_all_reduce(*a, **k):
        events.append(("all_reduce", gathers[0]))
        return real_all_reduce(*a, **k)

    def compute(ws):
        events.append(("compute", gathers[0], len(ws)))
        return weight_metrics(ws)
    d.gather_to_owners, d.dist.all_reduce = counting_gather, counting_all_reduce
    try:
        rows = d.sharded_weight_rows(compute, pieces, [float(min(w.shape)) ** 2 * max(w.shape) for w in fulls],
                                     len(METRICS), budget_bytes=100_000)
    finally:
        d.gather_to_owners, d.dist.all_reduce = real_gather, real_all_reduce
    phases = d.gather_phases([float(min(w.shape)) ** 2 * max(w.shape) for w in fulls],
                             [w.numel() * w.element_size() for w in fulls],
                             d.assign_owners([float(min(w.shape)) ** 2 * max(w.shape) for w in fulls], 2), 2,
                             100_000)
    one = weight_metrics(fulls)
    return {"events": events, "matrices": len(fulls), "gathers": gathers[0],
            "phase_ends": [sum(len(b) for p in phases[:k + 1] for b in p) for k in range(len(phases))],
            "rows": rows.tolist(), "one_process_gap": (rows - one).nan_to_num(0.0).abs().max().item(),
            "same_nans": bool(torch.equal(rows.isnan(), one.isnan()))}


dist.init_process_group("gloo")
rank = dist.get_rank()
model = tiny_llama(layers=3)
# Simulate replicas that drifted by round-off: without agreement each rank would compute its own alphas.
with torch.no_grad():
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 1e-6 * rank)
shared = alphadecay.AlphaDecay(model, 1e-5)
shared.initial_assignment()
alone = alphadecay.AlphaDecay(model, 1e-5, distributed=False)
alone.initial_assignment()
out = {"shared": shared.decays, "alone": alone.decays,
       "analyze": {n: s["alpha"] for n, s in alphadecay.analyze(model).items()}, "full_on": full_on_failures(rank),
       "phases": concurrent_phases(rank, tiny_llama(layers=3))}
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(out, f)
dist.barrier()
dist.destroy_process_group()
