"""Pieces shared by the benchmarks: data locations, the release's data path, machine facts, output.

The release's data path (``ReleaseBatches``) is reproduced here, not imported, because this project does not
ship it: it is the GaLore ``PreprocessedIterableDataset`` the AlphaDecay release trains with, one tokenizer
call per document, each padded to ``max_length`` and returned as its own tensor, then stacked into a batch.
"""
from __future__ import annotations

import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
DATA_DIR = Path(os.environ.get("ALPHADECAY_DATA_DIR", REPO.parent / "shared" / "data"))


def data_paths() -> dict[str, str]:
    """Training folder (both local C4 files, one shard each), evaluation file, tokenizer folder."""
    c4 = DATA_DIR / "c4" / "en"
    paths = {"train": str(c4), "eval": str(c4 / "c4-dev.00001-of-00002.json.gz"),
             "tokenizer": str(DATA_DIR / "tokenizers" / "t5-base")}
    if not any(c4.glob("*.json.gz")) or not os.path.isdir(paths["tokenizer"]):
        sys.exit(f"error: the local C4 sample or the T5 tokenizer is missing under {DATA_DIR}; "
                 f"set ALPHADECAY_DATA_DIR to the folder holding c4/en and tokenizers/t5-base")
    return paths


def release_documents(path: str, rank: int = 0, world_size: int = 1):
    """The release's document stream: datasets' json builder, streamed, shuffled with seed 42, split by rank."""
    import datasets
    from datasets.distributed import split_dataset_by_node

    from alphadecay.training.data.batches import resolve_data_files

    data = datasets.load_dataset("json", data_files=resolve_data_files(path), split="train", streaming=True)
    data = data.shuffle(seed=42)
    if world_size > 1:
        data = split_dataset_by_node(data, rank=rank, world_size=world_size)
    return data


class ReleaseBatches(torch.utils.data.IterableDataset):
    """GaLore's ``PreprocessedIterableDataset`` as the release uses it (only the names changed).

    In a DataLoader worker ``iter(self.data)`` already hands each worker a share of the shards (datasets does
    that by itself) and the ``islice`` then keeps one document in ``num_workers`` of that share, as in the
    release: with W workers each worker tokenizes 1/W of what it reads. Kept as is, since it is the release's
    cost.
    """

    def __init__(self, data, tokenizer, batch_size: int, max_length: int):
        self.data, self.tokenizer = data, tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        docs = iter(self.data) if info is None else itertools.islice(self.data, info.id, None, info.num_workers)
        batch = []
        for example in docs:
            batch.append(self.tokenizer(example["text"], max_length=self.max_length, truncation=True,
                                        padding="max_length", return_tensors="pt"))
            if len(batch) == self.batch_size:
                yield self._format_batch(batch)
                batch = []
        if batch:
            yield self._format_batch(batch)

    @staticmethod
    def _format_batch(batch):
        return {"input_ids": torch.stack([item["input_ids"].squeeze(0) for item in batch]),
                "attention_mask": torch.stack([item["attention_mask"].squeeze(0) for item in batch])}


def release_loader(path, tokenizer, *, batch_size, max_length, workers, rank=0, world_size=1, epochs=None):
    """The release's loader; the bench re-reads the data when it runs out (``epochs`` passes, None = forever)."""
    def batches():
        for _ in itertools.count() if epochs is None else range(epochs):
            dataset = ReleaseBatches(release_documents(path, rank, world_size), tokenizer, batch_size, max_length)
            yield from torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
    return batches()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device: torch.device) -> dict:
    info = {"nproc": os.cpu_count(), "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)  # the machine may be shared: say how busy it was
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


class Report:
    """Prints one JSON object per line on stdout (and only there) and keeps them for ``--json``."""

    def __init__(self, enabled: bool = True):
        self.rows, self.enabled = [], enabled

    def emit(self, row: dict) -> None:
        self.rows.append(row)
        if self.enabled:
            print(json.dumps(row), flush=True)

    def save(self, path: str | None) -> None:
        if path and self.enabled:
            with open(path, "w") as f:
                json.dump(self.rows, f, indent=1)


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
