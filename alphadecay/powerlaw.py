"""Power-law (PL_Alpha_Hill) fits of empirical spectral densities, batched over matrices.

Every function takes eigenvalues sorted ascending as a (B, N) tensor, one row per matrix, and
works on all rows at once. Rows may have a different number of usable eigenvalues (``filter_zeros``
drops a different count per matrix); because the rows are sorted, the usable eigenvalues of a row
are always a suffix ``[start_b, N)``, so ragged rows need no padding tricks, only a start index.

Conventions (the Hill estimator of the paper, He et al. 2025, and of WeightWatcher): for a lower cutoff at index i of a row with N usable
eigenvalues, n = N - i and

    alpha = 1 + n / (sum_{j >= i} ln lambda_j - n ln lambda_i)
    D     = max_{j >= i} | 1 - (lambda_j / lambda_i)^(1 - alpha) - (j - i) / n |

A fit that is undefined (xmin <= 0, non-finite input, fewer than two tail eigenvalues) gives NaN.

Degenerate spectra (``eps``, the relative precision of the solver that produced the eigenvalues; with 0 only
exact zeros are zeros and only exactly equal tails are tied):
- Eigenvalues at or below ``N * eps * lambda_max`` are zero: a Gram matrix's eigensolver is only that exact,
  so they are the round-off of a null space, not a spectrum. Where they reach the median cutoff (a
  rank-deficient matrix, e.g. rank N/4, whose "tail" would start in its null space), the fit uses the nonzero
  eigenvalues only (esd's ``num_eigs`` then counts those, for the strategies' ``eigs_thresh``).
  Zeros below the cutoff (a square matrix's few smallest eigenvalues often are) change nothing: the Hill
  estimate reads only the tail.
- A tail whose eigenvalues are all equal within that floor (an orthogonal matrix: alpha ~1.7e6 from
  round-off) is tied: NaN, so that one such module cannot collapse the min-max map of the others.
The release has neither rule; a NaN alpha is "not fittable" and the strategies give that module its base decay.
"""
from __future__ import annotations

import math

import torch

PL_FITTINGS = ("median", "goodness-of-fit", "fix-finger")
EVALS_THRESH = 1e-5


def usable_start(eigs: torch.Tensor, filter_zeros: bool, evals_thresh: float = EVALS_THRESH) -> torch.Tensor:
    """Index of the first eigenvalue used in the fit, per row.

    With ``filter_zeros`` the eigenvalues <= evals_thresh are dropped, except when that would drop
    all of them (the release keeps the full spectrum then, and so do we).
    """
    B, N = eigs.shape
    if not filter_zeros:
        return torch.zeros(B, dtype=torch.long, device=eigs.device)
    n_small = (eigs <= evals_thresh).sum(dim=1)
    return torch.where(n_small >= N, torch.zeros_like(n_small), n_small)


def zero_floor(eigs: torch.Tensor, eps: float) -> torch.Tensor:
    """(B, 1): per row, the value at or below which an eigenvalue counts as zero, ``N * eps * lambda_max``."""
    return eigs.shape[1] * eps * eigs[:, -1:].clamp_min(0)


def _median_index(start: torch.Tensor, N: int, xmin_pos: float) -> torch.Tensor:
    # floor(N / xmin_pos) on the usable part, as the release's int(len(nz_eigs) / xmin_pos).
    n_usable = N - start
    return (start + torch.floor(n_usable.to(torch.float64) / xmin_pos).to(torch.long)).clamp(max=N - 1)


