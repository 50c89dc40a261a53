"""AlphaDecay: module-wise weight decay from the heavy-tailedness of each module's weight spectrum, and LLR:
module-wise learning rates from the same spectrum (``alphadecay.LLR``, composed with a decay strategy by
``alphadecay.Combined``).

    import alphadecay
    stats = alphadecay.analyze(model)
    policy = alphadecay.AlphaDecay(model, weight_decay=1e-5, wd_min_ratio=0.6666, wd_max_ratio=3.0, update_every=500)
    optimizer = torch.optim.AdamW(policy.param_groups(), lr=1e-3)
    policy.initial_assignment(optimizer)   # decays from the initial weights
    ...
    policy.step(optimizer, step)   # after backward, before optimizer.step()
"""
from ._torchvision import make_importable as _make_torchvision_importable

_make_torchvision_importable()   # before anything imports transformers or timm (see _torchvision.py)

from .analysis import analyze, module_type, score_modules
from .assign import assign
from .combined import Combined, combine
from .esd import eigenvalues, linear_modules, weight_metrics
from .llr import LLR
from .muon import MuonWithAdamW, split_muon_groups
from .policy import Policy
from .powerlaw import fit_power_law
from .strategies import (AWD, STRATEGIES, AdaDecay, AlphaDecay, Assignment, DecayStrategy, NoDecay, Uniform,
                         build_strategy)

__all__ = ["analyze", "module_type", "score_modules", "assign", "eigenvalues", "linear_modules", "weight_metrics",
           "fit_power_law", "AWD", "STRATEGIES", "AdaDecay", "AlphaDecay", "Assignment", "DecayStrategy", "NoDecay",
           "Uniform", "build_strategy", "LLR", "Combined", "combine", "Policy", "MuonWithAdamW", "split_muon_groups"]
__version__ = "0.2.0"
