"""The rule for the flags of a feature that is off, for every flag of torchrun_main.py's parser (walked, so that a
new flag cannot escape it), in-process: no training, no files."""
import argparse
import ast
import pathlib

import pytest

from alphadecay.errors import ConfigError
from alphadecay.training.flags import features
from alphadecay.training.flags.args import build_parser, check_flags, passed_flags

PARSER = build_parser()
ACTIONS = {a.dest: a for a in PARSER._actions if a.dest != "help"}


def _value(action) -> list[str]:
    """A valid value to pass: the default itself where there is one (a flag is caught when passed, whatever its
    value), else the first choice or a small number."""
    if action.nargs == 0:
        return []
    if action.default is not None:
        return [str(action.default)]
    if action.choices:
        return [sorted(action.choices)[0]]
    return ["1"] if action.type not in (None, str) else ["x"]


def _check(argv):
    args = PARSER.parse_args(argv)
    return check_flags(args, passed_flags(PARSER, argv))


def test_every_flag_is_declared_exactly_once():
    for dest in ACTIONS:
        where = [t for t, table in (("NEEDS", features.NEEDS), ("RELEASE_ONLY", features.RELEASE_ONLY),
                                    ("ALWAYS_VALID", features.ALWAYS_VALID)) if dest in table]
        assert len(where) == 1, f"--{dest} is in {where or 'no table'}: declare it in exactly one table of " \
                                f"alphadecay/training/flags/features.py"
    assert set(features.WARN_WHEN_OFF) <= set(features.NEEDS)
    declared = set(features.NEEDS) | set(features.RELEASE_ONLY) | features.ALWAYS_VALID
    assert declared - {"help"} <= set(ACTIONS), sorted(declared - set(ACTIONS) - {"help"})


@pytest.mark.parametrize("dest", sorted(features.NEEDS))
def test_a_feature_flag_without_its_switch_is_an_error_naming_it(dest):
    flag, value, need = f"--{dest}", _value(ACTIONS[dest]), features.NEEDS[dest]
    switch = need.conditions[0][0]
    if dest in features.WARN_WHEN_OFF:   # the release's scripts pass it harmlessly: one line, and the run goes on
        warnings = _check([flag, *value])
        assert len(warnings) == 1 and warnings[0].startswith(f"warning: {flag} does nothing without {switch}")
    else:
        with pytest.raises(ConfigError) as e:
            _check([flag, *value])
        message = str(e.value)
        assert "\n" not in message and message.startswith(f"{flag} needs {switch}; add it or drop the flag"), message
    assert _check([*need.enable, flag, *value]) == []   # with its switch: accepted, no warning


@pytest.mark.parametrize("dest", sorted(features.ALWAYS_VALID - {"help"}))
def test_an_always_valid_flag_is_accepted_alone(dest):
    assert _check([f"--{dest}", *_value(ACTIONS[dest])]) == []


@pytest.mark.parametrize("dest", sorted(features.RELEASE_ONLY))
def test_a_release_flag_that_does_nothing_warns_in_one_line(dest):
    warnings = _check([f"--{dest}", *_value(ACTIONS[dest])])
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: --{dest} ") and "\n" not in warnings[0]


def test_presence_not_value_counts():
    assert passed_flags(PARSER, ["--muon_momentum=0.95", "--use_modulewise_wd"]) == {"muon_momentum",
                                                                                     "use_modulewise_wd"}
    assert passed_flags(PARSER, []) == set()
    assert PARSER.parse_args([]).muon_momentum == 0.95   # the probe left the defaults in place
    with pytest.raises(ConfigError, match="--muon_momentum and --muon_ns_steps need --optimizer muon"):
        _check(["--muon_momentum", "0.95", "--muon_ns_steps", "5"])


