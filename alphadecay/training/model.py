"""Models come from transformers: LlamaForCausalLM (SDPA attention) or any config'd causal LM."""
from __future__ import annotations

import json
import os

import torch
from transformers import AutoModelForCausalLM

from ..errors import ConfigError, one_line
from .parallel.meta_init import DeferredInit, record_init
from .parallel.precision import cast_parameters


# The release's (and GaLore's) config files were written for transformers 4.28's LLaMA port.
_RELEASE_ARCHITECTURES = {"LLaMAForCausalLM": "LlamaForCausalLM"}


def release_keys_read(cfg: dict, path: str) -> dict:
    """A model config dict with the release's spellings in transformers' names.

    ``max_sequence_length`` is ``max_position_embeddings`` and ``LLaMAForCausalLM`` is ``LlamaForCausalLM``;
    ``pad_token_id: -1`` (the release's "the tokenizer's pad") is resolved by ``config_from_dict``.
    """
    cfg = dict(cfg)
    if "max_sequence_length" in cfg:
        length = cfg.pop("max_sequence_length")
        if cfg.setdefault("max_position_embeddings", length) != length:
            raise ConfigError(f"model config {path!r} has max_sequence_length {length} and max_position_embeddings "
                              f"{cfg['max_position_embeddings']}; keep one of them")
    if isinstance(cfg.get("architectures"), list):
        cfg["architectures"] = [_RELEASE_ARCHITECTURES.get(a, a) for a in cfg["architectures"]]
    return cfg


def config_from_dict(cfg: dict, path: str, *, pad_token_id: int | None = None, announce: bool = False):
    """The transformers config of a ``release_keys_read`` dict; ``pad_token_id: -1`` becomes ``pad_token_id``
    (the tokenizer's pad), and with ``announce`` one printed line says so."""
    from transformers import CONFIG_MAPPING

    if cfg.get("pad_token_id") == -1:
        cfg = {**cfg, "pad_token_id": pad_token_id}
        if announce and int(os.environ.get("RANK", "0")) == 0:
            print(f"model config {path}: pad_token_id -1 (the release's) is the tokenizer's pad, id {pad_token_id}",
                  flush=True)
    return CONFIG_MAPPING[cfg["model_type"]].from_dict(cfg)


def _config(config_path: str, pad_token_id: int | None = None):
    """A model config file (configs/, a checkpoint's config.json, or the release's) as a transformers config."""
    try:
        with open(config_path, encoding="utf-8") as f:
            cfg = release_keys_read(json.load(f), config_path)
        config = config_from_dict(cfg, config_path, pad_token_id=pad_token_id, announce=True)
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise ConfigError(f"model config {config_path!r} cannot be read by transformers "
                          f"({one_line(e)}); copy a file from configs/") from None
    config._attn_implementation = "sdpa"
    return config


def _checkpointing(model, enabled: bool) -> None:
    if enabled:   # transformers 5 renamed it; the old name warns
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()


def build_model(config_path: str, *, dtype: torch.dtype, device: torch.device, seed: int,
                activation_checkpointing: bool = False, pad_token_id: int | None = None) -> torch.nn.Module:
    """``pad_token_id``: the tokenizer's, for a config that says -1 (the release's)."""
    config = _config(config_path, pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    _checkpointing(model, activation_checkpointing)
    # Pure low-precision weights, as the paper's runs (the optimizer state follows the weights); the buffers (the
    # rotary tables) stay float32, as from_pretrained rebuilds them.
    return cast_parameters(model.to(device=device), dtype)


def build_model_on_meta(config_path: str, *, dtype: torch.dtype, seed: int, activation_checkpointing: bool = False,
                        pad_token_id: int | None = None) -> tuple[torch.nn.Module, DeferredInit]:
    """The model of ``build_model`` without its weights (meta tensors, no memory), for FSDP2: shard it, then
    ``DeferredInit.materialize`` gives each rank's shard exactly ``build_model``'s rows (see meta_init)."""
    config = _config(config_path, pad_token_id)
    model, init = record_init(lambda: AutoModelForCausalLM.from_config(config, attn_implementation="sdpa"), seed)
    _checkpointing(model, activation_checkpointing)
    return cast_parameters(model, dtype), init


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
