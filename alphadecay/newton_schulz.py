"""Muon's Newton-Schulz orthogonalisation in bfloat16 (torch's own) or float32 (the same iteration, one dtype up).

torch.optim.Muon casts every update to bfloat16 before Newton-Schulz. On CPU a bf16 matmul is many times slower
than float32 (docs/benchmarks.md, Muon), and bf16 round-off amplifies the last-bit differences between two ways of
computing one gradient (FSDP2's per-rank halves against one whole batch) into visible weight differences within a
few updates (tests/test_muon_fsdp.py). float32 serves CPU runs and exact agreement across ranks.
"""
from __future__ import annotations

import torch
from torch.optim._muon import _zeropower_via_newtonschulz

NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype of ``--muon_ns_dtype`` ``name``; ValueError naming the choices otherwise."""
    if name not in NS_DTYPES:
        raise ValueError(f"unknown ns_dtype {name!r}; choose one of {', '.join(NS_DTYPES)}")
    return NS_DTYPES[name]


def newton_schulz(grad: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """torch's ``_zeropower_via_newtonschulz`` for bfloat16 (called, so bit for bit torch's Muon); for float32 the
    very same iteration (coefficients, transpose of a tall matrix, Frobenius-norm clamp, addmm order) in float32.
    ``grad`` is never changed in place."""
    if dtype == torch.bfloat16:
        return _zeropower_via_newtonschulz(grad, coefficients, steps, eps)
    if dtype != torch.float32:
        raise ValueError(f"Newton-Schulz runs in bfloat16 or float32, not {dtype}")
    if steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if grad.ndim != 2:
        raise ValueError("Input tensor gradient must be a 2D matrix")
    if len(coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    a, b, c = coefficients
    # copy=True: without Nesterov the update is Muon's momentum buffer itself, which div_ would scale.
    ortho = grad.to(torch.float32, copy=True)
    tall = grad.size(0) > grad.size(1)
    if tall:
        ortho = ortho.T
    ortho.div_(ortho.norm().clamp(min=eps))
    for _ in range(steps):
        gram = ortho @ ortho.T
        gram_update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        ortho = torch.addmm(ortho, gram_update, ortho, beta=a)
    return ortho.T if tall else ortho


__all__ = ["NS_DTYPES", "dtype_of", "newton_schulz"]
