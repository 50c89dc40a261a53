"""--optimizer muon under DDP: each hidden matrix's Newton-Schulz on one rank (alphadecay.muon_ddp), 2 gloo ranks.
The loop's bit-exact 2-rank DDP resume with this path: tests/test_muon_train.py."""
import json

import pytest
import torch

import forklaunch
from alphadecay.muon_ddp import Replicas, ReplicatedMuon, buckets
from conftest import REPO


def test_split_muon_under_ddp(tmp_path):
    forklaunch.run_two_ranks(REPO / "tests" / "dist" / "muon_ddp.py", tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["same_gradients"].keys() == {f"{p}/{b}" for p in ("bfloat16/float32", "float32/float32",
                                                                 "bfloat16/bfloat16") for b in (1 << 20, 4096)}
    for case, a in r0["same_gradients"].items():
        b = r1["same_gradients"][case]
        # With the same gradients: the unsplit optimizer's step bit for bit (torch's Muon on float32 weights with
        # bf16 Newton-Schulz), its state_dict too (torch's, without ns_dtype, on that path), on both ranks.
        for r in (a, b):
            assert all(r["equal"]) and all(r["moved"]) and len(r["equal"]) == 7 and r["state_dict_equal"], case
            assert r["ns_dtype_in_state"] == (not case.startswith("bfloat16/float32")), case
        assert a["weights_sha"] == b["weights_sha"]
        # Each matrix orthogonalised on one rank: 7 in all, split 3 + 4 by their cost (LPT).
        assert a["ns_per_step"] + b["ns_per_step"] == 7 and 0 < a["ns_per_step"] < 7, case
        # One all-gather for the whole model; a 4 KB bucket (512 float32 entries per rank) needs more.
        assert a["gathers_per_step"] == b["gathers_per_step"] == (1 if case.endswith(str(1 << 20)) else 3), case
        assert a["gathered_bytes_per_step"] == b["gathered_bytes_per_step"] == a["predicted_bytes"], case
    for ns, a in r0["train"].items():
        b = r1["train"][ns]
        assert a["weights_sha"] == b["weights_sha"]                 # the replicas stay bit-identical
        assert a["halves"] == 0 and a["state_dict_equal"], ns       # one process on DDP's two halves, bit for bit
        assert a["ns_last_step"] + b["ns_last_step"] == a["matrices"] == 14
        assert 0 < a["ns_last_step"] < 14
        # AdamW's part is the one-process gap between the whole batch and its halves (no DDP involved).
        assert a["plain"] == a["plain_halves"]
    # float32 Newton-Schulz: the Muon-held weights are one process on the whole batch to 1e-6 (measured 3e-8);
    # bf16 amplifies the batch's round-off past that (torch's own Muon in one process does the same).
    assert r0["train"]["float32"]["plain_muon"] <= 1e-6 < r0["train"]["bfloat16"]["plain_muon"]


def test_buckets_take_each_ranks_items_in_order_up_to_the_segment():
    owner = [0, 1, 0, 0, 1]
    sizes = [5, 3, 2, 9, 1]
    assert buckets(sizes, owner, 2, 7) == [[[0, 2], [1, 4]], [[3], []]]
    assert buckets(sizes, owner, 2, 1) == [[[0], [1]], [[2], [4]], [[3], []]]   # at least one item a rank


def test_replicas_are_checked():
    with pytest.raises(ValueError, match="positive int"):
        Replicas(0)
    with pytest.raises(ValueError, match="torch.distributed initialised"):
        ReplicatedMuon([torch.nn.Parameter(torch.zeros(3, 3))], replicas=Replicas(2))
    p = torch.nn.Parameter(torch.randn(4, 3))
    p.grad = torch.randn(4, 3)
    ref = torch.nn.Parameter(p.detach().clone())
    ref.grad = p.grad.clone()
    one = ReplicatedMuon([p], replicas=Replicas(1), adjust_lr_fn="match_rms_adamw", torch_state=True)
    torch_muon = torch.optim.Muon([ref], adjust_lr_fn="match_rms_adamw")
    one.step()
    torch_muon.step()
    assert torch.equal(p, ref) and one.state_dict()["param_groups"] == torch_muon.state_dict()["param_groups"]
