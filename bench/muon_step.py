"""Optimizer step: --optimizer muon (Muon over the hidden matrices + fused AdamW over the rest) against fused AdamW
over everything, and Muon's update with AlphaDecay reassigning every step against Uniform; same model, same
gradients, same process.

    python bench/muon_step.py                                   # LLaMA-20M, float32, CPU
    python bench/muon_step.py --model_config configs/llama_60m.json --steps 5 --repeat 3
    python bench/muon_step.py --ns_dtype float32                # Muon's Newton-Schulz in float32

    torchrun --standalone --nproc_per_node=2 bench/muon_step.py --ddp --ns_dtype float32   # 2 DDP ranks

Timed: ``optimizer.step()`` alone over fixed random gradients (first figure), and ``strategy.step`` +
``optimizer.step()`` (second: AlphaDecay with update_every 1 runs the ESD of every linear module each step).
The two sides alternate and the minimum of ``--repeat`` rounds of ``--steps`` steps is kept, so background load
hurts both alike. Printed: one JSON line per figure with the seconds per step and the ratio.

``--ddp`` (under torchrun): the Muon step on every rank with the same gradients (as after DDP's all-reduce),
split (``Replicas(world)``: each matrix's Newton-Schulz on one rank, alphadecay.muon_ddp) against unsplit (every
rank orthogonalises every matrix, as without it), alternating, each round started together (a barrier) and timed
on every rank, the whole ``optimizer.step()`` and its Muon half alone. Printed by rank 0: one JSON line with each
rank's seconds per step on both paths, the slowest rank's (a step waits for it), their ratios and each rank's
count of orthogonalised matrices.
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
from alphadecay import muon_fsdp  # noqa: E402
from alphadecay.muon_ddp import Replicas  # noqa: E402
from alphadecay.newton_schulz import NS_DTYPES  # noqa: E402
from alphadecay.strategies import build_strategy  # noqa: E402
from alphadecay.training.model import build_model  # noqa: E402
from alphadecay.training.optim import build_optimizer  # noqa: E402

CPU = torch.device("cpu")


def _model(config: str):
    model = build_model(config, dtype=torch.float32, device=CPU, seed=0)
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return model


def _timer(model, optimizer_name: str, strategy: str, ns_dtype: str = "bfloat16", replicas=None, **strategy_kw):
    policy = build_strategy(strategy, model, 0.1, **strategy_kw)
    optimizer = build_optimizer(optimizer_name, policy.param_groups(), lr=1e-4, device=CPU, model=model,
                                muon={"ns_dtype": ns_dtype} if optimizer_name == "muon" else None,
                                replicas=replicas)
    policy.initial_assignment(optimizer)
    step = [0]

    def run(n: int, with_strategy: bool) -> float:
        start = time.perf_counter()
        for _ in range(n):
            if with_strategy:
                policy.step(optimizer, step[0])
            optimizer.step()      # gradients are kept: no zero_grad, the same work every step
            step[0] += 1
        return (time.perf_counter() - start) / n
    run.optimizer = optimizer
    return run


def _compare(a, b, steps: int, repeat: int, with_strategy: bool) -> tuple[float, float]:
    a(1, with_strategy), b(1, with_strategy)     # warm-up: state allocation, first kernels
    ta, tb = [], []
    for _ in range(repeat):
        ta.append(a(steps, with_strategy))
        tb.append(b(steps, with_strategy))
    return min(ta), min(tb)


class _CountNewtonSchulz:
    def __enter__(self):
        self.calls, self._real = 0, muon_fsdp.newton_schulz

        def counting(*a, **k):
            self.calls += 1
            return self._real(*a, **k)
        muon_fsdp.newton_schulz = counting
        return self

    def __exit__(self, *exc):
        muon_fsdp.newton_schulz = self._real


def _ddp_row(args, common: dict) -> dict:
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    split = _timer(_model(args.model_config), "muon", "uniform", args.ns_dtype, Replicas(world))
    unsplit = _timer(_model(args.model_config), "muon", "uniform", args.ns_dtype)
    with _CountNewtonSchulz() as count:
        split(1, False)
    unsplit(1, False)
    times = {k: [] for k in ("split", "unsplit", "split_muon", "unsplit_muon")}
    for _ in range(args.repeat):
        for name, run in (("split", split), ("unsplit", unsplit)):
            dist.barrier()
            times[name].append(run(args.steps, False))
            dist.barrier()
            start = time.perf_counter()
            for _ in range(args.steps):
                run.optimizer.muon.step()
            times[name + "_muon"].append((time.perf_counter() - start) / args.steps)
    mine = torch.tensor([[min(times[k]) for k in times] + [count.calls]], dtype=torch.float64)
    every = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    per_rank = torch.cat(every)
    dist.destroy_process_group()
    slowest = per_rank.max(0).values
    return {"bench": "muon_ddp_split_step", **common, "ranks": world, "backend": "gloo",
            "split_step_s_per_rank": per_rank[:, 0].tolist(), "unsplit_step_s_per_rank": per_rank[:, 1].tolist(),
            "split_muon_half_s_per_rank": per_rank[:, 2].tolist(),
            "unsplit_muon_half_s_per_rank": per_rank[:, 3].tolist(),
            "orthogonalised_per_rank": [int(c) for c in per_rank[:, 4].tolist()],
            "matrices": sum(len(g["params"]) for g in split.optimizer.muon.param_groups),
            "split_step_s": slowest[0].item(), "unsplit_step_s": slowest[1].item(),
            "ratio_split_over_unsplit": (slowest[0] / slowest[1]).item(),
            "ratio_muon_half_split_over_unsplit": (slowest[2] / slowest[3]).item()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_config", default="configs/llama_20m.json")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per timed round")
    p.add_argument("--repeat", type=int, default=3, help="rounds per side; the minimum is kept")
    p.add_argument("--strategy_steps", type=int, default=2, help="steps per round of the AlphaDecay vs Uniform "
                                                                 "figure (each runs an ESD)")
    p.add_argument("--ns_dtype", default="bfloat16", choices=tuple(NS_DTYPES),
                   help="Muon's Newton-Schulz dtype (--muon_ns_dtype; bfloat16 is torch's)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--ddp", action="store_true", help="under torchrun: the Muon step split over the DDP ranks "
                                                       "against unsplit (the only figure then)")
    args = p.parse_args(argv)
    name = os.path.splitext(os.path.basename(args.model_config))[0]
    common = {"model": name, "device": "cpu", "threads": torch.get_num_threads(), "dtype": "float32",
              "ns_dtype": args.ns_dtype}
    rows = []
    if args.ddp:
        row = _ddp_row(args, common)
        if int(os.environ.get("RANK", "0")) == 0:
            _print([row], args.json)
        return

    ns = args.ns_dtype
    muon, adamw = _compare(_timer(_model(args.model_config), "muon", "uniform", ns),
                           _timer(_model(args.model_config), "adamw", "uniform"), args.steps, args.repeat, False)
    rows.append({"bench": "muon_vs_adamw_step", **common, "muon_step_s": muon, "adamw_step_s": adamw,
                 "ratio_muon_over_adamw": muon / adamw})
    ad_kw = {"update_every": 1, "eigs_thresh": 1}
    alpha, uniform = _compare(_timer(_model(args.model_config), "muon", "alphadecay", ns, **ad_kw),
                              _timer(_model(args.model_config), "muon", "uniform", ns), args.strategy_steps,
                              args.repeat, True)
    rows.append({"bench": "muon_alphadecay_every_step_vs_uniform", **common, "alphadecay_step_s": alpha,
                 "uniform_step_s": uniform, "ratio_alphadecay_over_uniform": alpha / uniform})
    _print(rows, args.json)


def _print(rows: list, path: str | None) -> None:
    for r in rows:
        print(json.dumps(r), flush=True)
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
