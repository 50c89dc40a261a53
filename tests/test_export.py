"""Checkpoint folders are right for evaluation tools with default arguments (transformers, lm-eval, vLLM)."""
import json

import pytest
import torch

from conftest import DATA_DIR
from trainutil import data_flags, run_main, tiny_run_flags


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    if not (DATA_DIR / "tokenizers" / "t5-base").exists():
        pytest.skip("T5 tokenizer and C4 sample not found (set ALPHADECAY_DATA_DIR)")
    save = tmp_path_factory.mktemp("run")
    assert run_main(tiny_run_flags(save, steps=2) + data_flags(DATA_DIR)) == 0
    return save / "model_2"


def test_tokenizer_emits_only_ids_the_model_has_and_appends_nothing(checkpoint):
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    original = AutoTokenizer.from_pretrained(DATA_DIR / "tokenizers" / "t5-base")
    vocab = AutoConfig.from_pretrained(checkpoint).vocab_size
    assert len(tok) <= vocab and max(tok.get_vocab().values()) < vocab
    text = "The first token of an answer must be scored, not an end of document."
    ids = tok(text).input_ids
    assert ids == original(text).input_ids[:-1] and ids[-1] != tok.eos_token_id     # same pieces, no </s>
    assert max(original("a <extra_id_0> b").input_ids) >= vocab and max(tok("a <extra_id_0> b").input_ids) < vocab
    assert tok.eos_token_id == 1 and tok.pad_token_id == 0 and tok.model_max_length == 64
    files = json.loads((checkpoint / "tokenizer.json").read_text())
    assert files["truncation"] is None and files["padding"] is None
    config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    assert "local_files_only" not in config and "extra_ids" not in config


def test_config_is_true_to_training_and_generation_uses_the_cache(checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    c = model.config
    assert c.max_position_embeddings == 64 and c.use_cache and c.bos_token_id != c.pad_token_id
    assert model.generation_config.eos_token_id == 1 and model.generation_config.pad_token_id == 0
    tok = AutoTokenizer.from_pretrained(checkpoint)
    prompt = tok("The weather today", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= prompt.input_ids.shape[1] + 3
    # log-likelihood of a continuation, as a harness computes it: context + continuation in one pass
    context, continuation = tok("The weather today").input_ids, tok(" is sunny").input_ids
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logp = model(ids).logits.log_softmax(-1)[0, len(context) - 1:-1]
    assert torch.isfinite(logp.gather(1, torch.tensor(continuation)[:, None]).sum())
