"""Where training and evaluation documents come from: local files or a Hugging Face hub dataset (C4 by default).

A hub dataset is named by :class:`HubSource` (``--dataset_name``, ``--dataset_config``, ``--text_field``,
``--eval_split``). One without a validation split (FineWeb) is evaluated with ``--eval_split train``: the train
split's first shard (its first data file) is then the validation stream and training reads the other shards.

Local data is a file, a glob or a folder of ``*.json``/``*.jsonl`` (JSON lines, or one JSON array per file),
``*.parquet`` and ``*.txt`` (one document per line) files, optionally gzip-compressed (``.gz``, except parquet).
Every record needs a ``text`` field (parquet: a ``text`` column); other fields are ignored.

Local files are read by our own generator (:func:`_read_documents`) wrapped in
``datasets.IterableDataset.from_generator`` with one shard per file, rather than by the ``json``/``text``/``parquet``
builders: the builders abort the whole stream on the first byte that is not UTF-8, and their errors for a corrupt
gzip or a record without ``text`` do not say which file is at fault. The generator gives each such problem a
one-line :class:`ConfigError` naming the file, and turns an undecodable document into a record flagged
``undecodable=True`` (with empty text) so consumers can skip and count it. The result is an ordinary streaming
``IterableDataset``: ``shuffle`` permutes the file order, ``split_dataset_by_node`` splits it and
``state_dict``/``load_state_dict`` checkpoint it.
"""
from __future__ import annotations

import glob
import gzip
import json
import logging
import os
import socket
import urllib.parse
import zlib
from dataclasses import dataclass

import datasets

from ...errors import ConfigError, one_line

logger = logging.getLogger(__name__)

HUB_DATASET = ("allenai/c4", "en")
DATA_SUFFIXES = (".jsonl.gz", ".json.gz", ".txt.gz", ".jsonl", ".json", ".parquet", ".txt")
FEATURES = datasets.Features({"text": datasets.Value("string"), "undecodable": datasets.Value("bool")})
_GLOB_CHARS = ("*", "?", "[")
_FIX = f"pass a file, folder or glob of {'/'.join(DATA_SUFFIXES)} files"
_LOCAL_FIX = "pass --dataset_path/--eval_dataset_path with local C4 files (e.g. a folder of c4-*.json.gz)"
HUB_PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class HubSource:
    """The hub dataset streamed when no local path is given; the defaults are the paper's C4."""
    name: str = HUB_DATASET[0]
    config: str | None = HUB_DATASET[1]
    text_field: str = "text"
    eval_split: str = "validation"

    @classmethod
    def from_args(cls, args) -> "HubSource":
        return cls(args.dataset_name, args.dataset_config or None, args.text_field, args.eval_split)

    def describe(self, split: str) -> str:
        config = f" '{self.config}'" if self.config else ""
        return f"the hub dataset {self.name}{config} split '{self._hub_split(split)}'"

    def _hub_split(self, split: str) -> str:
        return self.eval_split if split == "validation" else split

    @property
    def holds_out(self) -> bool:
        """Whether validation is the train split's first shard (and training reads the others)."""
        return self.eval_split == "train"


def _is_data_file(path: str) -> bool:
    return path.lower().endswith(DATA_SUFFIXES)


def resolve_data_files(path: str) -> list[str]:
    """The sorted list of data files that ``path`` (a file, a glob, or a folder searched recursively) denotes.

    Hidden files and folders (name starting with ``.``) are ignored inside folders; a glob keeps only the
    matches with a data suffix. Raises :class:`ConfigError` for a missing path, a glob matching no data file,
    a folder without data files or a file with an unsupported suffix.
    """
    if not path or not str(path).strip():
        raise ConfigError(f"the dataset path is empty; {_FIX}")
    path = os.path.expanduser(str(path))
    if any(ch in path for ch in _GLOB_CHARS):
        matches = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
        files = [p for p in matches if _is_data_file(p)]
        if not files:
            found = f"{len(matches)} files but none with a data suffix" if matches else "nothing"
            raise ConfigError(f"the glob '{path}' matched {found}; {_FIX}")
        return sorted(files)
    if os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path, followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files += [os.path.join(root, n) for n in names if not n.startswith(".") and _is_data_file(n)]
        if not files:
            raise ConfigError(f"the folder '{path}' contains no data files; {_FIX}")
        return sorted(files)
    if os.path.isfile(path):
        if not _is_data_file(path):
            raise ConfigError(f"'{path}' has an unsupported suffix; {_FIX}")
        return [path]
    raise ConfigError(f"the dataset path '{path}' does not exist; {_FIX}")


