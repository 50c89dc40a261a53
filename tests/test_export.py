"""Checkpoint folders are right for evaluation tools with default arguments (transformers, lm-eval, vLLM)."""
import json

import pytest
import torch

from conftest import DATA_DIR, REPO
from trainutil import data_flags, run_main, tiny_run_flags

# Tiny sizes under every model family's own key names; everything else as the file says.
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
        "n_embd": 32, "n_inner": 64, "n_head": 4, "n_layer": 2}


def _tiny(path) -> dict:
    config = json.loads(open(path).read())
    config.update({k: v for k, v in TINY.items() if k in config})
    return config


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


TASKS = {"local_mc": """task: local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""", "local_rolling": """task: local_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/text.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
"""}


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory):
    """A GPT-2 run (learned positions: n_positions must survive the export) with gpt_nano's keys, tiny."""
    if not (DATA_DIR / "tokenizers" / "t5-base").exists():
        pytest.skip("T5 tokenizer and C4 sample not found (set ALPHADECAY_DATA_DIR)")
    save = tmp_path_factory.mktemp("gpt2")
    config = save / "gpt2_tiny.json"
    config.write_text(json.dumps(_tiny(REPO / "configs" / "gpt_nano.json")))
    assert run_main(tiny_run_flags(save / "run", steps=2, model_config=config) + data_flags(DATA_DIR)) == 0
    return save / "run" / "model_2"


@pytest.mark.parametrize("which", ["checkpoint", "gpt2_checkpoint"])
def test_lm_eval_with_default_arguments_scores_what_the_model_computes(which, request, tmp_path):
    """lm-eval (pinned, offline: local task files) on a checkpoint (LLaMA, GPT-2), default model arguments: each
    multiple-choice log-likelihood and each rolling log-likelihood equals the one computed by hand from the model."""
    lm_eval = pytest.importorskip("lm_eval")
    checkpoint = request.getfixturevalue(which)
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    items = [{"question": "The sky is", "choices": [" blue", " a piano"], "label": 0},
             {"question": "Water boils at", "choices": [" one hundred degrees", " noon"], "label": 0}]
    texts = ["The weather today is sunny and warm.", "A cat sat on the mat, and the dog watched it."]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, spec in TASKS.items():
        (tasks / f"{name}.yaml").write_text(spec.format(data=tmp_path))
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={checkpoint}", tasks=list(TASKS), device="cpu",
                                  task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
                                  log_samples=True)

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tok = AutoTokenizer.from_pretrained(checkpoint)

    def logprob(prefix, target):
        ids = torch.tensor([prefix + target])
        with torch.no_grad():
            lp = model(ids).logits.float().log_softmax(-1)[0, len(prefix) - 1:-1]
        return lp.gather(1, torch.tensor(target)[:, None]).sum().item()

    for sample in out["samples"]["local_mc"]:
        for (context, continuation), ((got, _),) in zip(sample["arguments"], sample["resps"]):
            whole, ctx = tok(context + continuation).input_ids, tok(context).input_ids
            assert whole[:len(ctx)] == ctx
            assert got == pytest.approx(logprob(ctx, whole[len(ctx):]), abs=1e-4)
    for sample, text in zip(out["samples"]["local_rolling"], texts):
        # rolling: every token scored, the first after the prefix token (EOS: T5 has no BOS)
        assert sample["resps"][0][0] == pytest.approx(logprob([tok.eos_token_id], tok(text).input_ids), abs=1e-3)
    assert 0 <= out["results"]["local_mc"]["acc,none"] <= 1


def test_table3_smoke_pipeline_offline(tmp_path):
    """SMOKE=1 scripts/table3_zero_shot/run.sh: tiny runs, lm-eval on local stand-in tasks, the table."""
    import os
    import subprocess
    import sys

    pytest.importorskip("lm_eval")
    from conftest import REPO
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path), "ALPHADECAY_DATA_DIR": str(DATA_DIR),
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "PYTHON": sys.executable}   # this interpreter, not the python3 on PATH (a venv need not be activated)
    done = subprocess.run(["bash", str(REPO / "scripts" / "table3_zero_shot" / "run.sh")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("| method | ARC-c | ARC-e | PIQA | Hellaswag | OBQA | Winogrande | BoolQ | Avg. |")
               for line in lines)
    ours = [line for line in lines if line.startswith(("| Uniform (", "| AlphaDecay ("))]
    assert len(ours) == 2 and all(line.count("|") == 10 and "n/a" not in line for line in ours)
    record = json.loads((tmp_path / "table3_smoke" / "llama_9m-uniform" / "model_4" / "zero_shot.json").read_text())
    assert record["lm_eval"] == "0.4.13" and set(record["tasks"]) == {
        "arc_challenge", "arc_easy", "piqa", "hellaswag", "openbookqa", "winogrande", "boolq"}
    assert "acc_norm" in record["tasks"]["hellaswag"] and "acc_norm" not in record["tasks"]["boolq"]
    tables = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), str(tmp_path / "table3_smoke"),
                             "--table", "3"], capture_output=True, text=True, check=True).stdout
    assert all(line in tables.splitlines() for line in ours)


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs").glob("*.json")))
def test_every_config_exports_a_folder_transformers_loads_as_trained(name, t5_dir, tmp_path):
    """Each config of configs/ at tiny sizes, saved through the checkpointer's real path (weights, tokenizer,
    clean_for_evaluation): from_pretrained loads it and computes the logits of the model in memory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alphadecay.training.checkpointing.checkpoint import save
    from alphadecay.training.data.batches import load_tokenizer
    from alphadecay.training.model import build_model

    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps(_tiny(REPO / "configs" / f"{name}.json")))
    model = build_model(str(config), dtype=torch.float32, device=torch.device("cpu"), seed=0).eval()
    tok = load_tokenizer(str(t5_dir), 64)
    folder = save(str(tmp_path / "run"), 1, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  tokenizer=tok, training_state={"data": {}, "update_step": 1}, rank=0, world_size=1)
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([tok("Spectra of weights, exported and read back.").input_ids])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    positions = json.loads(open(f"{folder}/config.json").read())
    if "n_positions" in positions:       # learned positions keep their rows
        assert loaded.config.n_positions == model.config.n_positions == 1024
        assert "max_position_embeddings" not in positions
    else:                                # RoPE: the trained length
        assert loaded.config.max_position_embeddings == 64
    tokenizer_config = json.loads(open(f"{folder}/tokenizer_config.json").read())
    assert tokenizer_config.get("extra_special_tokens", None) != []     # transformers 4.x cannot read []
    assert AutoTokenizer.from_pretrained(folder)("a b").input_ids == tok("a b").input_ids[:-1]
