"""Fault injection for the tests: callbacks passed to the training loop (the package reads no test hooks)."""
import os

from alphadecay.training.callbacks import Callback


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class StopAfter(Callback):
    """Behave as if SIGTERM arrived during update k (a deterministic preemption)."""

    def __init__(self, k: int):
        self.k = k

    def on_update_start(self, state, stop):
        if state.update_step + 1 >= self.k:
            stop.request()


class NanAt(Callback):
    """Make the loss of update k NaN (on one rank, or on all with rank=None), once: a skipped update is
    retried with the next batch."""

    def __init__(self, k: int, rank: int | None = None):
        self.k, self.rank, self.fired = k, rank, False

    def on_loss(self, state, micro_step, loss):
        if not self.fired and state.update_step + 1 == self.k and self.rank in (None, _rank()):
            self.fired = True
            return loss * float("nan")
        return loss


class RaiseAt(Callback):
    """An unexpected exception (say, out of memory) inside update k on one rank."""

    def __init__(self, k: int, rank: int | None = None):
        self.k, self.rank = k, rank

    def on_update_start(self, state, stop):
        if state.update_step + 1 == self.k and self.rank in (None, _rank()):
            raise RuntimeError(f"injected failure in update {self.k}")


def parse(specs: list[str]) -> list[Callback]:
    """'stop_after=K', 'nan=K[:RANK]', 'raise=K[:RANK]' -> callbacks (for the torchrun launcher)."""
    kinds = {"stop_after": StopAfter, "nan": NanAt, "raise": RaiseAt}
    out = []
    for spec in specs:
        kind, _, value = spec.partition("=")
        k, _, rank = value.partition(":")
        out.append(kinds[kind](int(k)) if kind == "stop_after" else kinds[kind](int(k), int(rank) if rank else None))
    return out
