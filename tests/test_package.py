"""The package installs with pip and imports the spectral core without the training stack."""
import os
import shutil
import site
import subprocess
import sys

from conftest import REPO


def _venv_seeing_this_environment(venv) -> str:
    """A fresh venv that also sees the packages of the interpreter running the tests (torch and the rest).

    ``--system-site-packages`` alone is not enough when the tests run inside a venv: the new venv is based
    on the base interpreter, whose site-packages lack torch. A .pth file appends this environment's
    site-packages after the new venv's own, so the package installed there still comes first."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    own = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in dict.fromkeys(site.getsitepackages() + [site.getusersitepackages()]) if os.path.isdir(p)]
    with open(os.path.join(own, "_outer_environment.pth"), "w") as f:
        f.write("".join(p + "\n" for p in ours))
    return py


def test_pip_install_then_import_from_outside_the_repository(tmp_path):
    venv = tmp_path / "venv"
    py = _venv_seeing_this_environment(venv)
    # Built from a copy: setuptools writes build/ and *.egg-info into the source tree.
    src = tmp_path / "src"
    shutil.copytree(REPO / "alphadecay", src / "alphadecay", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(src)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = ("import sys, alphadecay; print(alphadecay.__file__); "
             "print(sorted(m for m in ('datasets', 'wandb', 'matplotlib', 'transformers') if m in sys.modules)); "
             "import types; print(isinstance(alphadecay.analyze, types.FunctionType))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(py), "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    path, loaded, is_function = out.stdout.strip().splitlines()
    assert path.startswith(str(venv)), path          # the installed copy, not this checkout
    assert loaded == "[]" and is_function == "True"
    cli = subprocess.run([str(venv / "bin" / "alphadecay"), "--help"], cwd=tmp_path, capture_output=True,
                         text=True, env=env, timeout=120)
    assert cli.returncode == 0 and "analyze" in cli.stdout and "plot-runs" in cli.stdout
    sub = subprocess.run([str(venv / "bin" / "alphadecay"), "analyze", "--help"], cwd=tmp_path, capture_output=True,
                         text=True, env=env, timeout=120)
    assert sub.returncode == 0 and "--weight_decay" in sub.stdout


def test_no_test_hooks_in_the_package():
    for root, _, files in os.walk(REPO / "alphadecay"):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(root, name), encoding="utf-8").read()
                assert "ALPHADECAY_" not in text, name


def test_example_runs_from_the_installed_package(tmp_path):
    example = REPO / "examples" / "hf_trainer.py"
    assert "sys.path" not in example.read_text()
    proc = subprocess.run([sys.executable, str(example), "--max_steps", "4", "--update_every", "2",
                           "--output_dir", str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 assignments; at step 2" in proc.stdout   # step 0 (create_optimizer) and step 2


def test_a_torchvision_built_for_another_torch_does_not_break_imports():
    """Where torchvision's compiled ops cannot load (this CI's CUDA torchvision wheel beside a CPU torch),
    importing alphadecay first lets torchvision, timm and transformers import; elsewhere it changes nothing."""
    import subprocess
    import sys
    code = ("import alphadecay, torchvision, timm\n"
            "from transformers import LlamaConfig\n"
            "print(torchvision.extension._has_ops(), alphadecay._torchvision._LIBRARY is not None)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    has_ops, declared = r.stdout.split()
    assert (has_ops, declared) in (("True", "False"), ("False", "True"))   # declared only when the ops are missing
