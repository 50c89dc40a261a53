"""FSDP2 at the scale users train: the model built on the meta device and each rank's shard initialised to the
unsharded build's rows, the Hugging Face folder written file by file, a resume reading only its rows."""
import json

import pytest
import torch

import forklaunch
from conftest import REPO

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
         "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 128,
         "vocab_size": 501, "pad_token_id": 0, "tie_word_embeddings": False, "use_cache": False}   # 501: unequal shards
GPT2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2,
        "n_positions": 128, "vocab_size": 500, "pad_token_id": 0, "tie_word_embeddings": True, "use_cache": False}


def _config(tmp_path, name, cfg):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_meta_build_replays_the_unsharded_init_exactly(tmp_path):
    """One process: the recorded init, replayed, is transformers' own, bit for bit, and leaves the generator
    where the unsharded build leaves it (the data order and dropout after it stay the same)."""
    from alphadecay.training.model import build_model, build_model_on_meta

    for name, cfg in (("llama", LLAMA), ("gpt2", GPT2)):
        config = _config(tmp_path, name, cfg)
        reference = build_model(config, dtype=torch.bfloat16, device=torch.device("cpu"), seed=3)
        after = torch.get_rng_state()
        model, deferred = build_model_on_meta(config, dtype=torch.bfloat16, seed=3)
        assert all(p.is_meta for p in model.parameters())
        deferred.materialize(model, model, torch.device("cpu"))
        assert torch.equal(after, torch.get_rng_state())
        ref = reference.state_dict()
        assert ref.keys() == model.state_dict().keys()
        assert all(torch.equal(t, ref[k]) and t.dtype == torch.bfloat16 for k, t in model.state_dict().items())
        assert all(torch.equal(b, dict(reference.named_buffers())[n]) for n, b in model.named_buffers())
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        assert tied == cfg["tie_word_embeddings"]


def test_a_model_whose_init_cannot_be_replayed_is_refused():
    from alphadecay.errors import ConfigError
    from alphadecay.training.parallel.meta_init import record_init

    class Drawn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3))

    with pytest.raises(ConfigError, match="torch.randn.*without --fsdp"):
        record_init(Drawn, seed=0)


def test_two_ranks_shard_exact_weights_write_a_loadable_folder_and_read_only_their_rows(tmp_path):
    from transformers import AutoModelForCausalLM

    from alphadecay.training.model import build_model

    configs = {name: _config(tmp_path, name, cfg) for name, cfg in (("llama", LLAMA), ("gpt2", GPT2))}
    forklaunch.run_two_ranks(REPO / "tests" / "dist" / "fsdp_meta.py", tmp_path, *configs.values())
    for name, config in configs.items():
        ranks = [json.loads((tmp_path / f"{name}-rank{r}.json").read_text()) for r in (0, 1)]
        for r in ranks:
            assert r["rng_equal"] and r["all_sharded"] and r["buffers_equal"] and r["tied"] == r["reference_tied"]
            assert r["differ"] == [] and r["resumed_differ"] == []   # every local row equal, after init and resume
            assert r["whole_reads"] == 0                              # rows only: get_slice, never the whole tensor
            assert abs(r["loss"] - r["reference_loss"]) < 1e-5 * r["reference_loss"]
            assert r["save_error"] is None
        # Each rank holds half the parameters (one row more or less per matrix).
        assert sum(r["local_elements"] for r in ranks) == ranks[0]["elements"]
        assert all(abs(r["local_elements"] / r["elements"] - 0.5) < 0.01 for r in ranks)

        saved = tmp_path / f"{name}-saved"
        files = sorted(p.name for p in saved.glob("*.safetensors"))
        assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
        index = json.loads((saved / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"].values()) == set(files)
        loaded = AutoModelForCausalLM.from_pretrained(saved)
        reference = build_model(config, dtype=torch.float32, device=torch.device("cpu"), seed=7)
        ref = reference.state_dict()
        assert all(torch.equal(t, ref[k]) for k, t in loaded.state_dict().items())
        assert (loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight) == (name == "gpt2")


def test_compile_with_fsdp_compiles_each_block_and_trains_like_eager(tmp_path):
    """--compile --fsdp: each decoder block compiled, then sharded; three AdamW updates on 2 ranks give the eager
    losses. aot_eager unless ALPHADECAY_COMPILE_BACKEND says otherwise: dynamo and AOTAutograd trace the blocks
    between FSDP2's hooks (inductor's own code is tested without FSDP in test_train's --compile test)."""
    import os

    config = _config(tmp_path, "llama", LLAMA)
    backend = {"ALPHADECAY_COMPILE_BACKEND": os.environ.get("ALPHADECAY_COMPILE_BACKEND", "aot_eager")}
    forklaunch.run_two_ranks(REPO / "tests" / "dist" / "fsdp_compile.py", tmp_path, config, timeout=600, env=backend,
                             runtime_env=backend)
    for r in (0, 1):
        result = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert result["graphs"] > 0                        # dynamo really traced the blocks
        assert len(result["compiled"]) == 3
        assert result["compiled"] == pytest.approx(result["eager"], rel=1e-5)
