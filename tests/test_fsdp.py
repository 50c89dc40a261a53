"""FSDP2 (CPU, gloo, 2 ranks): the plug-in on a user's sharded model, and the training loop under --fsdp."""
import json
import math
import subprocess
import sys

from conftest import REPO


def _torchrun(script, *args, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), *map(str, args)], timeout=timeout, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _rel(a, b):
    return abs(a - b) / max(abs(a), 1e-30)


def test_plugin_on_a_fully_sharded_model_equals_the_unsharded_model(tmp_path):
    _torchrun(REPO / "tests" / "dist" / "fsdp_plugin.py", tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1                                   # every rank holds the same numbers, bit for bit
    plain, sharded = r0["analyze"]
    assert plain.keys() == sharded.keys() and len(plain) == 22   # 3 layers x 7, and lm_head
    for name in plain:
        for key, value in plain[name].items():
            if math.isfinite(value):
                assert _rel(value, sharded[name][key]) < 1e-4, (name, key)
    for strategy, (unsharded, on_shards) in r0["decays"].items():
        assert unsharded.keys() == on_shards.keys()
        assert all(_rel(unsharded[g], on_shards[g]) < 1e-4 for g in unsharded), strategy
    assert len(set(r0["decays"]["alphadecay"][1].values())) > 2      # really module-wise
    assert len(r0["losses"]) == 3 and all(math.isfinite(x) for x in r0["losses"])
