"""The pretraining loop, in the order of the paper's method (He et al., 2025):

    build the model, parallelize it, build the strategy and the optimizer over its per-module groups
    assign the decays from the initial weights (or restore everything from a checkpoint)
    for each update t:
        accumulate gradients over the micro-batches (synchronised across ranks on the last one)
        clip; stop (or skip) on a non-finite loss / gradient, on every rank together
        every T updates: recompute each module's alpha and reassign its weight decay
        optimizer step, schedule step
        log, evaluate, checkpoint, honour a stop signal

Side effects are small components the loop calls (checkpoint.Checkpointer, logger.RunLogger,
evaluate.Evaluator, runtime.StopSignal, flops.Throughput); code that is not the loop's own hooks in
through callbacks.Callback. Every exit path closes what was opened (data workers, metrics file,
wandb, progress bar, process group) through one ExitStack.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from ..errors import ConfigError, NonFiniteError, one_line, print_error
from ..muon_ddp import Replicas
from ..policy import Policy
from .flags.args import parse_args
from .callbacks import Callback, TrainState
from .checkpointing.checkpoint import Checkpointer, load_model_weights
from .data.batches import TrainBatches, load_tokenizer, make_train_loader
from .data.prepared import is_prepared
from .data.select import eval_path, token_loader
from .evaluate import Evaluator
from .flops import Throughput, output_layer_flops_per_token, training_flops_per_token
from .logger import RunLogger, WandbSettings, progress_bar
from .loss import NextTokenLoss
from .model import build_model, build_model_on_meta, vocab_guard
from .flags.muon import muon_options
from .optim import build_optimizer, build_scheduler, strategy_from_args
from .parallel.wrap import Parallelized, parallelize
from .update import agree_across_ranks, clip_gradients, count_params
from .parallel.precision import resolve_precision
from .checkpointing import resume
from .checkpointing.run_lock import RunLock
from .parallel.runtime import StopSignal, process_group, setup, world_size_from_env
from .data.text_sources import HubSource


PolicyFactory = Callable[[object, torch.nn.Module], Policy]


def train(args, callbacks: Sequence[Callback] = (), policy: PolicyFactory | None = None) -> dict:
    """One training run (or one evaluation with ``--eval_only``) from validated flags (args.parse_args).

    ``policy(args, model)``: builds the run's per-module policy (an ``alphadecay.Policy``) instead of the one the
    flags name (``optim.strategy_from_args``); its ``name`` labels the decay records."""
    rt = setup(args.device, timeout_minutes=args.dist_timeout_minutes)
    with contextlib.ExitStack() as on_exit:
        on_exit.enter_context(process_group())       # destroyed last, on every exit path
        if not args.eval_only:   # one run per folder: a second launch into it fails here, before any work
            on_exit.enter_context(RunLock(args.save_dir, rank=rt.rank, world_size=rt.world_size))
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        tokenizer = load_tokenizer(args.tokenizer, args.max_length)
        checkpointer = Checkpointer(args.save_dir, rank=rt.rank, world_size=rt.world_size,
                                    keep_last=args.keep_last_checkpoints, tokenizer=tokenizer)
        if not args.eval_only:
            checkpointer.prepare(resuming=args.continue_from is not None, overwrite=args.overwrite)
        resume_from = checkpointer.resolve(args.continue_from, announce=not args.eval_only)
        changed = {}   # flags that differ from the checkpoint's and may (any other is refused here)
        if resume_from is not None and not args.eval_only:
            changed = resume.compare(resume_from, checkpointer.load(resume_from), args)
        evaluator = Evaluator(eval_path(args), tokenizer, batch_size=args.eval_batch_size,
                              max_length=args.max_length, target_tokens=args.target_eval_tokens,
                              rank=rt.rank, world_size=rt.world_size, device=rt.device,
                              hub=HubSource.from_args(args))

        # 1. The model (for --eval_only, the checkpoint's own config.json).
        config = args.model_config
        if args.eval_only:
            if resume_from is None:
                raise ConfigError(f"no checkpoint found in {args.save_dir!r} for --continue_from latest; train first "
                                  f"or pass a folder")
            config = os.path.join(resume_from, "config.json")
        precision = resolve_precision(args.dtype, rt.device)
        # The weights are the master copy (bf16 in pure bfloat16, float32 otherwise), under DDP and FSDP2 alike.
        built = dict(dtype=precision.weights, seed=args.seed, activation_checkpointing=args.activation_checkpointing,
                     pad_token_id=tokenizer.pad_token_id)   # the release's configs say -1 for it
        deferred = None
        if args.fsdp and not args.eval_only:   # no weights yet: each rank allocates only its shard, once sharded
            model, deferred = build_model_on_meta(config, **built)
        else:
            model = build_model(config, device=rt.device, **built)
        guard_vocab = vocab_guard(model, tokenizer)
        evaluator.prepare()
        if args.eval_only:
            return evaluate_checkpoint(model, resume_from, evaluator, rt.is_main)

        # 2. Parallelism (DDP, or FSDP2 shards: the optimizer must see the sharded parameters), the
        #    weight-decay strategy and the optimizer over its groups; the training data.
        loss_fn = NextTokenLoss(model, autocast=precision.autocast_dtype(fsdp=args.fsdp))
        net = parallelize(loss_fn, world_size=rt.world_size, device=rt.device, compile=args.compile,
                          fsdp=args.fsdp, param_dtype=precision.fsdp_param_dtype(), dp_replicate=args.dp_replicate)
        if deferred is not None:   # build_model's weights, row by row (a resume's checkpoint brings its own)
            deferred.materialize(loss_fn, model, rt.device, weights=resume_from is None)
        strategy = (policy or strategy_from_args)(args, model)
        if not isinstance(strategy, Policy):
            raise TypeError(f"train(policy=...) must build an alphadecay.Policy, got {type(strategy).__name__}")
        label = args.strategy if policy is None else strategy.name
        optimizer = build_optimizer(args.optimizer, strategy.param_groups(), lr=args.lr, device=rt.device,
                                    model=model, muon=muon_options(args), betas=(args.beta1, args.beta2),
                                    replicas=None if args.fsdp else Replicas(rt.world_size))
        scheduler = build_scheduler(optimizer, args.scheduler, total=args.num_training_steps,
                                    warmup=args.warmup_steps, min_ratio=args.min_lr_ratio)
        loader = on_exit.enter_context(token_loader(args, tokenizer, rt.rank, rt.world_size) if is_prepared(
            args.dataset_path) else make_train_loader(
            TrainBatches(args.dataset_path, tokenizer, batch_size=args.batch_size, max_length=args.max_length,
                         rank=rt.rank, world_size=rt.world_size, num_workers=args.workers, packing=args.packing,
                         hub=HubSource.from_args(args)),
            args.workers))

        # 3. Decays from the initial weights (the paper's start), or the whole state from a checkpoint.
        state, assignment = TrainState(), None
        if resume_from is None:
            assignment = strategy.initial_assignment(optimizer)
        else:
            state = TrainState(**checkpointer.restore(resume_from, model=model, optimizer=optimizer,
                                                      scheduler=scheduler, strategy=strategy, loader=loader,
                                                      optimizer_name=args.optimizer))
            resume.apply(changed, optimizer=optimizer, scheduler=scheduler, strategy=strategy)

        log = on_exit.enter_context(_run_logger(args, model, rt.is_main, state.update_step, resume_from))
        if assignment is not None:
            log.decay(assignment, label)
        if resume_from is not None:
            log.write({"type": "resume", "step": state.update_step, "from": resume_from, "changed": changed})
            if rt.is_main:
                print(resume.announce(resume_from, state.update_step, changed), file=sys.stderr, flush=True)
        run_flags = resume.flags_record(args)
        params = [p for p in model.parameters() if p.requires_grad]
        speed = Throughput(training_flops_per_token(model, args.max_length), rt.device, rt.world_size,
                           head_flops_per_token=output_layer_flops_per_token(model) if loss_fn.fused else 0.0)
        stop = on_exit.enter_context(StopSignal())
        bar = on_exit.enter_context(progress_bar(args.num_training_steps, state.update_step, rt.is_main))
        batches = iter(loader)
        accum = args.gradient_accumulation
        per_module_lr = strategy.policy("lr") is not None

        def save() -> str | None:
            return checkpointer.save(state.update_step, model, optimizer, {
                "update_step": state.update_step, "tokens_seen": state.tokens_seen,
                "tokens_learned": state.tokens_learned, "skipped_updates": state.skipped_updates,
                "scheduler": scheduler.state_dict(),
                "strategy": strategy.state_dict(), "data": loader.state_dict(),
                "model_config": args.model_config, "optimizer_name": args.optimizer, "run_flags": run_flags})

        def on_loss(micro: int, loss: torch.Tensor) -> torch.Tensor:
            for cb in callbacks:
                loss = cb.on_loss(state, micro, loss)
            return loss

        started, preempted = time.time(), False
        while state.update_step < args.num_training_steps:
            speed.start()
            for cb in callbacks:
                cb.on_update_start(state, stop)
            # 4. Gradients of one update, all-reduced only on the last micro-batch. Token-weighted: the update's
            #    loss is the sum of its token losses over every micro-batch and rank / the predicted tokens in all
            #    of them, so a token weighs the same whatever the padding of its micro-batch or rank.
            micro_batches = [_next_batch(batches, state, args.num_training_steps) for _ in range(accum)]
            local_tokens = sum(int(b["attention_mask"].sum()) for b in micro_batches)   # host copies: no sync
            computed_tokens = sum(b["attention_mask"].numel() for b in micro_batches) * rt.world_size
            micro_inputs = [loss_fn.inputs(guard_vocab(b["input_ids"]), b["attention_mask"], rt.device)
                            for b in micro_batches]
            loss_sum, learned = accumulate_gradients(net, micro_inputs, rt, on_loss=on_loss)

            # 5. Clip; one host sync per update: loss, tokens and the stop flag, agreed by every rank.
            grad_norm = clip_gradients(params, args.grad_clipping)
            mean_loss, tokens, stop_votes = agree_across_ranks(loss_sum, local_tokens, stop.received is not None, rt)
            grad_norm, learned = float(grad_norm), int(learned)     # the all-reduce above already waited for both
            if not (math.isfinite(mean_loss) and math.isfinite(grad_norm)):
                _non_finite(args.on_nonfinite, state, mean_loss, grad_norm, learned, optimizer, log)
                optimizer.zero_grad(set_to_none=True)
                if stop_votes > 0:       # a signal must be honoured even while updates are skipped
                    preempted = True
                    break
                continue

            # 6. AlphaDecay: every T updates, recompute module alphas and reassign module-wise decays.
            assignment = strategy.step(optimizer, state.update_step)
            if assignment is not None:
                log.decay(assignment, label)

            # scheduler.step() overwrites every group's lr: keep the ones this update steps with for the log.
            stepped_lrs = {g["name"]: g["lr"] for g in optimizer.param_groups} if per_module_lr else None
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.update_step += 1
            state.tokens_seen += int(tokens)
            state.tokens_learned += learned

            # 7. Side effects: log, evaluate, checkpoint, stop.
            step, last = state.update_step, state.update_step == args.num_training_steps
            rate = speed.measure(tokens, computed=computed_tokens, learned=learned)
            if step % args.log_every == 0 or last:
                log.train({"type": "train", "step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                           "tokens_seen": state.tokens_seen, "tokens_learned": state.tokens_learned, **rate,
                           **speed.interval(),
                           "grad_norm": grad_norm, "weight_decay": optimizer.param_groups[-1]["weight_decay"]},
                          stepped_lrs)
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{rate['throughput_tokens']:,.0f}", refresh=False)
            if args.eval_every and step % args.eval_every == 0 and not last:
                log.write({"type": "eval", "step": step, **evaluator(net.loss)})
            if stop_votes > 0:
                preempted = True
                break
            if args.save_every and step % args.save_every == 0 and not last:
                save()

        path = save()
        if preempted:
            if rt.is_main:
                print(f"stopped by a signal at update {state.update_step}; checkpoint written to {path}. Resume with "
                      f"the same command plus --continue_from {path} (or --continue_from latest)", file=sys.stderr)
            return {"update_step": state.update_step, "preempted": True, "checkpoint": path, "model": model,
                    "strategy": strategy}
        final = evaluator(net.loss)
        log.write({"type": "final", "step": state.update_step, **final, "skipped_updates": state.skipped_updates,
                   "skipped_documents": loader.skipped_documents, "train_seconds": time.time() - started})
        if rt.is_main:
            print(f"finished {state.update_step} updates: eval loss {final['eval_loss']:.4f}, perplexity "
                  f"{final['eval_ppl']:.2f}; checkpoint {path}", file=sys.stderr)
        return {"update_step": state.update_step, **final, "checkpoint": path, "model": model, "strategy": strategy}


def _run_logger(args, model, is_main: bool, start_step: int, resume_from: str | None) -> RunLogger:
    sizes = count_params(model)
    use_wandb = not args.no_wandb
    return RunLogger(args.save_dir, enabled=is_main, resumed=resume_from is not None,
                     run_config={"args": vars(args), "model": {**sizes, **model.config.to_dict()},
                                 "start_step": start_step},
                     wandb=WandbSettings(args.wandb_project, args.wandb_name,
                                         args.tags.split(",") if args.tags else None) if use_wandb else None)


def _next_batch(batches, state: TrainState, total: int) -> dict:
    try:
        return next(batches)
    except StopIteration:
        raise ConfigError(f"the training data ran out at update {state.update_step} of {total}; give more data or "
                          f"fewer --num_training_steps") from None


def accumulate_gradients(net: Parallelized, micro_inputs: list[dict], rt,
                         on_loss: Callable[[int, torch.Tensor], torch.Tensor] = lambda micro, loss: loss):
    """The backward of one update over this rank's micro-batches (``loss_fn.inputs`` of each), gradients
    synchronised on the last. Returns (this rank's share of the update's loss, on the device: its summed token
    losses x world_size / the update's predicted tokens, so that the mean over ranks is the per-token mean;
    the predicted tokens on every rank). ``on_loss(micro, loss)``: the callbacks' hook before each backward."""
    learned, scale = token_weights(micro_inputs, rt)
    loss_sum = torch.zeros((), device=rt.device, dtype=torch.float32)
    for micro, inputs in enumerate(micro_inputs):
        with contextlib.nullcontext() if micro == len(micro_inputs) - 1 else net.no_sync():
            loss = on_loss(micro, net.forward(**inputs, reduction="sum") * scale)
            loss.backward()
        loss_sum += loss.detach().float()
    return loss_sum, learned


