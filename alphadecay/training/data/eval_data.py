"""Evaluation batches: a fixed, rank-independent cut of the validation stream, cached between passes."""
from __future__ import annotations

import itertools

import torch

from .batches import _check_positive, _check_rank, _usable, logger
from .encode import encode_rows
from ...errors import ConfigError
from .text_sources import HubSource, load_documents
from .prepared import is_prepared, open_prepared
from .tokens import eval_token_batches

EVAL_SEED = 42     # the paper's val_data.shuffle(seed=42)
_EVAL_CACHE: dict = {}  # one entry: the batches of the last complete evaluation pass


def eval_batches(path, tokenizer, *, batch_size, max_length, target_eval_tokens, rank=0, world_size=1, cache=True,
                 hub=HubSource()):
    """This rank's evaluation batches ``{"input_ids", "attention_mask"}`` (truncated and padded to ``max_length``).

    Every rank reads the same validation stream (``path``, or ``hub``'s validation stream, by default the hub's
    C4 ``validation`` split, when ``path`` is None) shuffled like the paper's ``val_data.shuffle(seed=42)`` (datasets' buffered shuffle; nothing here needs
    resuming), cuts it into batches of ``batch_size`` usable documents and keeps batches in order until their non-pad
    tokens reach ``target_eval_tokens``, the crossing batch included (the last batch may be smaller if the data runs
    out first). Rank ``r`` gets the batches whose index is ``r`` modulo ``world_size``, so the set of batches does not
    depend on ``world_size``; a rank can get none when there are fewer batches than ranks. Every rank tokenizes all
    batches, since the cut depends on all of their token counts. With ``cache`` the rank's batches of the last
    complete pass stay in memory (about 5 bytes per token position) and a repeated call with the same arguments
    replays them instead of reading and tokenizing again. Errors in the arguments or the path are raised here;
    "no tokens at all" is raised by the returned iterator once the stream is exhausted.
    """
    _check_positive(batch_size=batch_size, max_length=max_length)
    _check_rank(rank, world_size)
    if is_prepared(path):   # tokens already: nothing to cache
        return eval_token_batches(open_prepared(path, tokenizer), batch_size=batch_size, max_length=max_length,
                                  target_eval_tokens=target_eval_tokens, rank=rank, world_size=world_size)
    key = (str(path), hub if path is None else None, id(tokenizer), getattr(tokenizer, "name_or_path", None), len(tokenizer), batch_size,
           max_length, target_eval_tokens, rank, world_size)
    if cache and key in _EVAL_CACHE:
        return ({"input_ids": ids.long(), "attention_mask": mask.long()} for ids, mask in _EVAL_CACHE[key])
    where = f"'{path}'" if path is not None else hub.describe("validation")
    documents = load_documents(path, "validation", hub).shuffle(seed=EVAL_SEED)
    batches = _eval_batches(documents, where, tokenizer, batch_size, max_length, target_eval_tokens, rank, world_size)
    return _cached(batches, key) if cache else batches


def _cached(batches, key):
    """Pass ``batches`` through and remember them compactly once the pass completes."""
    kept = []
    for batch in batches:
        kept.append((batch["input_ids"].to(torch.int32), batch["attention_mask"].to(torch.bool)))
        yield batch
    _EVAL_CACHE.clear()
    _EVAL_CACHE[key] = kept


def _eval_batches(documents, where, tokenizer, batch_size, max_length, target, rank, world_size):
    skipped = [0]

    def texts():
        for block in documents.iter(batch_size=256):
            usable, bad = _usable(block["text"], block.get("undecodable"))
            skipped[0] += bad
            yield from usable

    docs, tokens = texts(), 0
    for index in itertools.count():
        if tokens >= target:
            break
        group = list(itertools.islice(docs, batch_size))
        if not group:
            break
        batch = encode_rows(tokenizer, group, max_length)
        tokens += int(batch["attention_mask"].sum())
        if index % world_size == rank:
            yield batch
    if skipped[0]:
        logger.warning("evaluation skipped %d documents of %s that are not valid UTF-8", skipped[0], where)
    if tokens == 0:
        raise ConfigError(f"evaluation found no tokens in {where}; check --eval_dataset_path / --target_eval_tokens")
