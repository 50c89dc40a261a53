"""Validation loss averaged per token over a fixed set of documents, identical on 1 or N ranks."""
from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist

from ..distributed import has_sharded_params
from .data.eval_data import eval_batches
from .loss import NextTokenLoss
from .model import vocab_guard


def _any_rank(flag: bool, device: torch.device) -> bool:
    value = torch.tensor(int(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value)


class Evaluator:
    """Per-token mean loss over ~``target_tokens`` validation tokens, and its perplexity.

    The release averaged per batch and started its batch count at 1; here every predicted token
    counts once, and the evaluated batches do not depend on the number of ranks (each rank takes
    every world_size-th batch, the sums are all-reduced in float64).
    """

    def __init__(self, path: str | None, tokenizer, *, batch_size: int, max_length: int, target_tokens: int,
                 rank: int = 0, world_size: int = 1, device: torch.device = torch.device("cpu"), hub=None):
        self.path, self.tokenizer, self.hub = path, tokenizer, hub
        self.batch_size, self.max_length, self.target_tokens = batch_size, max_length, target_tokens
        self.rank, self.world_size, self.device = rank, world_size, device

    def prepare(self) -> None:
        """Read and tokenize the validation batches now (they are cached for every evaluation), so that
        missing or empty validation data stops the run before its first update, not after it."""
        tokens = sum(int(b["attention_mask"].sum()) for b in self._batches())
        if tokens * self.world_size < self.target_tokens / 2 and self.rank == 0:
            warnings.warn(f"the validation data holds about {tokens * self.world_size:,} tokens, far fewer than "
                          f"--target_eval_tokens {self.target_tokens:,}; every evaluation uses all of them",
                          stacklevel=2)

    def _batches(self):
        return eval_batches(self.path, self.tokenizer, batch_size=self.batch_size, max_length=self.max_length,
                            target_eval_tokens=self.target_tokens, rank=self.rank, world_size=self.world_size,
                            **({"hub": self.hub} if self.hub is not None else {}))

    def _agreed(self, batches):
        """This rank's batches, then None, for as long as any rank still has a batch. Collective."""
        batches = iter(batches)
        while True:
            batch = next(batches, None)
            if not _any_rank(batch is not None, self.device):
                return
            yield batch

    @torch.no_grad()
    def __call__(self, loss_fn: NextTokenLoss) -> dict:
        """``loss_fn``: the model's loss module as training runs it (under FSDP2 the sharded one, whose
        forward gathers the parameters)."""
        model = loss_fn.model
        was_training = model.training
        model.eval()
        guard = vocab_guard(model, self.tokenizer)
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)   # summed loss, predicted tokens
        # Sharded parameters are gathered inside every forward, a collective: while any rank still has a batch,
        # every rank runs a forward (an idle one when it has none left, or for a batch predicting nothing) and
        # the idle losses are discarded. One flag all-reduce per batch agrees on that; batches stream as before.
        sharded = has_sharded_params(loss_fn)
        for batch in self._agreed(self._batches()) if sharded else self._batches():
            inputs = loss_fn.inputs(guard(batch["input_ids"]), batch["attention_mask"], self.device) \
                if batch is not None else None
            n = inputs["positions"].numel() if inputs is not None else 0
            if n:
                sums += torch.stack([loss_fn(**inputs).double() * n, torch.tensor(float(n), device=self.device)])
            elif sharded:
                loss_fn(**loss_fn.inputs(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long),
                                         self.device))
        if self.world_size > 1:
            dist.all_reduce(sums)
        total_loss, tokens = sums.tolist()
        model.train(was_training)
        loss = total_loss / tokens if tokens else math.nan
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 700)), "eval_tokens": int(tokens)}
