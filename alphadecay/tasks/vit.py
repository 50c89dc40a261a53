"""ViT-tiny on an ImageNet-style image folder with every weight-decay strategy (the ViT row of the paper's
Table 5): timm's ``vit_tiny_patch16_224`` and the DeiT recipe through timm's own parts (RandAugment, Mixup/CutMix,
label smoothing, random erasing, drop path, repeated augmentation, warm-up + cosine), ``torchrun`` DDP, top-1/top-5
evaluation; the random generators of the loop seeded with seed + rank, as DeiT's.

    torchrun --nproc_per_node=8 -m alphadecay.tasks.vit --data_dir /data/imagenet --strategy alphadecay \\
        --weight_decay 1e-6 --save_dir runs/vit-alphadecay

Which modules get module-wise decay: every ``nn.Linear`` (per block: the fused ``attn.qkv``, ``attn.proj``,
``mlp.fc1``, ``mlp.fc2``; and the classifier ``head``), as the paper's release treats LLaMA's linears, its first
(block 0's qkv) and last (``head``) left at the base decay by --remove_first_layer/--remove_last_layer; the
patch-embedding convolution, norms, class token and position embedding keep the base decay (the "other"
group); a linear's bias shares its weight's decay.

The update follows the pretraining loop's order and shares its pieces (runtime, parallelize, strategy,
optimizer, Checkpointer, RunLogger, StopSignal); checkpoints resume exactly (tests/test_vit.py).
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time

import torch

from ..errors import ConfigError, NonFiniteError, print_error


class ImageLoss(torch.nn.Module):
    """The model and the training criterion as one module, so that DDP wraps the whole forward."""

    def __init__(self, model, criterion):
        super().__init__()
        self.model, self.criterion = model, criterion

    def forward(self, images, targets):
        return self.criterion(self.model(images), targets)


class CosineSchedule:
    """timm's CosineLRScheduler stepped once per update, with the loop's scheduler interface."""

    def __init__(self, optimizer, *, total: int, warmup: int, min_lr: float, warmup_lr: float):
        from timm.scheduler import CosineLRScheduler
        self.timm = CosineLRScheduler(optimizer, t_initial=total, lr_min=min_lr, warmup_t=warmup,
                                      warmup_lr_init=warmup_lr, t_in_epochs=False)
        self.optimizer, self.updates = optimizer, 0
        self.timm.step_update(0)

    def step(self):
        self.updates += 1
        self.timm.step_update(self.updates)

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        return {"updates": self.updates}

    def load_state_dict(self, state):
        self.updates = int(state["updates"])
        self.timm.step_update(self.updates)


def build_model(args):
    import timm
    try:
        model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes, img_size=args.img_size,
                                  drop_path_rate=args.drop_path, **args.model_kwargs)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ConfigError(f"timm cannot build --model {args.model!r} with --model_kwargs {json.dumps(args.model_kwargs)} "
                          f"({' '.join(str(e).split())[:150]}); check the name and arguments") from None
    # timm's patch embedding is a strided convolution: a size that is not a multiple drops the border silently.
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = patch if isinstance(patch, (tuple, list)) else (patch,) if patch else ()
    for p in set(patch):
        if args.img_size % p:
            raise ConfigError(f"--img_size {args.img_size} is not a multiple of the patch size {p} of --model "
                              f"{args.model}; pass --img_size {args.img_size // p * p or p} or another multiple of {p}")
    return model


def check_classes(num_classes: int, train_classes: dict, val_classes: dict, *, warn: bool = True) -> int:
    """--num_classes (0 = the train/ folders) against the class folders; returns the number to build."""
    if set(val_classes) != set(train_classes):
        differ = sorted(set(val_classes) ^ set(train_classes))
        raise ConfigError(f"val/ and train/ differ in class folders (e.g. {', '.join(differ[:3])}); the labels are "
                          f"the sorted folder names, so give both the same class folders")
    if num_classes and num_classes < len(train_classes):
        raise ConfigError(f"--num_classes {num_classes} is fewer than the {len(train_classes)} class folders of "
                          f"train/; pass --num_classes {len(train_classes)} (or 0 to count them)")
    if num_classes > len(train_classes) and warn:
        print(f"warning: --num_classes {num_classes} is more than the {len(train_classes)} class folders of train/; "
              f"the extra {num_classes - len(train_classes)} outputs are never a target", file=sys.stderr)
    return num_classes or len(train_classes)


def seed_augmentation(seed: int, rank: int) -> None:
    """Python's, numpy's and torch's generators from seed + rank, as DeiT and timm's train.py: Mixup/CutMix
    (numpy) and drop path (torch) draw differently on every rank. Checkpoints keep each rank's generators."""
    import numpy as np
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    np.random.seed(seed + rank)