def load_documents(path: str | None, split: str, hub: HubSource = HubSource()) -> datasets.IterableDataset:
    """A streaming ``IterableDataset`` of documents; only its ``text`` column matters.

    ``path=None`` streams ``hub`` (default: ``allenai/c4`` ``en``, 1024 train / 8 validation shards): ``split``
    "validation" reads ``hub.eval_split``, any other split itself. With ``hub.eval_split == "train"`` validation is
    the train split's shard 0 and ``split`` "train" the remaining shards, so the two never share a document. A
    ``hub.text_field`` other than ``text`` is renamed to ``text``. If the hub cannot be reached the
    :class:`ConfigError` says to pass local files instead. Otherwise ``path`` goes through
    :func:`resolve_data_files` and each file becomes one shard, so shuffling and splitting across ranks and
    workers operate on whole files; ``split`` and ``hub`` are then ignored (the files are the split). Local records
    also carry ``undecodable`` (True for a document that is not valid UTF-8, whose ``text`` is then empty).
    """
    if path is None:
        return _hub_documents(hub, split)
    files = resolve_data_files(path)
    return datasets.IterableDataset.from_generator(_read_documents, features=FEATURES, gen_kwargs={"files": files})


def _hub_documents(hub: HubSource, split: str) -> datasets.IterableDataset:
    where = hub.describe(split)
    unreachable = _hub_unreachable()
    if unreachable:
        raise ConfigError(f"cannot stream {where}: {unreachable}; {_LOCAL_FIX}")
    try:
        documents = datasets.load_dataset(hub.name, hub.config, split=hub._hub_split(split), streaming=True)
    except Exception as error:  # noqa: BLE001 - any failure here means "the hub copy is unusable"
        raise ConfigError(f"could not open {where} ({type(error).__name__}: {one_line(error)}); "
                          f"{_LOCAL_FIX}") from None
    names = documents.column_names   # None when the stream does not declare its features
    if names is not None and hub.text_field not in names:
        raise ConfigError(f"{where} has no '{hub.text_field}' field (it has {', '.join(names)}); pass the column "
                          f"holding the documents as --text_field")
    if hub.text_field != "text":
        documents = documents.rename_column(hub.text_field, "text")
    if hub.holds_out:
        shards = documents.num_shards
        if shards < 2:
            raise ConfigError(f"--eval_split train holds out the first shard of {where} for validation, but it has "
                              f"{shards}; pass --eval_split with a real validation split or --eval_dataset_path")
        if split == "validation":
            return documents.shard(num_shards=shards, index=0)
        return datasets.concatenate_datasets([documents.shard(num_shards=shards, index=i) for i in range(1, shards)])
    return documents


