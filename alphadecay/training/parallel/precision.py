"""What ``--dtype`` means, the same under DDP and FSDP2.

- ``bfloat16``: the paper's pure bf16. Weights and optimizer state are bf16 (the release's runs). Adam's
  second moment then stops decaying once beta2 * v rounds back to v (bf16 keeps 8 mantissa bits and
  1 - 0.999 is below half an ulp): it keeps the largest gradients' scale and the effective step shrinks.
- ``bf16-mixed``: float32 master weights and optimizer state, bf16 matmuls. Under DDP the forward runs in
  ``torch.autocast`` and gradients land on the float32 parameters (so the all-reduce is float32); under
  FSDP2 the float32 shards are gathered in bf16 (``MixedPrecisionPolicy``) and gradients reduced in float32.
- ``float32``: everything float32.

Without ``--dtype``: ``bf16-mixed`` on a bf16-capable GPU, ``float32`` elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("bfloat16", "bf16-mixed", "float32")
ALIASES = {"bf16": "bfloat16", "bf16_mixed": "bf16-mixed", "mixed": "bf16-mixed", "fp32": "float32"}


@dataclass(frozen=True)
class Precision:
    mode: str     # one of MODES

    @property
    def weights(self) -> torch.dtype:
        """The dtype of the (master) weights and so of the optimizer state, which follows them."""
        return torch.bfloat16 if self.mode == "bfloat16" else torch.float32

    @property
    def compute(self) -> torch.dtype:
        return torch.float32 if self.mode == "float32" else torch.bfloat16

    @property
    def mixed(self) -> bool:
        return self.mode == "bf16-mixed"

    def autocast_dtype(self, fsdp: bool) -> torch.dtype | None:
        """The dtype ``torch.autocast`` runs the forward in: bf16-mixed without FSDP2 (which casts the
        gathered parameters through its policy instead)."""
        return self.compute if self.mixed and not fsdp else None

    def fsdp_param_dtype(self) -> torch.dtype | None:
        """MixedPrecisionPolicy's param_dtype: bf16 over float32 shards for bf16-mixed; None (the shards'
        own dtype) for bfloat16 and float32."""
        return self.compute if self.mixed else None


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` with its floating-point parameters in ``dtype`` and its buffers as they are.

    ``model.to(dtype)`` would cast the buffers too: the rotary tables (``inv_freq``, ``original_inv_freq``) in
    bf16 are off by up to 3.7e-3 relative, 0.45 rad of rotation at position 1024, and a checkpoint reloaded with
    ``from_pretrained`` (in any dtype) rebuilds them in float32, so lm-eval and vLLM would score another
    positional encoding than the one trained. Tied weights are one Parameter, cast once."""
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
    return model


def resolve_precision(name: str | None, device: torch.device) -> Precision:
    """--dtype (a mode or an alias), else bf16-mixed on a bf16-capable GPU and float32 elsewhere."""
    if name is None:
        name = "bf16-mixed" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    name = ALIASES.get(name, name)
    if name not in MODES:
        raise ValueError(f"unknown precision {name!r}; one of {', '.join(MODES)}")
    return Precision(name)
