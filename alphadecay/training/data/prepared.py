"""A tokenized data folder (written by ``alphadecay prepare-data``): its layout, its manifest, and reading it.

Layout of ``DIR``::

    manifest.json                 written last and atomically: a folder without it is not ready
    PREPARING                     present while prepare-data runs (or after it was interrupted)
    settings.json                 what prepare-data was asked (a re-run with other settings is refused)
    train-00000.tokens.npy        uint16 (vocabulary <= 65536) or uint32 token ids, documents back to back
    train-00000.offsets.npy       int64, documents + 1 entries: document i is tokens[off[i]:off[i+1]]
    validation-00000.*            the same for the validation split (if any)

EOS policy: every document is tokenized without special tokens and followed by one EOS, so a packed stream is
documents joined by EOS (what ``--packing`` makes from raw text) and a truncated row ends in EOS as T5's own
``tokenizer(text, truncation=True)`` does. Empty and undecodable documents are dropped (and counted).

The manifest names the tokenizer (its name and a SHA-256 of its serialized fast tokenizer, which does not depend
on the folder it was loaded from, plus one of its files when it is a folder), the source, the counts and per shard
the token and document counts and a SHA-256 of each file.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ...errors import ConfigError, one_line

MANIFEST = "manifest.json"
PREPARING = "PREPARING"
SETTINGS = "settings.json"
FORMAT = "alphadecay.prepared_tokens.v1"
EOS_POLICY = "each document: tokens without special tokens, then one EOS; empty and undecodable documents dropped"
HASH_CHUNK = 1 << 22


def is_prepared(path) -> bool:
    """Whether ``path`` is (or is becoming) a folder written by prepare-data."""
    return (path is not None and os.path.isdir(os.path.expanduser(str(path)))
            and any(os.path.exists(os.path.join(os.path.expanduser(str(path)), name)) for name in (MANIFEST, PREPARING)))


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    """SHA-256 of what decides the token ids: the serialized fast tokenizer (or, for a slow one, its vocabulary)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # truncation and padding are call settings the tokenizer keeps from its last padded call, not its ids
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        text = json.dumps(spec, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_files_sha256(name: str) -> str | None:
    """SHA-256 over the files of a tokenizer folder (names and contents), None for a hub name."""
    if not os.path.isdir(name):
        return None
    digest = hashlib.sha256()
    for file in sorted(os.listdir(name)):
        full = os.path.join(name, file)
        if os.path.isfile(full) and not file.startswith("."):
            digest.update(file.encode() + b"\0" + file_sha256(full).encode())
    return digest.hexdigest()


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def shard_names(split: str, index: int) -> tuple[str, str]:
    stem = f"{split}-{index:05d}"
    return f"{stem}.tokens.npy", f"{stem}.offsets.npy"


@dataclass
class Split:
    """One split of a prepared folder: shards memory-mapped on first use."""
    folder: str
    name: str
    shards: list

    @property
    def documents(self) -> int:
        return int(sum(s["documents"] for s in self.shards))

    @property
    def tokens(self) -> int:
        return int(sum(s["tokens"] for s in self.shards))

    @cached_property
    def _maps(self):
        maps = []
        for shard in self.shards:
            arrays = []
            for key in ("tokens_file", "offsets_file"):
                path = os.path.join(self.folder, shard[key])
                try:
                    arrays.append(np.load(path, mmap_mode="r"))
                except (OSError, ValueError) as error:
                    raise _bad_shard(path, one_line(error)) from None
            maps.append(tuple(arrays))
        return maps

    @cached_property
    def _doc_starts(self):
        return np.cumsum([0] + [s["documents"] for s in self.shards])

    @cached_property
    def _token_starts(self):
        return np.cumsum([0] + [s["tokens"] for s in self.shards])

    def document(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self._doc_starts, index, side="right")) - 1
        tokens, offsets = self._maps[shard]
        local = index - int(self._doc_starts[shard])
        return tokens[int(offsets[local]):int(offsets[local + 1])]

    def token_range(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``start:stop`` of the split's whole stream (shards joined)."""
        pieces, starts = [], self._token_starts
        shard = int(np.searchsorted(starts, start, side="right")) - 1
        while start < stop:
            tokens = self._maps[shard][0]
            local = start - int(starts[shard])
            piece = tokens[local:local + (stop - start)]
            pieces.append(piece)
            start += len(piece)
            shard += 1
        return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]


def _bad_shard(path: str, why: str) -> ConfigError:
    return ConfigError(f"shard '{path}' of the prepared data is truncated or corrupt ({why}); delete it and re-run "
                       f"the same prepare-data command, which rewrites only the missing shards")


