"""Optimizer step: --optimizer muon (Muon over the hidden matrices + fused AdamW over the rest) against fused AdamW
over everything, and Muon's update with AlphaDecay reassigning every step against Uniform; same model, same
gradients, same process.

    python bench/muon_step.py                                   # LLaMA-20M, float32, CPU
    python bench/muon_step.py --model_config configs/llama_60m.json --steps 5 --repeat 3
    python bench/muon_step.py --ns_dtype float32                # Muon's Newton-Schulz in float32

Timed: ``optimizer.step()`` alone over fixed random gradients (first figure), and ``strategy.step`` +
``optimizer.step()`` (second: AlphaDecay with update_every 1 runs the ESD of every linear module each step).
The two sides alternate and the minimum of ``--repeat`` rounds of ``--steps`` steps is kept, so background load
hurts both alike. Printed: one JSON line per figure with the seconds per step and the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def _timer(model, optimizer_name: str, strategy: str, ns_dtype: str = "bfloat16", **strategy_kw):
    policy = build_strategy(strategy, model, 0.1, **strategy_kw)
    optimizer = build_optimizer(optimizer_name, policy.param_groups(), lr=1e-4, device=CPU, model=model,
                                muon={"ns_dtype": ns_dtype} if optimizer_name == "muon" else None)
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
    return run


def _compare(a, b, steps: int, repeat: int, with_strategy: bool) -> tuple[float, float]:
    a(1, with_strategy), b(1, with_strategy)     # warm-up: state allocation, first kernels
    ta, tb = [], []
    for _ in range(repeat):
        ta.append(a(steps, with_strategy))
        tb.append(b(steps, with_strategy))
    return min(ta), min(tb)


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
    args = p.parse_args(argv)
    name = os.path.splitext(os.path.basename(args.model_config))[0]
    common = {"model": name, "device": "cpu", "threads": torch.get_num_threads(), "dtype": "float32",
              "ns_dtype": args.ns_dtype}
    rows = []

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
    for r in rows:
        print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
