"""Validation loss averaged per token over a fixed set of documents, identical on 1 or N ranks."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .eval_data import eval_batches
from .loss import NextTokenLoss
from .model import vocab_guard


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokenizer, args, rt) -> dict:
    """Per-token mean loss over ~--target_eval_tokens validation tokens and its perplexity.

    The release averaged per batch and started its batch count at 1; here every predicted token
    counts once, and the evaluated batches do not depend on the number of ranks (each rank takes
    every world_size-th batch, the sums are all-reduced in float64).
    """
    was_training = model.training
    model.eval()
    guard = vocab_guard(model, tokenizer)
    loss_fn = NextTokenLoss(model)
    sums = torch.zeros(2, dtype=torch.float64, device=rt.device)   # summed loss, predicted tokens
    for batch in eval_batches(args.eval_dataset_path, tokenizer, batch_size=args.eval_batch_size,
                              max_length=args.max_length, target_eval_tokens=args.target_eval_tokens,
                              rank=rt.rank, world_size=rt.world_size):
        inputs = loss_fn.inputs(guard(batch["input_ids"]), batch["attention_mask"], rt.device)
        n = inputs["positions"].numel()
        if n:
            sums += torch.stack([loss_fn(**inputs).double() * n, torch.tensor(float(n), device=rt.device)])
    if rt.distributed:
        dist.all_reduce(sums)
    total_loss, tokens = sums.tolist()
    model.train(was_training)
    loss = total_loss / tokens if tokens else math.nan
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 700)), "eval_tokens": int(tokens)}
