"""Smoke test of the benchmarks: each runs end to end at toy size and prints its ratio lines as JSON.

The figures themselves are not checked (a toy model on a shared machine says nothing); only that every
promised line is there, well formed and finite, so that the documented commands keep working.
"""
import json
import math
import os
import subprocess
import sys

from conftest import DATA_DIR, REPO

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
        "num_attention_heads": 2, "num_hidden_layers": 2, "hidden_act": "silu", "rms_norm_eps": 1e-6,
        "initializer_range": 0.02, "max_position_embeddings": 64, "vocab_size": 32000, "bos_token_id": 0,
        "eos_token_id": 1, "pad_token_id": 0, "tie_word_embeddings": False, "use_cache": False}


def _start(script, *flags):
    env = {**os.environ, "ALPHADECAY_DATA_DIR": str(DATA_DIR), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "bench" / script), *map(str, flags)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    lines = [line for line in out.splitlines() if line.strip()]
    rows = [json.loads(line) for line in lines]  # stdout holds JSON lines and nothing else
    assert rows, err[-3000:]
    return rows


def _finite(row, *keys):
    for key in keys:
        assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (key, row)


def test_benchmarks_print_their_ratios(tmp_path, c4_dir, t5_dir):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    # Both at once: each is mostly start-up and waiting, and the test must stay short.
    step = _start("train_step.py", "--model_config", config, "--batch_size", 2, "--max_length", 16, "--accum", 2,
                  "--updates", 1, "--warmup", 1, "--workers", 1, "--esd_repeat", 1, "--direct_intervals", "1,10",
                  "--json", tmp_path / "step.json")
    data = _start("data.py", "--models", config, "--batch_size", 2, "--max_length", 16, "--workers", "0,1",
                  "--batches", 3, "--warmup_batches", 1, "--repeat", 1, "--model_repeat", 1,
                  "--prepare_documents", 100, "--json", tmp_path / "data.json")

    rows = _rows(step)
    assert json.loads((tmp_path / "step.json").read_text()) == rows
    [main] = [r for r in rows if r["bench"] == "train_step"]
    _finite(main, "baseline_tokens_per_s", "ours_tokens_per_s", "speedup", "baseline_update_s", "ours_update_s")
    assert main["tokens"] == "non-pad" and main["model"] == "tiny"
    assert main["speedup"] > 0 and main["baseline_tokens_per_s"] > 0
    overhead = [r for r in rows if r["bench"] == "alphadecay_overhead"]
    amortised = {r["interval"] for r in overhead if r["method"] == "amortised"}
    assert {500, 100, 1} <= amortised
    # interval 10 does not fit in 1 measured update: only interval 1 is measured directly
    assert [r["interval"] for r in overhead if r["method"] == "direct"] == [1]
    for r in overhead:
        _finite(r, "overhead_pct")

    rows = _rows(data)
    assert json.loads((tmp_path / "data.json").read_text()) == rows
    ratios = [r for r in rows if r["bench"] == "data"]
    assert {(r["pipeline"], r["workers"]) for r in ratios} == {("ours", 0), ("ours", 1), ("release", 0),
                                                               ("release", 1), ("prepared", 0), ("prepared", 1)}
    for r in ratios:
        _finite(r, "pipeline_tokens_per_s", "model_tokens_per_s", "ratio")
        assert r["ratio"] > 0
    assert {r["workers"] for r in rows if r["bench"] == "data_speedup"} == {0, 1}
    for r in (r for r in rows if r["bench"] == "data_prepared"):
        _finite(r, "prepared_tokens_per_s", "cpu_headroom")


def test_loss_bench_variants_agree_on_the_loss(tmp_path, c4_dir, t5_dir):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    rows = _rows(_start("loss.py", "--model_config", config, "--batch_size", 2, "--max_length", 32, "--batches", 2,
                        "--rounds", 1, "--json", tmp_path / "loss.json"))
    assert json.loads((tmp_path / "loss.json").read_text()) == rows
    assert [r["variant"] for r in rows] == ["labels", "no_mask", "no_mask_select", "ours"]
    for r in rows:
        _finite(r, "best_s", "tokens_per_s", "speedup", "mean_loss")
    # Four ways to one loss: the same batches give the same mean loss whichever path computed it.
    assert max(r["mean_loss"] for r in rows) - min(r["mean_loss"] for r in rows) < 1e-4


def test_gpu_suite_smoke_runs_every_part_on_cpu(tmp_path):
    """SMOKE=1 bash bench/gpu_suite.sh: the CUDA tests on the CPU, throughput with and without compile, the
    ESD pass, the Uniform vs AlphaDecay runs, bfloat16 vs bf16-mixed; a JSON and a Markdown summary."""
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path), "ALPHADECAY_DATA_DIR": str(DATA_DIR),
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_suite.sh")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert summary["smoke"] and summary["tests"]["rc"] == 0 and _all_passed(summary["tests"]["summary"])
    assert [r["compile"] for r in summary["throughput"]] == [False, True]
    assert all(r["tokens_per_s"] > 0 for r in summary["throughput"])
    esd = json.loads(summary["esd"]["tail"].strip().splitlines()[-1])
    assert esd["size"] == "60m" and esd["max_rel_alpha_diff"] < 1e-4
    assert all(math.isfinite(summary["comparison"][m]["eval_ppl"]) for m in ("uniform", "alphadecay"))
    for dtype in ("bfloat16", "bf16-mixed"):
        assert math.isfinite(summary["precision"][dtype]["eval_ppl"]) and summary["precision"][dtype]["step_s"] > 0
        assert f"--dtype {dtype}" in summary["precision"][dtype]["command"]
    assert "| llama_9m | 4 x 64 |" in (tmp_path / "gpu_suite.md").read_text()


def test_gpu_suite_without_cuda_says_so():
    import pytest
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the suite would run")
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_suite.sh")], cwd=REPO, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "SMOKE"}, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no CUDA device" in proc.stderr



def _all_passed(summary: str) -> bool:
    """pytest's closing line of the suite's CUDA tests run on the CPU: every one passed, none skipped or failed."""
    import re
    return re.fullmatch(r"[1-9]\d* passed in [\d.]+s( \(\d+:\d+:\d+\))?", summary) is not None
