"""Models come from transformers: LlamaForCausalLM (SDPA attention) or any config'd causal LM."""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from .errors import ConfigError


def build_model(config_path: str, *, dtype: torch.dtype, device: torch.device, seed: int,
                activation_checkpointing: bool = False) -> torch.nn.Module:
    try:
        config = AutoConfig.from_pretrained(config_path)
    except (ValueError, OSError) as e:
        raise ConfigError(f"model config {config_path!r} cannot be read by transformers "
                          f"({str(e).splitlines()[0]}); copy a file from configs/") from None
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if activation_checkpointing:
        model.gradient_checkpointing_enable()
    # Pure low-precision weights, as the paper's runs (the optimizer state follows the weights).
    return model.to(device=device, dtype=dtype)


def count_params(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    embed = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return {"params": total, "non_embedding_params": total - embed}
