"""The shipped recipes through bench/scale_model.py: the paper's DDP runs (scripts/table2_adam, common.sh's GPU counts
and micro-batches) and scripts/fsdp_llama.sh at 1b/3b/7b on 1 and 4 nodes of 8 GPUs, each read from its script's
DRY_RUN command, so the table follows the scripts as they change.

    python bench/scale_model.py --recipes [--json]
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scale_model  # noqa: E402
from scale_model import REPO  # noqa: E402

# The paper's DDP runs (scripts/table2_adam: common.sh's counts and micro-batches) and scripts/fsdp_llama.sh.
RECIPES = [("ddp-60m", "table2", "llama_60m", 1), ("ddp-130m", "table2", "llama_130m", 1),
           ("ddp-350m", "table2", "llama_350m", 1), ("ddp-1b", "table2", "llama_1b", 1)] + \
          [(f"fsdp-{m}-{n}node", "fsdp", m, n) for m in ("1b", "3b", "7b") for n in (1, 4)]


def recipe_command(kind, model, nodes) -> tuple[list[str], int, int]:
    """(torchrun_main.py flags, GPUs per node, nodes) from the script's own DRY_RUN output."""
    import shlex
    import subprocess

    env = {**os.environ, "DRY_RUN": "1", "NO_WANDB": "1"}
    if kind == "table2":
        gpus = int(subprocess.run(["bash", "-c", f"source scripts/common.sh; ad_model_defaults {model}; "
                                   f"echo $M_NGPUS"], cwd=REPO, env=env, capture_output=True, text=True,
                                  check=True).stdout.split()[-1])
        env.update(NGPUS=str(gpus), MODELS=model, METHODS="alphadecay", DECAYS="1e-5", SEEDS="5")
        script, nodes = "scripts/table2_adam/run.sh", 1
    else:
        gpus = 8
        env.update(MODEL=model, NNODES=str(nodes), NPROC=str(gpus), RDZV_ENDPOINT="host:29500")
        script = "scripts/fsdp_llama.sh"
    out = subprocess.run(["bash", script], cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if "torchrun_main.py" in x)
    argv = shlex.split(line)
    argv = argv[argv.index("torchrun_main.py") + 1:]
    return [a for a in argv if a != "--continue_from" and a != "latest"], gpus, nodes


def recipes(gpus=("h100", "a100")) -> list[dict]:
    rows = []
    for name, kind, model, nodes in RECIPES:
        argv, per_node, nodes = recipe_command(kind, model, nodes)
        args, _ = scale_model.parse(argv + ["--gpus_per_node", str(per_node), "--nodes", str(nodes)])
        shapes = scale_model.Shapes(args.model_config, args.max_length)
        for gpu in gpus:
            r = scale_model.model_update(args, gpu, per_node, nodes, shapes=shapes)
            rows.append({"name": name, "parallel": r["parallel"], "gpu": gpu, "nodes": nodes,
                         "gpus": r["world"], "micro_batch": args.batch_size, "accum": args.gradient_accumulation,
                         "dtype": args.dtype, "mfu_ceiling": round(r["mfu_ceiling"], 4),
                         "peak_memory_gb": round(r["peak_memory_gb"], 1),
                         "comm_gb_per_update_per_rank": round(r["comm_bytes_per_update_per_rank"] / 1e9, 2),
                         "seconds_per_update": round(r["seconds_per_update"], 3)})
    return rows


def print_recipes(as_json: bool) -> None:
    rows = recipes()
    if as_json:
        print(json.dumps(rows))
        return
    print("| recipe | parallel | GPU | nodes x GPUs | micro x accum | dtype | comm GB/update/rank | s/update | "
          "peak GiB/GPU | MFU ceiling |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['parallel']} | {r['gpu']} | {r['nodes']} x {r['gpus'] // r['nodes']} | "
              f"{r['micro_batch']} x {r['accum']} | {r['dtype']} | {r['comm_gb_per_update_per_rank']} | "
              f"{r['seconds_per_update']} | {r['peak_memory_gb']} | {r['mfu_ceiling']:.1%} |")
