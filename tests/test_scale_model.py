"""bench/scale_model.py: its byte counts against the collectives of real 2-rank runs (FSDP2 with Muon and a per-update
ESD pass; DDP), and its command line."""
import json
import math
import sys
from pathlib import Path

import pytest

from forklaunch import run_two_ranks
from conftest import DATA_DIR
from trainutil import REPO, data_flags, tiny_run_flags

sys.path.insert(0, str(REPO / "bench"))
import scale_model  # noqa: E402

SCRIPT = REPO / "tests" / "dist" / "collective_bytes.py"


def _eval_forwards(flags, world):
    """Forwards per rank of one evaluation: the real evaluator's batch count (a property of the data)."""
    from alphadecay.training.data.batches import load_tokenizer
    from alphadecay.training.data.eval_data import eval_batches

    args, _ = scale_model.parse(flags + ["--gpus_per_node", str(world)])
    tok = load_tokenizer(args.tokenizer, args.max_length)
    n = sum(1 for _ in eval_batches(args.eval_dataset_path, tok, batch_size=args.eval_batch_size,
                                    max_length=args.max_length, target_eval_tokens=args.target_eval_tokens))
    return args, math.ceil(n / world)


def _measured_and_modelled(tmp_path, **over):
    # Updates 2 and 3 counted, one evaluation after update 2, the ESD before each (every update).
    flags = tiny_run_flags(tmp_path / "run", steps=4, eval_every=2, **over) + data_flags(DATA_DIR)
    run_two_ranks(SCRIPT, str(tmp_path / "RANK.json"), "--", *flags)
    measured = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    args, forwards = _eval_forwards(flags, 2)
    args.num_training_steps = 10 ** 4   # a long run's rates: the ESD every update, an evaluation every 2
    model = scale_model.model_update(args, "h100", gpus_per_node=2, nodes=1, eval_forwards_per_rank=forwards)
    return measured, model, args


def _check(measured, model, args):
    for rank in (0, 1):
        counted = sum(measured[rank]["bytes"].values())
        predicted = 2 * model["comm_bytes_by_rank"][rank]   # two updates
        assert counted == pytest.approx(predicted, rel=0.10), (rank, measured[rank], model["comm_breakdown"])


def test_fsdp_muon_esd_bytes_match_the_model(tmp_path, c4_dir, t5_dir):
    measured, model, args = _measured_and_modelled(
        tmp_path, fsdp="", optimizer="muon", muon_ns_dtype="float32", use_modulewise_wd="",
        alpha_positively_with_WD="", unbalancedWD_every=1)
    assert model["esd_passes_per_update"] == pytest.approx(1, abs=1e-3)
    for rank in (0, 1):
        got = measured[rank]["bytes"]
        assert got.get("all_gather_single", 0) > 0 and got.get("reduce_scatter_single", 0) > 0, got
        assert got.get("batch_isend_irecv", 0) > 0, got   # Muon's exchange and the ESD's gathers
    _check(measured, model, args)
    parts = model["comm_breakdown"]   # the same rank-independent items, one kind of collective each
    gathers = parts["fsdp_all_gather_layers"] + parts["fsdp_all_gather_root"] + parts["eval_all_gather"]
    assert measured[0]["bytes"]["all_gather_single"] == pytest.approx(2 * gathers, rel=0.10)
    assert measured[0]["bytes"]["reduce_scatter_single"] == pytest.approx(2 * parts["fsdp_reduce_scatter"], rel=0.10)


def test_ddp_bytes_match_the_model(tmp_path, c4_dir, t5_dir):
    measured, model, args = _measured_and_modelled(tmp_path, optimizer="adamw")
    assert model["parallel"] == "ddp"
    _check(measured, model, args)


def test_cli_json_and_bad_replicate(capsys):
    argv = ["--fsdp", "--model_config", str(REPO / "configs" / "llama_1b.json"), "--batch_size", "16",
            "--total_batch_size", "512", "--gpus_per_node", "8", "--nodes", "2", "--dp_replicate", "2", "--json"]
    assert scale_model.main(argv) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["parallel"] == "hsdp" and out["shard"] == 8 and out["gradient_accumulation"] == 2
    assert {"comm_bytes_per_update_per_rank", "flops_per_update_per_rank", "peak_memory_gb", "mfu_ceiling"} <= set(out)
    assert 0 < out["mfu_ceiling"] < 0.6 and out["comm_breakdown"]["hsdp_all_reduce"] > 0
    assert scale_model.main(argv[:-2] + ["3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dp_replicate 3" in err[0], err


def test_recipes_json_rows(capsys):
    assert scale_model.main(["--recipes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.splitlines()[-1])
    names = {r["name"] for r in rows}
    assert {"ddp-60m", "ddp-1b", "fsdp-7b-1node", "fsdp-7b-4node"} <= names and len(rows) == 2 * len(names)
    for r in rows:
        assert {"name", "parallel", "gpu", "nodes", "mfu_ceiling", "peak_memory_gb"} <= set(r)
        assert 0 < r["mfu_ceiling"] <= 0.6 and r["peak_memory_gb"] > 0
    by = {(r["name"], r["gpu"]): r for r in rows}
    # The same recipe over 4 nodes crosses the slower inter-node link every micro-batch.
    assert by[("fsdp-7b-4node", "h100")]["mfu_ceiling"] < by[("fsdp-7b-1node", "h100")]["mfu_ceiling"]
    assert by[("fsdp-7b-4node", "h100")]["nodes"] == 4 and by[("ddp-1b", "h100")]["parallel"] == "ddp"
