"""The checks every group of flags shares (args, lr, muon and the fine-tuning tasks import them from here)."""
from __future__ import annotations

import math

from ...errors import ConfigError


def require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def check_numbers(args, rules) -> None:
    """Each (flag, test, what it must be) of ``rules``, or a ConfigError naming the flag."""
    for flag, ok, need in rules:
        value = getattr(args, flag)
        finite = not isinstance(value, float) or math.isfinite(value)
        require(finite and ok(value), f"--{flag} must be {need} and finite, got {value}; pass a valid value")
