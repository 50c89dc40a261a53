"""The life of the training DataLoader's worker processes.

Ctrl-C and a scheduler's SIGTERM reach the whole process group; the workers ignore them so that the
main process can finish the update in flight and checkpoint. The price: nothing but the main process
can stop them. multiprocessing's exit hook SIGTERMs its children and then waits for them, forever
for workers that ignore it, so every way out of a run stops them first (``stop``), and an exit hook
registered after multiprocessing's (hence run before it) stops any that are still alive.
"""
from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401 - its exit hook must be registered before ours (ours runs first)
import signal
import weakref

_LIVE: "weakref.WeakSet" = weakref.WeakSet()   # DataLoader iterators with workers, until garbage-collected


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of the training DataLoader."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def track(batches) -> None:
    """Remember a DataLoader iterator whose workers the exit hook must stop."""
    _LIVE.add(batches)


def stop(batches) -> None:
    """Stop a DataLoader iterator's workers now: torch's own shutdown, then SIGKILL for any still busy."""
    if batches is None or not hasattr(batches, "_shutdown_workers"):
        return
    batches._shutdown_workers()      # done event, join with a timeout, then a SIGTERM they ignore
    for worker in getattr(batches, "_workers", []):
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


@atexit.register
def _stop_all() -> None:
    for batches in list(_LIVE):
        stop(batches)
