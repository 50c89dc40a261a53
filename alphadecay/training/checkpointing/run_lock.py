"""One run per run folder: an exclusive lock on ``<save_dir>/.run.lock`` for the whole run.

Two launches into one folder would interleave their metrics.jsonl and overwrite each other's checkpoints;
the second one must fail before it touches anything. ``flock`` is released by the kernel when its holder
dies (SIGKILL, OOM killer, a lost node), so a stale lock never blocks a restart: the file only keeps who
held it (pid, host, start time) for the messages. Rank 0 takes the lock for its whole launch and tells the
other ranks, so every rank of a second launch fails together.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time

import torch.distributed as dist

from ...errors import ConfigError, require_writable_folder

LOCK_FILE = ".run.lock"
# A holder that just died on this host may leave forked DataLoader workers that share its lock for a few
# seconds (they notice the dead parent within torch's 5 s status interval).
_DEAD_HOLDER_GRACE_S = 10.0


def _holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        info = json.loads(os.read(fd, 1 << 16).decode("utf-8", "replace") or "{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict) -> str:
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {when}"


def _alive_here(info: dict) -> bool:
    """False only for a holder known to be gone: a pid of this host that no longer exists."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return True
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """A context manager around one run in ``save_dir``; collective (every rank enters it, rank 0 holds it).

    Entering creates the folder if needed (and leaving removes it again if the run left nothing but the lock
    in it, so a start that failed early leaves no folder behind). A second holder gets a ConfigError naming
    the first one's pid and host.
    """

    def __init__(self, save_dir: str, *, rank: int = 0, world_size: int = 1, flag: str = "--save_dir"):
        self.save_dir, self.rank, self.world_size, self.flag = save_dir, rank, world_size, flag
        self.path = os.path.join(save_dir, LOCK_FILE)
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> "RunLock":
        error = None
        if self.rank == 0:
            try:
                self._acquire()
            except ConfigError as e:
                error = str(e)
        if self.world_size > 1:   # every rank of a second launch fails, not only rank 0
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise ConfigError(error)
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _acquire(self) -> None:
        require_writable_folder(self.save_dir, self.flag)
        self._created = not os.path.isdir(self.save_dir)
        os.makedirs(self.save_dir, exist_ok=True)
        deadline = time.monotonic() + _DEAD_HOLDER_GRACE_S
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                info = _holder(fd)
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise ConfigError(f"cannot lock {self.flag} {self.save_dir!r} ({e.strerror}); use a folder on a "
                                      f"file system that supports locks") from None
                if not _alive_here(info) and time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                self._remove_if_created()
                raise ConfigError(f"{self.flag} {self.save_dir!r} is in use by another run ({_describe(info)}); wait "
                                  f"for it to end or stop it, or choose another {self.flag}") from None
            # A holder that was releasing may have unlinked the file we opened: lock the file that is there now.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _holder(fd)
        if previous:
            print(f"warning: {self.flag} {self.save_dir}: taking over the lock of a run that ended without "
                  f"releasing it ({_describe(previous)})", file=sys.stderr, flush=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": " ".join(sys.argv)[:2000], "launch": os.environ.get("TORCHELASTIC_RUN_ID")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:   # unlinked while still held: a later launch finds no record of an ended run
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(fd)
        self._remove_if_created()

    def _remove_if_created(self) -> None:
        if self._created:
            try:
                os.rmdir(self.save_dir)   # only if empty: the run wrote nothing
            except OSError:
                pass
            self._created = False
