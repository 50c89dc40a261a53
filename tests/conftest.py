import os
from pathlib import Path

import pytest
import torch

import alphadecay  # noqa: F401 - first: a torchvision built for another torch must not break transformers (_torchvision.py)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core (-n auto): torch's own threads and the training subprocesses' would oversubscribe them.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("ALPHADECAY_DATA_DIR", REPO.parent / "shared" / "data"))


def tiny_llama(layers=2, hidden=64, inter=172, vocab=500, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=4, num_hidden_layers=layers,
                      vocab_size=vocab, max_position_embeddings=128, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


@pytest.fixture
def c4_dir():
    d = DATA_DIR / "c4" / "en"
    if not any(d.glob("*.json.gz")):
        pytest.skip(f"real C4 sample not found under {d} (set ALPHADECAY_DATA_DIR)")
    return d


@pytest.fixture
def t5_dir():
    d = DATA_DIR / "tokenizers" / "t5-base"
    if not (d / "spiece.model").exists() and not (d / "tokenizer.json").exists():
        pytest.skip(f"T5 tokenizer not found under {d} (set ALPHADECAY_DATA_DIR)")
    return d


def pytest_sessionfinish(session, exitstatus):
    """A child process left running (a DataLoader worker ignores SIGTERM) would hang the interpreter's exit,
    where multiprocessing joins its children; fail the session visibly instead, and kill them."""
    import multiprocessing

    leftover = multiprocessing.active_children()
    if leftover:
        for child in leftover:
            child.kill()
        print(f"\nERROR: the tests left {len(leftover)} child processes running: {leftover}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
