"""Run under torchrun (2 CPU ranks, gloo): full_on of row-sharded DTensors of uneven and empty shards."""
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from alphadecay.distributed import full_on  # noqa: E402

dist.init_process_group("gloo")
rank = dist.get_rank()
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
print("FAILURES" if failures else "OK", failures, flush=True)
dist.destroy_process_group()
sys.exit(1 if failures else 0)
