"""ESD analysis: the estimator, the batched solver against a float64 reference, and robustness."""
import math

import pytest
import torch

import alphadecay
from alphadecay.esd import eigenvalues, farms_eigenvalues, weight_metrics, METRICS
from alphadecay.powerlaw import fit_power_law

from conftest import tiny_llama


def reference_metrics(W, xmin_pos=2):
    """The release's per-matrix formula in float64, one matrix at a time."""
    eigs = torch.linalg.svdvals(W.double()).square().sort().values
    N = len(eigs)
    i = int(N / xmin_pos)
    n = N - i
    log = eigs.log()
    alpha = 1 + n / (log[i:].sum() - n * log[i])
    seq = torch.arange(n, dtype=torch.float64)
    D = (1 - (eigs[i:] / eigs[i]) ** (1 - alpha) - seq / n).abs().max()
    lam_max, fnorm = eigs[-1], eigs.sum()
    sv = eigs.sqrt()
    rank = (sv > 6e-5).sum()
    p = eigs / eigs.sum() + 6e-5
    entropy = -(p * p.log()).sum() / math.log(rank + 6e-5)
    return {"alpha": alpha.item(), "alphahat": math.log1p(math.exp(alpha.item() * math.log10(lam_max))),
            "D": D.item(), "spectral_norm": lam_max.item(), "fnorm": fnorm.item(),
            "stable_rank": (fnorm / lam_max).item(), "entropy": entropy.item(), "num_eigs": N}