def fit_start(eigs: torch.Tensor, *, filter_zeros: bool = False, evals_thresh: float = EVALS_THRESH,
              xmin_pos: float = 2, eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, rank_deficient) per row: the first eigenvalue the fit uses (``usable_start``, moved past the
    zeros of a row whose zeros reach the median cutoff, see the module doc) and whether it was moved."""
    start = usable_start(eigs, filter_zeros, evals_thresh)
    zeros = (eigs <= zero_floor(eigs, eps)).sum(dim=1)
    deficient = zeros > _median_index(start, eigs.shape[1], xmin_pos)
    return torch.where(deficient, zeros, start), deficient


def _suffix_log_sums(log_eigs: torch.Tensor) -> torch.Tensor:
    # S[:, i] = sum_{j >= i} ln lambda_j; flip-cumsum-flip keeps it one vectorised pass.
    return log_eigs.flip(1).cumsum(1).flip(1)


def hill_alpha(eigs: torch.Tensor, xmin_idx: torch.Tensor) -> torch.Tensor:
    """Hill estimate of alpha with the lower cutoff at ``xmin_idx`` (one index per row)."""
    B, N = eigs.shape
    log_eigs = torch.log(eigs)
    suffix = _suffix_log_sums(log_eigs)
    idx = xmin_idx.clamp(0, N - 1).unsqueeze(1)
    n = (N - xmin_idx).to(eigs.dtype)
    denom = suffix.gather(1, idx).squeeze(1) - n * log_eigs.gather(1, idx).squeeze(1)
    alpha = 1 + n / denom
    xmin = eigs.gather(1, idx).squeeze(1)
    ok = (xmin > 0) & (n >= 2) & torch.isfinite(alpha)
    return torch.where(ok, alpha, torch.full_like(alpha, math.nan))


def ks_distance(eigs: torch.Tensor, xmin_idx: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Kolmogorov-Smirnov distance between the tail and the fitted power law, per row."""
    B, N = eigs.shape
    log_eigs = torch.log(eigs)
    j = torch.arange(N, device=eigs.device).unsqueeze(0)
    i = xmin_idx.unsqueeze(1)
    n = (N - xmin_idx).to(eigs.dtype).unsqueeze(1)
    log_xmin = log_eigs.gather(1, i.clamp(0, N - 1))
    cdf_fit = 1 - torch.exp((1 - alpha.unsqueeze(1)) * (log_eigs - log_xmin))
    gap = (cdf_fit - (j - i).to(eigs.dtype) / n).abs()
    gap = torch.where(j >= i, gap, torch.zeros_like(gap))
    D = gap.amax(dim=1)
    return torch.where(torch.isfinite(alpha), D, torch.full_like(D, math.nan))


def _fit_median(eigs, start, xmin_pos):
    xmin_idx = _median_index(start, eigs.shape[1], xmin_pos)
    alpha = hill_alpha(eigs, xmin_idx)
    return alpha, xmin_idx


def _all_candidates(row: torch.Tensor, chunk: int = 512):
    """alpha and D for every candidate cutoff of one row, vectorised in chunks of candidates.

    The release loops over the N candidates in Python with a device copy each; here a chunk of
    candidates is one (chunk, N) tensor expression, so memory stays bounded for large N.
    """
    N = row.shape[0]
    log_eigs = torch.log(row)
    suffix = _suffix_log_sums(log_eigs.unsqueeze(0)).squeeze(0)
    i = torch.arange(N, device=row.device)
    n = (N - i).to(row.dtype)
    alpha = 1 + n / (suffix - n * log_eigs)
    D = torch.empty_like(alpha)
    j = i.unsqueeze(0)
    for s in range(0, N, chunk):
        ii = i[s:s + chunk].unsqueeze(1)
        expo = (1 - alpha[s:s + chunk].unsqueeze(1)) * (log_eigs.unsqueeze(0) - log_eigs[s:s + chunk].unsqueeze(1))
        gap = (1 - torch.exp(expo) - (j - ii).to(row.dtype) / n[s:s + chunk].unsqueeze(1)).abs()
        D[s:s + chunk] = torch.where(j >= ii, gap, torch.zeros_like(gap)).amax(dim=1)
    return alpha, D


