"""Run under torchrun (2 CPU ranks, gloo): each rank writes the decays it would apply, and what
``distributed.full_on`` assembled from row-sharded DTensors of uneven and empty shards (one launch for both)."""
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
       "analyze": {n: s["alpha"] for n, s in alphadecay.analyze(model).items()}, "full_on": full_on_failures(rank)}
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(out, f)
dist.barrier()
dist.destroy_process_group()
