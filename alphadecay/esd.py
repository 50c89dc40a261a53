"""Empirical spectral densities (ESDs) of a model's linear weights and the metrics built on them.

The eigenvalues of W^T W are the squared singular values of W. They are computed from the smaller
Gram matrix (W^T W or W W^T) with a symmetric eigensolver, on the weights' own device, with every
Gram matrix of the same size solved in one batched call. That is several times faster than the
release's one-``svdvals``-per-matrix loop and never forms more than min(out, in)^2 numbers per
matrix.
"""
from __future__ import annotations

import math
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn
import torch.nn.functional as F

from .powerlaw import EVALS_THRESH, fit_power_law, fit_start, zero_floor

METRICS = ("alpha", "alphahat", "D", "spectral_norm", "fnorm", "stable_rank", "entropy", "num_eigs")
# Matrices of a shape group are stacked at most this many bytes at a time (bounds peak memory).
_STACK_BYTES = 1 << 30


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers, so module names match the checkpoint."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def is_linear(module: nn.Module) -> bool:
    # transformers' GPT-2 uses Conv1D, a linear layer with a transposed weight; the ESD is the same.
    return isinstance(module, nn.Linear) or (
        type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None
        and module.weight.dim() == 2)


def linear_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every linear module, in ``named_modules`` order (the order the release calls first/last)."""
    return [(name, m) for name, m in unwrap(model).named_modules() if is_linear(m)]


def _solve_eigvalsh(grams: torch.Tensor) -> torch.Tensor:
    """Batched symmetric eigenvalues; on CPU the batch is split across threads.

    LAPACK's eigensolver barely uses a second core on one matrix, so running independent matrices
    on separate threads (one BLAS thread each) is what makes the batch fast on CPU.
    """
    threads = torch.get_num_threads()
    if grams.device.type != "cpu" or threads < 2 or grams.shape[0] < 2:
        return torch.linalg.eigvalsh(grams)
    parts = grams.chunk(min(threads, grams.shape[0]))
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(len(parts)) as pool:
            return torch.cat(list(pool.map(torch.linalg.eigvalsh, parts)))
    finally:
        torch.set_num_threads(threads)


def _gram(stack: torch.Tensor) -> torch.Tensor:
    out, inp = stack.shape[-2:]
    return stack.mT @ stack if out >= inp else stack @ stack.mT


def _square_windows(weight: torch.Tensor) -> list[torch.Tensor]:
    """FARMS: square sub-windows covering the long side of W (evenly spaced, overlapping at most once)."""
    w = weight if weight.shape[0] >= weight.shape[1] else weight.T
    long, short = w.shape
    k = math.ceil(long / short)
    starts = [round(s * (long - short) / (k - 1)) for s in range(k)] if k > 1 else [0]
    return [w[s:s + short] for s in starts]


def eigenvalues(weights: list[torch.Tensor], dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Ascending eigenvalues of W^T W for each weight (float ``dtype``, on the weight's device).

    Weights are grouped by Gram size (min(out, in)) and solved a bounded chunk at a time, so peak
    memory is one chunk of Gram matrices, not a copy of every weight. A weight with NaN/Inf entries
    gets NaN eigenvalues instead of crashing the solver; tiny negative eigenvalues from round-off
    are clamped to zero.
    """
    results: list[torch.Tensor | None] = [None] * len(weights)
    by_gram = defaultdict(list)   # (device, gram size) -> indices, same-shaped weights kept together
    for idx in sorted(range(len(weights)), key=lambda i: tuple(weights[i].shape)):
        w = weights[idx]
        by_gram[(w.device, min(w.shape))].append(idx)
    bytes_per = torch.finfo(dtype).bits // 8
    for (device, size), idxs in by_gram.items():
        longest = max(max(weights[i].shape) for i in idxs)
        per_chunk = max(2, _STACK_BYTES // (bytes_per * size * max(size, longest)))
        for s in range(0, len(idxs), per_chunk):
            chunk = idxs[s:s + per_chunk]
            grams = torch.empty(len(chunk), size, size, dtype=dtype, device=device)
            finite = []
            for shape_pos in _same_shape_runs(chunk, weights):
                # One matrix is used where it is (no copy: a gathered 1B output layer is 262 MB).
                stack = (weights[chunk[shape_pos[0]]].detach().to(dtype)[None] if len(shape_pos) == 1 else
                         torch.stack([weights[chunk[p]].detach().to(dtype) for p in shape_pos]))
                ok = torch.isfinite(stack).flatten(1).all(1)
                if not ok.all():
                    stack = stack.masked_fill(~ok[:, None, None], 0)
                grams[shape_pos[0]:shape_pos[-1] + 1] = _gram(stack)
                finite += ok.tolist()
            eigs = _solve_eigvalsh(grams).clamp_min(0)
            del grams
            for k, i in enumerate(chunk):
                results[i] = eigs[k] if finite[k] else torch.full_like(eigs[k], math.nan)
    return results


def _same_shape_runs(chunk: list[int], weights: list[torch.Tensor]) -> list[list[int]]:
    """Positions in ``chunk`` grouped into consecutive runs of equal shape (chunk is sorted by shape)."""
    runs: list[list[int]] = []
    for pos, i in enumerate(chunk):
        if runs and tuple(weights[chunk[runs[-1][0]]].shape) == tuple(weights[i].shape):
            runs[-1].append(pos)
        else:
            runs.append([pos])
    return runs


def farms_eigenvalues(weights: list[torch.Tensor], dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Pooled, sorted eigenvalues of the square sub-windows of each weight (FARMS, Hu et al. 2025)."""
    windows, owner = [], []
    for idx, w in enumerate(weights):
        for sub in _square_windows(w):
            windows.append(sub)
            owner.append(idx)
    pooled = defaultdict(list)
    for idx, eigs in zip(owner, eigenvalues(windows, dtype)):
        pooled[idx].append(eigs)
    return [torch.cat(pooled[i]).sort().values for i in range(len(weights))]


def _entropy(eigs: torch.Tensor) -> torch.Tensor:
    # The release's matrix_entropy, batched: normalised Shannon entropy of the squared singular values.
    eps = 6e-5
    rank = (eigs.sqrt() > eps).sum(1).to(eigs.dtype)
    p = eigs / eigs.sum(1, keepdim=True) + eps
    ent = -(p * torch.log(p)).sum(1) / torch.log(rank + eps)
    return torch.where(rank > 1, ent, torch.full_like(ent, math.nan))


def spectral_metrics(eigs: torch.Tensor, fit_eigs: torch.Tensor | None = None, *, pl_fitting: str = "median",
                     xmin_pos: float = 2, filter_zeros: bool = False, evals_thresh: float = EVALS_THRESH,
                     bins: int = 100) -> dict[str, torch.Tensor]:
    """All ESD metrics for a (B, N) batch of ascending eigenvalues; ``fit_eigs`` (FARMS) feeds the fit.

    Degenerate spectra (powerlaw's module doc): eigenvalues at or below N * eps * lambda_max, eps that of the
    solver's dtype (the dtype of ``eigs`` as given), are zeros. A matrix whose zeros reach the median cutoff
    (rank-deficient) is fitted on its nonzero eigenvalues and ``num_eigs`` counts those, so that the
    strategies' ``eigs_thresh`` leaves it at the base decay unless enough remain; a tied tail (an orthogonal
    matrix) has alpha NaN, "not fittable", also the base decay. Full-rank spectra give what they always gave.
    """
    fit_eigs = eigs if fit_eigs is None else fit_eigs
    eps = torch.finfo(fit_eigs.dtype).eps if fit_eigs.dtype.is_floating_point else 0.0
    eigs = eigs.to(torch.float64)  # the fit sums hundreds of logs; float64 keeps it exact to 1e-12
    fit_eigs = fit_eigs.to(torch.float64)
    options = dict(filter_zeros=filter_zeros, evals_thresh=evals_thresh, xmin_pos=xmin_pos, eps=eps)
    alpha, D, _ = fit_power_law(fit_eigs, pl_fitting=pl_fitting, bins=bins, **options)
    _, deficient = fit_start(fit_eigs, **options)
    nonzero = (eigs > zero_floor(eigs, eps)).sum(1).to(eigs.dtype)
    spectral_norm = eigs[:, -1]
    fnorm = eigs.sum(1)
    nan = torch.full_like(fnorm, math.nan)
    # The release's alphahat: softplus(alpha * log10(lambda_max)), log10 floored at 1e-10.
    alphahat = F.softplus(alpha * torch.log10(spectral_norm.clamp_min(1e-10)))
    return {
        "alpha": alpha,
        "alphahat": alphahat,
        "D": D,
        "spectral_norm": spectral_norm,
        "fnorm": fnorm,
        "stable_rank": torch.where(spectral_norm > 0, fnorm / spectral_norm, nan),
        "entropy": _entropy(eigs),
        "num_eigs": torch.where(deficient, nonzero, torch.full_like(fnorm, eigs.shape[1])),
    }


def weight_metrics(weights: list[torch.Tensor], *, dtype: torch.dtype = torch.float32, farms: bool = False,
                   **fit_options) -> torch.Tensor:
    """(len(weights), len(METRICS)) float64 tensor of metrics, rows in input order, on CPU."""
    if not weights:
        return torch.zeros(0, len(METRICS), dtype=torch.float64)
    eigs = eigenvalues(weights, dtype)
    fit = farms_eigenvalues(weights, dtype) if farms else eigs
    out = torch.empty(len(weights), len(METRICS), dtype=torch.float64)
    groups = defaultdict(list)  # rows with the same spectrum length are fitted together
    for i, (e, f) in enumerate(zip(eigs, fit)):
        groups[(e.device, e.shape[0], f.shape[0])].append(i)
    for idxs in groups.values():
        m = spectral_metrics(torch.stack([eigs[i] for i in idxs]),
                             torch.stack([fit[i] for i in idxs]) if farms else None, **fit_options)
        out[idxs] = torch.stack([m[k] for k in METRICS], 1).cpu()
    return out