class PreparedData:
    """A prepared folder, checked: manifest present and complete, every shard's size and (``verify``) checksum."""

    def __init__(self, path: str, *, verify: bool = True):
        self.path = os.path.expanduser(str(path))
        manifest = os.path.join(self.path, MANIFEST)
        if not os.path.isfile(manifest):
            if os.path.exists(os.path.join(self.path, PREPARING)):
                raise ConfigError(f"'{self.path}' is still being written by prepare-data (or it was interrupted): it "
                                  f"has no {MANIFEST} yet; wait for it to finish, or re-run the same prepare-data "
                                  f"command to complete it")
            raise ConfigError(f"'{self.path}' has no {MANIFEST}, so it is not a prepared data folder; run "
                              f"'alphadecay prepare-data --tokenizer T --output {self.path} ...' first")
        try:
            with open(manifest, encoding="utf-8") as f:
                self.manifest = json.load(f)
        except (OSError, ValueError) as error:
            raise ConfigError(f"'{manifest}' cannot be read ({one_line(error)}); re-run prepare-data into a new "
                              f"folder") from None
        if self.manifest.get("format") != FORMAT:
            raise ConfigError(f"'{manifest}' is not a '{FORMAT}' manifest; re-run prepare-data with this version")
        self.splits = {name: Split(self.path, name, shards) for name, shards in self.manifest["splits"].items()
                       if shards}
        self._check(verify)

    def _check(self, verify: bool) -> None:
        itemsize = np.dtype(self.manifest["dtype"]).itemsize
        for split in self.splits.values():
            for shard in split.shards:
                for key, count, size in (("tokens_file", shard["tokens"], itemsize),
                                         ("offsets_file", shard["documents"] + 1, 8)):
                    path = os.path.join(self.path, shard[key])
                    if not os.path.isfile(path):
                        raise _bad_shard(path, "missing")
                    if os.path.getsize(path) != shard[key.replace("_file", "_bytes")]:
                        raise _bad_shard(path, f"{os.path.getsize(path)} bytes, the manifest says "
                                               f"{shard[key.replace('_file', '_bytes')]}")
                    if verify and file_sha256(path) != shard[key.replace("_file", "_sha256")]:
                        raise _bad_shard(path, "its SHA-256 differs from the manifest's")

    @property
    def fingerprint(self) -> str:
        """Names this folder's content: a checkpoint trained from it continues only from the same tokens."""
        return self.manifest["fingerprint"]

    @property
    def eos_token_id(self) -> int:
        return int(self.manifest["eos_token_id"])

    @property
    def pad_token_id(self) -> int:
        return int(self.manifest["pad_token_id"])

    def split(self, name: str) -> Split:
        if name not in self.splits:
            hint = ("pass --eval_dataset_path with raw validation text, or re-run prepare-data into a new folder with "
                    "--eval_dataset_path or --holdout_docs") if name == "validation" else "re-run prepare-data"
            raise ConfigError(f"the prepared folder '{self.path}' has no '{name}' split; {hint}")
        return self.splits[name]

    def check_tokenizer(self, tokenizer, name: str) -> None:
        """The tokenizer of this run must be the one that wrote the tokens."""
        if tokenizer_sha256(tokenizer) != self.manifest["tokenizer"]["sha256"]:
            raise ConfigError(f"--tokenizer {name} is not the tokenizer the prepared folder '{self.path}' was "
                              f"tokenized with ({self.manifest['tokenizer']['name']}); pass --tokenizer "
                              f"{self.manifest['tokenizer']['name']} or prepare the data again with this tokenizer")


def truncate_and_pad(doc: np.ndarray, length: int, eos: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's row of one document: its first tokens, EOS kept last when it is cut (as T5's truncation)."""
    row, mask = np.full(length, pad, dtype=np.int64), np.zeros(length, dtype=np.int64)
    if len(doc) > length:
        row[:length - 1], row[length - 1] = doc[:length - 1], eos
        mask[:] = 1
    else:
        row[:len(doc)], mask[:len(doc)] = doc, 1
    return row, mask


_OPENED: dict = {}


def open_prepared(path: str, tokenizer=None, tokenizer_name: str | None = None) -> PreparedData:
    """A prepared folder, checked once per process (checksums included), and this run's tokenizer against it."""
    manifest = os.path.join(os.path.expanduser(str(path)), MANIFEST)
    key = (os.path.realpath(os.path.expanduser(str(path))),
           os.path.getmtime(manifest) if os.path.isfile(manifest) else None)
    if key not in _OPENED:
        _OPENED[key] = PreparedData(path)
    data = _OPENED[key]
    if tokenizer is not None:
        data.check_tokenizer(tokenizer, tokenizer_name or getattr(tokenizer, "name_or_path", "?"))
    return data
