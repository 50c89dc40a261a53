"""Helpers to run the real training entry point in tests (in-process or under torchrun)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import forklaunch

REPO = Path(__file__).resolve().parents[1]
# Validation tokens of a tiny run: enough for a loss that means something, few enough that the final evaluation
# of the many launches the suite makes stays cheap.
EVAL_TOKENS = 1000


def data_flags(data_dir: Path) -> list[str]:
    c4 = data_dir / "c4" / "en"
    return ["--dataset_path", str(c4 / "c4-dev.00000-of-00002.json.gz"),
            "--eval_dataset_path", str(c4 / "c4-dev.00001-of-00002.json.gz"),
            "--tokenizer", str(data_dir / "tokenizers" / "t5-base")]


def tiny_run_flags(save_dir, steps=20, **over) -> list[str]:
    flags = {"--model_config": str(REPO / "configs" / "llama_9m.json"), "--batch_size": "4", "--max_length": "64",
             "--num_training_steps": str(steps), "--warmup_steps": str(min(2, steps)), "--lr": "3e-3", "--eval_every": "0",
             "--target_eval_tokens": str(EVAL_TOKENS), "--save_every": "1000", "--workers": "0", "--save_dir": str(save_dir),
             "--dtype": "float32", "--seed": "1"}
    flags.update({k if k.startswith("--") else "--" + k: str(v) for k, v in over.items()})
    out = []
    for k, v in flags.items():
        out += [k] if v == "" else [k, v]
    return out + ["--no_wandb"]


def run_main(argv, callbacks=()) -> int:
    from alphadecay.training.loop import main
    return main(argv, callbacks)


def run_cli(argv, nproc=None, env=None, timeout=600, check=True, faults=()):
    """Run torchrun_main.py in a fresh process (under torchrun when nproc is given; forked from forklaunch's
    pre-imported server where it may be); ``faults`` (see faults.parse, e.g. "nan=3:1") run
    it through tests/dist/train_with_faults.py instead."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **(env or {})}
    if nproc and not faults:
        proc = forklaunch.launch(REPO / "torchrun_main.py", argv, nproc, full_env, timeout)
    else:
        cmd = forklaunch.torchrun_command(nproc) if nproc else [sys.executable]
        if faults:
            cmd += [str(REPO / "tests" / "dist" / "train_with_faults.py"), *faults, "--", *argv]
        else:
            cmd += [str(REPO / "torchrun_main.py"), *argv]
        proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def records(save_dir, kind=None) -> list[dict]:
    path = Path(save_dir) / "metrics.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in recs if kind is None or r["type"] == kind]
