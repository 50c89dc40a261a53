"""Malformed input: a one-line error naming the problem and the fix, exit code 2, no traceback."""
import gzip
import json

import pytest

from conftest import DATA_DIR, REPO
from trainutil import data_flags, run_main, tiny_run_flags

pytestmark = pytest.mark.usefixtures("c4_dir", "t5_dir")


def replace(argv, flag, value):
    argv = list(argv)
    argv[argv.index(flag) + 1] = str(value)
    return argv


def write(path, text, mode="w"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as f:
        f.write(text)
    return path


def gz_jsonl(path, docs):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    return path


def case_missing_config(tmp, a):
    return replace(a, "--model_config", tmp / "nope.json"), "not found"


def case_invalid_json(tmp, a):
    return replace(a, "--model_config", write(tmp / "bad.json", "{hidden_size: 1")), "not valid JSON"


def case_config_without_model_type(tmp, a):
    return replace(a, "--model_config", write(tmp / "c.json", '{"hidden_size": 64}')), "no 'model_type'"


def case_unknown_flag(tmp, a):
    return a + ["--use_modulewise"], "unrecognized arguments: --use_modulewise"


def case_unknown_optimizer(tmp, a):
    return a + ["--optimizer", "sgd"], "invalid choice: 'sgd'"


def case_unknown_strategy(tmp, a):
    return a + ["--strategy", "lars"], "invalid choice: 'lars'"


def case_unknown_assign_func(tmp, a):
    return a + ["--assign_func", "tb_cube"], "invalid choice: 'tb_cube'"


def case_unknown_scheduler(tmp, a):
    return a + ["--scheduler", "step"], "invalid choice: 'step'"


def case_batch_not_dividing(tmp, a):
    return a + ["--total_batch_size", "10"], "not a multiple of --batch_size"


def case_ratios_out_of_range(tmp, a):
    return a + ["--wd_min_ratio", "3", "--wd_max_ratio", "0.5"], "--wd_min_ratio <= --wd_max_ratio"


def case_negative_decay(tmp, a):
    return a + ["--weight_decay=-1e-5"], "--weight_decay must be >= 0"


def case_conflicting_methods(tmp, a):
    return a + ["--use_modulewise_wd", "--use_AWD_NeurIPS2023"], "pass only one"


def case_missing_data(tmp, a):
    return replace(a, "--dataset_path", tmp / "no-such-data"), "no-such-data"


def case_empty_data_folder(tmp, a):
    (tmp / "empty").mkdir()
    return replace(a, "--dataset_path", tmp / "empty"), "empty"


def case_corrupt_gzip(tmp, a):
    return replace(a, "--dataset_path", write(tmp / "bad.json.gz", b"\x1f\x8b\x08 not gzip", "wb")), "bad.json.gz"


def case_records_without_text(tmp, a):
    path = gz_jsonl(tmp / "notext.json.gz", [{"content": "hello world"}] * 20)
    return replace(a, "--dataset_path", path), "text"


def case_missing_tokenizer(tmp, a):
    return replace(a, "--tokenizer", tmp / "no-tokenizer"), "--tokenizer"


def case_continue_from_nothing(tmp, a):
    return a + ["--continue_from", str(tmp / "model_99")], "--continue_from"


def case_continue_from_folder_without_state(tmp, a):
    (tmp / "model_5").mkdir()
    return a + ["--continue_from", str(tmp / "model_5")], "not a training checkpoint"


def case_unwritable_save_dir(tmp, a):
    blocker = write(tmp / "file", "x")
    return replace(a, "--save_dir", blocker / "run"), "cannot write to --save_dir"


def case_eval_finds_no_tokens(tmp, a):
    path = gz_jsonl(tmp / "blank.json.gz", [{"text": "   "}] * 5)
    return replace(a, "--eval_dataset_path", path), "no tokens"


def config_like(tmp, name, **change):
    cfg = json.loads((REPO / "configs" / "llama_9m.json").read_text())
    for k, v in change.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return write(tmp / name, json.dumps(cfg))


# Flag values: (extra flags, {flag: replaced value}, expected text of the error).
FLAG_CASES = {
    "eval_batch_size_zero": (["--eval_batch_size", "0"], {}, "--eval_batch_size must be positive"),
    "negative_save_every": ([], {"--save_every": -1}, "--save_every must be >= 0"),
    "negative_eval_every": ([], {"--eval_every": -5}, "--eval_every must be >= 0"),
    "log_every_zero": (["--log_every", "0"], {}, "--log_every must be >= 1"),
    "negative_keep_last": (["--keep_last_checkpoints", "-2"], {}, "--keep_last_checkpoints must be >= 0"),
    "negative_alpha_every": (["--alpha_every", "-1"], {}, "--alpha_every must be >= 0"),
    "negative_eigs_thresh": (["--eigs_thresh", "-3"], {}, "--eigs_thresh must be >= 0"),
    "gradient_accumulation_zero": (["--gradient_accumulation", "0"], {}, "--gradient_accumulation must be >= 1"),
    "total_batch_size_zero": (["--total_batch_size", "0"], {}, "--total_batch_size must be positive"),
    "warmup_beyond_training": ([], {"--warmup_steps": 10}, "--warmup_steps 10 is beyond --num_training_steps 2"),
    "max_length_beyond_positions": ([], {"--max_length": 100000}, "beyond the model's"),
    "max_length_one": ([], {"--max_length": 1}, "--max_length must be at least 2"),
    "unknown_device": (["--device", "gpu"], {}, "--device 'gpu'"),
    "nan_lr": ([], {"--lr": "nan"}, "--lr must be positive and finite"),
    "negative_lr": ([], {"--lr": "-0.1"}, "--lr must be positive"),
    "infinite_ratio": (["--wd_max_ratio", "inf"], {}, "--wd_max_ratio must be"),
    "min_lr_ratio_above_one": (["--min_lr_ratio", "2"], {}, "--min_lr_ratio must be in [0, 1]"),
    "negative_workers": ([], {"--workers": -1}, "--workers must be >= 0"),
    "overwrite_and_continue": (["--overwrite", "--continue_from", "latest"], {}, "pass only one of them"),
    "fsdp_without_torchrun": (["--fsdp"], {}, "--fsdp shards over torchrun's ranks"),
    # a feature's flag without its switch, at its default value (features.py; every flag: tests/test_flag_rule.py)
    "muon_flag_without_muon": (["--muon_momentum", "0.95"], {}, "--muon_momentum needs --optimizer muon"),
    "llr_flags_without_llr": (["--lr_max_ratio", "5", "--linear_steps", "50"], {},
                              "--lr_max_ratio and --linear_steps need --use_modulewise_lr"),
    "llr_ratios_all_zero": (["--use_modulewise_lr", "--lr_min_ratio", "0", "--lr_max_ratio", "0"], {},
                            "a learning rate of 0"),
}


def flag_case(extra, replaced, expected):
    def case(tmp, a):
        for flag, value in replaced.items():
            a = replace(a, flag, value)
        return a + extra, expected
    return case


for _name, _spec in FLAG_CASES.items():
    globals()[f"case_{_name}"] = flag_case(*_spec)


def case_head_size_not_dividing(tmp, a):
    return replace(a, "--model_config", config_like(tmp, "heads.json", hidden_size=100, num_attention_heads=3)), \
        "rejected by transformers"


def case_unknown_config_key(tmp, a):
    cfg = config_like(tmp, "typo.json", num_hidden_layers=None, num_hidden_layer=2)
    return replace(a, "--model_config", cfg), "unknown key(s) num_hidden_layer"


def case_no_layers(tmp, a):
    return replace(a, "--model_config", config_like(tmp, "flat.json", num_hidden_layers=0)), \
        "num_hidden_layers 0; a model needs at least one layer"


def case_gpt2_without_layers(tmp, a):
    cfg = json.loads((REPO / "configs" / "gpt_nano.json").read_text())
    cfg.update(n_embd=64, n_head=4, n_layer=0)
    return replace(a, "--model_config", write(tmp / "g.json", json.dumps(cfg))), "n_layer 0; a model needs"


def case_release_length_contradicting_ours(tmp, a):
    cfg = config_like(tmp, "both.json", max_sequence_length=512)
    return replace(a, "--model_config", cfg), "max_sequence_length 512 and max_position_embeddings 1024; keep one"


def case_non_causal_model(tmp, a):
    cfg = write(tmp / "bert.json", json.dumps({"model_type": "bert", "hidden_size": 64}))
    return replace(a, "--model_config", cfg), "not a causal language model"


def case_tokenizer_larger_than_vocabulary(tmp, a):
    return replace(a, "--model_config", config_like(tmp, "small_vocab.json", vocab_size=1000)), \
        "does not fit the model's 1000 embeddings"


def case_missing_eval_data(tmp, a):
    return replace(a, "--eval_dataset_path", tmp / "no-eval"), "--eval_dataset_path"


CASES = sorted((k[5:], v) for k, v in globals().items() if k.startswith("case_"))


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[name for name, _ in CASES])
def test_bad_input_gives_one_line_error(tmp_path, capsys, case):
    base = tiny_run_flags(tmp_path / "run", steps=2) + data_flags(DATA_DIR)
    argv, expected = case(tmp_path, base)
    try:
        code = run_main(argv)
    except SystemExit as e:      # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    last = [line for line in err.replace("\r", "\n").splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and expected in last, err[-1500:]


