"""One rank's peak memory when an --fsdp run starts (run by ``bench/memory_table.py --measure`` under torchrun).

torchrun --nproc_per_node=2 bench/fsdp_start_memory.py OUT.json -- <torchrun_main.py flags>

The run goes through the real entry point up to its first update: the model built on the meta device,
sharded, each rank's shard initialised (the peak so far is recorded when that returns), the strategy's first
ESD pass and the data loader. The callback then records this rank's peak resident memory again (getrusage's
ru_maxrss) and ends the process before the first forward.
"""
from __future__ import annotations

import json
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from alphadecay.training.callbacks import Callback  # noqa: E402
from alphadecay.training.loop import main  # noqa: E402
from alphadecay.training.parallel.meta_init import DeferredInit  # noqa: E402

GB = 1024 ** 3
PEAKS = {}


def peak_rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB   # kilobytes on Linux


def recording(materialize):
    def wrapped(*args, **kwargs):
        materialize(*args, **kwargs)
        PEAKS["after_init_gib"] = peak_rss()
    return wrapped


class RecordAndExit(Callback):
    def __init__(self, out: str):
        self.out = out

    def on_update_start(self, state, stop) -> None:
        import torch.distributed as dist

        rank = dist.get_rank()
        rows = [None] * dist.get_world_size()
        dist.all_gather_object(rows, {"rank": rank, "peak_rss_gib": peak_rss(), **PEAKS})
        if rank == 0:
            with open(self.out, "w") as f:
                json.dump(rows, f, indent=1)
        dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)   # every rank at the same point: nothing waits on another


if __name__ == "__main__":
    out, sep, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    assert sep == "--", "usage: fsdp_start_memory.py OUT.json -- <flags>"
    DeferredInit.materialize = recording(DeferredInit.materialize)
    sys.exit(main(argv, callbacks=[RecordAndExit(out)]))
