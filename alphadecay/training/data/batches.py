"""Tokenized training batches, a stream that resumes exactly (evaluation batches: eval_data.py).

Training stream (:class:`TrainBatches`), per rank:

1. Documents come from :func:`load_documents` (local files, one shard per file, or the hub's C4).
2. The shard (file) order is shuffled with ``ds.shuffle(seed=shuffle_seed, buffer_size=1)``: the same permutation
   on every rank, as ``split_dataset_by_node`` requires. The size-1 buffer keeps datasets' own example buffer out,
   because a datasets shuffle buffer is not part of its ``state_dict`` and resuming would silently drop up to
   ``buffer_size`` documents.
3. The shards are split over ``G = world_size * W`` logical streams (``W = max(1, num_workers)`` per rank) with two
   nested ``split_dataset_by_node`` calls. Whole shards are dealt out round-robin when there are at least ``G`` of them
   (strategy ``"shards"``; streams may then get unequal numbers of files). With fewer shards ``F`` than streams
   (FineWeb's sample-10BT has 15 files, 8 ranks x 8 workers make 64 streams), global stream ``g`` reads only file
   ``g % F`` (in every epoch) and keeps every ``c``-th document of it (``c``: the streams sharing that file),
   strategy ``"files"``; with one file every stream reads it and keeps one document in ``G`` (``"examples"``).
   datasets' own ``"auto"`` would fall back to ``"examples"`` whenever ``G`` does not divide the shard count, e.g.
   1024 C4 shards over 3 workers, which is why the strategy is chosen here.
4. Each stream reads ``shuffle_buffer`` documents at a time and permutes that block with a generator seeded by
   ``(shuffle_seed, epoch, stream, block)``, so a block can be rebuilt exactly from the datasets state at its start.
5. Documents are tokenized ``batch_size`` at a time (one batched fast-tokenizer call) into ``[batch_size, max_length]``
   rows, either truncated and padded (default, as in the paper) or packed (``packing=True``): documents joined with
   EOS into one token stream cut into full rows, the remainder carried to the next batch (documents are tokenized
   without special tokens there, so EOS is the only separator and no BOS is added).
6. Streams never end: at the end of the data a stream starts its next epoch (shard order reshuffled by
   ``set_epoch``, new block permutations). Batch ``n`` of a rank comes from logical stream ``n % W``.

Resume: a stream's state is ``(epoch, block, offset in block, datasets state at block start, carried tokens,
skipped count)``. Every batch carries the state of its stream right after it; :class:`ResumableLoader` keeps the
state of the last batch it handed to the training loop for each stream plus the number ``k`` of batches handed over.
A DataLoader visits its workers round-robin from worker 0, so on resume worker ``p`` serves logical stream
``(p + k) % W`` and batch ``k`` comes next. Resuming re-reads at most one block plus, inside datasets, the already
consumed part of the current file. The batch sequence is a function of the data and of (shuffle_seed, rank,
world_size, num_workers, batch_size, max_length, packing, shuffle_buffer, tokenizer); num_workers 0 and 1 give
the same sequence.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import os
import weakref

import numpy as np
import torch
from datasets.distributed import split_dataset_by_node

from ...errors import ConfigError, one_line
from . import workers
from .encode import encode_rows
from .retry import resilient_blocks
from .text_sources import HUB_DATASET, HubSource, _hub_unreachable, load_documents, resolve_data_files

__all__ = ["load_tokenizer", "resolve_data_files", "load_documents", "TrainBatches", "ResumableLoader",
           "make_train_loader"]

logger = logging.getLogger(__name__)
STATE_FORMAT = "alphadecay.train_batches.v1"


def _from_folder_cache_or_hub(auto, name: str, max_length: int):
    """A local folder or a copy in the local Hugging Face cache first; the hub only when that fails and the hub
    answers (without a network huggingface_hub retries for about a minute before failing)."""
    kwargs = dict(use_fast=True, model_max_length=max_length)
    try:
        return auto.from_pretrained(name, local_files_only=True, **kwargs)
    except Exception:  # noqa: BLE001 - not cached (OSError) or a cached copy that is incomplete
        if os.path.isdir(name):
            raise
    unreachable = _hub_unreachable()
    if unreachable:
        raise ConfigError(f"not in the local cache and the hub is not reachable ({unreachable})")
    return auto.from_pretrained(name, **kwargs)


def load_tokenizer(name_or_path: str, max_length: int):
    """A fast ``AutoTokenizer`` with ``model_max_length=max_length`` (a pad token is borrowed from EOS if missing)."""
    hint = ("pass --tokenizer with a local tokenizer folder (e.g. .../tokenizers/t5-base) or a reachable hub name")
    from transformers import AutoTokenizer

    name = os.path.expanduser(str(name_or_path))
    if not os.path.isdir(name) and (os.path.isabs(name) or name.startswith(".") or os.path.exists(name)):
        raise ConfigError(f"tokenizer '{name_or_path}' could not be loaded: no such folder; {hint}")
    try:
        tokenizer = _from_folder_cache_or_hub(AutoTokenizer, name, max_length)
    except ConfigError as error:
        raise ConfigError(f"tokenizer '{name_or_path}' could not be loaded: {error}; {hint}") from None
    except Exception as error:  # noqa: BLE001 - OSError, HF validation/connection errors, bad files...
        raise ConfigError(f"tokenizer '{name_or_path}' could not be loaded: {one_line(error)}; {hint}") from None
    if not getattr(tokenizer, "is_fast", False):
        logger.warning("tokenizer '%s' has no fast version; tokenization will be slow", name_or_path)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer '{name_or_path}' has neither a pad nor an EOS token; {hint}")
        tokenizer.pad_token = tokenizer.eos_token  # padding only fills masked positions, so any id will do
    return tokenizer


def _check_positive(**values):
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}; fix --{name}")


def _check_rank(rank, world_size):
    _check_positive(world_size=world_size)
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank!r} is outside 0..{world_size - 1} for world_size {world_size}; check the "
                          f"launcher's RANK/WORLD_SIZE")


def _usable(texts, flags):
    """(documents to keep, number skipped because they were not valid UTF-8); empty documents are dropped silently."""
    flags = flags if flags is not None else itertools.repeat(False)
    kept, skipped = [], 0
    for text, bad in zip(texts, flags):
        if bad:
            skipped += 1
        elif text and not text.isspace():
            kept.append(text)
    return kept, skipped


class _DropShuffleBufferWarning(logging.Filter):
    def filter(self, record):
        return not record.getMessage().startswith("Loading a state dict of a shuffle buffer")


@contextlib.contextmanager
def _quiet_shuffle_buffer_warning():
    """Hide datasets' "shuffle buffer content lost" warning: our buffer of size 1 is always empty between documents."""
    datasets_logger, drop = logging.getLogger("datasets.iterable_dataset"), _DropShuffleBufferWarning()
    datasets_logger.addFilter(drop)
    try:
        yield
    finally:
        datasets_logger.removeFilter(drop)


