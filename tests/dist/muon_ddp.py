"""Muon under DDP with each Newton-Schulz on one rank (alphadecay.muon_ddp), 2 gloo ranks, CPU.

``same_gradients``: ReplicatedMuon against the unsplit optimizer of the same path (torch.optim.Muon on float32
weights with bf16 Newton-Schulz; ShardedMuon with float32 Newton-Schulz, and on bf16 weights) with the same
gradients on both ranks: the weights, momentum and state_dict bit for bit; each rank orthogonalised only its
owned matrices, in few all-gathers. ``train``: a tiny LLaMA under DDP (each rank half of each batch), the loop's
build_optimizer with ``Replicas(2)``, against one process on the whole batch and on the two halves.

torchrun --nproc_per_node=2 tests/dist/muon_ddp.py OUT_DIR
"""
import copy
import hashlib
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import alphadecay  # noqa: E402
from alphadecay import muon_fsdp  # noqa: E402
from alphadecay.muon_ddp import Replicas, ReplicatedMuon, gather_bytes  # noqa: E402
from alphadecay.muon_fsdp import ShardedMuon  # noqa: E402
from alphadecay.training.optim import build_optimizer, build_scheduler  # noqa: E402
from conftest import tiny_llama  # noqa: E402

CPU = torch.device("cpu")
GATHER = "all_gather_single" if hasattr(dist, "all_gather_single") else "all_gather_into_tensor"
SHAPES = [(172, 64), (64, 172), (64, 64), (5, 7), (3, 9), (64, 64), (40, 24)]


class Counting:
    """Counts Newton-Schulz calls, all-gathers and the bytes each rank passes in to them while active."""

    def __enter__(self):
        self.ns, self.gathers, self.bytes = 0, 0, 0
        self._ns, self._gather = muon_fsdp.newton_schulz, getattr(dist, GATHER)

        def ns(*a, **k):
            self.ns += 1
            return self._ns(*a, **k)

        def gather(out, send, **k):
            self.gathers += 1
            self.bytes += send.numel() * send.element_size()
            return self._gather(out, send, **k)
        muon_fsdp.newton_schulz = ns
        setattr(dist, GATHER, gather)
        return self

    def __exit__(self, *exc):
        muon_fsdp.newton_schulz = self._ns
        setattr(dist, GATHER, self._gather)


def _groups(ps):
    return [{"params": ps[:3], "lr": 1e-2, "weight_decay": 0.1},
            {"params": ps[3:], "lr": 3e-3, "weight_decay": 0.5, "nesterov": False}]


def _same_state(a: dict, b: dict) -> bool:
    if a["param_groups"] != b["param_groups"] or a["state"].keys() != b["state"].keys():
        return False
    return all(a["state"][k].keys() == b["state"][k].keys()
               and all(torch.equal(a["state"][k][n], b["state"][k][n]) for n in a["state"][k])
               for k in a["state"])


def same_gradients(ns_dtype, weight_dtype, bucket_bytes, steps=3):
    torch.manual_seed(5)
    fulls = [torch.randn(s).to(weight_dtype) for s in SHAPES]
    ref_params = [torch.nn.Parameter(f.clone()) for f in fulls]
    params = [torch.nn.Parameter(f.clone()) for f in fulls]
    options = {"adjust_lr_fn": "match_rms_adamw"}
    torch_path = ns_dtype == "bfloat16" and weight_dtype == torch.float32
    ref = (torch.optim.Muon(_groups(ref_params), **options) if torch_path else
           ShardedMuon(_groups(ref_params), ns_dtype=ns_dtype, **options))
    opt = ReplicatedMuon(_groups(params), replicas=Replicas(dist.get_world_size()), ns_dtype=ns_dtype,
                         torch_state=torch_path, bucket_bytes=bucket_bytes, **options)
    g = torch.Generator().manual_seed(7)   # the same gradients on both ranks, as after DDP's all-reduce
    with Counting() as count:
        for _ in range(steps):
            for p, q in zip(ref_params, params):
                p.grad = torch.randn(p.shape, generator=g).to(weight_dtype)
                q.grad = p.grad.clone()
            ref.step()
            before = (count.ns, count.gathers, count.bytes)
            opt.step()
            per_step = (count.ns - before[0], count.gathers - before[1], count.bytes - before[2])
            count.ns, count.gathers, count.bytes = before   # the reference's calls are not this rank's share
    return {"equal": [torch.equal(p, q) for p, q in zip(ref_params, params)],
            "moved": [not torch.equal(p, f) for p, f in zip(params, fulls)],
            "state_dict_equal": _same_state(ref.state_dict(), opt.state_dict()),
            "ns_dtype_in_state": any("ns_dtype" in g for g in opt.state_dict()["param_groups"]),
            "ns_per_step": per_step[0], "gathers_per_step": per_step[1], "gathered_bytes_per_step": per_step[2],
            "predicted_bytes": gather_bytes(SHAPES, dist.get_world_size(), 2 if ns_dtype == "bfloat16" else 4,
                                            bucket_bytes),
            "weights_sha": hashlib.sha256(b"".join(p.detach().float().numpy().tobytes() for p in params)).hexdigest()}


