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


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
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
