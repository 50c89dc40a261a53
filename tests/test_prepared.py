"""Prepared (tokenized) folders: prepare-data, batches by global index, resume on another world size, bad folders."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import alphadecay.training.data.prepare as prepare_mod
from alphadecay.cli import main as cli_main
from alphadecay.errors import ConfigError
from alphadecay.training.checkpointing.checkpoint import load_state
from alphadecay.training.data.batches import load_tokenizer
from alphadecay.training.data.encode import encode_rows
from alphadecay.training.data.prepared import MANIFEST, PREPARING, PreparedData, truncate_and_pad
from alphadecay.training.data.text_sources import load_documents
from alphadecay.training.data.tokens import TokenBatches, TokenLoader
from conftest import DATA_DIR
from trainutil import run_cli, run_main, tiny_run_flags

pytestmark = pytest.mark.usefixtures("c4_dir", "t5_dir")
C4 = DATA_DIR / "c4" / "en" / "c4-dev.00000-of-00002.json.gz"
T5 = DATA_DIR / "tokenizers" / "t5-base"
DOCS, HOLDOUT, PER_SHARD = 240, 40, 64


def prepare(out, *extra):
    return cli_main(["prepare-data", "--tokenizer", str(T5), "--output", str(out), "--dataset_path", str(C4),
                     "--holdout_docs", str(HOLDOUT), "--max_documents", str(DOCS), "--docs_per_shard", str(PER_SHARD),
                     "--no_progress", *extra])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "c4"
    assert prepare(out) == 0
    return out


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(str(T5), 64)


def test_folder_holds_the_documents_tokenized_with_eos(folder, tok):
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["vocab_size"] == len(tok)
    counts = manifest["counts"]
    assert counts["validation"]["documents"] == HOLDOUT and counts["train"]["documents"] == DOCS - HOLDOUT
    assert counts["train"]["shards"] == 4 and not (folder / PREPARING).exists()   # 200 documents, 64 a shard
    texts = [row["text"] for _, row in zip(range(DOCS), load_documents(str(C4), "train"))]
    data = PreparedData(folder)
    for split, index, text in (("validation", 0, texts[0]), ("train", 0, texts[HOLDOUT]),
                               ("train", 199, texts[DOCS - 1])):
        expected = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert data.split(split).document(index).tolist() == expected


def test_a_row_is_the_papers_truncated_padded_row(folder, tok):
    texts = [row["text"] for _, row in zip(range(HOLDOUT + 8), load_documents(str(C4), "train"))][HOLDOUT:]
    batches = TokenBatches(PreparedData(folder), batch_size=8, total_batch_size=8, max_length=64)
    raw = encode_rows(tok, texts, 64)
    for i in range(8):
        row, mask = truncate_and_pad(batches.split.document(i), 64, tok.eos_token_id, tok.pad_token_id)
        assert row.tolist() == raw["input_ids"][i].tolist() and mask.tolist() == raw["attention_mask"][i].tolist()


@pytest.mark.parametrize("packing", [False, True])
def test_an_update_is_the_same_for_any_world_size_and_micro_batch(folder, packing):
    data = PreparedData(folder)

    def update(u, world, batch):
        rows = []
        for rank in range(world):
            b = TokenBatches(data, batch_size=batch, total_batch_size=8, max_length=64, rank=rank, world_size=world,
                             packing=packing)
            accum = 8 // world // batch
            rows += [b.batch(u * accum + m)["input_ids"] for m in range(accum)]
        return torch.cat(rows)

    for u in (0, 3):
        one = update(u, 1, 8)
        assert torch.equal(one, update(u, 2, 2)) and torch.equal(one, update(u, 4, 1))
    assert not torch.equal(update(0, 1, 8), update(1, 1, 8))


def test_workers_epochs_and_loader_state(folder, capsys):
    data = PreparedData(folder)
    make = lambda w: TokenBatches(data, batch_size=4, total_batch_size=8, max_length=64, num_workers=w)
    plain = TokenLoader(make(0), 0)
    first = [b["input_ids"] for _, b in zip(range(6), plain)]
    assert plain.state_dict()["position"] == 24    # 6 micro-batches of 4, two per update
    with TokenLoader(make(2), 2) as loader:
        assert all(torch.equal(a, b["input_ids"]) for a, (_, b) in zip(first, zip(range(6), loader)))
    resumed = TokenLoader(make(0), 0)
    resumed.load_state_dict(plain.state_dict())
    assert torch.equal(next(iter(resumed))["input_ids"], plain.dataset.batch(6)["input_ids"])
    # 200 documents: position 200 starts epoch 1, another permutation of the same documents, drawn from (seed, 1)
    b = make(0)
    epoch0 = [b.sample(p)[0].tolist() for p in range(200)]
    epoch1 = [b.sample(p)[0].tolist() for p in range(200, 400)]
    assert epoch0 != epoch1 and sorted(epoch0) == sorted(epoch1)
    again = TokenLoader(make(0), 0)
    again.load_state_dict({**again.state_dict(), "position": 192})
    list(zip(range(4), again))
    assert "epoch 1 starts, reshuffled from (seed 42, epoch 1)" in capsys.readouterr().err


def test_a_crash_leaves_whole_shards_and_the_same_command_continues(folder, tmp_path, monkeypatch):
    out = tmp_path / "again"
    real, calls = prepare_mod.write_shard, []

    def crash_on_third(*args, **kwargs):
        calls.append(args[1:3])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_mod, "write_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare(out)
    assert not (out / MANIFEST).exists() and (out / PREPARING).exists()
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]
    with pytest.raises(ConfigError, match="still being written"):
        PreparedData(out)
    monkeypatch.setattr(prepare_mod, "write_shard", real)
    assert prepare(out, "--workers", "2") == 0     # another worker count continues it, to the same tokens
    assert json.loads((out / MANIFEST).read_text())["fingerprint"] == \
        json.loads((folder / MANIFEST).read_text())["fingerprint"]
    with pytest.raises(ConfigError, match="other settings"):
        prepare_mod.prepare(prepare_mod.PrepareSettings(str(T5), str(out), str(C4), docs_per_shard=10),
                            load_tokenizer(str(T5), 64), progress=False)


def test_bad_folders_get_one_line(folder, tmp_path, tok):
    with pytest.raises(ConfigError, match="no manifest.json"):
        PreparedData(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    shard = broken / "train-00001.tokens.npy"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"train-00001\.tokens\.npy.*SHA-256"):
        PreparedData(broken)
    shard.write_bytes(bytes(data[:-100]))
    with pytest.raises(ConfigError, match=r"train-00001\.tokens\.npy.*truncated or corrupt.*bytes"):
        PreparedData(broken)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["tokenizer"]["sha256"] = "0" * 64
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    (other / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="is not the tokenizer the prepared folder"):
        PreparedData(other).check_tokenizer(tok, str(T5))
    assert cli_main(["prepare-data", "--tokenizer", str(T5), "--output", str(tmp_path / "x")]) == 2


def test_a_streamed_run_resumed_on_another_world_size_says_why(tmp_path):
    ckpt = tmp_path / "model_2"
    ckpt.mkdir()
    rank = {"data": {"format": "alphadecay.train_batches.v1"}, "rng": {}}
    torch.save({"update_step": 2, "tokens_seen": 0, "skipped_updates": 0, "scheduler": {}, "strategy": {},
                "optimizer": {}, "world_size": 2, "ranks": [rank, rank]}, ckpt / "training_state.pt")
    with pytest.raises(ConfigError, match="written by 2 ranks.*prepare-data"):
        load_state(str(ckpt), 0, 1)


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_two_ranks_resumed_on_one_process_match_the_uninterrupted_run(folder, tmp_path):
    steps, k = 4, 2
    data = ["--dataset_path", str(folder), "--tokenizer", str(T5), "--total_batch_size", "8"]
    one, two, part = tmp_path / "one", tmp_path / "two", tmp_path / "part"
    assert run_main(tiny_run_flags(one, steps=steps, batch_size=2) + data) == 0      # 1 process, 4 micro-batches
    run_cli(tiny_run_flags(two, steps=steps, save_every=k) + data, nproc=2)            # 2 ranks of 4
    part.mkdir()
    shutil.copytree(two / f"model_{k}", part / f"model_{k}")
    assert run_main(tiny_run_flags(part, steps=steps, continue_from="latest", batch_size=8) + data) == 0
    reference = weights(one / f"model_{steps}")
    for other in (weights(two / f"model_{steps}"), weights(part / f"model_{steps}")):
        assert other.keys() == reference.keys()
        for name in reference:
            torch.testing.assert_close(other[name], reference[name], rtol=0, atol=1e-4)
    # and the run did learn: the weights moved from the checkpoint at k
    assert any(not torch.equal(weights(part / f"model_{k}")[n], reference[n]) for n in reference)


def test_table_scripts_take_a_prepared_folder_through_one_variable(folder, tmp_path):
    import shlex
    import subprocess
    from alphadecay.training.flags.args import parse_args
    from conftest import REPO
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path), "NGPUS": "0", "MODELS": "llama_9m",
           "METHODS": "uniform alphadecay", "DECAYS": "1e-5", "PREPARED": str(folder), "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(REPO / "scripts" / "table2_adam" / "run.sh")], capture_output=True, text=True,
                         env=env, check=True).stdout
    commands = [shlex.split(line) for line in out.splitlines() if "torchrun_main.py" in line]
    assert len(commands) == 2
    for c in commands:
        args = parse_args(c[c.index("torchrun_main.py") + 1:])
        assert args.dataset_path == str(folder) and args.tokenizer == str(T5)


def test_the_tokenizer_hash_ignores_call_settings(tok):
    from alphadecay.training.data.prepared import tokenizer_sha256
    before = tokenizer_sha256(tok)
    tok(["some text"] * 2, max_length=8, truncation=True, padding="max_length")
    assert tokenizer_sha256(tok) == before == tokenizer_sha256(load_tokenizer(str(T5), 1024))


def test_holdout_by_count_or_fraction():
    assert [i for i in range(300) if prepare_mod._held_out(i, 0.01)] == [99, 199, 299]
    assert [i for i in range(10) if prepare_mod._held_out(i, 3)] == [0, 1, 2]
    assert not any(prepare_mod._held_out(i, 0) for i in range(10))