def evaluate(model, batches, device, world_size: int, bf16: bool) -> dict:
    """Top-1, top-5 and cross-entropy over every validation image, summed across ranks."""
    import torch.distributed as dist

    from .scores import topk_correct
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)   # top1, top5, loss sum, images
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for images, targets in batches:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            logits = model(images).float()
            loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum").reshape(1)
            count = torch.tensor([len(targets)], device=device)
            totals += torch.cat([topk_correct(logits, targets, (1, 5)), loss, count]).double()   # no host sync
    if world_size > 1:
        dist.all_reduce(totals)
    model.train(was_training)
    top1, top5, loss, n = totals.tolist()
    return {"top1": top1 / n, "top5": top5 / n, "eval_loss": loss / n, "eval_images": int(n)}


def train(args) -> dict:
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.models import save_for_hf

    from ..training.checkpointing.checkpoint import Checkpointer
    from ..training.logger import RunLogger, WandbSettings, progress_bar
    from ..training.update import agree_across_ranks, clip_gradients, count_params
    from ..training.optim import build_optimizer, strategy_from_args
    from ..training.parallel.wrap import parallelize
    from ..training.parallel.runtime import StopSignal, process_group, setup
    from .images import TrainImages, eval_batches, image_folder, transforms

    rt = setup(args.device)
    with contextlib.ExitStack() as on_exit:
        on_exit.enter_context(process_group())
        seed_augmentation(args.seed, 0)   # the initial weights: the same on every rank, whatever the world size
        checkpointer = Checkpointer(args.save_dir, rank=rt.rank, world_size=rt.world_size,
                                    keep_last=args.keep_last_checkpoints,
                                    write_model=lambda m, folder, _: save_for_hf(m, folder, safe_serialization=True))
        checkpointer.prepare(resuming=args.continue_from is not None, overwrite=args.overwrite)
        resume_from = checkpointer.resolve(args.continue_from)

        # 1. Data and model; parallelism; the strategy and the optimizer over its groups.
        train_set = image_folder(args.data_dir, "train", transforms(args, training=True))
        val_set = image_folder(args.data_dir, "val", transforms(args, training=False))
        args.num_classes = check_classes(args.num_classes, train_set.reader.class_to_idx,
                                         val_set.reader.class_to_idx, warn=rt.is_main)
        model = build_model(args).to(rt.device)
        mixup = None
        if args.mixup > 0 or args.cutmix > 0:
            mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.smoothing,
                          num_classes=args.num_classes)
            criterion = SoftTargetCrossEntropy()
        else:
            criterion = LabelSmoothingCrossEntropy(args.smoothing) if args.smoothing else torch.nn.CrossEntropyLoss()
        net = parallelize(ImageLoss(model, criterion), world_size=rt.world_size, device=rt.device)
        strategy = strategy_from_args(args, model)
        optimizer = build_optimizer(args.optimizer, strategy.param_groups(), lr=args.lr, device=rt.device)
        scheduler = CosineSchedule(optimizer, total=args.num_training_steps, warmup=args.warmup_steps,
                                   min_lr=args.min_lr, warmup_lr=args.warmup_lr)
        loader = TrainImages(train_set, batch_size=args.batch_size, rank=rt.rank, world_size=rt.world_size,
                             seed=args.seed, workers=args.workers, repeats=1 if args.no_repeated_aug else 3)
        val_batches = eval_batches(val_set, batch_size=args.eval_batch_size, rank=rt.rank,
                                   world_size=rt.world_size, workers=args.workers)
        bf16 = rt.device.type == "cuda" and args.dtype != "float32" and torch.cuda.is_bf16_supported()
        seed_augmentation(args.seed, rt.rank)   # from here on every rank draws its own Mixup and drop path

        # 2. Decays from the initial weights, or everything from a checkpoint.
        assignment, step, images_seen = None, 0, 0
        if resume_from is None:
            assignment = strategy.initial_assignment(optimizer)
        else:
            counters = checkpointer.restore(resume_from, model=model, optimizer=optimizer, scheduler=scheduler,
                                            strategy=strategy, loader=loader, optimizer_name=args.optimizer)
            step, images_seen = counters["update_step"], counters["tokens_seen"]
        log = on_exit.enter_context(RunLogger(
            args.save_dir, enabled=rt.is_main, resumed=resume_from is not None,
            run_config={"args": vars(args), "model": {**count_params(model), "architecture": args.model},
                        "start_step": step},
            wandb=None if args.no_wandb else WandbSettings(args.wandb_project, args.name)))
        if assignment is not None:
            log.decay(assignment, args.strategy)
        params = [p for p in model.parameters() if p.requires_grad]
        stop = on_exit.enter_context(StopSignal())
        bar = on_exit.enter_context(progress_bar(args.num_training_steps, step, rt.is_main))
        batches = iter(loader)

        def save():
            return checkpointer.save(step, model, optimizer, {
                "update_step": step, "tokens_seen": images_seen, "skipped_updates": 0,
                "scheduler": scheduler.state_dict(), "strategy": strategy.state_dict(), "data": loader.state_dict(),
                "model_config": args.model, "optimizer_name": args.optimizer})

        started, preempted = time.time(), False
        while step < args.num_training_steps:
            tick = time.perf_counter()
            # 3. Gradients of one update (mixed / cut images, soft targets), all-reduced on the last micro-batch.
            loss_sum, local_images = torch.zeros((), device=rt.device), 0
            for micro in range(args.gradient_accumulation):
                images, targets = next(batches)
                images, targets = images.to(rt.device, non_blocking=True), targets.to(rt.device, non_blocking=True)
                if mixup is not None:
                    images, targets = mixup(images, targets)
                local_images += len(images)
                last_micro = micro == args.gradient_accumulation - 1
                with contextlib.nullcontext() if last_micro else net.no_sync(), \
                        torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = net.forward(images, targets)
                    (loss / args.gradient_accumulation).backward()
                loss_sum += loss.detach().float()
            grad_norm = clip_gradients(params, args.grad_clipping)
            mean_loss, n_images, stop_votes = agree_across_ranks(loss_sum / args.gradient_accumulation,
                                                                 local_images, stop.received is not None, rt)
            if not (math.isfinite(mean_loss) and math.isfinite(float(grad_norm))):
                raise NonFiniteError(f"non-finite loss or gradient norm at update {step + 1} (loss={mean_loss}); "
                                     f"lower --lr or pass --grad_clipping")

            # 4. Every T updates: each module's alpha and its decay. Then the update.
            assignment = strategy.step(optimizer, step)
            if assignment is not None:
                log.decay(assignment, args.strategy)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            images_seen += int(n_images)

            # 5. Log, evaluate, checkpoint, stop.
            last = step == args.num_training_steps
            if step % args.log_every == 0 or last:
                log.write({"type": "train", "step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                           "images_seen": images_seen, "grad_norm": float(grad_norm),
                           "throughput_images": n_images / max(time.perf_counter() - tick, 1e-9),
                           "weight_decay": optimizer.param_groups[-1]["weight_decay"]})
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.3f}", refresh=False)
            if args.eval_every and step % args.eval_every == 0 and not last:
                log.write({"type": "eval", "step": step, **evaluate(model, val_batches, rt.device, rt.world_size,
                                                                     bf16)})
            if stop_votes > 0:
                preempted = True
                break
            if args.save_every and step % args.save_every == 0 and not last:
                save()

        path = save()
        if preempted:
            if rt.is_main:
                print(f"stopped by a signal at update {step}; checkpoint {path}; resume with --continue_from latest",
                      file=sys.stderr)
            return {"update_step": step, "preempted": True, "checkpoint": path}
        final = evaluate(model, val_batches, rt.device, rt.world_size, bf16)
        log.write({"type": "final", "step": step, **final, "train_seconds": time.time() - started})
        if rt.is_main:
            print(f"finished {step} updates: top-1 {100 * final['top1']:.2f}%, top-5 {100 * final['top5']:.2f}%; "
                  f"checkpoint {path}", file=sys.stderr)
        return {"update_step": step, **final, "checkpoint": path, "model": model, "strategy": strategy}


def _run_cli(fn, args) -> int:
    fn(args)
    return 0


def main(argv=None) -> int:
    """Bad input: one line on stderr, exit code 2; a non-finite loss: one line, exit code 1."""
    from ..cli import run_tool
    from .vit_args import parse_args
    try:
        return run_tool(lambda a: _run_cli(train, parse_args(a)), argv)
    except NonFiniteError as e:
        print_error(str(e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
