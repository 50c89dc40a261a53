"""Process setup: torchrun (NCCL on GPUs, gloo on CPU) or one plain process, no code change."""
from __future__ import annotations

import contextlib
import datetime
import os
import signal
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ...errors import ConfigError, NonFiniteError


@dataclass
class Runtime:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup(requested_device: str = "auto", timeout_minutes: float | None = None) -> Runtime:
    """``timeout_minutes``: how long a collective waits for the other ranks (None: torch's default, 10 on NCCL)."""
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world = world_size_from_env()
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = {} if timeout_minutes is None else {"timeout": datetime.timedelta(minutes=timeout_minutes)}
        dist.init_process_group(backend, rank=rank, world_size=world,
                                device_id=device if device.type == "cuda" else None, **timeout)
    return Runtime(rank, local_rank, world, device)


def teardown(clean: bool = True) -> None:
    """Destroy the process group. ``clean``: every rank got here together (a finished or agreed stop)."""
    if not dist.is_initialized():
        return
    if clean:
        # Every rank reaches this point before the group goes away; tearing gloo down while a peer
        # is still using it can abort the process at exit.
        dist.barrier()
        # gloo's destructor joins its worker threads while holding the GIL; a worker still dropping the
        # tensors of a finished collective needs the GIL for that, and the process hangs for good (torch
        # issues #56297, #190489; seen here once in a CI run). Sleeping releases the GIL so they finish first.
        time.sleep(0.2)
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - a peer that already failed can make the group's shutdown fail too
        pass


@contextlib.contextmanager
def process_group():
    """Destroys the process group however the block ends. Only a finished run or an error that every rank
    raised together (NonFiniteError) waits for the others first; after any other error a peer may be gone."""
    try:
        yield
    except NonFiniteError:
        teardown(clean=True)
        raise
    except BaseException:
        teardown(clean=False)
        raise
    teardown(clean=True)


class StopSignal:
    """SIGTERM/SIGINT set a flag; the loop finishes the update in flight, checkpoints and exits.

    A context manager: the previous handlers come back on leaving. ``request()`` sets the flag as a
    signal would (for callers that stop a run from code).
    """

    def __init__(self):
        self.received: int | None = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()

    def request(self, signum: int = signal.SIGTERM) -> None:
        self.received = signum

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.received = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
