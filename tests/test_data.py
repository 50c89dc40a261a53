"""Tests for alphadecay.training.data.batches: batching, packing, exact resume, rank split, evaluation cut, bad data."""
import gzip
import json
import os
import re
from pathlib import Path

import pytest
import torch

from alphadecay.training.data.batches import (TrainBatches, load_documents, load_tokenizer, make_train_loader,
                                      resolve_data_files)
from alphadecay.training.data.eval_data import eval_batches
from alphadecay.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("ALPHADECAY_DATA_DIR", REPO.parent / "shared" / "data"))
B, L = 4, 64


@pytest.fixture(scope="module")
def tok():
    path = DATA_DIR / "tokenizers" / "t5-base"
    if not (path / "tokenizer.json").exists() and not (path / "spiece.model").exists():
        pytest.skip(f"T5 tokenizer not found under {path} (set ALPHADECAY_DATA_DIR)")
    return load_tokenizer(str(path), L)


@pytest.fixture(scope="module")
def c4():
    path = DATA_DIR / "c4" / "en"
    if not any(path.glob("*.json.gz")):
        pytest.skip(f"real C4 sample not found under {path} (set ALPHADECAY_DATA_DIR)")
    return str(path)


def write_jsonl(path, texts, compress=True):
    lines = "".join(json.dumps({"text": t, "url": "u"}) + "\n" for t in texts).encode()
    Path(path).write_bytes(gzip.compress(lines) if compress else lines)
    return str(path)


