"""How much of a decoupled decay reaches bf16 weights, per optimizer path (docs/results.md, pure bf16).

    python bench/bf16_decay.py [--lr 1e-3] [--wd 0.1] [--steps 100]

The measure (``delivered``): the same updates from the same bf16 start with decay ``wd`` and with 0, on one fixed
sequence of gradients (std 1e-2, independent of the weights, so only the decay tells the two runs apart), once
on bf16 weights and once on float64 weights; the share of the float64 runs' decay effect on the hidden matrices
of a tiny LLaMA (2 layers, hidden 64) that the bf16 runs show, <bf16 difference, float64 difference> /
|float64 difference|^2. 1 is all of it, 0 none. Prints one JSON row per path.

Paths: ours (``optim.build_optimizer``: fused Adam/AdamW, Muon through ShardedMuon on bf16 weights) and the
release's update order (the model in bf16, torch's AdamW with foreach as its torchrun_main builds it on CUDA,
or its for-loop as on CPU), plus torch's own Muon.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from alphadecay.muon import hidden_matrices  # noqa: E402
from alphadecay.training.optim import build_optimizer  # noqa: E402
from alphadecay.training.parallel.precision import cast_parameters  # noqa: E402

CPU = torch.device("cpu")


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=172, num_attention_heads=4,
                                        num_hidden_layers=2, vocab_size=500, max_position_embeddings=128,
                                        attn_implementation="sdpa"))


def one_group(model, wd):
    return [{"params": list(model.parameters()), "weight_decay": wd, "name": "all"}]


def _train(model, make_optimizer, grads, groups):
    optimizer = make_optimizer(model, groups)
    for step in grads:
        for p, g in zip(model.parameters(), step):
            p.grad = g.to(p.dtype)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return [w.detach().double().clone() for w in hidden_matrices(model)]


def delivered(make_optimizer, *, wd: float = 1.0, steps: int = 16, groups=one_group) -> float:
    """The share of the decay that reaches bf16 weights; ``make_optimizer(model, param_groups)``, ``groups(model,
    wd)`` the param groups (one group at ``wd`` by default)."""
    base = tiny_llama()
    gen = torch.Generator().manual_seed(3)
    grads = [[torch.randn(p.shape, generator=gen) * 1e-2 for p in base.parameters()] for _ in range(steps)]
    runs = {}
    for dtype in (torch.bfloat16, torch.float64):
        for decay in (wd, 0.0):
            model = cast_parameters(cast_parameters(copy.deepcopy(base), torch.bfloat16), dtype)   # one bf16 start
            runs[dtype, decay] = _train(model, make_optimizer, grads, groups(model, decay))
    pairs = list(zip(runs[torch.bfloat16, 0.0], runs[torch.bfloat16, wd], runs[torch.float64, 0.0],
                     runs[torch.float64, wd]))
    num = sum(((a0 - a1) * (r0 - r1)).sum() for a0, a1, r0, r1 in pairs)
    return float(num / sum(((r0 - r1) ** 2).sum() for _, _, r0, r1 in pairs))


def paths(lr: float) -> dict:
    def ours(name, **muon):
        return lambda model, groups: build_optimizer(name, groups, lr=lr, device=CPU, model=model, muon=muon)

    return {"ours: adamw (fused)": ours("adamw"), "ours: adam, L2 (fused)": ours("adam"), "ours: muon": ours("muon"),
            "ours: muon, float32 Newton-Schulz": ours("muon", ns_dtype="float32"),
            "ours: muon, nesterov off": ours("muon", nesterov=False),
            "release: torch AdamW, foreach": lambda model, groups: torch.optim.AdamW(groups, lr=lr, foreach=True),
            "release: torch AdamW, for-loop": lambda model, groups: torch.optim.AdamW(groups, lr=lr, foreach=False),
            "release: torch Adam, L2, foreach": lambda model, groups: torch.optim.Adam(groups, lr=lr, foreach=True),
            "torch Muon": lambda model, groups: torch.optim.Muon(
                [{**g, "params": hidden_matrices(model)} for g in groups], lr=lr, adjust_lr_fn="match_rms_adamw")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args()
    for name, make in paths(args.lr).items():
        print(json.dumps({"path": name, "lr": args.lr, "wd": args.wd, "steps": args.steps,
                          "delivered": round(delivered(make, wd=args.wd, steps=args.steps), 4)}), flush=True)


if __name__ == "__main__":
    main()
