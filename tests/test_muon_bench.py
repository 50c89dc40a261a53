"""Smoke test of bench/muon_step.py at toy size: both figures as JSON rows with positive, finite ratios."""
import json
import math
import os
import subprocess
import sys

import pytest

import forklaunch
from conftest import REPO

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
        "num_attention_heads": 2, "num_hidden_layers": 2, "hidden_act": "silu", "rms_norm_eps": 1e-6,
        "initializer_range": 0.02, "max_position_embeddings": 64, "vocab_size": 256, "bos_token_id": 0,
        "eos_token_id": 1, "pad_token_id": 0, "tie_word_embeddings": False, "use_cache": False}


def test_muon_bench_prints_its_ratios(tmp_path):
    ns_dtype = "float32"   # not the default: the flag reaches the Muon timers (the bf16 path is the same code)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "muon_step.py"), "--model_config", str(config),
                           "--steps", "1", "--repeat", "1", "--strategy_steps", "1", "--json", str(out),
                           "--ns_dtype", ns_dtype],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows == json.loads(out.read_text())
    assert [r["bench"] for r in rows] == ["muon_vs_adamw_step", "muon_alphadecay_every_step_vs_uniform"]
    for r, key in zip(rows, ("ratio_muon_over_adamw", "ratio_alphadecay_over_uniform")):
        assert math.isfinite(r[key]) and r[key] > 0 and r["model"] == "tiny" and r["ns_dtype"] == ns_dtype


def test_muon_fsdp_comm_bench_counts_what_it_predicts(tmp_path):
    """bench/muon_fsdp_comm.py on 2 gloo ranks at toy size, both exchange dtypes in one launch: the bytes handed
    to isend are exchange_bytes's."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    proc = forklaunch.run_two_ranks(REPO / "bench" / "muon_fsdp_comm.py", "--model_config", config, "--repeat", "1",
                                    "--ns_dtype", "bfloat16,float32")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [row["ns_dtype"] for row in rows] == ["bfloat16", "float32"]
    for row, element_size in zip(rows, (2, 4)):
        # 14 matrices (q, k, v, o: 32x32; gate, up: 64x32; down: 32x64; 2 layers); each owner lacks half of its
        # matrix's rows, which cross in bf16 (2 bytes) each way: 2 bytes per Muon parameter; float32: 4
        assert row["matrices"] == 14 and row["muon_params"] == 2 * (4 * 32 * 32 + 3 * 64 * 32)
        assert row["sent_bytes"] == row["exchange_bytes"] == element_size * row["muon_params"]
        assert 0 < row["exchange_s"] and 0 < row["muon_step_s"] and row["backend"] == "gloo"


def test_muon_ddp_bench_splits_the_newton_schulz_work(tmp_path):
    """bench/muon_step.py --ddp on 2 gloo ranks at toy size: per-rank times of both paths, and the 14 matrices
    orthogonalised once in all (each rank its share), where the unsplit path does all 14 on each."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    proc = forklaunch.run_two_ranks(REPO / "bench" / "muon_step.py", "--ddp", "--model_config", config,
                                    "--steps", "1", "--repeat", "1", "--ns_dtype", "float32")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1 and rows[0]["bench"] == "muon_ddp_split_step" and rows[0]["ranks"] == 2
    row = rows[0]
    assert row["matrices"] == 14 and sum(row["orthogonalised_per_rank"]) == 14
    assert all(0 < n < 14 for n in row["orthogonalised_per_rank"])
    for key in ("split_step_s_per_rank", "unsplit_step_s_per_rank", "split_muon_half_s_per_rank",
                "unsplit_muon_half_s_per_rank"):
        assert len(row[key]) == 2 and all(t > 0 for t in row[key])
    assert math.isfinite(row["ratio_split_over_unsplit"]) and row["ratio_split_over_unsplit"] > 0