def _setup(model, ns_dtype, replicas=None):
    policy = alphadecay.build_strategy("alphadecay", model, 0.1, update_every=2, eigs_thresh=1)
    opt = build_optimizer("muon", policy.param_groups(), lr=3e-3, device=CPU, model=model,
                          muon={"muon_lr": 6e-3, "ns_dtype": ns_dtype}, replicas=replicas)
    policy.initial_assignment(opt)
    return policy, opt, build_scheduler(opt, "cosine", total=8, warmup=2, min_ratio=0.1)


def train(ns_dtype, steps=4):
    """DDP with the split Muon, one process on the two halves (DDP's sum of means, in one backward each), one
    process on the whole batch."""
    rank, world = dist.get_rank(), dist.get_world_size()
    plain = tiny_llama()
    halves, replicated = copy.deepcopy(plain), copy.deepcopy(plain)
    ddp = DDP(replicated)
    runs = {"ddp": (replicated, *_setup(replicated, ns_dtype, Replicas(world))),
            "halves": (halves, *_setup(halves, ns_dtype)), "plain": (plain, *_setup(plain, ns_dtype))}
    assert type(runs["ddp"][2].muon) is ReplicatedMuon
    with Counting() as count:
        for t in range(steps):
            ids = torch.randint(0, 500, (2 * world, 16), generator=torch.Generator().manual_seed(t))
            ddp(input_ids=ids.chunk(world)[rank], labels=ids.chunk(world)[rank]).loss.backward()
            (sum(halves(input_ids=x, labels=x).loss for x in ids.chunk(world)) / world).backward()
            plain(input_ids=ids, labels=ids).loss.backward()
            for key, (model, policy, opt, sched) in runs.items():
                before = count.ns
                policy.step(opt, t)
                opt.step()
                sched.step()
                opt.zero_grad()
                if key == "ddp":
                    ns = count.ns - before
                else:
                    count.ns = before

    def gap(a, b, muon_only=False):
        (ma, _, oa, _), (mb, _, ob, _) = runs[a], runs[b]
        held = {id(p) for g in oa.muon.param_groups for p in g["params"]}
        return max((p - q).abs().max().item() for p, q in zip(ma.parameters(), mb.parameters())
                   if not muon_only or id(p) in held)

    ours, theirs = runs["ddp"][2].state_dict(), runs["halves"][2].state_dict()
    return {"halves": gap("ddp", "halves"), "plain_muon": gap("ddp", "plain", True), "plain": gap("ddp", "plain"),
            "plain_halves": gap("halves", "plain"),
            "state_dict_equal": _same_state(ours["muon"], theirs["muon"]) and _same_state(ours["adamw"],
                                                                                          theirs["adamw"]),
            "ns_last_step": ns, "matrices": sum(len(g["params"]) for g in runs["ddp"][2].muon.param_groups),
            "weights_sha": hashlib.sha256(b"".join(p.detach().numpy().tobytes()
                                                   for p in replicated.parameters())).hexdigest()}


def main(out):
    dist.init_process_group("gloo")
    result = {"same_gradients": {f"{ns}/{str(wd).split('.')[-1]}/{b}": same_gradients(ns, wd, b)
                                 for ns, wd in (("bfloat16", torch.float32), ("float32", torch.float32),
                                                ("bfloat16", torch.bfloat16))
                                 for b in (1 << 20, 4096)},
              "train": {ns: train(ns) for ns in ("float32", "bfloat16")}}
    with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
