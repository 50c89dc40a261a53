"""HSDP (--fsdp --dp_replicate 2) on 4 gloo ranks, in one process group: the meta start's shards equal the
unsharded build's rows bit for bit, and the training loop runs several times in-process (its own process-group
teardown skipped) so that one launch holds every run the test compares.

torchrun --nproc_per_node=4 tests/dist/hsdp.py OUT_DIR DATA_DIR
Writes OUT_DIR/rank<r>.json (the meta start's checks and the gradient norms), and one run folder per run:
OUT_DIR/<run>/ for fsdp4 (1 x 4) and hsdp (2 x 2), AlphaDecay every 3 updates, checkpoints at 2 and 4;
hsdp-resumed (hsdp's model_2 continued to 4, across the reassignment at 3); muon-fsdp4 and muon-hsdp (Muon,
float32 Newton-Schulz, 2 updates).
"""
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]
import alphadecay.training.loop as loop  # noqa: E402
from alphadecay.distributed import is_sharded, local_part, squared_norms  # noqa: E402
from alphadecay.training.loss import NextTokenLoss  # noqa: E402
from alphadecay.training.model import build_model, build_model_on_meta  # noqa: E402
from alphadecay.training.parallel.meta_init import shard_rows  # noqa: E402
from alphadecay.training.parallel.wrap import parallelize  # noqa: E402
from trainutil import data_flags, tiny_run_flags  # noqa: E402

CPU = torch.device("cpu")
CONFIG = str(HERE.parents[1] / "configs" / "llama_9m.json")


def meta_start(rank: int) -> dict:
    reference = build_model(CONFIG, dtype=torch.float32, device=CPU, seed=7)
    model, deferred = build_model_on_meta(CONFIG, dtype=torch.float32, seed=7)
    loss_fn = NextTokenLoss(model)
    net = parallelize(loss_fn, world_size=4, device=CPU, fsdp=True, dp_replicate=2)
    deferred.materialize(loss_fn, model, CPU)
    ref = reference.state_dict()
    weight = model.model.layers[0].self_attn.q_proj.weight
    # Gradients of one backward, summed per tensor over the shards only (squared_norms on the 2-D mesh).
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(rank))
    loss = net.forward(**net.loss.inputs(ids, torch.ones_like(ids), CPU))
    # between forward and backward: which blocks stayed gathered (torchtitan's reshard choice: the last one)
    gathered = [not is_sharded(layer.self_attn.q_proj.weight) for layer in model.model.layers]
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    whole = [g.full_tensor().double().square().sum() for g in grads]
    return {"differ": [k for k, t in model.state_dict().items()
                       if not torch.equal(local_part(t), shard_rows(ref[k], t) if is_sharded(t) else ref[k])],
            "placements": [str(p) for p in weight.placements], "mesh": list(weight.device_mesh.shape),
            "mesh_dims": list(weight.device_mesh.mesh_dim_names),
            "gathered_after_forward": gathered, "local_rows": local_part(weight).shape[0], "rows": weight.shape[0],
            "norms": squared_norms(grads).tolist(), "full_norms": torch.stack(whole).tolist()}


def train(argv) -> None:
    dist.barrier()
    assert loop.main(argv) == 0


def main(out: str, data: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = meta_start(rank)
    loop.process_group = contextlib.nullcontext   # the group outlives each run; destroyed below
    out = Path(out)

    def flags(run, *extra, **over):
        return tiny_run_flags(out / run, **{"steps": 4, "save_every": 2, "eval_every": 0, "target_eval_tokens": 100,
                                            "strategy": "alphadecay", "weight_decay": 0.1,
                                            **({"unbalancedWD_every": 3} if over.get("strategy") != "uniform" else {}),
                                            **over}) + data_flags(Path(data)) + list(extra)

    train(flags("fsdp4", "--fsdp"))
    train(flags("hsdp", "--fsdp", "--dp_replicate", "2"))
    if rank == 0:
        (out / "hsdp-resumed").mkdir()
        shutil.copytree(out / "hsdp" / "model_2", out / "hsdp-resumed" / "model_2")
    train(flags("hsdp-resumed", "--fsdp", "--dp_replicate", "2", "--continue_from", "latest"))
    muon = dict(steps=2, save_every=1000, strategy="uniform", optimizer="muon", muon_ns_dtype="float32")
    train(flags("muon-fsdp4", "--fsdp", **muon))
    train(flags("muon-hsdp", "--fsdp", "--dp_replicate", "2", **muon))
    with open(out / f"rank{rank}.json", "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
