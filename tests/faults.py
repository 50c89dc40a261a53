"""Fault injection for the tests: callbacks passed to the training loop (the package reads no test hooks)."""
import os
import resource
import time

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


class HoldAt(Callback):
    """A run held open: before update k, wait until the file ``release`` exists (at most ``timeout`` s)."""

    def __init__(self, k: int, release: str, timeout: float = 300):
        self.k, self.release, self.timeout = k, release, timeout

    def on_update_start(self, state, stop):
        if state.update_step + 1 == self.k:
            deadline = time.time() + self.timeout
            while not os.path.exists(self.release) and time.time() < deadline:
                time.sleep(0.1)


class FileSizeLimitAt(Callback):
    """From update k on, no file of this process may grow beyond ``limit`` bytes (RLIMIT_FSIZE: writes past
    it fail with EFBIG; Python ignores the SIGXFSZ that comes with them)."""

    def __init__(self, k: int, limit: int):
        self.k, self.limit = k, limit

    def on_update_start(self, state, stop):
        if state.update_step + 1 == self.k:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def parse(specs: list[str]) -> list[Callback]:
    """'stop_after=K', 'nan=K[:RANK]', 'raise=K[:RANK]', 'hold=K:FILE', 'fsize=K:BYTES' -> callbacks (for the
    torchrun launcher)."""
    kinds = {"stop_after": StopAfter, "nan": NanAt, "raise": RaiseAt}
    out = []
    for spec in specs:
        kind, _, value = spec.partition("=")
        k, _, rank = value.partition(":")
        if kind == "hold":
            out.append(HoldAt(int(k), rank))
        elif kind == "fsize":
            out.append(FileSizeLimitAt(int(k), int(rank)))
        else:
            out.append(kinds[kind](int(k)) if kind == "stop_after" else kinds[kind](int(k), int(rank) if rank else None))
    return out