def _hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """Why the hub cannot be reached, or None; one TCP connect instead of huggingface_hub's retry loop.

    Without a network huggingface_hub retries each request with back-off and prints a "Retrying" line
    per attempt, for about a minute, before datasets gives up. Behind a proxy the direct connect says
    nothing, so the probe is skipped and datasets' own error is reported.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        return f"{host}:{port} is unreachable within {timeout:g} s ({type(error).__name__}: {one_line(error)})"
    return None


def _read_documents(files: list[str]):
    """Yield ``{"text", "undecodable"}`` for every record of ``files`` in order (one call per shard)."""
    for file in files:
        name = file.lower()
        try:
            if name.endswith(".parquet"):
                yield from _read_parquet(file)
            else:
                opener = gzip.open if name.endswith(".gz") else open
                with opener(file, "rb") as handle:
                    if name.endswith((".txt", ".txt.gz")):
                        yield from _read_lines(file, handle)
                    else:
                        yield from _read_json(file, handle)
        except (OSError, EOFError, zlib.error) as error:
            kind = "corrupt or truncated gzip" if name.endswith(".gz") else "unreadable file"
            raise ConfigError(f"cannot read '{file}' ({kind}: {one_line(error)}); re-download or remove that "
                              f"file") from None


def _undecodable(file: str, where: str, warned: list) -> dict:
    if not warned:
        warned.append(True)
        logger.warning("skipping a document that is not valid UTF-8 in '%s' (%s); further ones in this file are "
                       "skipped and counted without a warning", file, where)
    return {"text": "", "undecodable": True}


def _read_lines(file: str, handle):
    warned = []
    for lineno, raw in enumerate(handle, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield _undecodable(file, f"line {lineno}", warned)
            continue
        yield {"text": text.rstrip("\r\n"), "undecodable": False}


def _read_json(file: str, handle):
    warned = []
    first = handle.read(1)
    while first and first.isspace():
        first = handle.read(1)
    if first == b"[":  # a single JSON array, not JSON lines: it has to be loaded whole
        try:
            records = json.loads(first + handle.read())
        except (UnicodeDecodeError, ValueError) as error:
            raise ConfigError(f"'{file}' is not valid JSON ({one_line(error)}); fix or remove that file") from None
        for index, record in enumerate(records):
            yield _record(file, f"item {index}", record, warned)
        return
    for lineno, raw in enumerate(_prepend(first, handle), 1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # -sig: drop a byte-order mark
        except UnicodeDecodeError:
            yield _undecodable(file, f"line {lineno}", warned)
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise ConfigError(f"'{file}' line {lineno} is not valid JSON ({one_line(error)}); fix or remove that "
                              f"file") from None
        yield _record(file, f"line {lineno}", record, warned)


def _prepend(first: bytes, handle):
    """The lines of ``handle`` with the byte already read for format sniffing put back."""
    rest = handle.readline()
    yield first + rest
    yield from handle


def _record(file: str, where: str, record, warned: list) -> dict:
    if isinstance(record, str):  # a JSON array of strings, as the datasets json builder accepts
        record = {"text": record}
    if not isinstance(record, dict) or "text" not in record:
        raise ConfigError(f"'{file}' {where} has no 'text' field; every record needs a 'text' field holding the "
                          f"document")
    text = record["text"]
    if text is None:
        return {"text": "", "undecodable": False}
    if not isinstance(text, str):
        raise ConfigError(f"'{file}' {where}: the 'text' field is a {type(text).__name__}, not a string; every "
                          f"record needs a string 'text' field")
    try:
        text.encode("utf-8")  # JSON escapes can smuggle in lone surrogates, which no tokenizer accepts
    except UnicodeEncodeError:
        return _undecodable(file, where, warned)
    return {"text": text, "undecodable": False}


def _read_parquet(file: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    warned = []
    try:
        parquet = pq.ParquetFile(file)
        if "text" not in parquet.schema_arrow.names:
            raise ConfigError(f"'{file}' has no 'text' column; every record needs a 'text' field holding the "
                              f"document")
        for batch in parquet.iter_batches(columns=["text"], batch_size=1024):
            column = batch.column(0)
            try:
                values = column.to_pylist()
            except UnicodeDecodeError:  # only then pay for value-by-value conversion
                values = []
                for index in range(len(column)):
                    try:
                        values.append(column[index].as_py())
                    except UnicodeDecodeError:
                        _undecodable(file, f"row {index} of a row batch", warned)
                        values.append(_UNDECODABLE)
            for value in values:
                if value is _UNDECODABLE:
                    yield {"text": "", "undecodable": True}
                elif value is None or isinstance(value, str):
                    yield {"text": value or "", "undecodable": False}
                else:
                    raise ConfigError(f"'{file}': the 'text' column holds {type(value).__name__} values, not "
                                      f"strings; every record needs a string 'text' field")
    except (pa.ArrowException, OSError) as error:
        raise ConfigError(f"cannot read '{file}' (corrupt parquet: {one_line(error)}); re-download or remove that "
                          f"file") from None


_UNDECODABLE = object()
