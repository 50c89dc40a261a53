"""The release's (and GaLore's) LLaMA config files work unchanged: max_sequence_length, LLaMAForCausalLM and
pad_token_id -1 (the tokenizer's pad) build the architecture of our own configs/ files."""
import json

import torch

from conftest import DATA_DIR, REPO
from trainutil import data_flags, records, run_main, tiny_run_flags


def release_config(ours: str, **sizes) -> dict:
    """Our configs/<ours>.json written as the release writes it (its llama_60m.json, keys and values)."""
    c = {**json.loads((REPO / "configs" / f"{ours}.json").read_text()), **sizes}
    return {"architectures": ["LLaMAForCausalLM"], "bos_token_id": 0, "eos_token_id": 1, "hidden_act": "silu",
            "hidden_size": c["hidden_size"], "intermediate_size": c["intermediate_size"], "initializer_range": 0.02,
            "max_sequence_length": c["max_position_embeddings"], "model_type": "llama",
            "num_attention_heads": c["num_attention_heads"], "num_hidden_layers": c["num_hidden_layers"],
            "pad_token_id": -1, "rms_norm_eps": 1e-06, "transformers_version": "4.28.1", "use_cache": True,
            "vocab_size": c["vocab_size"]}


def test_the_release_60m_file_as_published():
    """The brief's example, byte for byte the release's llama_60m.json keys and values."""
    assert release_config("llama_60m") == {
        "architectures": ["LLaMAForCausalLM"], "bos_token_id": 0, "eos_token_id": 1, "hidden_act": "silu",
        "hidden_size": 512, "intermediate_size": 1376, "initializer_range": 0.02, "max_sequence_length": 1024,
        "model_type": "llama", "num_attention_heads": 8, "num_hidden_layers": 8, "pad_token_id": -1,
        "rms_norm_eps": 1e-06, "transformers_version": "4.28.1", "use_cache": True, "vocab_size": 32000}


def test_release_60m_builds_our_60m(tmp_path, capsys):
    from alphadecay.training.flags.args import check_model_config
    from alphadecay.training.model import build_model

    path = tmp_path / "llama_60m.json"
    path.write_text(json.dumps(release_config("llama_60m")))
    config = check_model_config(str(path), 256)
    assert config.max_position_embeddings == 1024
    theirs = build_model(str(path), dtype=torch.float32, device=torch.device("cpu"), seed=3, pad_token_id=0)
    lines = [line for line in capsys.readouterr().out.splitlines() if "pad_token_id -1" in line]
    assert lines == [f"model config {path}: pad_token_id -1 (the release's) is the tokenizer's pad, id 0"]
    ours = build_model(str(REPO / "configs" / "llama_60m.json"), dtype=torch.float32, device=torch.device("cpu"),
                       seed=3)
    a, b = theirs.state_dict(), ours.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)           # same seed, same init: padding row included
    assert type(theirs) is type(ours) and theirs.config.pad_token_id == 0
    assert theirs.config.max_position_embeddings == ours.config.max_position_embeddings


def test_release_130m_has_our_130m_architecture(tmp_path):
    """A second size, on the meta device (names and shapes only, no memory)."""
    from transformers import AutoModelForCausalLM

    from alphadecay.training.model import _config

    path = tmp_path / "llama_130m.json"
    path.write_text(json.dumps(release_config("llama_130m")))
    with torch.device("meta"):
        theirs = AutoModelForCausalLM.from_config(_config(str(path), pad_token_id=0))
        ours = AutoModelForCausalLM.from_config(_config(str(REPO / "configs" / "llama_130m.json")))
    assert [(n, p.shape) for n, p in theirs.named_parameters()] == [(n, p.shape) for n, p in ours.named_parameters()]
    assert sum(p.numel() for p in ours.parameters()) > 100e6


def test_release_file_trains_offline(tmp_path, c4_dir, t5_dir, capsys):
    """The release's llama_60m.json as written (keys, values, sizes): real updates, and a checkpoint in
    transformers' names."""
    path = tmp_path / "llama_60m.json"
    path.write_text(json.dumps(release_config("llama_60m")))
    save = tmp_path / "run"
    assert run_main(tiny_run_flags(save, steps=2, model_config=path, save_every=2) + data_flags(DATA_DIR)) == 0
    assert "pad_token_id -1 (the release's) is the tokenizer's pad, id 0" in capsys.readouterr().out
    losses = [r["loss"] for r in records(save, "train")]
    assert len(losses) == 2 and all(0 < x < 20 for x in losses)
    saved = json.loads((save / "model_2" / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForCausalLM"] and saved["pad_token_id"] == 0
    assert "max_sequence_length" not in saved and saved["max_position_embeddings"] == 64
