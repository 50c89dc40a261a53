"""Resume says what it does: flags that may change take effect and are recorded; the others are refused."""
import json
import shutil

import pytest
import torch

from alphadecay.training.checkpointing import resume
from alphadecay.training.flags.args import build_parser, parse_args
from alphadecay.training.loop import train
from alphadecay.training.optim import build_scheduler, lr_lambda
from conftest import DATA_DIR, REPO, tiny_llama
from trainutil import data_flags, records, run_main, tiny_run_flags

pytestmark = pytest.mark.usefixtures("c4_dir", "t5_dir")
BASE = {"strategy": "alphadecay", "unbalancedWD_every": 1000}   # no reassignment after the initial one


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-update AlphaDecay run (lr 3e-3, weight decay 1e-5), copied per test."""
    run = tmp_path_factory.mktemp("flags") / "run"
    assert run_main(tiny_run_flags(run, steps=2, **BASE) + data_flags(DATA_DIR)) == 0
    return run


def copy(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


def last_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return lines[-1]


def test_changed_flags_apply_from_the_resumed_update_and_are_recorded(tmp_path, finished, capsys):
    run = copy(finished, tmp_path)
    same_model = tmp_path / "same_model.json"
    shutil.copy(REPO / "configs" / "llama_9m.json", same_model)   # another file, the same model
    argv = tiny_run_flags(run, steps=4, lr=1e-3, weight_decay=2e-5, log_every=1, model_config=same_model,
                          continue_from="latest", **BASE) + data_flags(DATA_DIR)
    capsys.readouterr()
    result = train(parse_args(argv))
    err = capsys.readouterr().err
    rec = [r for r in records(run, "resume")]
    assert len(rec) == 1 and rec[0]["step"] == 2 and rec[0]["from"] == str(run / "model_2")
    assert rec[0]["changed"] == {"lr": [3e-3, 1e-3], "weight_decay": [1e-5, 2e-5], "num_training_steps": [2, 4],
                                 "model_config": [str(REPO / "configs" / "llama_9m.json"), str(same_model)],
                                 "save_dir": [str(finished), str(run)]}      # the folder was copied
    assert f"resuming from {run / 'model_2'} at update 2: " in err and "--lr 0.003 -> 0.001" in err

    # The lr after updates 3 and 4 is the new schedule's (peak 1e-3 over 4 updates), not the old one's.
    train_recs = {r["step"]: r for r in records(run, "train")}
    for t in (3, 4):
        expected = 1e-3 * lr_lambda(t, kind="cosine", total=4, warmup=2, min_ratio=0.1)
        assert train_recs[t]["lr"] == pytest.approx(expected, rel=1e-12)
    assert train_recs[2]["lr"] == pytest.approx(3e-3 * lr_lambda(2, kind="cosine", total=2, warmup=2, min_ratio=0.1))

    # Every decay the strategy assigned at the start is scaled by 2 (no reassignment since), its base decay too.
    initial = records(run, "decay")[0]["module_weight_decay"]
    assert result["strategy"].weight_decay == 2e-5 and train_recs[4]["weight_decay"] == 2e-5
    assert result["strategy"].decays == pytest.approx({n: 2 * d for n, d in initial.items()}, rel=1e-12)
    assert len(set(initial.values())) > 2


def test_apply_sets_the_optimizers_lr_of_the_next_update():
    model = tiny_llama()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = build_scheduler(opt, "cosine", total=10, warmup=2, min_ratio=0.1)
    for _ in range(5):
        opt.step()
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    # The resumed run: built from the new flags, then the checkpoint's state loaded into it.
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched2 = build_scheduler(opt2, "linear", total=20, warmup=2, min_ratio=0.1)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert opt2.param_groups[0]["lr"] == pytest.approx(3e-3 * lr_lambda(5, kind="cosine", total=10, warmup=2,
                                                                         min_ratio=0.1))
    resume.apply({"lr": [3e-3, 1e-3], "num_training_steps": [10, 20], "scheduler": ["cosine", "linear"]},
                 optimizer=opt2, scheduler=sched2, strategy=None)
    expected = 1e-3 * lr_lambda(5, kind="linear", total=20, warmup=2, min_ratio=0.1)
    assert opt2.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12) and sched2.get_last_lr()[0] == opt2.param_groups[0]["lr"]
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_lambda(6, kind="linear", total=20, warmup=2,
                                                                        min_ratio=0.1), rel=1e-12)


@pytest.mark.parametrize("over, old, new", [
    ({"batch_size": 8}, "--batch_size 4", "--batch_size 8"),
    ({"seed": 7}, "--seed 1", "--seed 7"),
    ({"max_length": 32}, "--max_length 64", "--max_length 32"),
    ({"packing": ""}, "no --packing", "--packing"),
    ({"strategy": "adadecay"}, "--strategy alphadecay", "--strategy adadecay"),
    ({"optimizer": "adamw"}, "--optimizer adam", "--optimizer adamw"),
])
def test_flags_that_define_the_run_are_refused_before_any_work(tmp_path, finished, capsys, over, old, new):
    run = copy(finished, tmp_path)
    before = (run / "metrics.jsonl").read_text()
    flags = {**BASE, **over}
    argv = tiny_run_flags(run, steps=4, continue_from="latest", **flags) + data_flags(DATA_DIR)
    assert run_main(argv) == 2
    last = last_error(capsys)
    flag = "--" + next(iter(over))
    assert last.startswith(f"error: {flag} cannot change on resume") and old in last and new in last, last
    assert str(run / "model_2") in last and "resume with" in last
    assert (run / "metrics.jsonl").read_text() == before and not (run / ".run.lock").exists()


def test_another_model_is_refused_with_the_differing_key(tmp_path, finished, capsys):
    run = copy(finished, tmp_path)
    other = json.loads((REPO / "configs" / "llama_9m.json").read_text())
    other["rms_norm_eps"] = 1e-5      # same shapes: only the config comparison can notice it
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    assert run_main(tiny_run_flags(run, steps=4, continue_from="latest", model_config=path, **BASE)
                    + data_flags(DATA_DIR)) == 2
    last = last_error(capsys)
    assert "different model" in last and "rms_norm_eps: 1e-06 there, 1e-05 here" in last and "llama_9m.json" in last


def test_schedule_shorter_than_the_updates_done_is_refused(tmp_path, finished, capsys):
    run = copy(finished, tmp_path)
    assert run_main(tiny_run_flags(run, steps=1, continue_from="latest", **BASE) + data_flags(DATA_DIR)) == 2
    assert "--num_training_steps 1 is below" in last_error(capsys)


def test_checkpoints_without_a_flag_record_are_compared_with_the_logged_flags(tmp_path, finished, capsys):
    run = copy(finished, tmp_path)
    state_file = run / "model_2" / "training_state.pt"
    state = torch.load(state_file, weights_only=True)
    del state["run_flags"]            # as written before the record existed
    torch.save(state, state_file)
    assert run_main(tiny_run_flags(run, steps=4, continue_from="latest", batch_size=8, **BASE)
                    + data_flags(DATA_DIR)) == 2
    assert "--batch_size cannot change on resume" in last_error(capsys)


def test_every_named_flag_exists():
    dests = {a.dest for a in build_parser()._actions}
    assert resume.MAY_CHANGE <= dests and resume.NOT_COMPARED <= dests
    assert not resume.MAY_CHANGE & resume.NOT_COMPARED


def test_under_llr_the_lr_is_fixed_and_a_new_weight_decay_reaches_the_decay_policy(tmp_path):
    from alphadecay.training.optim import build_optimizer, strategy_from_args
    argv = tiny_run_flags(tmp_path / "run", steps=4, lr_strategy="llr", **BASE) + data_flags(DATA_DIR)
    saved = parse_args(argv)
    state = {"update_step": 2, "run_flags": resume.flags_record(saved)}
    with pytest.raises(Exception, match="--lr cannot change on resume: .* --lr 0.003, this run has --lr 0.001"):
        resume.compare("ckpt", state, parse_args(argv + ["--lr", "1e-3"]))
    muon = tiny_run_flags(tmp_path / "run", steps=4, optimizer="muon", **BASE) + data_flags(DATA_DIR)
    with pytest.raises(Exception, match="--lr cannot change on resume"):
        resume.compare("ckpt", {"update_step": 2, "run_flags": resume.flags_record(parse_args(muon))},
                       parse_args(muon + ["--lr", "1e-3"]))
    args = parse_args(argv + ["--weight_decay", "3e-5"])
    changed = resume.compare("ckpt", state, args)
    assert changed == {"weight_decay": [1e-5, 3e-5]}
    model = tiny_llama()
    trained = strategy_from_args(saved, model)             # AlphaDecay + LLR (Combined), as checkpointed
    trained_opt = build_optimizer("adam", trained.param_groups(), lr=saved.lr, device=torch.device("cpu"))
    # The resumed run: built from the new flags, then the checkpoint's states loaded into it.
    strategy = strategy_from_args(args, model)
    optimizer = build_optimizer("adam", strategy.param_groups(), lr=args.lr, device=torch.device("cpu"))
    strategy.load_state_dict(trained.state_dict())
    optimizer.load_state_dict(trained_opt.state_dict())
    before = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    resume.apply(changed, optimizer=optimizer, scheduler=None, strategy=strategy)
    after = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert after == pytest.approx({n: 3 * d for n, d in before.items()}, rel=1e-12) and len(after) > 5


def test_the_same_data_through_another_path_is_not_a_change(tmp_path, finished, capsys):
    """A resume launched from elsewhere names the same files another way (a link, another working directory): it resumes."""
    run = copy(finished, tmp_path)
    link = tmp_path / "data-link"
    link.symlink_to(DATA_DIR)
    argv = tiny_run_flags(run, steps=3, continue_from="latest", **BASE) + data_flags(link)
    assert run_main(argv) == 0
    assert [r["step"] for r in records(run, "train")][-1] == 3
    assert not resume._same_value("dataset_path", str(DATA_DIR / "a.json"), str(DATA_DIR / "b.json"))
    assert not resume._same_value("seed", 1, 2)


def test_muon_ns_dtype_cannot_change_on_resume(tmp_path):
    """--muon_ns_dtype changes every update: refused in one line, also against a record written before the flag."""
    assert set(resume.ADDED_LATER) <= {a.dest for a in build_parser()._actions}
    muon = tiny_run_flags(tmp_path / "run", steps=4, optimizer="muon", **BASE) + data_flags(DATA_DIR)
    record = resume.flags_record(parse_args(muon))
    float32 = parse_args(muon + ["--muon_ns_dtype", "float32"])
    assert record["args"]["muon_ns_dtype"] == "bfloat16"
    with pytest.raises(Exception, match="--muon_ns_dtype cannot change on resume: .* trained with --muon_ns_dtype "
                                        "bfloat16, this run has --muon_ns_dtype float32; resume with "
                                        "--muon_ns_dtype bfloat16") as e:
        resume.compare("ckpt", {"update_step": 2, "run_flags": record}, float32)
    assert "\n" not in str(e.value)
    del record["args"]["muon_ns_dtype"]        # a checkpoint from before the flag: torch's bf16 was the only one
    with pytest.raises(Exception, match="--muon_ns_dtype cannot change on resume"):
        resume.compare("ckpt", {"update_step": 2, "run_flags": record}, float32)
    assert resume.compare("ckpt", {"update_step": 2, "run_flags": record}, parse_args(muon)) == {}
