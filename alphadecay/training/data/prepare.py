"""Tokenize a source once into a prepared folder (layout: prepared.py); ``alphadecay prepare-data`` runs this.

Documents are read in source order by this process (local files through text_sources, one after the other, or a
hub stream) and cut into chunks of ``docs_per_shard`` usable documents per split; chunk ``k`` of a split becomes
shard ``k``, tokenized by one of ``workers`` processes. A shard is written under a temporary name, flushed to
disk and renamed, so a crash leaves only whole shards; running the same command again re-reads the source, keeps
every shard already on disk (its counts and checksums are recomputed from the files) and writes the rest.
The manifest comes last, atomically, and only then is the ``PREPARING`` marker removed.
"""
from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing
import os
import sys
from dataclasses import asdict, dataclass

import numpy as np

from ...errors import ConfigError
from .prepared import (EOS_POLICY, FORMAT, MANIFEST, PREPARING, SETTINGS, file_sha256, shard_names,
                       token_dtype, tokenizer_files_sha256, tokenizer_sha256)
from .retry import resilient_blocks
from .text_sources import HubSource, load_documents

READ_BLOCK = 1000
_WORKER: dict = {}


@dataclass(frozen=True)
class PrepareSettings:
    tokenizer: str
    output: str
    dataset_path: str | None = None
    eval_dataset_path: str | None = None
    hub: HubSource | None = None          # streamed when dataset_path is None
    holdout_docs: float = 0               # >= 1: the first N documents; 0 < x < 1: every (1/x)-th document
    docs_per_shard: int = 50_000
    max_documents: int | None = None      # stop after this many documents of the source (a sample)
    workers: int = 0

    def record(self) -> dict:
        """What a re-run must repeat to continue this folder (the worker count may differ)."""
        out = asdict(self)
        out.pop("workers")
        out["hub"] = asdict(self.hub) if self.hub else None
        for key in ("dataset_path", "eval_dataset_path", "tokenizer"):
            if out[key] is not None and os.path.exists(out[key]):
                out[key] = os.path.realpath(out[key])
        out.pop("output")
        return out


def _texts(documents, counts, where="the source"):
    def reopen(state):
        if state is not None:
            documents.load_state_dict(state)
        return documents

    for block, _ in resilient_blocks(reopen, READ_BLOCK, where):
        flags = block.get("undecodable") or [False] * len(block["text"])
        for text, bad in zip(block["text"], flags):
            if bad:
                counts["skipped_documents"] += 1
            elif text and not text.isspace():
                yield text


def _held_out(index: int, holdout: float) -> bool:
    if holdout >= 1:
        return index < holdout
    return holdout > 0 and int((index + 1) * holdout) > int(index * holdout)


def _chunks(settings: PrepareSettings, counts):
    """(split, shard index, texts) in source order."""
    hub = settings.hub or HubSource()
    train = load_documents(settings.dataset_path, "train", hub)
    validation = None
    if settings.eval_dataset_path is not None:
        validation = load_documents(settings.eval_dataset_path, "validation", hub)
    elif settings.dataset_path is None and not settings.holdout_docs:
        validation = load_documents(None, "validation", hub)
    buffers, made = collections.defaultdict(list), collections.Counter()
    for index, text in enumerate(_texts(train, counts)):
        if settings.max_documents is not None and index >= settings.max_documents:
            break
        split = "validation" if _held_out(index, settings.holdout_docs) else "train"
        buffers[split].append(text)
        if len(buffers[split]) == settings.docs_per_shard:
            yield split, made[split], buffers.pop(split)
            made[split] += 1
    if validation is not None:
        for index, text in enumerate(_texts(validation, counts)):
            if settings.max_documents is not None and index >= settings.max_documents:
                break
            buffers["validation"].append(text)
            if len(buffers["validation"]) == settings.docs_per_shard:
                yield "validation", made["validation"], buffers.pop("validation")
                made["validation"] += 1
    for split in ("train", "validation"):
        if buffers.get(split):
            yield split, made[split], buffers.pop(split)


def _init_worker(tokenizer_name: str) -> None:
    from .batches import load_tokenizer
    _WORKER["tokenizer"] = load_tokenizer(tokenizer_name, 10 ** 12)


def _save_atomically(path: str, array: np.ndarray) -> None:
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _describe(folder: str, split: str, index: int) -> dict:
    """A shard's manifest entry, from its files."""
    entry = {}
    for key, name in zip(("tokens", "offsets"), shard_names(split, index)):
        path = os.path.join(folder, name)
        entry[f"{key}_file"], entry[f"{key}_bytes"], entry[f"{key}_sha256"] = name, os.path.getsize(path), \
            file_sha256(path)
        count = len(np.load(path, mmap_mode="r"))
        entry["tokens" if key == "tokens" else "documents"] = count if key == "tokens" else count - 1
    return entry


