"""Matplotlib helpers shared by ``alphadecay analyze --plot`` and ``alphadecay plot-runs``.

Figures are built with ``matplotlib.figure.Figure`` and saved through the Agg canvas, never through
pyplot: nothing opens a window, nothing changes the caller's backend (a notebook importing this keeps
its inline backend), and no figure lingers in pyplot's registry to leak memory in long loops.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .analysis import MODULE_TYPES

# One colour per module type everywhere, so q is the same colour in every figure of a report.
TYPE_COLORS = dict(zip(MODULE_TYPES, ("#1f77b4", "#17becf", "#2ca02c", "#7f7f7f", "#9467bd", "#d62728", "#ff7f0e",
                                      "#8c564b")))
RUN_STYLES = ("-", "--", ":", "-.")


def new_figure(width: float = 7.0, height: float = 4.5, nrows: int = 1, ncols: int = 1, **subplot_kw):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def save(fig: Figure, path: str, dpi: int = 120) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def type_color(t: str, k: int = 0) -> str:
    return TYPE_COLORS.get(t, f"C{k % 10}")


def smooth(values: Sequence[float], factor: float) -> np.ndarray:
    """Exponential moving average with TensorBoard's debiasing (factor 0 = raw, 0.9 = strong)."""
    v = np.asarray(values, dtype=float)
    if factor <= 0 or v.size == 0:
        return v
    out, acc, weight = np.empty_like(v), 0.0, 0.0
    for i, x in enumerate(v):
        if math.isfinite(x):
            acc = factor * acc + (1 - factor) * x
            weight = factor * weight + (1 - factor)
        out[i] = acc / weight if weight > 0 else math.nan
    return out


def log_bins(values: np.ndarray, bins: int = 100) -> np.ndarray:
    pos = values[values > 0]
    lo, hi = float(pos.min()), float(pos.max())
    if hi <= lo:  # a single distinct eigenvalue: widen so the histogram has a visible bar
        lo, hi = lo / 1.5, hi * 1.5
    return np.logspace(math.log10(lo), math.log10(hi), bins + 1)


def esd_plot(eigs: np.ndarray, alpha: float, xmin: float, path: str, *, title: str, bins: int = 100) -> str:
    """Log-log ESD (density of the eigenvalues of W^T W) with the fitted power law from xmin.

    The density is normalised over the whole spectrum, so the fitted line is scaled to match the
    histogram's mass above xmin: then line and bars agree where the fit is good and visibly part
    where it is not, which is what the plot is for.
    """
    eigs = np.asarray(eigs, dtype=float)
    eigs = eigs[np.isfinite(eigs)]
    fig, axes = new_figure(6.5, 4.5)
    ax = axes[0, 0]
    pos = eigs[eigs > 0]
    if pos.size == 0:
        ax.text(0.5, 0.5, "no positive eigenvalues", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        return save(fig, path)
    edges = log_bins(pos, bins)
    density, _, _ = ax.hist(pos, bins=edges, density=True, color="#4c72b0", alpha=0.55, label="ESD")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if math.isfinite(alpha) and math.isfinite(xmin) and xmin > 0:
        tail = pos[pos >= xmin]
        x = np.logspace(math.log10(xmin), math.log10(pos.max()), 100)
        # Power-law pdf on [xmin, inf): (alpha-1)/xmin * (x/xmin)^-alpha, times the tail's share of mass.
        pdf = (alpha - 1) / xmin * (x / xmin) ** (-alpha) * (tail.size / pos.size)
        ax.plot(x, pdf, color="#c44e52", lw=2, label=f"power law, alpha = {alpha:.3f}")
        ax.axvline(xmin, color="#55a868", ls="--", lw=1.5, label=f"xmin = {xmin:.3g}")
        positive = density[density > 0]
        if positive.size:  # keep the axes on the histogram, not on the line's far tail
            ax.set_ylim(positive.min() / 3, positive.max() * 3)
    readable_log_ticks(ax.xaxis, float(pos.min()), float(pos.max()))
    ax.set_xlabel("eigenvalue of $W^T W$ (squared singular value)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    return save(fig, path)


def readable_log_ticks(axis, lo: float, hi: float) -> None:
    """Labelled 1-2-5 ticks on a log axis spanning under three decades, no overlapping minor labels.

    Matplotlib labels minor ticks when a range holds fewer than two decades, which for a typical ESD
    (0.3 to 6) gives a crowded row of "3x10^-1 4x10^-1 ..." labels.
    """
    if lo > 0 and hi > lo and math.log10(hi / lo) < 3:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def alpha_heatmap(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], path: str, *,
                  title: str = "PL alpha per module", label: str = "alpha") -> str:
    """Rows = layers, columns = module types; NaN cells (module absent) are left blank."""
    matrix = np.asarray(matrix, dtype=float)
    height = max(3.0, 0.32 * len(rows) + 1.6)
    width = max(4.5, 0.9 * len(cols) + 2.2)
    fig, axes = new_figure(width, height)
    ax = axes[0, 0]
    masked = np.ma.masked_invalid(matrix)
    im = ax.imshow(masked, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_xticks(range(len(cols)), labels=list(cols))
    ax.set_yticks(range(len(rows)), labels=list(rows))
    ax.set_xlabel("module type")
    ax.set_ylabel("layer")
    ax.set_title(title)
    if matrix.size and len(rows) <= 48:  # past that the numbers overlap and only clutter the picture
        finite = matrix[np.isfinite(matrix)]
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        fontsize = 8 if len(rows) <= 24 else 6
        for r in range(matrix.shape[0]):
            for c in range(matrix.shape[1]):
                v = matrix[r, c]
                if math.isfinite(v):
                    # Dark text on the bright end of viridis, light text on the dark end.
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=fontsize,
                            color="black" if v > mid else "white")
    return save(fig, path)


def style_legend(fig: Figure, handles: list, labels: list[str], *, title: str | None = None, ncol: int = 1):
    """One legend for the whole figure, outside the axes so it never hides a curve."""
    fig.legend(handles, labels, loc="outside right upper", title=title, fontsize=9, ncol=ncol)


def type_handles(types: Sequence[str]) -> tuple[list, list[str]]:
    return [Line2D([], [], color=type_color(t, k), lw=2) for k, t in enumerate(types)], list(types)


def run_handles(labels: Sequence[str], color: str = "0.3") -> tuple[list, list[str]]:
    return ([Line2D([], [], color=color, ls=RUN_STYLES[k % len(RUN_STYLES)], lw=1.5) for k in range(len(labels))],
            list(labels))


def faint(color: str, alpha: float = 0.25):
    return to_rgba(color, alpha)
