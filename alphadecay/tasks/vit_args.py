"""Flags of ``python -m alphadecay.tasks.vit``: DeiT's recipe for ViT-tiny, the paper's optimizer, the strategy flags."""
from __future__ import annotations

import argparse
import json
import math
import os

from ..cli import OneLineParser
from ..errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    from ..training.flags.args import add_weight_decay_flags
    p = OneLineParser(prog="python -m alphadecay.tasks.vit", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      description="Train timm's ViT-tiny on an image folder with module-wise weight decay "
                                  "(AlphaDecay) or a baseline; torchrun for several GPUs.")
    m = p.add_argument_group("model and data")
    m.add_argument("--data_dir", required=True, help="folder with train/<class>/* and val/<class>/* images")
    m.add_argument("--model", default="vit_tiny_patch16_224", help="a timm model name")
    m.add_argument("--model_kwargs", default="", help='JSON of extra timm.create_model arguments, e.g. '
                   '\'{"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 8}\'')
    m.add_argument("--num_classes", type=int, default=0, help="classes (0 = the number of train/ sub-folders; "
                   "fewer is an error, more a warning: outputs no image has)")
    m.add_argument("--img_size", type=int, default=224, help="input resolution (a multiple of the patch size)")
    m.add_argument("--workers", type=int, default=8, help="DataLoader worker processes per rank")
    o = p.add_argument_group("optimisation (DeiT's recipe; the paper's Adam with coupled decay)")
    o.add_argument("--optimizer", default="adam", choices=["adam", "adamw"], type=str.lower,
                   help="adam: coupled L2 decay, as the paper's ViT table (decays 1e-6, 5e-6); adamw: DeiT's own "
                        "(with --weight_decay 0.05)")
    o.add_argument("--lr", type=float, default=1e-3, help="peak lr (DeiT: 5e-4 x total batch / 512)")
    o.add_argument("--batch_size", type=int, default=128, help="images per GPU/process per micro-step")
    o.add_argument("--gradient_accumulation", type=int, default=1, help="micro-steps per update")
    o.add_argument("--epochs", type=float, default=300, help="training epochs (sets the number of updates)")
    o.add_argument("--num_training_steps", type=int, default=0, help="updates to train for (0 = from --epochs)")
    o.add_argument("--warmup_epochs", type=float, default=5, help="linear warm-up, in epochs")
    o.add_argument("--warmup_lr", type=float, default=1e-6, help="lr at the start of the warm-up")
    o.add_argument("--min_lr", type=float, default=1e-5, help="lr at the end of the cosine")
    o.add_argument("--grad_clipping", type=float, default=0.0, help="max grad norm (0 = off, as DeiT)")
    o.add_argument("--drop_path", type=float, default=0.1, help="stochastic depth rate")
    o.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    o.add_argument("--mixup", type=float, default=0.8, help="mixup alpha (0 = off)")
    o.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha (0 = off)")
    o.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="timm auto-augment policy ('' = none)")
    o.add_argument("--color_jitter", type=float, default=0.3, help="color jitter (ignored by timm when --aa is set)")
    o.add_argument("--reprob", type=float, default=0.25, help="random-erasing probability")
    o.add_argument("--no_repeated_aug", action="store_true", help="turn off DeiT's repeated augmentation (on by "
                   "default: its RASampler, timm's RepeatAugSampler, each image 3 times per epoch, the copies on "
                   "different ranks)")
    o.add_argument("--crop_pct", type=float, default=0.875, help="evaluation center-crop fraction")
    o.add_argument("--seed", type=int, default=0, help="init, data order and augmentation seed")
    o.add_argument("--dtype", default=None, choices=["bfloat16", "float32"],
                   help="autocast bfloat16 on a bf16-capable GPU unless float32")
    o.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_weight_decay_flags(p, weight_decay=1e-6)
    e = p.add_argument_group("evaluation, checkpoints, logging")
    e.add_argument("--eval_batch_size", type=int, default=256, help="images per evaluation batch")
    e.add_argument("--eval_every", type=int, default=0, help="evaluate every N updates (0 = only at the end)")
    e.add_argument("--save_every", type=int, default=5000, help="checkpoint every N updates (plus one at the end)")
    e.add_argument("--save_dir", required=True, help="run folder: checkpoints and metrics.jsonl")
    e.add_argument("--keep_last_checkpoints", type=int, default=2, help="keep only the newest K checkpoints (0 = all)")
    e.add_argument("--continue_from", default=None, help="a checkpoint folder, or 'latest' in --save_dir")
    e.add_argument("--overwrite", action="store_true", help="move a previous run in --save_dir aside")
    e.add_argument("--log_every", type=int, default=50, help="a train record every N updates")
    e.add_argument("--name", default=None, help="wandb run name (default vit-<strategy>-wd<decay>-s<seed>)")
    e.add_argument("--wandb_project", default=os.environ.get("WANDB_PROJECT", "AlphaDecay-ViT"))
    e.add_argument("--no_wandb", action="store_true", help="metrics.jsonl only")
    return p