def test_continue_from_a_checkpoint_of_another_shape(tmp_path, capsys):
    assert run_main(tiny_run_flags(tmp_path / "a", steps=1) + data_flags(DATA_DIR)) == 0
    argv = tiny_run_flags(tmp_path / "b", steps=2, model_config=REPO / "configs" / "llama_20m.json",
                          continue_from=tmp_path / "a" / "model_1") + data_flags(DATA_DIR)
    assert run_main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "different model" in last and "--model_config" in last


def test_non_utf8_documents_are_skipped_and_counted(tmp_path, caplog):
    good = [json.dumps({"text": "A perfectly good document about weight decay. " * 8})] * 8
    raw = "\n".join(good[:4]).encode() + b"\n" + b'{"text": "broken \xff\xfe bytes"}\n' + "\n".join(good[4:]).encode()
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(raw)
    # 3 updates of 4 documents read all 9 lines at least once.
    argv = replace(replace(tiny_run_flags(tmp_path / "run", steps=3) + data_flags(DATA_DIR),
                           "--dataset_path", path), "--eval_dataset_path", path)
    assert run_main(argv) == 0
    assert "not valid UTF-8" in caplog.text
    from trainutil import records
    assert records(tmp_path / "run", "final")[0]["skipped_documents"] >= 1


