"""A saved model folder that evaluation tools (transformers, lm-eval, vLLM) use right with default arguments.

What training needs from the tokenizer and config is not what evaluation needs, and the difference
changes scores silently:
- T5's tokenizer appends ``</s>`` to every encoding. Training wants it (each document ends with EOS, as
  in the paper's pipeline); a harness scoring a continuation gets a context ending in ``</s>`` instead.
  The saved tokenizer adds no special token (and is saved as the generic fast tokenizer, since
  transformers' T5 class would put the ``</s>`` back).
- Its 100 ``<extra_id_N>`` sentinels (ids 32000-32099) lie past the paper's 32,000-row embedding: text
  containing one would index past it. They are dropped from the saved tokenizer (the model never saw
  them: training maps them to ``<unk>``), rather than growing the embedding the paper's shapes fix.
- The training-time truncation and fixed padding, ``local_files_only`` and the run's paths are removed.
- ``model_max_length`` becomes the length the model was trained at, and so does ``max_position_embeddings``
  of a RoPE model (LLaMA: no weight depends on it). A model with learned positions (GPT-2's ``n_positions``,
  which ``max_position_embeddings`` aliases) keeps its own: its position table has that many rows and a
  smaller number would not load. ``bos_token_id`` is unset (T5 has no BOS; 0 is the pad), and
  ``use_cache`` is on for generation.
- An ``extra_special_tokens`` list left empty by dropping the sentinels is removed: transformers 4.x reads
  that key as a dict and cannot load ``[]``.
The weights, and the config the loop reads back (``--continue_from`` reads the run's own
``--model_config``; ``--eval_only`` this folder's), are unchanged in meaning.
"""
from __future__ import annotations

import json
import os

_DROP_TOKENIZER_KEYS = ("local_files_only", "is_local", "name_or_path", "_name_or_path")


def _edit_json(path: str, edit) -> None:
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    edit(data)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _uses_rope(config: dict) -> bool:
    # transformers 5 writes rope_parameters, 4.x rope_theta / rope_scaling; learned-position models have none.
    return any(key in config for key in ("rope_parameters", "rope_theta", "rope_scaling"))


def clean_for_evaluation(folder: str, *, vocab_size: int, max_length: int) -> None:
    """Rewrite the tokenizer and config files of a saved model folder for evaluation (see the module doc)."""
    def fast_tokenizer(t):
        t["truncation"] = None
        t["padding"] = None
        t["added_tokens"] = [a for a in t.get("added_tokens", []) if a["id"] < vocab_size]
        t["post_processor"] = None
        vocab = t.get("model", {}).get("vocab")
        if isinstance(vocab, list):      # Unigram (T5): T5's own file lists the sentinels in the model too
            t["model"]["vocab"] = vocab[:vocab_size]
        elif isinstance(vocab, dict):    # BPE / WordPiece
            t["model"]["vocab"] = {piece: i for piece, i in vocab.items() if i < vocab_size}

    def tokenizer_config(c):
        for key in _DROP_TOKENIZER_KEYS:
            c.pop(key, None)
        c["model_max_length"] = max_length
        c.pop("extra_ids", None)
        # transformers' T5Tokenizer class re-adds the sentinels and the </s> post-processor whatever the files
        # say; the generic fast tokenizer loads tokenizer.json as written.
        if c.get("tokenizer_class") in ("T5Tokenizer", "T5TokenizerFast"):
            c["tokenizer_class"] = "PreTrainedTokenizerFast"
        for key in ("extra_special_tokens", "additional_special_tokens"):
            if isinstance(c.get(key), list):
                c[key] = [t for t in c[key] if not str(t).startswith("<extra_id_")]
        if c.get("extra_special_tokens") == []:
            del c["extra_special_tokens"]
        decoder = c.get("added_tokens_decoder")
        if isinstance(decoder, dict):
            c["added_tokens_decoder"] = {k: v for k, v in decoder.items() if int(k) < vocab_size}

    def special_tokens_map(m):
        if isinstance(m.get("additional_special_tokens"), list):
            m["additional_special_tokens"] = [t for t in m["additional_special_tokens"]
                                              if not str(t.get("content", t) if isinstance(t, dict) else t)
                                              .startswith("<extra_id_")]

    def model_config(c):
        if _uses_rope(c):
            c["max_position_embeddings"] = max_length
        c["use_cache"] = True
        if c.get("bos_token_id") is not None and c.get("bos_token_id") == c.get("pad_token_id"):
            c["bos_token_id"] = None

    def generation_config(g):
        g["use_cache"] = True
        if g.get("bos_token_id") is not None and g.get("bos_token_id") == g.get("pad_token_id"):
            g.pop("bos_token_id")

    _edit_json(os.path.join(folder, "tokenizer.json"), fast_tokenizer)
    _edit_json(os.path.join(folder, "tokenizer_config.json"), tokenizer_config)
    _edit_json(os.path.join(folder, "special_tokens_map.json"), special_tokens_map)
    _edit_json(os.path.join(folder, "config.json"), model_config)
    _edit_json(os.path.join(folder, "generation_config.json"), generation_config)