@pytest.mark.parametrize("argv, expected", [
    (["--use_modulewise_wd", "--assign_func", "layerwise_sigmoid", "--wd_max_ratio", "3"],
     "--wd_max_ratio needs --assign_func tb_linear_map"),
    (["--use_modulewise_wd", "--esd_metric_for_tb", "gradnorm", "--eigs_thresh", "50"],
     "--eigs_thresh needs --use_modulewise_wd (with an ESD metric) or --use_modulewise_lr"),
    (["--lr_strategy", "sharpness", "--lr_max_ratio", "5"], "--lr_max_ratio needs --use_modulewise_lr"),
    (["--use_AWD_NeurIPS2023", "--unbalancedWD_every", "500"], "--unbalancedWD_every needs --use_modulewise_wd"),
])
def test_a_switch_that_does_not_read_the_flag_is_not_enough(argv, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        _check(argv)


@pytest.mark.parametrize("argv, expected", [
    (["--use_modulewise_lr", "--lr_min_ratio", "0", "--lr_max_ratio", "0"],
     "every module LLR tunes a learning rate of 0"),
    (["--use_modulewise_lr", "--lr_assign_func", "tb_sqrt", "--lr_min_ratio", "0", "--lr_max_ratio", "0"],
     "the embeddings and the output layer a learning rate of 0"),
    (["--use_modulewise_wd", "--wd_min_ratio", "0", "--wd_max_ratio", "0"], "every balanced module a decay of 0"),
    (["--use_modulewise_wd", "--weight_decay", "0"], "every module a decay of 0"),
    (["--use_AWD_NeurIPS2023", "--weight_decay", "0"], "every group a decay of 0"),
    (["--strategy", "none", "--weight_decay", "1e-5"], "--strategy none (WD=0) ignores --weight_decay"),
])
def test_ratios_that_zero_every_tuned_module_are_an_error(argv, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        _check(argv)


@pytest.mark.parametrize("argv", [
    ["--use_modulewise_lr", "--lr_min_ratio", "0"],              # one module at 0, the others train
    ["--use_modulewise_wd", "--wd_min_ratio", "0"],
    ["--weight_decay", "0"], ["--strategy", "none"], ["--strategy", "none", "--weight_decay", "0"],
])
def test_ratios_that_leave_something_to_tune_are_accepted(argv):
    assert _check(argv) == []


def test_the_papers_and_the_readmes_command_lines_pass_the_rule():
    from test_train import RELEASE_README
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    main = next(line for line in readme.splitlines() if line.startswith("pip install -r requirements.txt && torchrun"))
    lines = [RELEASE_README.split(), main.split("torchrun_main.py", 1)[1].split(),
             # LLR as the release runs it (scripts/llr_fineweb/run.sh, LLR.md section 6), on AlphaDecay
             "--optimizer adamw --weight_decay 0.1 --lr_strategy llr --alpha_positively_with_lr --lr_min_ratio 1 "
             "--lr_max_ratio 5 --lr_assign_func tb_linear_map --unbalancedlr_every 100 --linear_steps 50 "
             "--LLR_ratio 0.2 --use_modulewise_wd --alpha_positively_with_WD".split(),
             # the release's AdaDecay and AWD scripts (scripts/common.sh writes the same)
             "--weight_decay 0.00001 --use_modulewise_wd --alpha_positively_with_WD --unbalancedWD_every 500 "
             "--esd_metric_for_tb gradnorm --assign_func layerwise_sigmoid".split(),
             "--use_AWD_NeurIPS2023 --weight_decay 0.00001".split()]
    for argv in lines:
        assert _check(argv) == [], argv
    # the release's Uniform and AWD command lines with the --alpha_positively_with_WD its scripts add everywhere
    for argv, strategy in ((["--weight_decay", "0.00001"], "uniform"), (["--use_AWD_NeurIPS2023"], "awd")):
        warnings = _check(argv + ["--alpha_positively_with_WD"])
        assert warnings == [f"warning: --alpha_positively_with_WD does nothing without --use_modulewise_wd (or "
                            f"--strategy alphadecay/adadecay) (the release's scripts pass it to every method); this "
                            f"run is --strategy {strategy}"]


def test_no_import_cycle_among_the_flag_modules():
    """args imports lr and muon, which share checks.py with it and never import args back."""
    folder = pathlib.Path(features.__file__).parent
    graph = {}
    for path in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
        graph[path.stem] = deps & {p.stem for p in folder.glob("*.py")}
    assert "args" not in graph["lr"] | graph["muon"] | graph["features"] | graph["checks"]

    def reach(start, seen=()):
        for d in graph[start]:
            assert d not in seen + (start,), f"import cycle through {start} -> {d}"
            reach(d, seen + (start,))
    for module in graph:
        reach(module)


def test_every_shipped_script_command_passes_the_rule(tmp_path):
    """The tables' scripts as they launch (DRY_RUN prints each command): none refused, none warned."""
    import os
    import shlex
    import subprocess
    repo = pathlib.Path(__file__).parents[1]
    runs = [("scripts/table2_adam/run.sh", {}), ("scripts/table12_adamw/run.sh", {}),
            ("scripts/table11_interval/run.sh", {}), ("scripts/table5_gpt_nano/run.sh", {}),
            ("scripts/llr_fineweb/run.sh", {})]
    runs += [("scripts/compare_strategies.sh", {"GRID": g}) for g in ("decay", "llr", "muon")]
    runs += [("scripts/fsdp_llama.sh", {"METHOD": m}) for m in ("wd0", "uniform", "awd", "adadecay", "alphadecay")]
    lines = []
    for script, env in runs:
        out = subprocess.run(["bash", str(repo / script)], capture_output=True, text=True, cwd=repo, timeout=120,
                             env={**os.environ, "DRY_RUN": "1", "NGPUS": "0", "OUT": str(tmp_path), **env}).stdout
        found = [line for line in out.splitlines() if "torchrun_main.py" in line]
        assert found, (script, env, out[-500:])
        lines += found
    for line in lines:
        argv = shlex.split(line.split("torchrun_main.py", 1)[1])
        assert _check(argv) == [], line
    assert len(lines) > 100
