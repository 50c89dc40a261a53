"""Two CPU ranks (gloo) apply bit-identical decays even when their replicas differ by round-off."""
import json

import pytest

import alphadecay
import forklaunch
from conftest import tiny_llama, REPO


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """tests/dist/esd_agreement.py's per-rank results (one launch for the tests of this file)."""
    out = tmp_path_factory.mktemp("esd_agreement")
    forklaunch.run_two_ranks(REPO / "tests" / "dist" / "esd_agreement.py", out)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_ranks_agree_bit_for_bit(two_ranks):
    r0, r1 = two_ranks
    assert r0["shared"] == r1["shared"]            # exact equality of every float
    assert r0["analyze"] == r1["analyze"]
    assert r0["alone"] != r1["alone"]              # what the release would do: ranks disagree
    # Rank 0 owns some modules and rank 1 the rest: the shared table equals rank 0's own values on
    # the modules rank 0 analysed, i.e. it is a real mix of both ranks' work.
    single = {n: s["alpha"] for n, s in alphadecay.analyze(tiny_llama(layers=3)).items()}
    same = sum(single[n] == r0["analyze"][n] for n in single)
    assert 0 < same < len(single)


def test_full_on_assembles_uneven_and_empty_row_shards_on_one_rank(two_ranks):
    """Each rank's rows go straight into the owner's output (point-to-point), whatever torch.chunk gave it:
    even, uneven, an empty shard on rank 1, a 3-D weight, to either rank."""
    assert [r["full_on"] for r in two_ranks] == [[], []]


def test_sharded_pass_computes_on_every_owner_between_the_same_two_gathers(two_ranks):
    """FSDP2's ESD pass: every owner's batched eigensolves of a phase come after the same gather on both ranks
    (no collective between them, so they run at the same time), in more than one phase (the memory budget), and
    the table is shared by one all-reduce at the end; the ranks' rows are bit-identical, one process's to 1e-12."""
    p0, p1 = (r["phases"] for r in two_ranks)
    computes = [[e for e in p["events"] if e[0] == "compute"] for p in (p0, p1)]
    assert [e[1] for e in computes[0]] == [e[1] for e in computes[1]] == p0["phase_ends"]
    assert len(p0["phase_ends"]) > 1 and p0["phase_ends"][-1] == p0["gathers"] == p0["matrices"]
    assert len([e for e in p0["events"] if e[0] == "gather"]) == len(p0["phase_ends"])   # one batch a phase
    assert sum(e[2] for c in computes for e in c) == p0["matrices"]          # each matrix analysed once
    assert all(e[2] > 0 for c in computes for e in c)                          # both ranks work in every phase
    for p in (p0, p1):
        assert [e for e in p["events"] if e[0] == "all_reduce"] == [["all_reduce", p["matrices"]]]
    assert json.dumps(p0["rows"]) == json.dumps(p1["rows"])                    # bit for bit across ranks
    # One process batches the matrices differently: alphahat's batched softplus then differs in the last bit.
    assert p0["one_process_gap"] <= 1e-12 and p0["same_nans"]
