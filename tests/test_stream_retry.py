"""A stream that survives: transient read errors (reset, timeout, HTTP 5xx) are retried from the last block's
state, so the batches are those of an error-free read; offline, with a fault-injecting file source."""
import gzip
import json
import logging

import pytest

import alphadecay.training.data.retry as retry
import alphadecay.training.data.text_sources as sources
from alphadecay.errors import ConfigError
from alphadecay.training.data.batches import TrainBatches, load_tokenizer, make_train_loader
from alphadecay.training.data.prepare import PrepareSettings, prepare
from conftest import DATA_DIR

pytestmark = pytest.mark.usefixtures("t5_dir")


REAL_READ = sources._read_documents


class Http503(Exception):
    class response:
        status_code = 503


class FaultyReader:
    """``_read_documents`` that raises the given error the first time the n-th record (counted over every read,
    retries included) is reached."""

    def __init__(self, faults: dict):
        self.faults, self.read, self.raised = dict(faults), 0, []

    def __call__(self, files):
        for record in REAL_READ(files):
            self.read += 1
            if self.read in self.faults:
                error = self.faults.pop(self.read)
                self.raised.append(type(error).__name__)
                raise error
            yield record


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(str(DATA_DIR / "tokenizers" / "t5-base"), 32)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "src").mkdir()
    for name, first in (("a", 0), ("b", 30)):
        lines = "".join(json.dumps({"text": f"doc {i} " + "word " * (i % 7)}) + "\n" for i in range(first, first + 30))
        (tmp_path / "src" / f"{name}.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    return str(tmp_path / "src")


def batches(path, tok, n):
    loader = make_train_loader(TrainBatches(path, tok, batch_size=3, max_length=32, shuffle_buffer=4), 0)
    out = []
    for batch in loader:
        out.append(batch["input_ids"])
        if len(out) == n:
            return out


def test_transient_errors_are_retried_and_the_order_stays(files, tok, monkeypatch, caplog):
    monkeypatch.setattr(retry, "BACKOFF_S", 0.0)
    reference = batches(files, tok, 30)   # 90 documents: more than one epoch of the 60
    faulty = FaultyReader({5: ConnectionResetError("reset by peer"), 6: TimeoutError("read timed out"),
                           40: Http503("503 Service Unavailable"), 75: ConnectionResetError("again")})
    monkeypatch.setattr(sources, "_read_documents", faulty)
    with caplog.at_level(logging.WARNING, logger=retry.__name__):
        got = batches(files, tok, 30)
    assert faulty.raised == ["ConnectionResetError", "TimeoutError", "Http503", "ConnectionResetError"]
    assert all((a == b).all() for a, b in zip(got, reference)) and len(got) == len(reference)
    assert "retry 1 of 8" in caplog.text and "retry 2 of 8" in caplog.text   # 5 then 6: two in a row


def test_retries_are_bounded_and_other_errors_are_not_retried(files, tok, monkeypatch):
    monkeypatch.setattr(retry, "BACKOFF_S", 0.0)
    monkeypatch.setattr(retry, "MAX_RETRIES", 2)
    monkeypatch.setattr(sources, "_read_documents", FaultyReader({n: ConnectionResetError("down") for n in range(1, 9)}))
    with pytest.raises(ConfigError, match="failed 3 times in a row.*prepare-data"):
        batches(files, tok, 2)
    faulty = FaultyReader({3: KeyError("a bug, not the network")})
    monkeypatch.setattr(sources, "_read_documents", faulty)
    with pytest.raises(KeyError):
        batches(files, tok, 2)
    assert faulty.read == 3   # raised at once, never read again


def test_prepare_data_reads_through_errors(files, tok, tmp_path, monkeypatch):
    monkeypatch.setattr(retry, "BACKOFF_S", 0.0)
    clean = prepare(PrepareSettings(str(DATA_DIR / "tokenizers" / "t5-base"), str(tmp_path / "clean"), files,
                                    holdout_docs=5), tok, progress=False)
    monkeypatch.setattr(sources, "_read_documents", FaultyReader({7: ConnectionResetError("x"), 33: Http503("y")}))
    faulty = prepare(PrepareSettings(str(DATA_DIR / "tokenizers" / "t5-base"), str(tmp_path / "faulty"), files,
                                     holdout_docs=5), tok, progress=False)
    assert faulty["fingerprint"] == clean["fingerprint"] and clean["counts"]["train"]["documents"] == 55


def test_each_stream_reads_only_its_own_file(tmp_path, tok, monkeypatch):
    from alphadecay.training.data.batches import _DocStream
    for f in range(3):   # 3 files for 2 ranks x 2 workers: fewer files than streams
        lines = "".join(json.dumps({"text": f"file {f} doc {i}"}) + "\n" for i in range(12))
        (tmp_path / f"{f}.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    opened = []
    monkeypatch.setattr(sources, "_read_documents", lambda files: (opened.extend(files), REAL_READ(files))[1])
    seen, files_of = [], []
    for rank in range(2):
        owner = TrainBatches(str(tmp_path), tok, batch_size=2, max_length=32, rank=rank, world_size=2, num_workers=2,
                             shuffle_buffer=4)
        assert owner.strategy == "files"
        for index in range(2):
            opened.clear()
            stream, docs = _DocStream(owner, index, None), []
            for text in stream:
                if stream.epoch > 0:
                    break
                docs.append(text)
            files_of.append(set(opened))
            seen.append(docs)
    assert all(len(f) == 1 for f in files_of) and len(set().union(*files_of)) == 3   # one file each, all read
    everything = [d for docs in seen for d in docs]
    assert sorted(everything) == sorted(f"file {f} doc {i}" for f in range(3) for i in range(12))   # each once
