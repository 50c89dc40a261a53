"""Training batches from a prepared folder, by global sample index (the folder: prepared.py).

Samples: per document (the paper's mode: document i truncated and padded to ``max_length``, see
``prepared.truncate_and_pad``) or, with ``packing``, the split's token stream cut into rows of ``max_length``
(sample i is tokens ``i*L:(i+1)*L``; the last partial row is dropped). With ``N`` samples, global position ``g``
is sample ``perm_e[g % N]`` of epoch ``e = g // N``, where ``perm_e`` is a permutation drawn from ``(seed, e)``.

Update ``u`` takes positions ``u*T .. u*T+T-1`` (``T`` = total batch size). Rank ``r`` of ``R`` takes the
``T/R`` of them starting at ``u*T + r*T/R`` and cuts them into micro-batches of ``batch_size`` in order. So the
sequences of an update do not depend on the world size, the micro-batch size or the worker count, and the data
position a checkpoint keeps is one number, the next update's first position (the same on every rank).
"""
from __future__ import annotations

import itertools
import os
import sys
import weakref

import numpy as np
import torch

from ...errors import ConfigError
from . import workers
from .prepared import PreparedData, truncate_and_pad

STATE_FORMAT = "alphadecay.token_batches.v1"
DATA_SEED = 42   # the streamed path's shuffle seed too: --seed changes the initialisation, not the data order


class TokenBatches(torch.utils.data.IterableDataset):
    """Endless micro-batches ``{"input_ids", "attention_mask"}`` of one rank, from position ``start``."""

    def __init__(self, data: PreparedData, *, batch_size: int, total_batch_size: int, max_length: int, rank: int = 0,
                 world_size: int = 1, packing: bool = False, seed: int = DATA_SEED, num_workers: int = 0,
                 split: str = "train"):
        per_rank, rest = divmod(total_batch_size, world_size)
        if rest or per_rank % batch_size:
            raise ConfigError(f"--total_batch_size {total_batch_size} is not a multiple of --batch_size x ranks "
                              f"({batch_size} x {world_size}); pick sizes that divide")
        self.data, self.split = data, data.split(split)
        self.batch_size, self.total, self.per_rank = batch_size, total_batch_size, per_rank
        self.accum, self.max_length, self.packing = per_rank // batch_size, max_length, packing
        self.rank, self.world_size, self.seed, self.num_workers = rank, world_size, int(seed), num_workers
        self.num_samples = self.split.tokens // max_length if packing else self.split.documents
        if self.num_samples < 1:
            raise ConfigError(f"the prepared folder '{data.path}' holds fewer than {max_length} tokens, not one "
                              f"packed sequence; prepare more data or lower --max_length")
        self.start = 0
        self._perms: dict = {}

    def settings(self) -> dict:
        return {"fingerprint": self.data.fingerprint, "packing": self.packing, "max_length": self.max_length,
                "seed": self.seed, "total_batch_size": self.total}

    def epoch_of(self, position: int) -> int:
        return position // self.num_samples

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 1:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        return self._perms[epoch]

    def sample(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, within = divmod(position, self.num_samples)
        index = int(self._permutation(epoch)[within])
        if self.packing:
            row = self.split.token_range(index * self.max_length, (index + 1) * self.max_length).astype(np.int64)
            return row, np.ones(self.max_length, dtype=np.int64)
        return truncate_and_pad(self.split.document(index), self.max_length, self.data.eos_token_id,
                                self.data.pad_token_id)

    def positions(self, micro: int) -> range:
        """Global positions of this rank's micro-batch ``micro`` (counted from ``start``)."""
        update, m = divmod(micro, self.accum)
        first = self.start + update * self.total + self.rank * self.per_rank + m * self.batch_size
        return range(first, first + self.batch_size)

    def batch(self, micro: int) -> dict:
        rows = [self.sample(p) for p in self.positions(micro)]
        return {"input_ids": torch.from_numpy(np.stack([r for r, _ in rows])),
                "attention_mask": torch.from_numpy(np.stack([m for _, m in rows]))}

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        first, step = (0, 1) if info is None else (info.id, info.num_workers)
        for micro in itertools.count(first, step):   # a DataLoader takes its workers' batches round-robin
            yield self.batch(micro)


class TokenLoader:
    """The training loader over :class:`TokenBatches`: counts the micro-batches handed out, so its
    :meth:`state_dict` is the global position after the last complete update (the same on every rank)."""

    def __init__(self, dataset: TokenBatches, num_workers: int, announce: bool = True):
        self.dataset, self.num_workers, self.announce = dataset, num_workers, announce
        self._taken = 0
        self._batches = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        batches, self._batches = (self._batches() if self._batches else None), None
        workers.stop(batches)

    @property
    def skipped_documents(self) -> int:
        return int(self.dataset.data.manifest.get("skipped_documents", 0))

    @property
    def position(self) -> int:
        return self.dataset.start + (self._taken // self.dataset.accum) * self.dataset.total

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "position": self.position, **self.dataset.settings()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ConfigError("the checkpoint's data position is not from a prepared folder (it was trained from raw "
                              "text or the hub); resume it with the --dataset_path it was trained with")
        mine = self.dataset.settings()
        changed = [f"{k}={state.get(k)!r} (now {v!r})" for k, v in mine.items() if state.get(k) != v]
        if changed:
            raise ConfigError(f"cannot continue the checkpoint's data: it was trained with {', '.join(changed)}; "
                              f"resume with the same prepared folder, --packing, --max_length and --total_batch_size")
        self.dataset.start, self._taken = int(state["position"]), 0

    def __iter__(self):
        dataset = self.dataset
        dataset.start, self._taken = self.position, 0
        epoch = dataset.epoch_of(dataset.start)
        if self.num_workers:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                                                 persistent_workers=False,
                                                 worker_init_fn=workers.ignore_stop_signals)
            batches = iter(loader)
            self._batches = weakref.ref(batches)
            workers.track(batches)
        else:
            batches = iter(dataset)
        try:
            for batch in batches:
                now = dataset.epoch_of(dataset.positions(self._taken)[-1])
                if now != epoch and self.announce:
                    print(f"data: the {dataset.num_samples:,} samples of '{dataset.data.path}' are used up; epoch "
                          f"{now} starts, reshuffled from (seed {dataset.seed}, epoch {now})", file=sys.stderr,
                          flush=True)
                epoch = now
                self._taken += 1
                yield batch
        finally:
            if self.num_workers:   # torch's own clean-up would leave workers that ignore SIGTERM
                workers.stop(batches)


def eval_token_batches(data: PreparedData, *, batch_size, max_length, target_eval_tokens, rank=0, world_size=1):
    """The validation split's documents (truncated and padded, shuffled with the evaluation seed), cut like
    eval_data's: batches in order until their tokens reach ``target_eval_tokens``; rank r takes every
    world_size-th."""
    from .eval_data import EVAL_SEED
    split = data.split("validation")
    order = np.random.default_rng(EVAL_SEED).permutation(split.documents)
    tokens = 0
    for index, first in enumerate(range(0, len(order), batch_size)):
        if tokens >= target_eval_tokens:
            break
        rows = [truncate_and_pad(split.document(int(i)), max_length, data.eos_token_id, data.pad_token_id)
                for i in order[first:first + batch_size]]
        batch = {"input_ids": torch.from_numpy(np.stack([r for r, _ in rows])),
                 "attention_mask": torch.from_numpy(np.stack([m for _, m in rows]))}
        tokens += int(batch["attention_mask"].sum())
        if index % world_size == rank:
            yield batch