def _keep(batch):
    """DataLoader ``collate_fn``: batches arrive ready-made and their bookkeeping must not be converted."""
    return batch


class _DocStream:
    """The documents of one logical stream, with an exact cursor (see the module docstring, steps 2-4 and 6)."""

    def __init__(self, owner: "TrainBatches", index: int, state: dict | None):
        state = state or {}
        self.owner, self.index = owner, index
        self.stream = owner.rank * owner.num_streams + index
        self.epoch, self.block, self.offset = state.get("epoch", 0), state.get("block", 0), state.get("offset", 0)
        self.source, self.skipped = state.get("source"), state.get("skipped", 0)

    def state(self) -> dict:
        return {"epoch": self.epoch, "block": self.block, "offset": self.offset, "source": self.source,
                "skipped": self.skipped}

    def _dataset(self, source):
        owner = self.owner
        ds = owner.documents.shuffle(seed=owner.shuffle_seed, buffer_size=1, max_buffer_input_shards=1)
        if owner.strategy == "files":   # one file, shared document-wise with the other streams that read it
            streams = owner.world_size * owner.num_streams
            file, sharers = self.stream % owner.num_shards, len(range(self.stream % owner.num_shards, streams,
                                                                      owner.num_shards))
            ds = ds.shard(num_shards=owner.num_shards, index=file, contiguous=False)
            if sharers > 1:
                ds = split_dataset_by_node(ds, rank=self.stream // owner.num_shards, world_size=sharers,
                                           strategy="examples")
        else:
            ds = split_dataset_by_node(ds, rank=owner.rank, world_size=owner.world_size, strategy=owner.strategy)
            ds = split_dataset_by_node(ds, rank=self.index, world_size=owner.num_streams, strategy=owner.strategy)
        ds.set_epoch(self.epoch)
        if source is not None:
            ds.load_state_dict(source)
        return ds

    def __iter__(self):
        owner = self.owner
        while True:
            whole_epoch = self.source is None and self.block == 0 and self.offset == 0
            kept = 0
            # ds.iter, not iter(ds): inside a DataLoader worker iter(ds) would split the shards by worker again.
            # A transient network error re-opens the stream at the last block's state (retry.py).
            blocks = resilient_blocks(self._dataset, owner.shuffle_buffer, owner.source_name, self.source)
            with _quiet_shuffle_buffer_warning():  # the state is loaded when the first block is fetched
                first = next(blocks, None)
            for block, after_block in itertools.chain([first] if first is not None else [], blocks):
                texts, flags = block["text"], block.get("undecodable")
                seed = [owner.shuffle_seed, self.epoch, self.stream, self.block]
                order = np.random.default_rng(seed).permutation(len(texts))
                for position in range(self.offset, len(texts)):
                    self.offset = position + 1  # before yielding: the cursor must already point past this document
                    doc = int(order[position])
                    if flags is not None and flags[doc]:
                        self.skipped += 1
                    elif texts[doc] and not texts[doc].isspace():
                        kept += 1
                        yield texts[doc]
                self.block, self.offset, self.source = self.block + 1, 0, after_block
            if whole_epoch and kept == 0:
                raise ConfigError(
                    f"data stream {self.stream} (rank {owner.rank}, worker {self.index}) found no usable documents "
                    f"in {owner.source_name}; add data or use fewer ranks/--workers")
            self.epoch, self.block, self.offset, self.source = self.epoch + 1, 0, 0, None