def last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.replace("\r", "\n").splitlines() if line.strip()][-1]


def test_a_new_run_never_overwrites_another(tmp_path, capsys):
    argv = tiny_run_flags(tmp_path / "run", steps=2) + data_flags(DATA_DIR)
    assert run_main(argv) == 0
    first = (tmp_path / "run" / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert run_main(argv) == 2
    last = last_error(capsys)
    assert "already holds a run" in last and "--continue_from latest" in last and "--overwrite" in last
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == first          # nothing appended, nothing lost
    assert run_main(argv + ["--overwrite"]) == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and (aside[0] / "metrics.jsonl").read_text() == first and (aside[0] / "model_2").is_dir()
    assert len([line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                if '"type": "config"' in line]) == 1


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory):
    """A finished 2-update AlphaDecay run with Adam (copied per test before damaging it)."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    assert run_main(tiny_run_flags(run, steps=2, strategy="alphadecay", unbalancedWD_every=1)
                    + data_flags(DATA_DIR)) == 0
    return run


def resume_argv(run, **over):
    flags = {"steps": 4, "strategy": "alphadecay", "unbalancedWD_every": 1, "continue_from": run / "model_2", **over}
    return tiny_run_flags(run, **flags) + data_flags(DATA_DIR)


@pytest.mark.parametrize("damage, over, expected", [
    ("weights", {}, "are damaged"),
    ("state", {}, "cannot be loaded safely"),
    (None, {"strategy": "uniform"}, "--strategy alphadecay"),
    (None, {"optimizer": "adamw"}, "resume with --optimizer adam"),
])
def test_damaged_or_mismatched_checkpoints(tmp_path, capsys, checkpoint_run, damage, over, expected):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(checkpoint_run, run)
    if damage:
        f = run / "model_2" / ("model.safetensors" if damage == "weights" else "training_state.pt")
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    assert run_main(resume_argv(run, **over)) == 2
    assert expected in last_error(capsys)


def test_eval_only_uses_the_checkpoints_own_config(tmp_path, capsys, checkpoint_run):
    argv = tiny_run_flags(tmp_path / "eval", model_config=REPO / "configs" / "llama_20m.json",
                          continue_from=checkpoint_run / "model_2", eval_only="") + data_flags(DATA_DIR)
    assert run_main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval_loss"] > 0


def test_a_failed_save_keeps_the_previous_checkpoints(tmp_path, capsys, monkeypatch):
    import errno
    from alphadecay.training.checkpointing import checkpoint
    real, calls = checkpoint.torch.save, []

    def disk_full(obj, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, path, *a, **k)
    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    assert run_main(tiny_run_flags(tmp_path / "run", steps=3, save_every=1) + data_flags(DATA_DIR)) == 2
    last = last_error(capsys)
    assert "No space left on device" in last and "GB needed" in last and str(tmp_path / "run") in last
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(("model_", ".tmp"))) == ["model_1"]


def test_analyze_checks_arguments_before_the_esd(tmp_path, capsys, monkeypatch):
    from alphadecay.cli import analyze, main as cli_main
    from conftest import tiny_llama
    path = tmp_path / "m"
    tiny_llama().save_pretrained(path)
    monkeypatch.setattr(analyze, "load_model", lambda p: (_ for _ in ()).throw(AssertionError("loaded")))
    for argv, expected in ([["--weight_decay", "-1"], "--weight_decay must be >= 0"],
                           [["--json", str(tmp_path / "no" / "x.json")], "--json"],
                           [["--plot", str(path / "config.json")], "--plot"],
                           [["--xmin_pos", "0.5"], "--xmin_pos must be >= 1"],
                           [["--wd_min_ratio", "4"], "--wd_min_ratio"],
                           [["--pl_fitting", "nope"], "invalid choice"]):
        try:
            code = cli_main(["analyze", str(path), *argv])
        except SystemExit as e:
            code = e.code
        assert code == 2, argv
        last = last_error(capsys)
        assert last.startswith("error: ") and expected in last, (argv, last)