def _count_images(folder: str) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def parse_args(argv=None, world_size: int | None = None):
    from ..training.flags.args import check_numbers, check_weight_decay_flags
    from ..training.parallel.runtime import world_size_from_env
    args = build_parser().parse_args(argv)
    positive = lambda v: v > 0   # noqa: E731
    check_numbers(args, [("lr", positive, "positive"), ("batch_size", positive, "positive"),
                         ("gradient_accumulation", positive, "positive"), ("epochs", positive, "positive"),
                         ("num_training_steps", lambda v: v >= 0, ">= 0"), ("img_size", positive, "positive"),
                         ("warmup_epochs", lambda v: v >= 0, ">= 0"), ("min_lr", lambda v: v >= 0, ">= 0"),
                         ("smoothing", lambda v: 0 <= v < 1, "in [0, 1)"), ("drop_path", lambda v: 0 <= v < 1,
                                                                            "in [0, 1)"),
                         ("mixup", lambda v: v >= 0, ">= 0"), ("cutmix", lambda v: v >= 0, ">= 0"),
                         ("reprob", lambda v: 0 <= v <= 1, "in [0, 1]"), ("crop_pct", lambda v: 0 < v <= 1, "in (0, 1]"),
                         ("workers", lambda v: v >= 0, ">= 0"), ("eval_batch_size", positive, "positive"),
                         ("eval_every", lambda v: v >= 0, ">= 0"), ("save_every", lambda v: v >= 0, ">= 0"),
                         ("log_every", positive, ">= 1"), ("grad_clipping", lambda v: v >= 0, ">= 0"),
                         ("keep_last_checkpoints", lambda v: v >= 0, ">= 0"),
                         ("num_classes", lambda v: v >= 0, ">= 0")])
    check_weight_decay_flags(args)
    if (args.mixup > 0 or args.cutmix > 0) and args.batch_size % 2:
        raise ConfigError(f"--batch_size {args.batch_size} is odd; Mixup/CutMix pair each image with another: pass an "
                          f"even --batch_size, or --mixup 0 --cutmix 0")
    try:
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model_kwargs is not JSON ({e}); pass an object such as '{{\"depth\": 2}}'") from None
    if not isinstance(kwargs, dict):
        raise ConfigError("--model_kwargs must be a JSON object of timm.create_model arguments, e.g. '{\"depth\": 2}'")
    args.model_kwargs = kwargs
    if not os.path.isdir(args.data_dir):
        raise ConfigError(f"--data_dir {args.data_dir!r} is not a folder; pass the folder holding train/ and val/")
    if args.continue_from not in (None, "latest") and not os.path.isdir(args.continue_from):
        raise ConfigError(f"--continue_from {args.continue_from!r} is not a folder; pass a checkpoint folder or "
                          f"'latest'")
    if args.overwrite and args.continue_from is not None:
        raise ConfigError("--overwrite starts a new run and --continue_from continues one; pass only one of them")
    world = world_size if world_size is not None else world_size_from_env()
    per_update = args.batch_size * args.gradient_accumulation * world
    per_epoch = max(1, _count_images(os.path.join(args.data_dir, "train")) // per_update)
    if not args.num_training_steps:
        args.num_training_steps = max(1, math.ceil(args.epochs * per_epoch))
    args.warmup_steps = min(args.num_training_steps - 1, round(args.warmup_epochs * per_epoch))
    args.total_batch_size = per_update
    args.task = "image_classification"   # marks the run for the tables (scripts/downstream_tables.py)
    args.name = args.name or f"vit-{args.strategy}-wd{args.weight_decay:g}-s{args.seed}"
    return args