def write_shard(folder: str, split: str, index: int, texts: list[str], dtype: str, tokenizer=None) -> dict:
    tokenizer = tokenizer or _WORKER["tokenizer"]
    eos = tokenizer.eos_token_id
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.empty(int(offsets[-1]), dtype=dtype)
    for start, row in zip(offsets[:-1], ids):
        tokens[start:start + len(row)] = row
        tokens[start + len(row)] = eos
    tokens_name, offsets_name = shard_names(split, index)
    _save_atomically(os.path.join(folder, offsets_name), offsets)
    _save_atomically(os.path.join(folder, tokens_name), tokens)   # last: its presence means the shard is whole
    return _describe(folder, split, index)


def _start(settings: PrepareSettings) -> bool:
    """Create or re-open the output folder; False when it is already complete."""
    out = settings.output
    record = settings.record()
    if os.path.isfile(os.path.join(out, SETTINGS)):
        with open(os.path.join(out, SETTINGS), encoding="utf-8") as f:
            before = json.load(f)
        if before != record:
            changed = ", ".join(f"{k}={before.get(k)!r} (now {v!r})" for k, v in record.items() if before.get(k) != v)
            raise ConfigError(f"'{out}' was prepared with other settings: {changed}; repeat the first command to "
                              f"continue it, or pass another --output")
        return not os.path.isfile(os.path.join(out, MANIFEST))
    if os.path.isdir(out) and os.listdir(out):
        raise ConfigError(f"--output '{out}' is a folder that holds other files; pass a new or empty folder")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, PREPARING), "w") as f:
        f.write(f"{os.getpid()}\n")
    with open(os.path.join(out, SETTINGS), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    return True


def prepare(settings: PrepareSettings, tokenizer, *, progress: bool = True) -> dict:
    """Write (or complete) the prepared folder; returns its manifest."""
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"tokenizer '{settings.tokenizer}' has no EOS token, which separates documents in a "
                          f"prepared folder; use another tokenizer")
    out = settings.output
    if not _start(settings):
        print(f"'{out}' is already complete ({MANIFEST} present)", file=sys.stderr)
        with open(os.path.join(out, MANIFEST), encoding="utf-8") as f:
            return json.load(f)
    dtype = np.dtype(token_dtype(len(tokenizer))).name
    counts = collections.Counter()
    from tqdm import tqdm
    bar = tqdm(unit="tok", unit_scale=True, desc="tokenizing", file=sys.stderr, disable=not progress,
               mininterval=1.0)
    pool = None
    if settings.workers > 0:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        pool = multiprocessing.get_context("fork").Pool(settings.workers, _init_worker, (settings.tokenizer,))
    shards, pending, reused = collections.defaultdict(list), collections.deque(), 0

    def collect(split, result):
        entry = result if isinstance(result, dict) else result.get()
        shards[split].append(entry)
        bar.update(entry["tokens"])

    try:
        for split, index, texts in _chunks(settings, counts):
            if os.path.isfile(os.path.join(out, shard_names(split, index)[0])):
                pending.append((split, _describe(out, split, index)))
                reused += 1
            elif pool is None:
                pending.append((split, write_shard(out, split, index, texts, dtype, tokenizer)))
            else:
                pending.append((split, pool.apply_async(write_shard, (out, split, index, texts, dtype))))
            while pending and (len(pending) > 2 * max(1, settings.workers) or isinstance(pending[0][1], dict)):
                collect(*pending.popleft())
        while pending:
            collect(*pending.popleft())
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    if not shards.get("train"):
        raise ConfigError(f"the source has no usable training documents; check --dataset_path / --dataset_name"
                          f"{' and --holdout_docs' if settings.holdout_docs else ''}")
    manifest = _manifest(settings, tokenizer, dtype, shards, counts)
    tmp = os.path.join(out, f".tmp-{MANIFEST}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(out, MANIFEST))
    os.remove(os.path.join(out, PREPARING))
    if reused:
        print(f"kept {reused} shards written by an earlier run", file=sys.stderr)
    return manifest


def _manifest(settings, tokenizer, dtype, shards, counts) -> dict:
    tok = {"name": settings.tokenizer, "sha256": tokenizer_sha256(tokenizer),
           "files_sha256": tokenizer_files_sha256(settings.tokenizer), "vocab_size": len(tokenizer)}
    fingerprint = hashlib.sha256(tok["sha256"].encode())
    for split in sorted(shards):
        for entry in shards[split]:
            fingerprint.update(entry["tokens_sha256"].encode() + entry["offsets_sha256"].encode())
    totals = {split: {"documents": sum(e["documents"] for e in entries), "tokens": sum(e["tokens"] for e in entries),
                      "shards": len(entries)} for split, entries in shards.items()}
    return {"format": FORMAT, "fingerprint": fingerprint.hexdigest(), "tokenizer": tok, "dtype": dtype,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "eos_policy": EOS_POLICY,
            "source": settings.record(), "skipped_documents": counts["skipped_documents"], "counts": totals,
            "splits": dict(shards)}
