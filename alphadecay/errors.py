"""Errors the user can fix, and the one way they are printed: one line, the problem and the fix."""
from __future__ import annotations

import os
import sys


class ConfigError(ValueError):
    """Bad user input. The message is one line that names the problem and the fix; exit code 2."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (its type name when it has none), at most ``limit`` characters."""
    line = " ".join(str(error).split()).rstrip(".") or type(error).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


def print_error(message: str) -> None:
    """``error: message`` on stderr in one write: ranks sharing a pipe under torchrun cannot interleave it."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


class NonFiniteError(RuntimeError):
    """Training stopped on a non-finite loss or gradient norm (every rank agrees on it); exit code 1."""


def require_writable_folder(path: str, flag: str) -> None:
    """``path`` is a folder that exists and is writable, or can be created in one; nothing is created."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to {flag} {path!r} ({existing!r} is not a writable folder); pass a "
                          f"writable folder")