class TrainBatches(torch.utils.data.IterableDataset):
    """Endless training batches ``{"input_ids", "attention_mask"}`` of one rank (LongTensors, batch_size x max_length).

    Batches also carry the bookkeeping keys ``_stream``/``_stream_state`` (stripped by :func:`make_train_loader`).
    Iterate it through :func:`make_train_loader` with the same ``num_workers``; iterated directly (in-process) it
    interleaves its streams exactly like the loader's workers would and tracks its own :meth:`state_dict`.
    ``path=None`` streams split ``split`` of ``hub`` (default: the hub's C4).
    """

    def __init__(self, path, tokenizer, *, batch_size, max_length, rank=0, world_size=1, num_workers=0,
                 packing=False, shuffle_seed=42, split="train", shuffle_buffer=1000, hub=HubSource()):
        _check_positive(batch_size=batch_size, max_length=max_length, shuffle_buffer=shuffle_buffer)
        _check_rank(rank, world_size)
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"num_workers must be 0 or more, got {num_workers!r}; fix --workers")
        if not isinstance(shuffle_seed, int) or shuffle_seed < 0:
            raise ConfigError(f"the data shuffle seed must be an integer >= 0, got {shuffle_seed!r}; pass a valid "
                              f"shuffle_seed")
        if packing and tokenizer.eos_token_id is None:
            raise ConfigError("packing needs a tokenizer with an EOS token; use another tokenizer or drop --packing")
        self.tokenizer, self.batch_size, self.max_length, self.packing = tokenizer, batch_size, max_length, packing
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.num_streams = max(1, num_workers)
        self.shuffle_seed, self.shuffle_buffer = int(shuffle_seed), shuffle_buffer
        self.from_hub = path is None
        self.source_name = f"'{path}'" if path is not None else hub.describe(split)
        self.documents = load_documents(path, split, hub)
        self.num_shards = self.documents.num_shards
        streams = world_size * self.num_streams
        self.strategy = "shards" if self.num_shards >= streams else "files" if self.num_shards > 1 else "examples"
        self._progress = self._fresh_state()

    def _settings(self) -> dict:
        return {"data": "hub" if self.from_hub else "files", "num_shards": self.num_shards,
                "rank": self.rank, "world_size": self.world_size, "data_streams": self.num_streams,
                "batch_size": self.batch_size, "max_length": self.max_length, "packing": self.packing,
                "shuffle_seed": self.shuffle_seed, "shuffle_buffer": self.shuffle_buffer,
                **({"split": "files"} if self.strategy == "files" else {})}

    def _fresh_state(self) -> dict:
        return {"format": STATE_FORMAT, "settings": self._settings(), "batches": 0, "skipped_documents": 0,
                "streams": [None] * self.num_streams}

    @property
    def skipped_documents(self) -> int:
        """Documents skipped so far because they were not valid UTF-8 (in-process iteration or loaded state)."""
        return _skipped(self._progress)

    def state_dict(self) -> dict:
        """Position after the batches this object yielded in-process (or the state last loaded)."""
        return _export(self._progress)

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (from this class or :class:`ResumableLoader`) on the next iteration."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ConfigError(f"the checkpoint's data-loader state is not a '{STATE_FORMAT}' state; resume from a "
                              f"checkpoint written by this version or start the run afresh")
        saved, mine = state.get("settings", {}), self._settings()
        changed = [f"{key}={saved.get(key)!r} (now {value!r})" for key, value in mine.items()
                   if saved.get(key) != value]
        if changed or len(state.get("streams", ())) != self.num_streams:
            raise ConfigError(f"cannot resume the training data stream: the checkpoint was written with "
                              f"{', '.join(changed) or 'other data streams'}; resume with the same data, batch size, "
                              f"sequence length, packing, world size and --workers")
        self._progress = copy.deepcopy(dict(state))

    def __iter__(self):
        start = copy.deepcopy(self._progress)
        rotation = start["batches"] % self.num_streams
        info = torch.utils.data.get_worker_info()
        if info is None:
            self._progress = start
            streams = [self._stream_batches(i, start["streams"][i]) for i in range(self.num_streams)]
            for count in itertools.count(start["batches"]):
                index = count % self.num_streams
                batch = next(streams[index])
                start["batches"], start["streams"][index] = count + 1, batch["_stream_state"]
                yield batch
            return
        if info.num_workers != self.num_streams:
            yield {"_error": f"TrainBatches was built for num_workers={self.num_workers} but its DataLoader has "
                             f"{info.num_workers} workers; pass the same num_workers to both"}
            return
        index = (info.id + rotation) % self.num_streams
        try:
            yield from self._stream_batches(index, start["streams"][index])
        except ConfigError as error:
            # torch would re-raise it in the main process with the worker traceback glued into the message
            yield {"_error": str(error)}

    def _stream_batches(self, index: int, state: dict | None):
        stream = _DocStream(self, index, state)
        docs = iter(stream)
        carry = list(state["carry"]) if state else []
        made = state["batches"] if state else 0
        rows, length = self.batch_size, self.max_length
        while True:
            if self.packing:
                while len(carry) < rows * length:
                    texts = list(itertools.islice(docs, rows))
                    encoded = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
                    for ids in encoded:
                        carry.extend(ids)
                        carry.append(self.tokenizer.eos_token_id)
                input_ids = torch.tensor(carry[:rows * length], dtype=torch.long).view(rows, length)
                attention_mask = torch.ones_like(input_ids)
                carry = carry[rows * length:]
            else:
                encoded = encode_rows(self.tokenizer, list(itertools.islice(docs, rows)), length)
                input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
            made += 1
            yield {"input_ids": input_ids, "attention_mask": attention_mask, "_stream": index,
                   "_stream_state": {**stream.state(), "carry": list(carry), "batches": made}}


