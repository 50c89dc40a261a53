"""Two CPU ranks (gloo) apply bit-identical decays even when their replicas differ by round-off."""
import os
import json
import subprocess
import sys

import alphadecay
from conftest import tiny_llama, REPO


def test_two_ranks_agree_bit_for_bit(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "tests" / "dist" / "esd_agreement.py"), str(tmp_path)],
                          timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["shared"] == r1["shared"]            # exact equality of every float
    assert r0["analyze"] == r1["analyze"]
    assert r0["alone"] != r1["alone"]              # what the release would do: ranks disagree
    # Rank 0 owns some modules and rank 1 the rest: the shared table equals rank 0's own values on
    # the modules rank 0 analysed, i.e. it is a real mix of both ranks' work.
    single = {n: s["alpha"] for n, s in alphadecay.analyze(tiny_llama(layers=3)).items()}
    same = sum(single[n] == r0["analyze"][n] for n in single)
    assert 0 < same < len(single)


def test_full_on_assembles_uneven_and_empty_row_shards_on_one_rank():
    """Each rank's rows go straight into the owner's output (point-to-point), whatever torch.chunk gave it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "tests" / "dist" / "full_on.py")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.count("OK []") == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
