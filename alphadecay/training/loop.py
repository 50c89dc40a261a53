"""The pretraining loop. It reads like the paper's Algorithm:

    build model, strategy (initial decays from the initial weights), optimizer, schedule
    for each update t:
        accumulate gradients over the micro-batches (DDP syncs only on the last one)
        clip; stop (or skip) on a non-finite loss / gradient, on every rank together
        every T updates: recompute each module's alpha and reassign its weight decay
        optimizer step, schedule step
        log, evaluate, checkpoint, honour a preemption signal
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from . import checkpoint
from .args import parse_args
from .data import TrainBatches, load_tokenizer, make_train_loader
from .errors import ConfigError
from .evaluate import evaluate
from .flops import mfu, training_flops_per_token
from .logger import RunLogger, progress_bar
from .loss import NextTokenLoss
from .model import build_model, count_params, vocab_guard
from .optim import build_optimizer, build_scheduler, strategy_from_args
from .runtime import StopSignal, setup, teardown, world_size_from_env


class NonFiniteError(RuntimeError):
    pass


def _fault_injection() -> tuple[int | None, int | None]:
    """Test hook: ALPHADECAY_FAULT_NAN_STEP=update[:rank] makes that update's loss NaN (on one rank)."""
    spec = os.environ.get("ALPHADECAY_FAULT_NAN_STEP")
    if not spec:
        return None, None
    step, _, rank = spec.partition(":")
    return int(step), (int(rank) if rank else None)


def _ensure_writable(save_dir: str) -> None:
    try:
        os.makedirs(save_dir, exist_ok=True)
        probe = os.path.join(save_dir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"cannot write to --save_dir {save_dir!r} ({e.strerror}); pass a writable folder") from None