def _skipped(state: dict) -> int:
    return sum(stream["skipped"] for stream in state["streams"] if stream)


def _export(state: dict) -> dict:
    """A deep copy made of plain Python values, fit for JSON and for ``torch.load(weights_only=True)``."""
    def plain(value):
        if isinstance(value, dict):
            return {str(key): plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, np.generic):
            return value.item()
        return value

    exported = plain(state)
    exported["skipped_documents"] = _skipped(exported)
    return exported


class ResumableLoader:
    """Iterable of training batches that knows exactly which batches the training loop has taken.

    :meth:`state_dict` reflects the batches handed out so far (not those prefetched by workers); a new loader
    built the same way continues after :meth:`load_state_dict` with the very next batch. Iterating again
    continues where the previous iteration stopped.
    """

    def __init__(self, dataset: TrainBatches, num_workers: int):
        self.dataset, self.num_workers = dataset, num_workers
        self._state = dataset.state_dict()
        self._batches = None   # weak reference to the DataLoader iterator in use (its workers are what close() stops)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Stop the worker processes now; every exit path of a run does this (see workers.py)."""
        batches, self._batches = (self._batches() if self._batches else None), None
        workers.stop(batches)

    @property
    def skipped_documents(self) -> int:
        """Documents skipped because they were not valid UTF-8, among those behind the batches handed out."""
        return _skipped(self._state)

    def state_dict(self) -> dict:
        return _export(self._state)

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)
        self._state = self.dataset.state_dict()

    def __iter__(self):
        self.dataset.load_state_dict(self._state)  # workers are forked from this object: they start from here
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                                             collate_fn=_keep, persistent_workers=False,
                                             worker_init_fn=workers.ignore_stop_signals if self.num_workers else None)
        batches = iter(loader)
        if self.num_workers:
            self._batches = weakref.ref(batches)
            workers.track(batches)
        try:
            for item in batches:
                if "_error" in item:
                    raise ConfigError(item["_error"])
                index, stream_state = item.pop("_stream"), item.pop("_stream_state")
                self._state["batches"] += 1
                self._state["streams"][index] = stream_state
                yield item
        finally:
            # an error or an abandoned iteration: torch's own clean-up would leave workers that ignore SIGTERM
            workers.stop(batches)


def make_train_loader(dataset: TrainBatches, num_workers: int) -> ResumableLoader:
    """The training loader for ``dataset``; ``num_workers`` must be the one ``dataset`` was built with."""
    if num_workers != dataset.num_workers:
        raise ValueError(f"make_train_loader(num_workers={num_workers}) but the dataset was built with "
                         f"num_workers={dataset.num_workers}; they must match")
    if num_workers > 0:
        # workers tokenize in parallel already; a forked Rust thread pool would only warn and be disabled
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return ResumableLoader(dataset, num_workers)
