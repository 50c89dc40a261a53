"""FSDP2 from the meta device (2 ranks, gloo): each rank's shards equal the unsharded build's rows bit for bit,
the Hugging Face folder is written file by file, and a resume reads only each rank's rows.

torchrun --nproc_per_node=2 tests/dist/fsdp_meta.py OUT_DIR CONFIG.json [CONFIG.json ...]
Writes OUT_DIR/<config stem>-rank<r>.json and OUT_DIR/<config stem>-saved/ (files of at most 64 KB).
"""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
import alphadecay.training.checkpointing.checkpoint as checkpoint  # noqa: E402
from alphadecay.distributed import is_sharded, local_part  # noqa: E402
from alphadecay.training.checkpointing.hf_shards import write_hf_shards  # noqa: E402
from alphadecay.training.loss import NextTokenLoss  # noqa: E402
from alphadecay.training.parallel.meta_init import shard_rows  # noqa: E402
from alphadecay.training.model import build_model, build_model_on_meta  # noqa: E402
from alphadecay.training.parallel.wrap import parallelize  # noqa: E402

CPU = torch.device("cpu")


def sharded(config, *, weights=True):
    model, deferred = build_model_on_meta(config, dtype=torch.float32, seed=7)
    loss_fn = NextTokenLoss(model)
    net = parallelize(loss_fn, world_size=2, device=CPU, fsdp=True)
    deferred.materialize(loss_fn, model, CPU, weights=weights)
    return model, net


def equal_to(model, reference) -> list[str]:
    """Names whose local piece differs from the reference's rows."""
    ref = reference.state_dict()
    return [k for k, t in model.state_dict().items()
            if not torch.equal(local_part(t), shard_rows(ref[k], t) if is_sharded(t) else ref[k])]


class CountingOpen:
    """safe_open, counting whole-tensor reads."""
    whole_reads = 0

    def __init__(self, *args, **kwargs):
        self.handle = real_open(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def get_tensor(self, key):
        CountingOpen.whole_reads += 1
        return self.handle.get_tensor(key)


real_open = checkpoint.safe_open


def main(out, configs):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for config in configs:
        stem = os.path.splitext(os.path.basename(config))[0]
        reference = build_model(config, dtype=torch.float32, device=CPU, seed=7)
        rng_after_reference = torch.get_rng_state()
        model, net = sharded(config)
        result = {"rng_equal": torch.equal(rng_after_reference, torch.get_rng_state()),
                  "all_sharded": all(is_sharded(p) for p in model.parameters()),
                  "differ": equal_to(model, reference),
                  "buffers_equal": all(torch.equal(b, dict(reference.named_buffers())[n])
                                       for n, b in model.named_buffers()),
                  "tied": model.get_output_embeddings().weight is model.get_input_embeddings().weight,
                  "reference_tied": reference.get_output_embeddings().weight is reference.get_input_embeddings().weight,
                  "local_elements": sum(local_part(p).numel() for p in model.parameters()),
                  "elements": sum(p.numel() for p in model.parameters())}
        ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(rank))
        mask = torch.ones_like(ids)
        torch.manual_seed(rank)   # the same dropout masks in both
        result["loss"] = net.forward(**net.loss.inputs(ids, mask, CPU)).item()
        torch.manual_seed(rank)
        result["reference_loss"] = NextTokenLoss(reference)(**net.loss.inputs(ids, mask, CPU)).item()

        saved = os.path.join(out, f"{stem}-saved")
        error = write_hf_shards(model, saved, rank=rank, max_shard_bytes=64 << 10)
        result["save_error"] = None if error is None else str(error)
        dist.barrier()

        again, _ = sharded(config, weights=False)
        checkpoint.safe_open = CountingOpen
        try:
            checkpoint.load_model_weights(again, saved)
        finally:
            checkpoint.safe_open = real_open
        result["resumed_differ"] = equal_to(again, reference)
        result["whole_reads"] = CountingOpen.whole_reads
        with open(os.path.join(out, f"{stem}-rank{rank}.json"), "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
