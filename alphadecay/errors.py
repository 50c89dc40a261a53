"""Errors the user can fix, and the one way they are printed: one line, the problem and the fix."""
from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input. The message is one line that names the problem and the fix; exit code 2."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (its type name when it has none), at most ``limit`` characters."""
    line = " ".join(str(error).split()).rstrip(".") or type(error).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


class NonFiniteError(RuntimeError):
    """Training stopped on a non-finite loss or gradient norm (every rank agrees on it); exit code 1."""
