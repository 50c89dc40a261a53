"""AlphaDecay in a Hugging Face ``transformers.Trainer`` run.

    policy = alphadecay.AlphaDecay(model, weight_decay=0.1, update_every=500)
    optimizer = create_optimizer(policy, training_args)        # the optimizer Trainer would build, per-module groups
    trainer = Trainer(model=model, args=training_args, train_dataset=ds,
                      optimizers=(optimizer, None), callbacks=[AlphaDecayCallback(policy)])
    trainer.train()

Why the user builds the optimizer and hands it to Trainer: AlphaDecay needs one parameter group per
module, and Trainer only accepts a custom optimizer through ``optimizers=`` (a callback cannot replace
the one Trainer creates without patching Trainer internals). ``create_optimizer`` keeps everything
else as Trainer would have it: ``args.optim``, learning rate, betas, eps; the scheduler is still
created by Trainer from ``args``.

The decays follow the policy, not Trainer's own rule: Trainer exempts biases and norms from decay,
AlphaDecay (as the paper's release) gives every non-balanced parameter the base ``weight_decay``.

Needs ``accelerate`` (Trainer itself does). Not supported: DeepSpeed/FSDP optimizers that replace the
parameter groups (the callback raises at train start if the groups lost their names).
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import torch
from transformers import TrainerCallback

from .analysis import MODULE_TYPES, module_type
from .policy import Policy

STRATEGY_FILE = "alphadecay_strategy.json"


def create_optimizer(policy: Policy, args, model=None):
    """The optimizer ``Trainer`` would create from ``args``, over ``policy.param_groups()``, with the policy's
    initial assignment (the ESD of the initial weights) written into it, as training does before step 0.
    """
    from transformers import Trainer
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model if model is not None else policy.model)
    # GaLore/LOMO (params=/model= in kwargs) and Muon-style factories choose their own parameter
    # grouping, which would drop AlphaDecay's per-module groups.
    if "params" in kwargs or "model" in kwargs or not isinstance(optimizer_cls, type) or not issubclass(
            optimizer_cls, torch.optim.Optimizer):
        raise ValueError(f"optim={args.optim!r} manages its own parameter groups, which would drop AlphaDecay's "
                         "per-module groups; use an AdamW/Adam/SGD-family optimizer")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("model", "weight_decay")}
    optimizer = optimizer_cls(policy.param_groups(), **kwargs)
    policy.initial_assignment(optimizer)
    return optimizer


def summary(assignment) -> dict[str, float]:
    """Flat scalars for Trainer logs: mean alpha and mean decay per module type."""
    out = {"alphadecay/assigned_at_step": float(assignment.step)}
    out.update({f"alphadecay/alpha_{t}": v for t, v in assignment.type_mean_alpha().items()})
    decays = defaultdict(list)
    for name, wd in assignment.module_weight_decay.items():
        t = module_type(name)
        if t in MODULE_TYPES and math.isfinite(wd):
            decays[t].append(wd)
    out.update({f"alphadecay/wd_{t}": sum(v) / len(v) for t, v in decays.items()})
    out.update({f"alphadecay/lr_{t}": v for t, v in assignment.type_mean_lr().items()})
    return out


def lr_policy(policy: Policy) -> Policy | None:
    """The LR policy inside ``policy`` (LLR alone, or the one of a Combined), or None."""
    return policy.policy("lr")


class AlphaDecayCallback(TrainerCallback):
    """Reassigns per-module decays every ``policy.update_every`` optimizer updates.

    The hook is ``on_pre_optimizer_step``: Trainer calls it once per optimizer update, after the
    backward of the last micro-batch (and after gradient clipping) and right before
    ``optimizer.step()``, with ``state.global_step`` = updates already applied, which is exactly the
    ``step`` the policy expects. Gradient accumulation is therefore handled by Trainer.

    With an LR policy (``alphadecay.LLR``, alone or in a ``Combined``) built without ``schedule``, the callback
    gives it the multiplier of the scheduler Trainer creates (``LLR.follow``); Trainer's logged ``learning_rate``
    is then its first group's (an embedding's).

    Each assignment is kept in ``self.assignments`` and its per-type means are added to the next
    training log (``alphadecay/alpha_<type>``, ``alphadecay/wd_<type>``, with LLR ``alphadecay/lr_<type>``), also in
    ``state.log_history``. Reporting integrations (wandb, tensorboard) run their ``on_log`` before
    user callbacks and do not see these keys unless the callback is moved first:
    ``trainer.callback_handler.callbacks.insert(0, trainer.pop_callback(AlphaDecayCallback))``.

    On resume from a checkpoint Trainer restores the optimizer, group decays included; the strategy's own
    state (AWD's running average, the step of the last assignment) is written beside each checkpoint Trainer
    saves in ``output_dir`` (``alphadecay_strategy.json``) and read back when training resumes from one.
    """

    def __init__(self, policy: Policy, *, log_summary: bool = True, on_assignment=None):
        """``on_assignment(assignment)``: called with every assignment, the initial one included (e.g.
        ``RunLogger.decay`` to write the same decay records as pretraining)."""
        self.policy = policy
        self.log_summary = log_summary
        self.on_assignment = on_assignment
        self.assignments = []
        self._pending: dict[str, float] | None = None
        if policy.last is not None:  # the initial assignment, made by create_optimizer()
            self.assignments.append(policy.last)
            self._pending = summary(policy.last) if log_summary else None
            if on_assignment is not None:
                on_assignment(policy.last)

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            with open(os.path.join(folder, STRATEGY_FILE), "w") as f:
                json.dump(self.policy.state_dict(), f)

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        saved = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", STRATEGY_FILE)
        if state.global_step > 0 and os.path.isfile(saved):   # resumed from that checkpoint
            with open(saved) as f:
                self.policy.load_state_dict(json.load(f))
        if lr_scheduler is not None:
            self.policy.follow(lr_scheduler)   # LLR writes b_i * S(t) itself; S is the schedule Trainer built
        if optimizer is None:
            return
        names = {g.get("name") for g in optimizer.param_groups}
        if not names - {None}:
            raise ValueError("AlphaDecayCallback: the optimizer's parameter groups have no 'name'. Build it with "
                             "alphadecay.integrations.create_optimizer(policy, training_args) and pass "
                             "Trainer(..., optimizers=(optimizer, None))")

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None:
            return
        assignment = self.policy.step(optimizer, state.global_step)
        if assignment is not None:
            self.assignments.append(assignment)
            if self.on_assignment is not None:
                self.on_assignment(assignment)
            if self.log_summary:
                self._pending = summary(assignment)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Only training logs carry "loss"; evaluation logs are left as they are.
        if not self._pending or logs is None or "loss" not in logs:
            return
        logs.update(self._pending)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending)
        self._pending = None


class RunLoggerCallback(TrainerCallback):
    """Trainer's logs as the pretraining loop's metrics.jsonl records (``training.logger.RunLogger``), so that the
    same readers (plots, tables) read both: training logs become ``train`` records (step, loss, lr, grad_norm),
    evaluation logs ``eval`` records with the ``eval_`` prefix dropped (eval_loss kept)."""

    def __init__(self, logger):
        self.logger = logger
        self._eval: dict = {}   # one eval record per step: MNLI's matched and mismatched logs are merged

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        step = state.global_step
        if "loss" in logs:
            self.logger.write({"type": "train", "step": step, "loss": logs["loss"],
                               "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                               "epoch": logs.get("epoch")})
        elif any(k.startswith("eval_") for k in logs):
            metrics = {(k if k == "eval_loss" else k[len("eval_"):]): v for k, v in logs.items()
                       if k.startswith("eval_") and isinstance(v, (int, float))
                       and not k.endswith(("_runtime", "_per_second"))}
            if self._eval.get("step") != step:
                self._eval = {"type": "eval", "step": step, "epoch": logs.get("epoch")}
            self._eval.update(metrics)
            self.logger.write(dict(self._eval))   # readers keep the last record of a step
