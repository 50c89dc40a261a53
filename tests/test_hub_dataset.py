"""Hub dataset flags (--dataset_name, --dataset_config, --text_field, --eval_split) reach datasets.load_dataset.

Offline: datasets.load_dataset and the network probe are monkeypatched; the fake hub stream is a sharded
IterableDataset built from a generator, so holding out its first shard is exercised for real.
"""
import datasets
import pytest

import alphadecay.training.data.text_sources as sources
from alphadecay.errors import ConfigError
from alphadecay.training.checkpointing import resume
from alphadecay.training.flags.args import parse_args
from alphadecay.training.data.text_sources import HubSource, load_documents
from conftest import REPO

SHARDS, PER_SHARD = 4, 3


def _rows(shards, field):
    for shard in shards:
        for i in range(PER_SHARD):
            yield {field: f"shard {shard} doc {i}", "id": f"{shard}-{i}"}


@pytest.fixture
def hub(monkeypatch):
    """A fake hub: records each load_dataset call and returns a 4-shard stream with column ``field``."""
    calls = []

    def load_dataset(name, config=None, *, split, streaming, field="text"):
        calls.append({"name": name, "config": config, "split": split, "streaming": streaming})
        features = datasets.Features({field: datasets.Value("string"), "id": datasets.Value("string")})
        return datasets.IterableDataset.from_generator(_rows, features=features,
                                                       gen_kwargs={"shards": list(range(SHARDS)), "field": field})

    monkeypatch.setattr(sources, "_hub_unreachable", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def texts(documents):
    return [row["text"] for row in documents]


def test_defaults_stay_c4_validation(hub):
    args = parse_args(["--model_config", str(REPO / "configs" / "llama_9m.json")])
    assert HubSource.from_args(args) == HubSource() == HubSource("allenai/c4", "en", "text", "validation")
    load_documents(None, "validation")
    load_documents(None, "train", HubSource.from_args(args))
    assert hub == [{"name": "allenai/c4", "config": "en", "split": "validation", "streaming": True},
                   {"name": "allenai/c4", "config": "en", "split": "train", "streaming": True}]


def test_fineweb_flags_reach_load_dataset_and_hold_out_the_first_shard(hub):
    args = parse_args(["--model_config", str(REPO / "configs" / "llama_9m.json"), "--dataset_name",
                       "HuggingFaceFW/fineweb", "--dataset_config", "sample-10BT", "--eval_split", "train"])
    source = HubSource.from_args(args)
    validation, train = texts(load_documents(None, "validation", source)), texts(load_documents(None, "train", source))
    assert {call["name"] for call in hub} == {"HuggingFaceFW/fineweb"}
    assert [call["config"] for call in hub] == ["sample-10BT"] * 2
    assert [call["split"] for call in hub] == ["train", "train"]   # FineWeb has only a train split
    assert validation == [f"shard 0 doc {i}" for i in range(PER_SHARD)]
    assert sorted(train) == sorted(f"shard {s} doc {i}" for s in range(1, SHARDS) for i in range(PER_SHARD))
    assert load_documents(None, "train", source).num_shards == SHARDS - 1   # still split by whole shards


def test_text_field_is_renamed_and_a_missing_one_is_named(hub, monkeypatch):
    loader = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: loader(*a, **k, field="content"))
    source = HubSource("some/corpus", None, "content", "validation")
    assert texts(load_documents(None, "validation", source))[:1] == ["shard 0 doc 0"]
    assert hub[-1] == {"name": "some/corpus", "config": None, "split": "validation", "streaming": True}
    with pytest.raises(ConfigError, match=r"some/corpus split 'train' has no 'text' field \(it has content, id\).*"
                                          r"--text_field"):
        load_documents(None, "train", HubSource("some/corpus", None))


def test_empty_config_means_none_and_errors_name_the_dataset(monkeypatch):
    args = parse_args(["--model_config", str(REPO / "configs" / "llama_9m.json"), "--dataset_config", "",
                       "--dataset_name", "HuggingFaceFW/fineweb"])
    source = HubSource.from_args(args)
    assert source.config is None
    monkeypatch.setattr(sources, "_hub_unreachable", lambda: "HF_HUB_OFFLINE is set")
    with pytest.raises(ConfigError, match="cannot stream the hub dataset HuggingFaceFW/fineweb split 'validation'"):
        load_documents(None, "validation", source)


def test_holding_out_needs_two_shards(hub, monkeypatch):
    monkeypatch.setitem(globals(), "SHARDS", 1)   # the fake hub's stream has a single shard
    with pytest.raises(ConfigError, match="--eval_split train holds out the first shard.*it has 1"):
        load_documents(None, "validation", HubSource(eval_split="train"))


def test_empty_dataset_name_is_refused():
    with pytest.raises(ConfigError, match="--dataset_name is empty"):
        parse_args(["--model_config", str(REPO / "configs" / "llama_9m.json"), "--dataset_name", " "])


@pytest.mark.parametrize("flag, value", [("dataset_name", "HuggingFaceFW/fineweb"), ("dataset_config", "sample-10BT"),
                                         ("text_field", "content"), ("eval_split", "train")])
def test_dataset_flags_are_refused_on_resume(flag, value):
    argv = ["--model_config", str(REPO / "configs" / "llama_9m.json"), "--num_training_steps", "4", "--warmup_steps", "1"]
    state = {"update_step": 2, "run_flags": resume.flags_record(parse_args(argv))}
    assert flag not in resume.MAY_CHANGE | resume.NOT_COMPARED
    with pytest.raises(ConfigError, match=f"--{flag} cannot change on resume"):
        resume.compare("ckpt", state, parse_args(argv + [f"--{flag}", value]))
