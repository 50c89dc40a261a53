"""The ``alphadecay`` command: ``alphadecay analyze ...``, ``alphadecay plot-runs ...``.

Each tool's errors are one line on stderr and exit code 2 (no traceback for bad input).
"""
from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError, print_error

TOOLS = {"analyze": ("alphadecay.cli.analyze", "per-module ESD analysis of a model and the decays AlphaDecay "
                                               "would assign"),
         "plot-runs": ("alphadecay.cli.plot_runs", "loss, perplexity, per-type alpha and decay plots of runs"),
         "prepare-data": ("alphadecay.cli.prepare_data", "tokenize a dataset once into a folder for long runs")}


def parse_bool(text: str) -> bool:
    """The release writes boolean options as values: --remove_last_layer True / False."""
    low = str(text).lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the flag (``--help`` has the rest), exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def run_tool(main, argv=None) -> int:
    """Run a tool's ``main``; bad input (:class:`ConfigError`) becomes one line and exit code 2."""
    try:
        return main(argv)
    except ConfigError as e:
        print_error(str(e))
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: alphadecay {" + ",".join(TOOLS) + "} ...\n\nAlphaDecay's command-line tools (training: "
              "torchrun_main.py, or torchrun -m alphadecay.training).\n")
        for name, (_, text) in TOOLS.items():
            print(f"  {name:12s} {text}")
        print("\n'alphadecay TOOL --help' lists a tool's options.")
        return 0 if argv else 2
    if argv[0] not in TOOLS:
        print(f"error: unknown tool {argv[0]!r}; choose one of {', '.join(TOOLS)}", file=sys.stderr)
        return 2
    import importlib
    module = importlib.import_module(TOOLS[argv[0]][0])
    return run_tool(module.main, argv[1:])
