"""Muon under FSDP2: the communication it adds per update (each hidden matrix's bf16 update sent to its owner
rank, the orthogonalised rows sent back; float32 under ``--ns_dtype float32``), in bytes and seconds, beside the
whole Muon step.

    torchrun --standalone --nproc_per_node=2 bench/muon_fsdp_comm.py            # LLaMA-20M, float32, CPU, gloo
    torchrun --standalone --nproc_per_node=2 bench/muon_fsdp_comm.py --model_config configs/llama_60m.json

The model is sharded as the loop does (``fully_shard`` per decoder layer, then the root), with fixed random
gradients. Timed on every rank, the slowest kept (a step waits for it), the minimum over ``--repeat`` rounds:
``exchange_s``, ShardedMuon's gathers and scatters with Newton-Schulz replaced by the identity (the momentum
and the update still apply), and ``muon_step_s``, the Muon half's whole step. Bytes: ``exchange_bytes``
(predicted from the shapes and owners) and ``sent_bytes`` (every tensor handed to isend, summed over ranks).
Printed: one JSON line (rank 0).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from alphadecay import muon_fsdp  # noqa: E402
from alphadecay.newton_schulz import NS_DTYPES, dtype_of  # noqa: E402
from alphadecay.strategies import build_strategy  # noqa: E402
from alphadecay.training.model import build_model  # noqa: E402
from alphadecay.training.optim import build_optimizer  # noqa: E402

CPU = torch.device("cpu")


def _sharded_model(config: str):
    model = build_model(config, dtype=torch.float32, device=CPU, seed=0)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    g = torch.Generator().manual_seed(1 + dist.get_rank())
    for p in model.parameters():
        local = torch.randn(p.to_local().shape, generator=g) * 1e-3
        p.grad = DTensor.from_local(local, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
    return model


def _items(muon):
    items = []
    for group in muon.param_groups:
        params, grads, bufs = [], [], []
        muon._init_group(group, params, grads, bufs)
        items += [(p, g, b, group) for p, g, b in zip(params, grads, bufs)]
    return items


def _slowest(fn) -> float:
    dist.barrier()
    start = time.perf_counter()
    fn()
    took = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    dist.all_reduce(took, op=dist.ReduceOp.MAX)
    return took.item()


class _CountSends:
    """Sums the bytes of every tensor this rank hands to isend (the exchange is point-to-point)."""

    def __init__(self):
        self.bytes = 0
        self._real = dist.batch_isend_irecv

    def __enter__(self):
        def counting(ops):
            self.bytes += sum(op.tensor.numel() * op.tensor.element_size() for op in ops if op.op is dist.isend)
            return self._real(ops)
        dist.batch_isend_irecv = counting
        return self

    def __exit__(self, *exc):
        dist.batch_isend_irecv = self._real


def _measure(model, model_config: str, ns_dtype: str, repeat: int) -> dict:
    world = dist.get_world_size()
    policy = build_strategy("uniform", model, 0.1)
    optimizer = build_optimizer("muon", policy.param_groups(), lr=1e-4, device=CPU, model=model,
                                muon={"ns_dtype": ns_dtype})
    muon = optimizer.muon
    assert isinstance(muon, muon_fsdp.ShardedMuon)
    items = _items(muon)
    shapes = [tuple(item[0].shape) for item in items]
    identity = lambda full, group: full   # noqa: E731 - the exchange without Newton-Schulz
    with _CountSends() as sends:
        muon_fsdp._step_row_sharded(items, orthogonalise=identity)   # also the warm-up
    sent = torch.tensor([sends.bytes], dtype=torch.float64)
    dist.all_reduce(sent)
    exchange = min(_slowest(lambda: muon_fsdp._step_row_sharded(items, orthogonalise=identity))
                   for _ in range(repeat))
    muon.step()
    step = min(_slowest(muon.step) for _ in range(repeat))
    return {"bench": "muon_fsdp_exchange", "model": os.path.splitext(os.path.basename(model_config))[0],
            "ranks": world, "backend": dist.get_backend(), "threads_per_rank": torch.get_num_threads(),
            "matrices": len(shapes), "muon_params": sum(a * b for a, b in shapes),
            "ns_dtype": ns_dtype, "sent_bytes": int(sent.item()),
            "exchange_bytes": muon_fsdp.exchange_bytes(shapes, world, dtype_of(ns_dtype).itemsize),
            "exchange_s": exchange, "muon_step_s": step, "exchange_share": exchange / step}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_config", default="configs/llama_20m.json")
    p.add_argument("--repeat", type=int, default=2, help="timed rounds of each figure; the minimum is kept")
    p.add_argument("--ns_dtype", default="bfloat16",
                   help="Muon's Newton-Schulz dtype, the exchange's too (--muon_ns_dtype; bfloat16 is torch's); "
                        "a comma list (bfloat16,float32) measures each in one launch, one row each")
    p.add_argument("--json", default=None, help="also write the row (a list of rows for several dtypes) to this file "
                                                "(rank 0)")
    args = p.parse_args(argv)
    dtypes = args.ns_dtype.split(",")
    for name in dtypes:
        if name not in NS_DTYPES:
            p.error(f"--ns_dtype {name!r} is not one of {', '.join(NS_DTYPES)}")
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = _sharded_model(args.model_config)
    rows = [_measure(model, args.model_config, name, args.repeat) for name in dtypes]
    if rank == 0:
        for row in rows:
            print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows[0] if len(rows) == 1 else rows, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