def _fit_by_min_distance(eigs, start, window=None, floor=None):
    """Cutoff with the smallest KS distance among candidates (optionally inside a window); ``floor`` (B, 1):
    no candidate is a zero or has a tied tail."""
    B, N = eigs.shape
    alphas = torch.full((B,), math.nan, dtype=eigs.dtype, device=eigs.device)
    xmin_idx = torch.zeros(B, dtype=torch.long, device=eigs.device)
    i = torch.arange(N, device=eigs.device)
    for b in range(B):
        alpha, D = _all_candidates(eigs[b])
        # Candidates as in the release: every usable eigenvalue but the largest, with alpha > 1.
        ok = (i >= start[b]) & (i < N - 1) & (eigs[b] > 0) & torch.isfinite(alpha) & (alpha > 1)
        if floor is not None:
            ok &= (eigs[b] > floor[b]) & (eigs[b, -1] - eigs[b] > floor[b])
        if window is not None:
            lo, hi = window
            ok &= (eigs[b] >= lo[b]) & (eigs[b] <= hi[b])
        D = torch.where(ok, D, torch.full_like(D, math.inf))
        best = torch.argmin(D)
        xmin_idx[b] = best
        alphas[b] = torch.where(ok[best], alpha[best], torch.full_like(alpha[best], math.nan))
    return alphas, xmin_idx


def _peak_window(eigs, start, bins):
    """The fix-finger window [0.95 x, 1.5 x] around the peak of a log10 histogram.

    The release compares a log10 bound with raw eigenvalues, which voids the lower bound; here
    both bounds are raw eigenvalues.
    """
    B, N = eigs.shape
    usable = torch.arange(N, device=eigs.device).unsqueeze(0) >= start.unsqueeze(1)
    log10 = torch.log10(eigs.clamp_min(torch.finfo(eigs.dtype).tiny))
    lo = torch.where(usable, log10, torch.full_like(log10, math.inf)).amin(1, keepdim=True)
    hi = torch.where(usable, log10, torch.full_like(log10, -math.inf)).amax(1, keepdim=True)
    width = (hi - lo).clamp_min(torch.finfo(eigs.dtype).eps)
    bin_idx = ((log10 - lo) / width * bins).floor().clamp(0, bins - 1).long()
    counts = torch.zeros(B, bins, dtype=eigs.dtype, device=eigs.device)
    counts.scatter_add_(1, bin_idx, usable.to(eigs.dtype))
    peak_edge = lo.squeeze(1) + counts.argmax(1).to(eigs.dtype) * width.squeeze(1) / bins
    xmin_peak = 10 ** peak_edge
    return 0.95 * xmin_peak, 1.5 * xmin_peak


def fit_power_law(eigs: torch.Tensor, *, pl_fitting: str = "median", xmin_pos: float = 2,
                  filter_zeros: bool = False, evals_thresh: float = EVALS_THRESH, bins: int = 100,
                  eps: float = 0.0):
    """Fit every row; returns (alpha, D, xmin) tensors of shape (B,).

    ``eps``: the relative precision of the solver that computed ``eigs`` (``torch.finfo(dtype).eps``;
    esd passes it), for the zero floor and the tie guard of the module doc; 0 disables both.
    ``fix-finger`` falls back to the median fit for a row whose window holds no valid candidate
    (the release would return alpha = 0 there).
    """
    if pl_fitting not in PL_FITTINGS:
        raise ValueError(f"unknown pl_fitting {pl_fitting!r}; choose one of {', '.join(PL_FITTINGS)}")
    start, _ = fit_start(eigs, filter_zeros=filter_zeros, evals_thresh=evals_thresh, xmin_pos=xmin_pos, eps=eps)
    floor = zero_floor(eigs, eps)
    if pl_fitting == "median":
        alpha, xmin_idx = _fit_median(eigs, start, xmin_pos)
    elif pl_fitting == "goodness-of-fit":
        alpha, xmin_idx = _fit_by_min_distance(eigs, start, floor=floor)
    else:
        alpha, xmin_idx = _fit_by_min_distance(eigs, start, window=_peak_window(eigs, start, bins), floor=floor)
        fallback_alpha, fallback_idx = _fit_median(eigs, start, xmin_pos)
        missing = torch.isnan(alpha)
        alpha = torch.where(missing, fallback_alpha, alpha)
        xmin_idx = torch.where(missing, fallback_idx, xmin_idx)
    xmin = eigs.gather(1, xmin_idx.unsqueeze(1)).squeeze(1)
    tied = eigs[:, -1] - xmin <= floor.squeeze(1)
    alpha = torch.where(tied, torch.full_like(alpha, math.nan), alpha)
    D = ks_distance(eigs, xmin_idx, alpha)
    return alpha, D, xmin
