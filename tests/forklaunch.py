"""Two-rank runs for tests whose launcher is incidental, forked from one pre-imported server per pytest worker.

Why: a torchrun launch costs each rank a fresh interpreter that imports torch, transformers and datasets again
(about 2.7 CPU-seconds here, 7 on slower CI cores), and the suite makes dozens of them. A forkserver that imported
them once forks each rank instead, with the environment torchrun gives its children (RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR/PORT, TORCHELASTIC_RUN_ID, ...).

Only runs with the caller's environment unchanged since the server started come here (imported libraries read
some variables once, at import). A rank that fails has the others killed at once, and the run exits 1, as
torchrun's does. Everything about the launcher itself (signals, injected faults and crashes, a second launch into
a running folder, the shell scripts) keeps using real torchrun, and
``ALPHADECAY_TEST_LAUNCHER=torchrun`` sends every run there.
"""
import atexit
import multiprocessing as mp
import multiprocessing.connection
import os
import runpy
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What a training rank imports, so that the server pays for it once (alphadecay.training.loop brings the rest).
PRELOAD = ["forklaunch", "alphadecay.training.loop", "torch.distributed.fsdp", "torch.distributed.checkpoint",
           "transformers.models.llama.modeling_llama", "transformers.models.gpt2.modeling_gpt2",
           "transformers.utils.type_validators", "tokenizers"]
# Variables a launch may change without a fresh interpreter: what pytest and the tests' launchers set per run.
_PER_LAUNCH = {"PYTEST_CURRENT_TEST", "WANDB_MODE", "OMP_NUM_THREADS"}

_ctx = None
_env_at_start: dict | None = None


def usable(env: dict, ignore=()) -> bool:
    """Whether a run with ``env`` may be forked: the server's libraries saw the same environment at import
    (``ignore``: variables only read while running)."""
    if os.environ.get("ALPHADECAY_TEST_LAUNCHER") == "torchrun":
        return False
    base = _env_at_start if _env_at_start is not None else dict(os.environ)
    keys = (set(env) | set(base)) - _PER_LAUNCH - set(ignore)
    return all(env.get(k) == base.get(k) for k in keys)


def _context():
    global _ctx, _env_at_start
    if _ctx is None:
        _env_at_start = dict(os.environ)
        _ctx = mp.get_context("forkserver")
        _ctx.set_forkserver_preload(PRELOAD)
    return _ctx


def _rank_main(script: str, args: list, env: dict, cwd: str, out: str, err: str) -> None:
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    import random

    import numpy
    import torch
    # libgomp read OMP_NUM_THREADS when the server loaded it, with the server's environment.
    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))
    # Every fork would start from the server's generator states; fresh interpreters start from fresh entropy.
    random.seed()
    numpy.random.seed()
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).parent))
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - reported as an interpreter would, then the exit status
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _stop(procs) -> None:
    for p in procs:
        if p.exitcode is None:
            p.kill()
    for p in procs:
        p.join(10)


def torchrun(script, args, nproc: int, env: dict, timeout: float, cwd=REPO) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc script *args`` with ``env``, from the forkserver. A rank that
    fails has the others killed at once: they would wait in a collective until its timeout."""
    from torch.distributed import TCPStore

    ctx = _context()
    # The ranks' store is served from here, as torchrun's agent serves it (TORCHELASTIC_USE_AGENT_STORE): bound to
    # a port of its own choosing, so no other launch can take that port between choosing and binding it.
    store = TCPStore("127.0.0.1", 0, world_size=nproc, is_master=True, wait_for_workers=False)
    run_id = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="forklaunch") as d:
        procs = []
        for r in range(nproc):
            rank_env = {**env, "RANK": str(r), "LOCAL_RANK": str(r), "GROUP_RANK": "0", "ROLE_RANK": str(r),
                        "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "ROLE_WORLD_SIZE": str(nproc),
                        "GROUP_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port),
                        "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RUN_ID": run_id,
                        "TORCHELASTIC_RESTART_COUNT": "0"}
            p = ctx.Process(target=_rank_main, args=(str(script), [str(a) for a in args], rank_env, str(cwd),
                                                     f"{d}/out{r}", f"{d}/err{r}"))
            p.start()
            procs.append(p)
        deadline = time.monotonic() + timeout
        try:
            while any(p.exitcode is None for p in procs):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired([str(script), *args], timeout)
                mp.connection.wait([p.sentinel for p in procs if p.exitcode is None], timeout=left)
                if any(p.exitcode not in (None, 0) for p in procs):
                    break
        finally:
            _stop(procs)
            del store
        read = lambda name: "".join(Path(d, f"{name}{r}").read_text(errors="replace") for r in range(nproc))
        # As torchrun: 1 when any rank failed, whatever that rank's own status.
        returncode = int(any(p.exitcode != 0 for p in procs))
        return subprocess.CompletedProcess([str(script), *args], returncode, read("out"), read("err"))


def torchrun_command(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def launch(script, args, nproc: int, env: dict, timeout: float, runtime_env=(),
           cwd=REPO) -> subprocess.CompletedProcess:
    """``script`` on ``nproc`` ranks with ``env``: forked when it may be (``runtime_env``: variables only read while
    running, which may differ from the server's), else under real torchrun."""
    if usable(env, runtime_env):
        return torchrun(script, args, nproc, env, timeout, cwd)
    return subprocess.run(torchrun_command(nproc) + [str(script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_two_ranks(script, *args, timeout: float = 300, env: dict | None = None, runtime_env=(),
                  cwd=REPO) -> subprocess.CompletedProcess:
    """A two-rank run of ``script`` (see ``launch``) that must succeed."""
    proc = launch(script, args, 2, {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout, runtime_env, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
