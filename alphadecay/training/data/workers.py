"""The life of the training DataLoader's worker processes.

Ctrl-C and a scheduler's SIGTERM reach the whole process group; the workers ignore them so that the
main process can finish the update in flight and checkpoint. The price: nothing but the main process
can stop them. multiprocessing's exit hook SIGTERMs its children and then waits for them, forever
for workers that ignore it, so every way out of a run stops them first (``stop``), and an exit hook
registered after multiprocessing's (hence run before it) stops any that are still alive.

torch's own shutdown (when a DataLoader iterator is garbage-collected) ends with a SIGTERM the workers
ignore, and an iterator dropped that way is gone from any registry of iterators; so the worker processes
themselves are remembered here, and the exit hook kills every one still alive.
"""
from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401 - its exit hook must be registered before ours (ours runs first)
import signal
import weakref

_LIVE: "weakref.WeakSet" = weakref.WeakSet()   # DataLoader iterators with workers, until garbage-collected
_PROCESSES: list = []                           # their worker processes, until seen dead


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of the training DataLoader."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def track(batches) -> None:
    """Remember a DataLoader iterator whose workers the exit hook must stop."""
    _LIVE.add(batches)
    _PROCESSES[:] = [p for p in _PROCESSES if p.is_alive()] + list(getattr(batches, "_workers", []))


def stop(batches) -> None:
    """Stop a DataLoader iterator's workers now: torch's own shutdown, then SIGKILL for any still busy."""
    if batches is None or not hasattr(batches, "_shutdown_workers"):
        return
    batches._shutdown_workers()      # done event, join with a timeout, then a SIGTERM they ignore
    _kill(getattr(batches, "_workers", []))


def _kill(processes) -> None:
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


@atexit.register
def _stop_all() -> None:
    for batches in list(_LIVE):
        stop(batches)
    _kill(_PROCESSES)