def doc(i):
    return f"doc {i} " + " ".join(["word"] * (i % 5 * 3))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Two files of short synthetic documents 'doc <i> word word ...' (ids 0-9 and 10-19)."""
    root = tmp_path_factory.mktemp("synth")
    write_jsonl(root / "a.jsonl.gz", [doc(i) for i in range(10)])
    write_jsonl(root / "b.jsonl.gz", [doc(i) for i in range(10, 20)])
    return str(root)


def take(loader, n):
    out = []
    if n == 0:
        return out
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def ids_of(tok, batches):
    """Document ids of unpacked batches of synthetic documents, row by row."""
    found = []
    for batch in batches:
        for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
            text = tok.decode(row[mask.bool()], skip_special_tokens=True)
            found.append(int(re.match(r"doc (\d+)", text).group(1)))
    return found


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x["input_ids"], y["input_ids"])
                                    and torch.equal(x["attention_mask"], y["attention_mask"]) for x, y in zip(a, b))


def test_batches_on_real_c4(tok, c4):
    batches = take(make_train_loader(TrainBatches(c4, tok, batch_size=B, max_length=L), 0), 3)
    for batch in batches:
        assert set(batch) == {"input_ids", "attention_mask"}
        assert batch["input_ids"].shape == batch["attention_mask"].shape == (B, L)
        assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
        lengths = batch["attention_mask"].sum(1)
        for row, mask, n in zip(batch["input_ids"], batch["attention_mask"], lengths):
            assert mask[:n].eq(1).all() and mask[n:].eq(0).all()  # real tokens first, then padding
            assert row[n - 1] == tok.eos_token_id and row[n:].eq(tok.pad_token_id).all()


def test_padding_and_masks(tok, synth):
    batches = take(TrainBatches(synth, tok, batch_size=B, max_length=L, shuffle_buffer=8), 5)
    assert set(batches[0]) >= {"input_ids", "attention_mask"}
    docs = ids_of(tok, batches)
    assert sorted(docs) == sorted(set(docs)) and len(docs) == 20  # first epoch: every document exactly once
    for batch in batches:
        for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
            n = int(mask.sum())
            text = tok.decode(row[:n], skip_special_tokens=True)
            expected = tok(text, max_length=L, truncation=True, padding="max_length")["input_ids"]
            assert row.tolist() == expected and n < L and row[n:].eq(tok.pad_token_id).all()


def test_packing_is_the_documents_joined_by_eos(tok, synth):
    kwargs = dict(batch_size=B, max_length=16, shuffle_buffer=8)
    plain = take(TrainBatches(synth, tok, **kwargs), 15)
    packed = take(TrainBatches(synth, tok, packing=True, **kwargs), 6)
    stream = []
    for i in ids_of(tok, plain):  # packing reads the documents in the same order as padding does
        stream += tok(doc(i), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    got = torch.cat([b["input_ids"] for b in packed]).flatten().tolist()
    assert got == stream[:len(got)]
    for batch in packed:
        assert batch["input_ids"].shape == (B, 16) and batch["attention_mask"].eq(1).all()
    assert got.count(tok.eos_token_id) >= 10


def test_packing_on_real_c4(tok, c4):
    batches = take(make_train_loader(TrainBatches(c4, tok, batch_size=B, max_length=L, packing=True), 0), 6)
    ids = torch.cat([b["input_ids"] for b in batches])
    assert ids.shape == (6 * B, L) and all(b["attention_mask"].eq(1).all() for b in batches)
    assert ids.eq(tok.eos_token_id).any() and not ids.eq(tok.pad_token_id).any()


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_exact_resume(tok, c4, tmp_path, workers, packing):
    def loader():
        ds = TrainBatches(c4, tok, batch_size=B, max_length=L, num_workers=workers, packing=packing, shuffle_buffer=5)
        return make_train_loader(ds, workers)

    total = 9
    reference = take(loader(), total)
    for k in (0, 3, 6):
        first = loader()
        head = take(first, k)
        json.dumps(first.state_dict())
        torch.save(first.state_dict(), tmp_path / "state.pt")
        resumed = loader()
        resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
        assert same(head + take(resumed, total - k), reference), f"resume after {k} batches differs"


@pytest.mark.parametrize("world_size", [1, 2])
def test_resume_across_blocks_and_epochs(tok, synth, world_size):
    # world_size 1: each of the 2 workers reads one file; world_size 2 (rank 1): 4 streams share 2 files document-wise
    def make(workers):
        ds = TrainBatches(synth, tok, batch_size=3, max_length=L, num_workers=workers, shuffle_buffer=4,
                          rank=world_size - 1, world_size=world_size)
        return ds, make_train_loader(ds, workers)

    assert make(2)[0].strategy == ("shards" if world_size == 1 else "files")
    per_stream = 20 // (2 * world_size)
    reference = take(make(2)[1], 22)  # 66 documents: more than three epochs of each stream
    in_process = take(make(2)[0], 22)  # iterating the dataset directly interleaves its streams the same way
    assert same([{k: b[k] for k in ("input_ids", "attention_mask")} for b in in_process], reference)
    for k in (7, 16):
        first = make(2)[1]
        head = take(first, k)
        state = first.state_dict()
        taken = [(k + 1 - i) // 2 * 3 for i in (0, 1)]  # documents each stream has handed out
        assert state["batches"] == k
        assert [s["epoch"] for s in state["streams"]] == [(n - 1) // per_stream for n in taken]
        if k == 7 and world_size == 1:  # mid-epoch: the stream restarts from the datasets state of its block
            assert state["streams"][1]["source"] is not None
        second = make(2)[1]
        second.load_state_dict(state)
        assert same(head + take(second, 22 - k), reference)
    if world_size == 1:
        single = ids_of(tok, take(make(0)[1], 20))  # one stream: epochs are permutations of all 20 documents
        assert all(sorted(single[e * 20:(e + 1) * 20]) == list(range(20)) for e in range(3))
        assert single[:20] != single[20:40]


def test_resume_on_an_arrow_builder_stream(tok, c4, monkeypatch):
    """path=None streams the hub's C4 through datasets' Arrow json builder; emulate it offline with the local files."""
    import datasets

    import alphadecay.training.data.batches as data

    files = resolve_data_files(c4)
    def arrow_stream(path, split, hub=None):
        return datasets.load_dataset("json", data_files=files, split=split, streaming=True)

    monkeypatch.setattr(data, "load_documents", arrow_stream)
    for workers, rank, world_size in [(0, 0, 1), (3, 1, 2)]:  # whole files; then one document in 6 per stream
        def make():
            return TrainBatches(None, tok, batch_size=B, max_length=L, num_workers=workers, rank=rank,
                                world_size=world_size, shuffle_buffer=7)

        reference = take(make(), 30)
        for k in (5, 19):
            first = make()
            head = take(first, k)
            second = make()
            second.load_state_dict(first.state_dict())
            assert same(head + take(second, 30 - k), reference)


@pytest.mark.parametrize("files,workers", [(("a", "b"), 0), (("a", "b"), 2), (("a",), 0)])
def test_ranks_see_disjoint_documents(tok, synth, tmp_path, files, workers):
    if len(files) == 1:  # one file for two ranks: split document by document
        path = write_jsonl(tmp_path / "one.jsonl.gz", [doc(i) for i in range(20)])
    else:
        path = synth
    seen = []
    for rank in (0, 1):
        ds = TrainBatches(path, tok, batch_size=5, max_length=L, rank=rank, world_size=2, num_workers=workers)
        seen.append(ids_of(tok, take(ds, 2)))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(20))


def test_stream_without_documents_is_an_error(tok, tmp_path):
    path = write_jsonl(tmp_path / "tiny.jsonl.gz", ["only one document"])
    with pytest.raises(ConfigError, match="no usable documents"):
        take(TrainBatches(path, tok, batch_size=2, max_length=L, rank=1, world_size=2), 1)


def test_resume_with_other_settings_is_refused(tok, synth):
    loader = make_train_loader(TrainBatches(synth, tok, batch_size=B, max_length=L), 0)
    take(loader, 2)
    other = make_train_loader(TrainBatches(synth, tok, batch_size=B + 1, max_length=L), 0)
    with pytest.raises(ConfigError, match="batch_size=4"):
        other.load_state_dict(loader.state_dict())
    with pytest.raises(ValueError):
        make_train_loader(TrainBatches(synth, tok, batch_size=B, max_length=L, num_workers=2), 1)


def test_eval_batches_do_not_depend_on_world_size(tok, c4):
    target = 2000
    single = list(eval_batches(c4, tok, batch_size=B, max_length=L, target_eval_tokens=target))
    counts = [int(b["attention_mask"].sum()) for b in single]
    assert sum(counts[:-1]) < target <= sum(counts)  # the batch that crosses the target is the last one
    assert all(b["input_ids"].shape == (B, L) for b in single)
    for cache in (True, False):  # the repeat is replayed from memory; without the cache it is recomputed
        again = list(eval_batches(c4, tok, batch_size=B, max_length=L, target_eval_tokens=target, cache=cache))
        assert same(again, single) and all(b["input_ids"].dtype == torch.long for b in again)
    for world in (2, 3):
        parts = [list(eval_batches(c4, tok, batch_size=B, max_length=L, target_eval_tokens=target, rank=r,
                                   world_size=world)) for r in range(world)]
        interleaved = [parts[i % world][i // world] for i in range(len(single))]
        assert sum(map(len, parts)) == len(single) and same(interleaved, single)


def test_eval_batches_end_of_data_and_no_tokens(tok, synth, tmp_path):
    batches = list(eval_batches(synth, tok, batch_size=3, max_length=L, target_eval_tokens=10**9))
    assert sorted(ids_of(tok, batches)) == list(range(20)) and batches[-1]["input_ids"].shape == (2, L)
    empty = write_jsonl(tmp_path / "empty.jsonl.gz", ["", "   ", "\n"])
    with pytest.raises(ConfigError, match="evaluation found no tokens"):
        list(eval_batches(empty, tok, batch_size=3, max_length=L, target_eval_tokens=100))
    with pytest.raises(ConfigError, match="target_eval_tokens"):
        list(eval_batches(synth, tok, batch_size=3, max_length=L, target_eval_tokens=0))


def test_resolve_data_files(tmp_path):
    (tmp_path / "sub" / ".hidden").mkdir(parents=True)
    for name in ("b.jsonl.gz", "a.json", "sub/c.parquet", "sub/d.txt", "sub/e.txt.gz", "README.md",
                 "sub/.hidden/f.jsonl", ".g.jsonl"):
        (tmp_path / name).write_bytes(b"")
    expected = [str(tmp_path / n) for n in ("a.json", "b.jsonl.gz", "sub/c.parquet", "sub/d.txt", "sub/e.txt.gz")]
    assert resolve_data_files(str(tmp_path)) == expected
    assert resolve_data_files(str(tmp_path / "**" / "*.txt*")) == expected[3:]
    assert resolve_data_files(str(tmp_path / "a.json")) == expected[:1]
    (tmp_path / "empty").mkdir()
    for bad, message in [(tmp_path / "missing", "does not exist"), (tmp_path / "empty", "contains no data files"),
                         (tmp_path / "*.csv", "matched nothing"), (tmp_path / "README.md", "unsupported suffix")]:
        with pytest.raises(ConfigError, match=message) as error:
            resolve_data_files(str(bad))
        assert str(bad) in str(error.value) and "\n" not in str(error.value)


def test_formats_json_array_parquet_and_text(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.json").write_text(json.dumps([{"text": "one"}, {"text": "two"}]))
    pq.write_table(pa.table({"text": ["three", None], "id": [1, 2]}), tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text("four\nfive\n")
    texts = [r["text"] for r in load_documents(str(tmp_path), "train")]
    assert texts == ["one", "two", "three", "", "four", "five"]
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "d.parquet")
    with pytest.raises(ConfigError, match="d.parquet.*'text' column"):
        list(load_documents(str(tmp_path / "d.parquet"), "train"))


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_name_the_file(tok, synth, tmp_path, workers):
    good = Path(synth) / "a.jsonl.gz"
    truncated = gzip.compress(gzip.decompress(good.read_bytes()) * 20)[:-30]
    cases = {
        "corrupt.jsonl.gz": (b"this is not gzip\n", "corrupt or truncated gzip"),
        "truncated.jsonl.gz": (truncated, "corrupt or truncated gzip"),
        "notext.jsonl": (b'{"text": "fine"}\n{"url": "u", "body": "no text"}\n', "no 'text' field"),
        "broken.jsonl": (b'{"text": "fine"}\n{"text": "unterminated\n', "not valid JSON"),
    }
    for name, (content, message) in cases.items():
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (folder / "good.jsonl.gz").write_bytes(good.read_bytes())
        (folder / name).write_bytes(content)
        dataset = TrainBatches(str(folder), tok, batch_size=2, max_length=L, num_workers=workers)
        loader = make_train_loader(dataset, workers)
        with pytest.raises(ConfigError, match=message) as error:
            take(loader, 50)
        assert name in str(error.value) and "\n" not in str(error.value)


def test_non_utf8_documents_are_skipped_and_counted(tok, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"doc 1 good\nbad \xff\xfe line\n\n   \ndoc 2 good\n")
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "doc 3 good"}\n{"text": "bad \xff"}\n{"text": "lone \\udcff"}\n'
                                       b'{"text": "doc 4 good"}\n')
    records = list(load_documents(str(tmp_path), "train"))
    assert sum(r["undecodable"] for r in records) == 3
    loader = make_train_loader(TrainBatches(str(tmp_path), tok, batch_size=2, max_length=L, shuffle_buffer=3), 0)
    batches = take(loader, 4)  # 8 documents: two epochs of the 4 usable ones
    assert sorted(ids_of(tok, batches)) == [1, 1, 2, 2, 3, 3, 4, 4]
    assert 3 <= loader.skipped_documents <= 6 and loader.state_dict()["skipped_documents"] == loader.skipped_documents
    assert len(list(eval_batches(str(tmp_path), tok, batch_size=2, max_length=L, target_eval_tokens=10**6))) == 2


def test_missing_tokenizer(tmp_path):
    with pytest.raises(ConfigError, match="could not be loaded.*--tokenizer") as error:
        load_tokenizer(str(tmp_path / "no-such-tokenizer"), L)
    assert "no-such-tokenizer" in str(error.value) and "\n" not in str(error.value)


def test_unreachable_hub_dataset(monkeypatch):
    """Reachable hub host but datasets fails: its error, in one line, with the fix."""
    import datasets

    import alphadecay.training.data.text_sources as sources

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'allenai/c4' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(sources, "_hub_unreachable", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError, match="--dataset_path/--eval_dataset_path") as error:
        load_documents(None, "validation")
    assert "LocalEntryNotFoundError" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("cause", ["no network", "offline flag"])
def test_hub_without_network_fails_at_once(monkeypatch, cause):
    """No network: one connect attempt decides, before huggingface_hub's minute of retries (no traffic sent here)."""
    import socket
    import time

    import datasets
    from huggingface_hub import constants

    import alphadecay.training.data.text_sources as sources

    def never(*args, **kwargs):
        raise AssertionError("datasets.load_dataset must not be reached")

    def unreachable(address, timeout=None):
        assert timeout <= sources.HUB_PROBE_TIMEOUT
        raise OSError(101, "Network is unreachable")

    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", never)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    if cause == "offline flag":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(ConfigError) as error:
        load_documents(None, "train")
    message = str(error.value)
    assert time.monotonic() - start < 2 and "\n" not in message
    assert "--dataset_path/--eval_dataset_path" in message
    assert ("HF_HUB_OFFLINE" in message) if cause == "offline flag" else ("unreachable" in message)