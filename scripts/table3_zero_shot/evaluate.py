"""Zero-shot evaluation of checkpoints with lm-evaluation-harness (the paper's Table 3); one JSON per checkpoint.

    python scripts/table3_zero_shot/evaluate.py CKPT [CKPT ...]              # the paper's seven tasks
    python scripts/table3_zero_shot/evaluate.py CKPT --task_set llr          # the LLR paper's seven (SIQA, no BoolQ)
    python scripts/table3_zero_shot/evaluate.py CKPT --include_path TASKS --tasks smoke_piqa:piqa,...

Each checkpoint folder gets ``zero_shot.json``: the lm-eval version, the model arguments (defaults but
the dtype) and per task ``acc`` and, where lm-eval gives it, ``acc_norm``. ``--tasks NAME:PAPER_TASK``
runs task NAME and files its scores under PAPER_TASK (stand-in tasks in tests and SMOKE runs).
The hub datasets must be reachable or cached: on a cluster whose compute nodes have no internet, run
this once on a login node with the same HF_HOME (it downloads and caches every task's data), then on
the compute nodes with HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import alphadecay  # noqa: F401,E402 - before lm_eval imports transformers: a mismatched torchvision (_torchvision.py)

PAPER_TASKS = ("arc_challenge", "arc_easy", "piqa", "hellaswag", "openbookqa", "winogrande", "boolq")
# The LLR paper's zero-shot list (He et al., ICML 2026; LLR.md section 7): OBQA, Winogrande, ARC-c, ARC-e,
# HellaSwag, SIQA (lm-eval's social_iqa), PIQA.
LLR_TASKS = ("openbookqa", "winogrande", "arc_challenge", "arc_easy", "hellaswag", "social_iqa", "piqa")
TASK_SETS = {"alphadecay": PAPER_TASKS, "llr": LLR_TASKS}


def task_pairs(tasks: str | None, task_set: str) -> list[tuple[str, str]]:
    """(lm-eval task, the name its scores are filed under): --tasks when given, else the task set's."""
    spec = tasks if tasks is not None else ",".join(TASK_SETS[task_set])
    return [tuple(t.split(":", 1)) if ":" in t else (t, t) for t in spec.split(",") if t]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="Hugging Face model folders (<save_dir>/model_<step>)")
    p.add_argument("--tasks", default=None, help="comma-separated NAME or NAME:PAPER_TASK (default: --task_set's)")
    p.add_argument("--task_set", default="alphadecay", choices=sorted(TASK_SETS),
                   help="alphadecay: the AlphaDecay paper's Table 3 tasks (with BoolQ); llr: the LLR paper's (with SIQA)")
    p.add_argument("--include_path", default=None, help="folder of extra lm-eval task YAML files")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default="auto", help="model dtype for lm-eval (auto: the checkpoint's)")
    p.add_argument("--batch_size", default="auto")
    p.add_argument("--limit", type=int, default=None, help="items per task (a quick look; not for the table)")
    args = p.parse_args(argv)
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        print("error: lm-eval is not installed; pip install -e '.[eval]' (lm-eval==0.4.13)", file=sys.stderr)
        return 2
    import torch

    pairs = task_pairs(args.tasks, args.task_set)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    manager = TaskManager(include_path=args.include_path) if args.include_path else TaskManager()
    for checkpoint in args.checkpoints:
        if not os.path.isfile(os.path.join(checkpoint, "config.json")):
            print(f"error: {checkpoint!r} is not a model folder (no config.json); pass <save_dir>/model_<step>",
                  file=sys.stderr)
            return 2
        model_args = f"pretrained={checkpoint},dtype={args.dtype}"
        out = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=[name for name, _ in pairs],
                                      device=device, batch_size=args.batch_size, limit=args.limit,
                                      task_manager=manager, log_samples=False)
        scores = {}
        for name, paper in pairs:
            result = out["results"][name]
            scores[paper] = {k.split(",")[0]: v for k, v in result.items()
                             if k.split(",")[0] in ("acc", "acc_norm") and isinstance(v, float)}
        record = {"checkpoint": os.path.abspath(checkpoint), "lm_eval": lm_eval.__version__, "model_args": model_args,
                  "limit": args.limit, "tasks": scores}
        with open(os.path.join(checkpoint, "zero_shot.json"), "w") as f:
            json.dump(record, f, indent=1)
        print(json.dumps({"checkpoint": checkpoint, **{t: s for t, s in scores.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