def token_weights(micro_inputs: list[dict], rt) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted tokens of the update on every rank, the factor of each micro-batch's summed loss:
    world_size / that count, since DDP and FSDP2 average gradients over the ranks). One all-reduce of the
    count, before the first backward; the factor stays on the device (no sync)."""
    count = torch.tensor(sum(i["positions"].numel() for i in micro_inputs), dtype=torch.int64, device=rt.device)
    if rt.distributed:
        dist.all_reduce(count)
    return count, rt.world_size / count     # true division: a float32 factor; inf (a non-finite loss) at 0


def _likely_cause(tokens: float, grad_norm: float, optimizer) -> str:
    """The causes the loop can tell apart, most specific first."""
    if tokens == 0 or grad_norm == 0:
        return ("nothing to predict in this update (empty documents, or sequences of one token): check the data "
                "and --max_length")
    bad = [g.get("name", "?") for g in optimizer.param_groups if not math.isfinite(g["weight_decay"])]
    if bad:
        return (f"the weight decay of {bad[0]} is not finite: check --weight_decay, --wd_max_ratio and "
                f"--esd_metric_for_tb")
    return "likely a too high learning rate: lower --lr, add --grad_clipping, or pass --on_nonfinite skip"


def _non_finite(policy: str, state: TrainState, loss: float, grad_norm: float, tokens: float, optimizer,
                log: RunLogger) -> None:
    """--on_nonfinite stop: raise (every rank sees the same values); skip: count it and warn."""
    if policy == "stop":
        log.write({"type": "error", "step": state.update_step + 1, "error": "non-finite", "loss": loss,
                   "grad_norm": grad_norm})
        raise NonFiniteError(f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at update "
                             f"{state.update_step + 1} (loss={loss}, grad_norm={grad_norm}); "
                             f"{_likely_cause(tokens, grad_norm, optimizer)}")
    state.skipped_updates += 1
    print(f"warning: skipped update {state.update_step + 1}: non-finite loss or gradient "
          f"({state.skipped_updates} skipped so far)", file=sys.stderr)


def evaluate_checkpoint(model, path: str, evaluator: Evaluator, is_main: bool) -> dict:
    load_model_weights(model, path)
    result = evaluator(NextTokenLoss(model))
    if is_main:
        print(json.dumps({"checkpoint": path, **result}))
    return result


def main(argv=None, callbacks: Sequence[Callback] = (), policy: PolicyFactory | None = None) -> int:
    """Entry point: one-line error and exit code 2 for bad input, 1 for a failed run; any other exception
    ends the run (workers and process group included) with its traceback."""
    try:
        args = parse_args(argv, world_size=world_size_from_env())
        train(args, callbacks, policy)
        return 0
    except ConfigError as e:
        print_error(str(e))
        return 2
    except NonFiniteError as e:
        print_error(str(e))
        return 1
    except RuntimeError as e:
        if not _peer_failed(e):
            raise
        # A peer rank failed first and printed its traceback; this rank only lost its connection.
        print_error(f"rank {os.environ.get('RANK', '?')} stopped because another rank failed ({one_line(e, 200)})")
        return 1


def _peer_failed(error: RuntimeError) -> bool:
    text = str(error)
    return isinstance(error, dist.DistError) or "closed by peer" in text or "reset by peer" in text