def planted_spectrum(alpha, n, seed):
    """Pareto samples with density ~ x^-alpha above 1: inverse CDF u^(-1/(alpha-1))."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    return (u ** (-1 / (alpha - 1))).sort().values


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_hill_recovers_planted_exponent(alpha):
    # With xmin at the smallest sample (xmin_pos huge -> index 0) the Hill estimator is the MLE.
    eigs = torch.stack([planted_spectrum(alpha, 20000, s) for s in range(4)])
    est, D, _ = fit_power_law(eigs, xmin_pos=1e9)
    assert torch.allclose(est, torch.full_like(est, alpha), rtol=0.03), est
    # Goodness-of-fit picks a cutoff with a small KS distance and still recovers alpha.
    est_gof, D_gof, _ = fit_power_law(eigs[:, ::10].contiguous(), pl_fitting="goodness-of-fit")
    assert torch.allclose(est_gof, torch.full_like(est_gof, alpha), rtol=0.15), est_gof
    assert (D_gof < 0.1).all()


@pytest.mark.parametrize("shape", [(96, 96), (200, 64), (64, 200)])
def test_batched_equals_float64_reference(shape):
    torch.manual_seed(1)
    # Trained-like spectra: a random matrix plus a few strong directions (a heavy top of the spectrum).
    weights = []
    for k in range(3):
        W = torch.randn(*shape) / math.sqrt(shape[1])
        u, v = torch.randn(shape[0], 4), torch.randn(4, shape[1])
        weights.append(W + 0.3 * (k + 1) * (u @ v) / math.sqrt(shape[0] * shape[1]))
    got = weight_metrics(weights)
    for row, W in zip(got, weights):
        ref = reference_metrics(W)
        for k, name in enumerate(METRICS):
            assert math.isclose(row[k].item(), ref[name], rel_tol=1e-4), (name, row[k].item(), ref[name])


def test_gof_vectorised_matches_loop():
    eigs = torch.linalg.svdvals(torch.randn(120, 80, dtype=torch.float64)).square().sort().values
    alpha, D, xmin = fit_power_law(eigs[None], pl_fitting="goodness-of-fit")
    # The release's Python loop.
    N, log = len(eigs), eigs.log()
    best = (math.inf, None)
    for i in range(N - 1):
        n = N - i
        a = 1 + n / (log[i:].sum() - n * log[i])
        if a > 1:
            d = (1 - (eigs[i:] / eigs[i]) ** (1 - a) - torch.arange(n, dtype=torch.float64) / n).abs().max().item()
            if d < best[0]:
                best = (d, a.item())
    assert math.isclose(alpha.item(), best[1], rel_tol=1e-9)
    assert math.isclose(D.item(), best[0], rel_tol=1e-9)


def test_fix_finger_window_is_real():
    # The window is [0.95, 1.5] x the histogram peak: the chosen xmin must lie inside it.
    eigs = torch.linalg.svdvals(torch.randn(300, 300, dtype=torch.float64)).square().sort().values[None]
    from alphadecay.powerlaw import _peak_window, usable_start
    lo, hi = _peak_window(eigs, usable_start(eigs, False), 100)
    alpha, D, xmin = fit_power_law(eigs, pl_fitting="fix-finger")
    assert lo.item() <= xmin.item() <= hi.item()
    assert alpha.item() > 1


def test_farms_reduces_aspect_ratio_bias():
    torch.manual_seed(0)
    square = [torch.randn(256, 256) for _ in range(3)]
    tall = [torch.randn(690, 256) for _ in range(3)]   # aspect ratio ~2.7, like LLaMA MLPs
    a_sq = weight_metrics(square)[:, 0].mean().item()
    a_tall = weight_metrics(tall)[:, 0].mean().item()
    a_tall_farms = weight_metrics(tall, farms=True)[:, 0].mean().item()
    assert a_tall - a_sq > 0.4                       # the bias FARMS targets
    assert abs(a_tall_farms - a_sq) < 0.2            # gone with square windows
    assert len(farms_eigenvalues(tall[:1])[0]) == 3 * 256


def test_float64_option_and_devices():
    W = torch.randn(80, 50)
    e32 = eigenvalues([W])[0]
    e64 = eigenvalues([W], dtype=torch.float64)[0]
    assert e32.dtype == torch.float32 and e64.dtype == torch.float64
    assert torch.allclose(e32.double(), e64, rtol=1e-4, atol=1e-6)
    assert len(e64) == 50


def test_analyze_returns_every_linear():
    model = tiny_llama()
    stats = alphadecay.analyze(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert list(stats) == linears
    assert set(stats[linears[0]]) == set(METRICS)
    assert all(math.isfinite(s["alpha"]) and s["alpha"] > 1 for s in stats.values())


# -- robustness -------------------------------------------------------------------------------

def test_zero_nan_inf_and_bf16_weights_do_not_crash():
    good = torch.randn(64, 64)
    bad_nan = good.clone(); bad_nan[3, 5] = float("nan")
    bad_inf = good.clone(); bad_inf[0, 0] = float("inf")
    zero = torch.zeros(64, 64)
    rows = weight_metrics([good, bad_nan, bad_inf, zero, good.bfloat16()])
    alpha = rows[:, METRICS.index("alpha")]
    assert math.isfinite(alpha[0]) and math.isfinite(alpha[4])
    assert torch.isnan(alpha[1:4]).all()                 # undefined -> NaN, never an exception
    assert rows[3, METRICS.index("spectral_norm")] == 0  # zero matrix: zero norms
    assert math.isclose(alpha[4].item(), alpha[0].item(), rel_tol=2e-2)   # bf16 is analysed in float32


def test_filter_zeros_drops_null_space():
    # float64: in float32 the Gram matrix puts null-space eigenvalues at ~eps * lambda_max, which can
    # exceed EVALS_THRESH (filter_zeros' absolute threshold).
    torch.manual_seed(0)
    low_rank = torch.randn(100, 20) @ torch.randn(20, 100)   # 80 zero eigenvalues
    filtered = weight_metrics([low_rank], filter_zeros=True, dtype=torch.float64)[0, 0].item()
    ref = reference_metrics(torch.linalg.svd(low_rank).S[:20].diag())["alpha"]
    assert math.isclose(filtered, ref, rel_tol=1e-3)
    # Without filter_zeros the release fits its median cutoff inside the null space; here the relative zero
    # floor sees the rank deficiency in either dtype and fits the 20 nonzero eigenvalues (num_eigs 20).
    for dtype in (torch.float64, torch.float32):
        row = weight_metrics([low_rank], dtype=dtype)[0]
        assert math.isclose(row[0].item(), ref, rel_tol=1e-3) and row[METRICS.index("num_eigs")] == 20


# -- degenerate spectra: zeros below a relative floor, tied tails ---------------------------------

def _old_median_alpha(eigs32: torch.Tensor) -> torch.Tensor:
    """The median fit as the code computed it before the zero floor and the tie guard, op for op."""
    e = eigs32.to(torch.float64)
    N = e.shape[1]
    i = N // 2
    log = torch.log(e)
    suffix = log.flip(1).cumsum(1).flip(1)
    return 1 + (N - i) / (suffix[:, i] - (N - i) * log[:, i])


def _trained_llama():
    model = tiny_llama(layers=2, seed=4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)    # a few large steps move every weight well off its init
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        ids = torch.randint(0, 500, (2, 16), generator=g)
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return model


def test_ordinary_llama_matrices_give_what_they_gave():
    """Initial and trained LLaMA weights (square ones included, whose few smallest eigenvalues fall under the
    floor): alpha bit for bit the old median fit, num_eigs N, and the other fits as with the rules off."""
    from alphadecay.esd import linear_modules
    from alphadecay.powerlaw import zero_floor
    for model in (tiny_llama(layers=2, seed=3), _trained_llama()):
        weights = [m.weight.detach() for _, m in linear_modules(model)]
        rows = weight_metrics(weights)
        below = 0
        for row, w in zip(rows, weights):
            eigs = eigenvalues([w])[0][None]
            zeros = int((eigs <= zero_floor(eigs, torch.finfo(torch.float32).eps)).sum())
            below += zeros
            assert row[METRICS.index("alpha")].item() == _old_median_alpha(eigs).item()
            assert row[METRICS.index("num_eigs")] == min(w.shape)
            for fitting in ("goodness-of-fit", "fix-finger") if zeros else ():   # where a change could show
                new = fit_power_law(eigs.double(), pl_fitting=fitting, eps=torch.finfo(torch.float32).eps)
                old = fit_power_law(eigs.double(), pl_fitting=fitting)          # eps=0: the old rules
                assert all(torch.equal(a, b) for a, b in zip(new, old)), fitting
        assert below > 0          # the floor was crossed, below the cutoff, and changed nothing


def _with_weight(model, name, weight):
    with torch.no_grad():
        dict(model.named_modules())[name].weight.copy_(weight)


def test_rank_deficient_matrix_is_not_fittable_unless_enough_eigenvalues_remain():
    torch.manual_seed(0)
    low = torch.randn(64, 16) @ torch.randn(16, 64) * 0.02           # rank 16 = n/4, in float32
    assert _old_median_alpha(eigenvalues([low])[0][None]).item() < 1.2  # before: a null-space "tail"
    row = weight_metrics([low])[0]
    assert row[METRICS.index("num_eigs")] == 16
    ref = reference_metrics(torch.linalg.svd(low.double()).S[:16].diag())["alpha"]
    assert math.isclose(row[0].item(), ref, rel_tol=1e-3)              # fitted on its nonzero eigenvalues

    model = tiny_llama(layers=2, seed=1)
    name = "model.layers.0.self_attn.o_proj"
    _with_weight(model, name, low)
    base = 1e-5
    s = alphadecay.AlphaDecay(model, base, distributed=False)
    s.initial_assignment()
    assert s.decays[name] == base                                     # 16 < eigs_thresh 50: the base decay
    others = [v for n, v in s.decays.items() if v != base]
    assert math.isclose(min(others), 0.6666 * base) and math.isclose(max(others), 3.0 * base)
    few = alphadecay.AlphaDecay(model, base, distributed=False, eigs_thresh=16)
    few.initial_assignment()
    assert few.decays[name] != base                                   # enough remain: balanced like the rest


def test_tied_spectrum_is_not_fittable_and_cannot_collapse_the_map():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(64, 64))                       # orthogonal: every eigenvalue 1
    assert _old_median_alpha(eigenvalues([q])[0][None]).item() > 1e5  # before: alpha ~1.7e6 from round-off
    assert math.isnan(weight_metrics([q])[0, 0].item())
    for fitting in ("goodness-of-fit", "fix-finger"):
        assert math.isnan(weight_metrics([q], pl_fitting=fitting)[0, 0].item())
    model = tiny_llama(layers=2, seed=1)
    name = "model.layers.0.self_attn.o_proj"
    _with_weight(model, name, q)
    base = 1e-5
    s = alphadecay.AlphaDecay(model, base, distributed=False)
    s.initial_assignment()
    assert s.decays[name] == base                                     # not fittable: the base decay
    others = sorted(v for n, v in s.decays.items() if v != base)
    assert math.isclose(others[0], 0.6666 * base) and math.isclose(others[-1], 3.0 * base)
    assert len({round(v / base, 6) for v in others}) > len(others) // 2   # spread, not collapsed to one end
