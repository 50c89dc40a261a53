"""Run under torchrun (2 CPU ranks, gloo): each rank writes the decays it would apply."""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
import alphadecay  # noqa: E402
from conftest import tiny_llama  # noqa: E402

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
       "analyze": {n: s["alpha"] for n, s in alphadecay.analyze(model).items()}}
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(out, f)
dist.barrier()
dist.destroy_process_group()
