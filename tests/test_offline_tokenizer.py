"""Without a network, a hub tokenizer name loads from the local Hugging Face cache at once, and one that is not
cached fails in one line after one connection probe (no minute of huggingface_hub retries)."""
import os
import shutil
import subprocess
import sys

PROBE = """
import alphadecay
from alphadecay.errors import ConfigError
from alphadecay.training.data.batches import load_tokenizer
try:
    tok = load_tokenizer("t5-base", 64)
    print("loaded", len(tok), tok.model_max_length, tok("a b").input_ids)
except ConfigError as e:
    print("error:", e)
"""


def _offline(cache):
    """The hub at a closed local port: every connection is refused, as on a machine without a network."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT="http://127.0.0.1:9", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_a_cached_hub_tokenizer_loads_without_the_hub(tmp_path, t5_dir):
    # The cache layout huggingface_hub writes: refs/main names the snapshot that holds the files.
    repo = tmp_path / "hub" / "models--t5-base"
    snapshot = repo / "snapshots" / "0123abc"
    shutil.copytree(t5_dir, snapshot)
    (snapshot / "config.json").write_text('{"model_type": "t5"}')   # AutoTokenizer reads it too
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    r = _offline(tmp_path / "hub")
    assert r.stdout.startswith("loaded 32100 64 [")
    assert "Retrying" not in r.stderr and "127.0.0.1" not in r.stderr


def test_an_uncached_hub_tokenizer_fails_in_one_line_after_one_probe(tmp_path):
    r = _offline(tmp_path / "empty")
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: tokenizer 't5-base' could not be loaded: not in the local "
                                                   "cache and the hub is not reachable (127.0.0.1:9 is unreachable")
    assert "--tokenizer" in lines[0] and "Retrying" not in r.stderr
