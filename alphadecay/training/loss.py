"""Next-token loss computed only where there is a next token to predict.

Same value as ``model(input_ids, attention_mask, labels=input_ids with pads at -100).loss``, for less work:

- Right-padded rows need no attention mask. Under causal attention a position never sees later ones, so the
  pads at the end of a row cannot change a real position's output; without a mask SDPA runs its causal
  kernel instead of materialising a (T x T) mask per row.
- The output layer and the softmax run only on positions that predict a real token. At the paper's 256
  tokens, 23% of C4 positions are padding, and on LLaMA-20M the output layer is ~70% of the model's FLOPs.
- The logits are never held whole: the output layer, softmax and their gradients run in chunks of rows
  (the fused linear cross-entropy of Liger-Kernel, Hsu et al. 2024), so memory for them is one chunk, not
  tokens x vocabulary floats; the gradients are computed in the forward pass and scaled in the backward.

The positions to predict come from the host copy of the attention mask (``prediction_targets``), so
selecting them costs no device sync.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

# Model types whose logits are exactly ``get_output_embeddings()(last hidden state)``: no scaling, no capping.
FUSED_MODEL_TYPES = ("llama", "gpt2")
# Model types that run without an attention mask on right-padded rows (GPT-2 would check every batch for
# pads on the host, a device sync, and warn).
MASK_FREE_MODEL_TYPES = ("llama",)
CHUNK_ELEMENTS = 1 << 24      # logits per chunk: 64 MB in float32 (524 rows at a 32,000-token vocabulary)


def prediction_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """(positions, targets, right_padded) for a host batch.

    ``positions`` index the flattened (batch, length - 1) grid of positions that predict a real next token;
    ``targets`` are those tokens. ``right_padded`` says every row is real tokens followed by pads only.
    """
    real = attention_mask.bool()
    predicts = (real[:, 1:] & real[:, :-1]).reshape(-1)
    positions = predicts.nonzero().squeeze(1)
    targets = input_ids[:, 1:].reshape(-1).index_select(0, positions)
    right_padded = bool((real[:, 1:] <= real[:, :-1]).all())
    return positions, targets, right_padded


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed (``divide``: mean) cross-entropy of ``hidden @ weight.T`` against ``targets``; gradients made
    chunk by chunk. ``compute``: the matmuls' dtype under autocast (None: the inputs' own)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, compute, divide):
        n = hidden.shape[0]
        ctx.n = n if divide else 1
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        if compute is not None:
            hidden, weight = hidden.to(compute), weight.to(compute)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        # Accumulated across chunks in float32 (or float64); bf16 weights get one rounding at the end, float32
        # master weights under autocast none.
        acc = torch.promote_types(hidden.dtype, torch.float32)
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for start, h, t, logits, logp in _chunks(hidden, weight, targets, chunk):
            total -= logp.gather(1, t[:, None]).sum()
            grad = logp.exp_()                                   # softmax - one-hot: d(loss)/d(logits)
            grad[torch.arange(t.numel(), device=t.device), t] -= 1
            if grad.dtype != hidden.dtype:
                grad = logits.copy_(grad)
            if grad_hidden is not None:
                torch.mm(grad, weight, out=grad_hidden[start:start + h.shape[0]])
            if grad_weight is not None:
                if grad.dtype == acc:
                    grad_weight.addmm_(grad.t(), h)
                else:
                    grad_weight += grad.t() @ h
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / ctx.n

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output / ctx.n
        dh = None if grad_hidden is None else (grad_hidden * scale.to(grad_hidden.dtype)).to(ctx.hidden_dtype)
        dw = None if grad_weight is None else (grad_weight * scale).to(ctx.weight_dtype)
        return dh, dw, None, None, None, None


def _chunks(hidden, weight, targets, chunk):
    """Per chunk of rows: (first row, hidden rows, targets, logits, log-probabilities in float32 or wider).

    Two buffers serve every chunk (logits in the weights' dtype, log-probabilities): a fresh 64 MB tensor
    per chunk would cost page faults on the CPU.
    """
    acc = torch.promote_types(hidden.dtype, torch.float32)
    rows = min(chunk, hidden.shape[0])
    logits_buf = torch.empty(rows, weight.shape[0], dtype=hidden.dtype, device=hidden.device)
    logp_buf = torch.empty(logits_buf.shape, dtype=acc, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start:start + chunk], targets[start:start + chunk]
        logits = torch.mm(h, weight.t(), out=logits_buf[:h.shape[0]])
        logp = torch.log_softmax(logits, 1, dtype=acc, out=logp_buf[:h.shape[0]])
        yield start, h, t, logits, logp


def _chunked_loss(hidden, weight, targets, chunk, compute, divide):
    if compute is not None:
        hidden, weight = hidden.to(compute), weight.to(compute)
    total = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
    for _, _, t, _, logp in _chunks(hidden, weight, targets, chunk):
        total -= logp.gather(1, t[:, None]).sum()
    return total / hidden.shape[0] if divide else total


def linear_cross_entropy(hidden, weight, targets, chunk: int | None = None, reduction: str = "mean") -> torch.Tensor:
    """Mean (or ``reduction="sum"``: sum) of cross_entropy(logits, targets), logits = hidden @ weight.T, their
    log-softmax in float32 (or float64) as transformers' loss upcasts them, never holding all the logits at
    once. Under ``torch.autocast`` the two matmuls run in the autocast dtype; the softmax, the sums and the
    weight's gradient stay float32 (autocast itself cannot write a bf16 product into a float32 buffer)."""
    chunk = chunk or max(1, CHUNK_ELEMENTS // weight.shape[0])
    device_type = hidden.device.type
    compute = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    divide = reduction == "mean"
    with torch.autocast(device_type, enabled=False) if compute is not None else contextlib.nullcontext():
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _LinearCrossEntropy.apply(hidden, weight, targets, chunk, compute, divide)
        return _chunked_loss(hidden, weight, targets, chunk, compute, divide)


class NextTokenLoss(torch.nn.Module):
    """Wraps a causal LM; ``forward`` returns the mean (``reduction="sum"``: summed) next-token loss at the
    given positions.

    DDP and torch.compile wrap this module, so the loss is part of the one forward pass they see. Models
    outside FUSED_MODEL_TYPES run whole and their logits are gathered at the positions. ``autocast``: the
    dtype the forward computes in under ``torch.autocast`` (bf16-mixed under DDP; evaluation runs the same).
    """

    def __init__(self, model: torch.nn.Module, autocast: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.autocast = autocast
        head = model.get_output_embeddings()
        model_type = getattr(model.config, "model_type", None)
        self.fused = model_type in FUSED_MODEL_TYPES and isinstance(head, torch.nn.Linear) and head.bias is None
        self.mask_free = model_type in MASK_FREE_MODEL_TYPES

    def inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, device: torch.device) -> dict:
        """Keyword arguments of ``forward`` for a host batch, moved to ``device`` without a sync."""
        positions, targets, right_padded = prediction_targets(input_ids, attention_mask)
        move = dict(device=device, non_blocking=True)
        mask = None if (right_padded and self.mask_free) else attention_mask.to(**move)
        return {"input_ids": input_ids.to(**move), "positions": positions.to(**move),
                "targets": targets.to(**move), "attention_mask": mask}

    def compile(self, **kwargs) -> None:
        """torch.compile the part with fixed shapes: the decoder when fused (the number of predicted
        positions changes from batch to batch), the whole model otherwise. Parameter names are unchanged."""
        (self.model.base_model if self.fused else self.model).compile(**kwargs)

    def forward(self, input_ids, positions, targets, attention_mask=None, reduction: str = "mean"):
        if self.autocast is None:
            return self._loss(input_ids, positions, targets, attention_mask, reduction)
        with torch.autocast(input_ids.device.type, dtype=self.autocast):
            return self._loss(input_ids, positions, targets, attention_mask, reduction)

    def _loss(self, input_ids, positions, targets, attention_mask, reduction):
        if self.fused:
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, positions)
            return linear_cross_entropy(hidden, self.model.get_output_embeddings().weight, targets,
                                        reduction=reduction)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        logits = logits[:, :-1].reshape(-1, logits.shape[-1]).index_select(0, positions)
        return F.cross_entropy(logits.float(), targets, reduction=reduction)