def train(args) -> dict:
    rt = setup(args.device)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    dtype = torch.bfloat16 if (args.dtype or ("bfloat16" if rt.device.type == "cuda" and torch.cuda.is_bf16_supported()
                                              else "float32")) == "bfloat16" else torch.float32
    if rt.is_main and not args.eval_only:
        _ensure_writable(args.save_dir)
    resume_from = checkpoint.resolve(args.continue_from, args.save_dir)

    tokenizer = load_tokenizer(args.tokenizer, args.max_length)
    model = build_model(args.model_config, dtype=dtype, device=rt.device, seed=args.seed,
                        activation_checkpointing=args.activation_checkpointing)
    if args.eval_only:
        return evaluate_checkpoint(args, rt, model, tokenizer, resume_from)
    strategy = strategy_from_args(args, model)
    # The paper's start: decays assigned from the initial weights (skipped when resuming: restored below).
    optimizer = build_optimizer(args, strategy.param_groups(initial_assignment=resume_from is None), rt.device)
    scheduler = build_scheduler(args, optimizer)
    dataset = TrainBatches(args.dataset_path, tokenizer, batch_size=args.batch_size, max_length=args.max_length,
                           rank=rt.rank, world_size=rt.world_size, num_workers=args.workers, packing=args.packing)
    loader = make_train_loader(dataset, args.workers)

    update_step, tokens_seen, skipped = 0, 0, 0
    if resume_from is not None:
        state = checkpoint.load_state(resume_from, rt.rank, rt.world_size)
        checkpoint.load_model_weights(model, resume_from)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        strategy.load_state_dict(state["strategy"])
        loader.load_state_dict(state["data"])
        checkpoint.set_rng_state(state["rng"])
        update_step, tokens_seen, skipped = state["update_step"], state["tokens_seen"], state["skipped_updates"]
    elif args.strategy in ("uniform", "none", "awd"):
        strategy.initial_assignment()   # per-module alphas at the start, for the record

    guard_vocab = vocab_guard(model, tokenizer)
    sizes = count_params(model)
    flops_per_token = training_flops_per_token(model.config, sizes["non_embedding_params"], args.max_length)
    run_config = {"args": vars(args), "model": {**sizes, **model.config.to_dict()}, "start_step": update_step}
    log = RunLogger(args, enabled=rt.is_main, run_config=run_config, resumed=resume_from is not None)
    if resume_from is None:
        log.decay(strategy.last, args.strategy)
    net = loss_fn = NextTokenLoss(model)
    if args.compile:
        loss_fn.compile()
    if rt.distributed:
        net = DDP(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None, broadcast_buffers=False)
    params = [p for p in model.parameters() if p.requires_grad]
    accum = args.gradient_accumulation
    stop = StopSignal()
    bar = progress_bar(args.num_training_steps, update_step, rt.is_main)
    batches = iter(loader)
    fault_step, fault_rank = _fault_injection()
    # Test hook: behave as if SIGTERM arrived during update N (deterministic preemption).
    stop_after = int(os.environ.get("ALPHADECAY_STOP_AFTER", "0")) or None
    preempted = False

    def save():
        state = {"update_step": update_step, "tokens_seen": tokens_seen, "skipped_updates": skipped,
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "strategy": strategy.state_dict(), "data": loader.state_dict(), "model_config": args.model_config}
        return checkpoint.save(args.save_dir, update_step, model=model, tokenizer=tokenizer, training_state=state,
                               rank=rt.rank, world_size=rt.world_size, keep_last=args.keep_last_checkpoints)

    started = time.time()
    try:
        while update_step < args.num_training_steps:
            t0 = time.perf_counter()
            if stop_after is not None and update_step + 1 >= stop_after:
                stop.received = signal.SIGTERM
            # 1. Gradients of one update, accumulated without an all-reduce until the last micro-batch.
            loss_sum = torch.zeros((), device=rt.device, dtype=torch.float32)
            local_tokens = 0
            for micro in range(accum):
                try:
                    batch = next(batches)
                except StopIteration:
                    raise ConfigError(f"the training data ran out at update {update_step} of "
                                      f"{args.num_training_steps}; give more data or fewer --num_training_steps") from None
                mask = batch["attention_mask"]
                local_tokens += int(mask.sum())       # counted on the host copy: no device sync
                inputs = loss_fn.inputs(guard_vocab(batch["input_ids"]), mask, rt.device)
                sync = contextlib.nullcontext() if (micro == accum - 1 or not rt.distributed) else net.no_sync()
                with sync:
                    loss = net(**inputs)
                    if fault_step == update_step + 1 and fault_rank in (None, rt.rank):
                        loss = loss * math.nan
                        fault_step = None   # once: a skipped update is retried with the next batch
                    (loss / accum).backward()
                loss_sum += loss.detach().float()

            # 2. One host sync per update: grad norm, loss, tokens and the stop flag, agreed by all ranks.
            if args.grad_clipping:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clipping)
            else:   # the norm is logged; clip_grad_norm_(inf) would also multiply every gradient by 1
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            stats = torch.stack([loss_sum / accum, torch.tensor(float(local_tokens), device=rt.device),
                                 torch.tensor(float(stop.received is not None), device=rt.device)])
            if rt.distributed:
                dist.all_reduce(stats)
            mean_loss, tokens, stop_votes = (stats / torch.tensor([rt.world_size, 1, 1], device=rt.device)).tolist()
            grad_norm = float(grad_norm)
            if not (math.isfinite(mean_loss) and math.isfinite(grad_norm)):
                if args.on_nonfinite == "stop":
                    log.write({"type": "error", "step": update_step + 1, "error": "non-finite",
                               "loss": mean_loss, "grad_norm": grad_norm})
                    raise NonFiniteError(f"non-finite {'loss' if not math.isfinite(mean_loss) else 'gradient norm'} "
                                         f"at update {update_step + 1} (loss={mean_loss}, grad_norm={grad_norm}); "
                                         f"lower --lr, add --grad_clipping, or pass --on_nonfinite skip")
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                print(f"warning: skipped update {update_step + 1}: non-finite loss or gradient "
                      f"({skipped} skipped so far)", file=sys.stderr)
                if stop_votes > 0:       # a signal must be honoured even while updates are skipped
                    preempted = True
                    break
                continue

            # 3. AlphaDecay: every T updates, recompute module alphas and reassign module-wise decays.
            assignment = strategy.step(optimizer, update_step)
            if assignment is not None:
                log.decay(assignment, args.strategy)

            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            update_step += 1
            tokens_seen += int(tokens)

            # 4. Side effects: logging, evaluation, checkpoints, preemption.
            elapsed = time.perf_counter() - t0
            if update_step % args.log_every == 0 or update_step == args.num_training_steps:
                rec = {"type": "train", "step": update_step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                       "tokens_seen": tokens_seen, "throughput_tokens": tokens / elapsed, "grad_norm": grad_norm,
                       "weight_decay": optimizer.param_groups[-1]["weight_decay"]}
                if rt.device.type == "cuda":
                    rec["mfu"] = mfu(flops_per_token * tokens / elapsed, rt.device, rt.world_size)
                log.write(rec)
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{tokens / elapsed:,.0f}", refresh=False)
            if args.eval_every and update_step % args.eval_every == 0 and update_step < args.num_training_steps:
                last_eval = evaluate(model, tokenizer, args, rt)
                log.write({"type": "eval", "step": update_step, **last_eval})
            if stop_votes > 0:
                preempted = True
                break
            if args.save_every and update_step % args.save_every == 0 and update_step < args.num_training_steps:
                save()
    finally:
        bar.close()
        stop.restore()

    path = save()
    if preempted:
        if rt.is_main:
            print(f"stopped by a signal at update {update_step}; checkpoint written to {path}. Resume with the "
                  f"same command plus --continue_from {path} (or --continue_from latest)", file=sys.stderr)
        log.close()
        teardown()
        return {"update_step": update_step, "preempted": True, "checkpoint": path,
                "model": model, "strategy": strategy}
    final = evaluate(model, tokenizer, args, rt)
    log.write({"type": "final", "step": update_step, **final, "skipped_updates": skipped,
               "skipped_documents": loader.skipped_documents, "train_seconds": time.time() - started})
    if rt.is_main:
        print(f"finished {update_step} updates: eval loss {final['eval_loss']:.4f}, perplexity {final['eval_ppl']:.2f}; "
              f"checkpoint {path}", file=sys.stderr)
    log.close()
    teardown()
    return {"update_step": update_step, **final, "checkpoint": path, "model": model, "strategy": strategy}


def evaluate_checkpoint(args, rt, model, tokenizer, path) -> dict:
    if path is None:
        raise ConfigError(f"no checkpoint found in {args.save_dir!r} for --continue_from latest; train first or pass a folder")
    checkpoint.load_model_weights(model, path)
    result = evaluate(model, tokenizer, args, rt)
    if rt.is_main:
        print(json.dumps({"checkpoint": path, **result}))
    teardown()
    return result


def main(argv=None) -> int:
    """Entry point: a clean one-line error and exit code 2 for bad input, 1 for a failed run."""
    try:
        args = parse_args(argv, world_size=world_size_from_env())
        train(args)
        return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
