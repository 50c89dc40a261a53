"""ESD pass: our batched analysis vs the release's per-matrix float32 svdvals loop, same run, same weights.

    python bench/esd.py                       # 60M and 130M shapes on this machine's CPU or GPU
    python bench/esd.py --sizes 60m,130m,350m,1b --repeat 3
    torchrun --standalone --nproc_per_node=2 bench/esd.py --sizes 130m   # + sharded vs one rank
    torchrun --standalone --nproc_per_node=2 bench/esd.py --sizes square1024   # eigensolve-bound (GPU-like)

Under torchrun three timings: rank 0 alone over whole weights, the modules split across ranks (DDP:
every rank holds every weight), and FSDP2-sharded weights (row shards as DTensors; each matrix is
gathered to the one rank that analyses it).

Both sides compute every linear module's eigenvalues and its median-xmin Hill alpha. The baseline
is the release's loop (one svdvals per matrix, sort, the Hill formula). Timings alternate between the
two and keep the minimum of --repeat runs, so background load hurts both alike. Printed: seconds and
the ratio baseline / ours (> 1 means we are faster).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from alphadecay.distributed import sharded_rows, sharded_weight_rows  # noqa: E402
from alphadecay.esd import METRICS, weight_metrics  # noqa: E402

# (hidden, intermediate, layers, vocab) of the paper's LLaMA configs.
SHAPES = {"60m": (512, 1376, 8, 32000), "130m": (768, 2048, 12, 32000), "350m": (1024, 2736, 24, 32000),
          "1b": (2048, 5461, 24, 32000)}
# Square matrices, whose Gram matrix is the matrix's size: the eigensolve (n^3) dominates the gather (n^2), the
# regime of a GPU, where cuSOLVER takes far longer per matrix than NVLink takes to move it. Not a model.
SYNTHETIC = {"square1024": [(1024, 1024)] * 16}


def llama_weights(size: str, device) -> list[torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    if size in SYNTHETIC:
        return [(torch.randn(*s, generator=g) / s[1] ** 0.5).to(device) for s in SYNTHETIC[size]]
    h, i, layers, vocab = SHAPES[size]
    shapes = [(h, h)] * 4 + [(i, h), (i, h), (h, i)]
    ws = [torch.randn(*s, generator=g) / s[1] ** 0.5 for _ in range(layers) for s in shapes]
    ws.append(torch.randn(vocab, h, generator=g) / h ** 0.5)
    return [w.to(device) for w in ws]


def release_pass(weights):
    """The release's net_esd_estimator core: per-matrix float32 svdvals, then the median Hill fit."""
    alphas = []
    for w in weights:
        eigs = torch.square(torch.linalg.svdvals(w.float())).sort().values
        n_all = len(eigs)
        i = int(n_all / 2)
        n = float(n_all - i)
        log = torch.log(eigs)
        alphas.append((1 + n / (torch.sum(log[i:]) - n * log[i])).item())
    return alphas


def our_pass(weights):
    return weight_metrics(weights)[:, METRICS.index("alpha")].tolist()


def timed(fn, *a):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn(*a)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="60m,130m")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no_lm_head", action="store_true", help="leave out the 32000 x H lm_head")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--budget_mb", type=float, default=64, help="the FSDP2 pass's gathered-bytes budget per rank "
                                                                "(sharded_weight_rows' budget_bytes; 64 is the "
                                                                "loop's)")
    args = p.parse_args()
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        if args.device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    rank = dist.get_rank() if distributed else 0
    device = torch.device(args.device)
    results = []
    for size in args.sizes.split(","):
        weights = llama_weights(size, device)
        if args.no_lm_head:
            weights = weights[:-1]
        base, ours = float("inf"), float("inf")
        if not distributed:
            for _ in range(args.repeat):
                tb, ref = timed(release_pass, weights)
                to, got = timed(our_pass, weights)
                base, ours = min(base, tb), min(ours, to)
            err = max(abs(a - b) / abs(a) for a, b in zip(ref, got))
            row = {"size": size, "matrices": len(weights), "device": str(device), "threads": torch.get_num_threads(),
                   "release_loop_s": round(base, 3), "ours_s": round(ours, 3), "speedup": round(base / ours, 2),
                   "max_rel_alpha_diff": float(f"{err:.2e}")}
        else:
            # Sharded across ranks vs rank 0's whole pass (the others wait at the barrier); the three alternate
            # in every round, so that a change of background load hurts all three alike.
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.tensor import Shard, distribute_tensor
            costs = [float(min(w.shape)) ** 2 * max(w.shape) for w in weights]
            mesh = init_device_mesh(device.type, (dist.get_world_size(),))
            pieces = [distribute_tensor(w, mesh, [Shard(0)]) for w in weights]
            one, shard, fsdp = float("inf"), float("inf"), float("inf")
            for _ in range(args.repeat):
                dist.barrier()
                t = time.perf_counter()
                if rank == 0:
                    weight_metrics(weights)
                dist.barrier()
                one = min(one, time.perf_counter() - t)
                dist.barrier()
                t = time.perf_counter()
                sharded_rows(lambda idx: weight_metrics([weights[i] for i in idx]), costs, len(METRICS),
                             device=device)
                shard = min(shard, time.perf_counter() - t)
                dist.barrier()
                t = time.perf_counter()
                sharded_weight_rows(weight_metrics, pieces, costs, len(METRICS),
                                    budget_bytes=int(args.budget_mb * (1 << 20)))
                fsdp = min(fsdp, time.perf_counter() - t)
            row = {"size": size, "ranks": dist.get_world_size(), "threads_per_rank": torch.get_num_threads(),
                   "one_rank_s": round(one, 3), "sharded_s": round(shard, 3), "speedup": round(one / shard, 2),
                   "fsdp_sharded_s": round(fsdp, 3), "fsdp_speedup": round(one / fsdp, 2),
                   "fsdp_over_one_rank": round(fsdp / one, 3), "budget_mb": args.budget_mb}
        if rank == 0:
            print(json.dumps(row), flush=True)
        results.append(row)
    if args.json and rank == 0:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
