"""The release's command lines parse as written and mean what they say."""
import pytest

from alphadecay.training.flags.args import parse_args
from alphadecay.errors import ConfigError
from alphadecay.training.optim import lr_lambda

from conftest import REPO

CFG = ["--model_config", str(REPO / "configs" / "llama_60m.json")]


def test_switches_and_strategy_resolution():
    assert parse_args(CFG).strategy == "uniform"                       # no method flag: Uniform
    assert parse_args(CFG + ["--weight_decay", "0"]).strategy == "none"
    assert parse_args(CFG + ["--use_modulewise_wd", "--alpha_positively_with_WD"]).strategy == "alphadecay"
    ada = parse_args(CFG + ["--use_modulewise_wd", "--esd_metric_for_tb", "gradnorm", "--assign_func", "layerwise_sigmoid"])
    assert ada.strategy == "adadecay"
    assert parse_args(CFG + ["--use_AWD_NeurIPS2023"]).strategy == "awd"
    assert parse_args(CFG).alpha_positively_with_WD is False
    assert parse_args(CFG + ["--use_modulewise_wd", "--remove_last_layer", "False"]).remove_last_layer is False
    with pytest.raises(ConfigError):
        parse_args(CFG + ["--strategy", "uniform", "--use_modulewise_wd"])


def test_batch_arithmetic_and_token_budget():
    a = parse_args(CFG + ["--batch_size", "256", "--total_batch_size", "512"], world_size=2)
    assert a.gradient_accumulation == 1
    a = parse_args(CFG + ["--batch_size", "64", "--total_batch_size", "512"], world_size=2)
    assert a.gradient_accumulation == 4
    # --max_train_tokens counts tokens: 512 sequences x 256 tokens per update.
    a = parse_args(CFG + ["--batch_size", "256", "--total_batch_size", "512", "--max_train_tokens", "1B"], world_size=2)
    assert a.num_training_steps == -(-10**9 // (512 * 256))
    with pytest.raises(ConfigError, match="not a multiple"):
        parse_args(CFG + ["--batch_size", "48", "--total_batch_size", "512"], world_size=2)


def test_schedule_warmup_cosine_floor():
    kw = dict(kind="cosine", total=100, warmup=10, min_ratio=0.1)
    assert lr_lambda(0, **kw) == pytest.approx(1 / 11)
    assert lr_lambda(10, **kw) == pytest.approx(1.0)
    assert lr_lambda(55, **kw) == pytest.approx(0.55)
    assert lr_lambda(100, **kw) == pytest.approx(0.1)
    assert lr_lambda(60, kind="linear", total=110, warmup=10, min_ratio=0.0) == pytest.approx(0.5)


def test_fsdp_flag():
    assert parse_args(CFG).fsdp is False                               # DDP is the default
    assert parse_args(CFG + ["--fsdp"], world_size=2).fsdp is True
    both = parse_args(CFG + ["--fsdp", "--compile"], world_size=2)   # each block compiled, then sharded
    assert both.fsdp and both.compile
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node"):
        parse_args(CFG + ["--fsdp"], world_size=1)


def test_collective_timeout_reaches_the_process_group(monkeypatch):
    """--dist_timeout_minutes: what init_process_group is given (torch's 10-minute default is shorter than rank 0
    writing a 7B checkpoint while the others wait in the next collective)."""
    import datetime

    from alphadecay.training.parallel import runtime

    assert parse_args(CFG).dist_timeout_minutes == 30
    with pytest.raises(ConfigError, match="--dist_timeout_minutes"):
        parse_args(CFG + ["--dist_timeout_minutes", "0"])
    seen = {}
    monkeypatch.setattr(runtime.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime.dist, "init_process_group", lambda *a, **kw: seen.update(kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    rt = runtime.setup("cpu", timeout_minutes=45)
    assert rt.rank == 1 and seen["timeout"] == datetime.timedelta(minutes=45) and seen["world_size"] == 2
