"""How far bf16-mixed under DDP (torch.autocast) and under FSDP2 (MixedPrecisionPolicy) drift apart.

The two compute differently (README, Precision): autocast runs the matmuls in bf16 over float32 parameters and
keeps the residual stream, the norms and the rotary products in float32; FSDP2 gathers every parameter in bf16,
so the embedding output, the residual stream and the norms' outputs are bf16 too. Both keep float32 master
weights and Adam moments and reduce gradients in float32. Three 2-rank runs, seed-paired (same initial weights,
same batches in the same order): DDP bf16-mixed, FSDP2 bf16-mixed, and DDP float32 as the yardstick of what bf16
compute itself moves.

    python bench/mixed_drift.py [--model_config configs/llama_20m.json] [--steps 100] [--out runs/mixed_drift]

Prints one row per pair and, last, one JSON object: per pair the largest and the mean absolute difference of
the per-update training loss, the final validation losses' difference, and the weights' relative L2 distance
||a - b|| / ||b|| over every parameter.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from common import REPO, data_paths

RUNS = {"ddp-bf16-mixed": ["--dtype", "bf16-mixed"], "fsdp-bf16-mixed": ["--dtype", "bf16-mixed", "--fsdp"],
        "ddp-float32": ["--dtype", "float32"]}
PAIRS = [("ddp-bf16-mixed", "fsdp-bf16-mixed"), ("ddp-bf16-mixed", "ddp-float32"), ("fsdp-bf16-mixed", "ddp-float32")]


def run(name: str, flags: list[str], args, paths) -> Path:
    out = Path(args.out) / name
    final = out / f"model_{args.steps}"
    if not final.is_dir():
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "torchrun_main.py"), "--model_config", args.model_config, "--seed", "1",
               "--dataset_path", paths["train"].rstrip("/") + "/c4-dev.00000-of-00002.json.gz",
               "--eval_dataset_path", paths["eval"], "--tokenizer", paths["tokenizer"], "--packing",
               "--batch_size", "4", "--total_batch_size", "8", "--max_length", str(args.max_length),
               "--num_training_steps", str(args.steps), "--warmup_steps", str(args.steps // 10), "--lr", "1e-3",
               "--optimizer", "adamw", "--weight_decay", "0.1", "--eval_every", "0", "--save_every", "0",
               "--target_eval_tokens", "20000", "--workers", "0", "--no_wandb", "--save_dir", str(out), *flags]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
        subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    return out


def records(folder: Path) -> tuple[dict[int, float], float]:
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = {r["step"]: r["loss"] for r in lines if r["type"] == "train"}
    final = [r["eval_loss"] for r in lines if r["type"] == "final"][-1]
    return train, final


def weights(folder: Path, steps: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return {k: v.double() for k, v in load_file(folder / f"model_{steps}" / "model.safetensors").items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_config", default=str(REPO / "configs" / "llama_20m.json"))
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--out", default=str(REPO / "runs" / "mixed_drift"))
    args = p.parse_args()
    paths = data_paths()
    folders = {name: run(name, flags, args, paths) for name, flags in RUNS.items()}
    result = {"model_config": os.path.basename(args.model_config), "steps": args.steps, "pairs": {}}
    for a, b in PAIRS:
        (la, fa), (lb, fb) = records(folders[a]), records(folders[b])
        diffs = [abs(la[s] - lb[s]) for s in la if s in lb]
        wa, wb = weights(folders[a], args.steps), weights(folders[b], args.steps)
        distance = sum(((wa[k] - wb[k]) ** 2).sum() for k in wb).sqrt() / sum((w ** 2).sum() for w in wb.values()).sqrt()
        row = {"max_abs_train_loss_diff": max(diffs), "mean_abs_train_loss_diff": sum(diffs) / len(diffs),
               "final_eval_loss": [fa, fb], "weights_relative_l2": float(distance)}
        result["pairs"][f"{a} vs {b}"] = row
        print(f"{a} vs {b}: train loss |diff| max {row['max_abs_train_loss_diff']:.4f} mean "
              f"{row['mean_abs_train_loss_diff']:.4f}; final eval loss {fa:.4f} vs {fb:.4f}; weights "
              f"{row['weights_relative_l2']:.2e} apart")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
