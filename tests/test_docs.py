"""The README stays true to the code: every flag documented, the documented commands exist."""
import re

from alphadecay.training.flags.args import build_parser
from conftest import REPO

README = (REPO / "README.md").read_text()


def test_every_flag_is_in_the_readme():
    flags = [s for a in build_parser()._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    missing = [f for f in flags if f"`{f}`" not in README]
    assert not missing, missing


def test_every_fine_tuning_flag_is_documented():
    from alphadecay.tasks.glue import build_parser as glue_parser
    from alphadecay.tasks.vit_args import build_parser as vit_parser
    import subprocess
    import sys
    doc = (REPO / "docs" / "finetuning_flags.md").read_text()
    written = subprocess.run([sys.executable, str(REPO / "scripts" / "finetuning_flags.py")], capture_output=True,
                             text=True, check=True).stdout
    assert doc.strip() == written.strip(), "docs/finetuning_flags.md is stale: python scripts/finetuning_flags.py > it"
    for parser in (glue_parser(), vit_parser()):
        flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
        missing = [f for f in flags if f"`{f}`" not in doc]
        assert not missing, missing


def test_readme_paths_exist():
    for path in set(re.findall(r"(?:scripts|bench|configs|docs|examples)/[\w./-]+\.(?:sh|py|json|md)", README)):
        assert (REPO / path).exists(), path


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    command = "pytest -q -n auto --dist worksteal tests"
    assert f"pip install -r requirements-dev.txt && python -m {command}" in README
    assert "-r requirements-dev.txt" in ci and command in ci
