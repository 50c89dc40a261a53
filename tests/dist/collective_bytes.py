"""Under torchrun: a real training run (loop.main) with torch.distributed's collectives wrapped to add up the bytes
each rank passes in (all-gather: input; reduce-scatter: the full input; all-reduce, broadcast: the tensor;
point-to-point: what it sends), from the start of update 2 to the start of update 4. Writes this rank's counts.

    collective_bytes.py OUT_JSON -- <torchrun_main.py flags>
DDP's reducer calls the process group directly, so its buckets are routed through dist.all_reduce by the default
allreduce comm hook (the same division and sum as DDP's built-in reduction)."""
import json
import os
import sys

import torch.distributed as dist

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
from alphadecay.training import loop  # noqa: E402
from alphadecay.training.callbacks import Callback  # noqa: E402

out, argv = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
counts = {"active": False, "bytes": {}, "calls": {}}
_depth = [0]


def _nbytes(t):
    return t.numel() * t.element_size()


INPUT = {  # name -> the bytes a rank passes in, from the call's positional/keyword arguments
    "all_gather_single": lambda a, k: _nbytes(k.get("input_tensor", a[1] if len(a) > 1 else None)),
    "all_gather_into_tensor": lambda a, k: _nbytes(k.get("input_tensor", a[1] if len(a) > 1 else None)),
    "all_gather": lambda a, k: _nbytes(k.get("tensor", a[1] if len(a) > 1 else None)),
    "reduce_scatter_single": lambda a, k: _nbytes(k.get("input", a[1] if len(a) > 1 else None)),
    "reduce_scatter_tensor": lambda a, k: _nbytes(k.get("input", a[1] if len(a) > 1 else None)),
    "reduce_scatter": lambda a, k: sum(map(_nbytes, k.get("input_list", a[1] if len(a) > 1 else []))),
    "all_reduce": lambda a, k: _nbytes(k.get("tensor", a[0] if a else None)),
    "broadcast": lambda a, k: _nbytes(k.get("tensor", a[0] if a else None)),
    "reduce": lambda a, k: _nbytes(k.get("tensor", a[0] if a else None)),
    "gather": lambda a, k: _nbytes(k.get("tensor", a[0] if a else None)),
    "all_to_all_single": lambda a, k: _nbytes(k.get("input", a[1] if len(a) > 1 else None)),
    "batch_isend_irecv": lambda a, k: sum(_nbytes(op.tensor) for op in a[0] if op.op is dist.isend),
}


def _wrap(name, real):
    def counting(*args, **kwargs):
        outer = _depth[0] == 0   # all_gather_into_tensor calls all_gather_single: count the outermost call
        _depth[0] += 1
        try:
            if outer and counts["active"]:
                counts["bytes"][name] = counts["bytes"].get(name, 0) + INPUT[name](args, kwargs)
                counts["calls"][name] = counts["calls"].get(name, 0) + 1
            return real(*args, **kwargs)
        finally:
            _depth[0] -= 1
    return counting


for _name in INPUT:
    if hasattr(dist, _name):
        setattr(dist, _name, _wrap(_name, getattr(dist, _name)))


class Window(Callback):
    def on_update_start(self, state, stop):
        counts["active"] = state.update_step in (1, 2)
        if state.update_step == 3:
            with open(out.replace("RANK", os.environ["RANK"]), "w") as f:
                json.dump({"bytes": counts["bytes"], "calls": counts["calls"]}, f)


_parallelize = loop.parallelize


def _with_hook(*args, **kwargs):
    net = _parallelize(*args, **kwargs)
    if hasattr(net.forward, "register_comm_hook"):   # DDP
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        net.forward.register_comm_hook(None, allreduce_hook)
    return net


loop.parallelize = _with_hook
sys.exit(loop.main(argv, callbacks=[Window()]))
