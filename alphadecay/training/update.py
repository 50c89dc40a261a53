"""The parts of one update that every task's loop shares (pretraining here, GLUE and ViT in alphadecay.tasks):
the global gradient norm, the per-update statistics all ranks agree on, the model's size for the run record.
Light on purpose: the task loops import it without the language-model stack (transformers, datasets)."""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..distributed import is_sharded


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """The global gradient norm (clipped to ``max_norm`` when it is not 0); a plain tensor under FSDP2 too.

    bf16 gradients: each tensor's norm in float32, as torch's own reduction accumulates it, and kept in float32
    (torch's clip_grad_norm_ would round every per-tensor norm to bf16, 2**-9 relative, before summing them)."""
    grads = [p.grad for p in params if p.grad is not None]
    if any(g.dtype in (torch.bfloat16, torch.float16) for g in grads):
        norms = torch._foreach_norm(grads, 2.0, dtype=torch.float32)
        norm = torch.linalg.vector_norm(torch.stack(norms))
        if max_norm:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm.full_tensor() if is_sharded(norm) else norm
    if max_norm:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:   # the norm is logged; clip_grad_norm_(inf) would also multiply every gradient by 1
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    return norm.full_tensor() if is_sharded(norm) else norm    # FSDP2: the norm over every shard


def agree_across_ranks(mean_loss: torch.Tensor, local_tokens: int, stopping: bool, rt) -> tuple[float, float, float]:
    """(loss averaged over ranks, tokens summed over ranks, number of ranks asked to stop)."""
    stats = torch.stack([mean_loss, torch.tensor(float(local_tokens), device=rt.device),
                         torch.tensor(float(stopping), device=rt.device)])
    if rt.distributed:
        dist.all_reduce(stats)
    loss, tokens, votes = (stats / torch.tensor([rt.world_size, 1, 1], device=rt.device)).tolist()
    return loss, tokens, votes


def count_params(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    embed = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return {"params": total, "non_embedding_params": total - embed}


__all__ = ["agree_across_ranks", "clip_gradients", "count_params"]
