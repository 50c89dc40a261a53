"""Hooks into the training loop for code that is not the loop's own (fault injection in tests, user probes).

A callback sees the counters and may change the loss of a micro-step or ask the run to stop; it
runs on every rank. The loop's own side effects (logging, evaluation, checkpoints, signals,
throughput) are components it calls, not callbacks.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainState:
    """The counters a run continues from (saved in every checkpoint)."""
    update_step: int = 0        # optimizer updates applied
    tokens_seen: int = 0        # non-pad tokens consumed, all ranks
    tokens_learned: int = 0     # predicted positions (the loss's tokens), all ranks
    skipped_updates: int = 0    # updates skipped on a non-finite loss (--on_nonfinite skip)


class Callback:
    def on_update_start(self, state: TrainState, stop) -> None:
        """Before update ``state.update_step + 1``; ``stop.request()`` ends the run like SIGTERM would."""

    def on_loss(self, state: TrainState, micro_step: int, loss):
        """The loss of one micro-step before its backward; returns the loss to use."""
        return loss
