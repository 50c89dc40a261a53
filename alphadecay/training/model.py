"""Models come from transformers: LlamaForCausalLM (SDPA attention) or any config'd causal LM."""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ..errors import ConfigError, one_line


def build_model(config_path: str, *, dtype: torch.dtype, device: torch.device, seed: int,
                activation_checkpointing: bool = False) -> torch.nn.Module:
    try:
        config = AutoConfig.from_pretrained(config_path)
    except (ValueError, OSError) as e:
        raise ConfigError(f"model config {config_path!r} cannot be read by transformers "
                          f"({one_line(e)}); copy a file from configs/") from None
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if activation_checkpointing:   # transformers 5 renamed it; the old name warns
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    # Pure low-precision weights, as the paper's runs (the optimizer state follows the weights).
    return model.to(device=device, dtype=dtype)


def count_params(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    embed = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return {"params": total, "non_embedding_params": total - embed}


def vocab_guard(model: torch.nn.Module, tokenizer):
    """Map token ids the model has no embedding row for to <unk>.

    The T5 tokenizer has 32,100 ids (100 sentinel <extra_id_N>) while the paper's models have 32,000
    rows: a document containing a sentinel string would index past the embedding.

    Only such added special tokens may lie past the embedding: a tokenizer whose ordinary vocabulary does
    not fit the model would turn real text into <unk> and give a meaningless perplexity, so it is refused.
    """
    vocab = model.config.vocab_size
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
    if len(tokenizer) <= vocab:
        return lambda ids: ids
    added = tokenizer.get_added_vocab()
    regular = max((i for tok, i in tokenizer.get_vocab().items() if tok not in added), default=-1)
    if regular >= vocab:
        raise ConfigError(f"the tokenizer's vocabulary (ids up to {regular}) does not fit the model's {vocab} "
                          f"embeddings; pass the tokenizer the model was made for (--tokenizer) or a model config "
                          f"with vocab_size >= {regular + 1}")
    return lambda ids: ids.masked_fill(ids >= vocab, unk)
