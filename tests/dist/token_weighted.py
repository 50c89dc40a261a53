"""Under torchrun: this rank's half of 8 padded sequences through the loop's accumulate_gradients (DDP) at
every split of its 4 sequences into micro-batches; writes the gradients and the agreed loss per split."""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), os.path.dirname(HERE)]
from alphadecay.training.loop import accumulate_gradients, agree_across_ranks  # noqa: E402
from alphadecay.training.loss import NextTokenLoss  # noqa: E402
from alphadecay.training.parallel.wrap import parallelize  # noqa: E402
from alphadecay.training.parallel.runtime import setup, teardown  # noqa: E402
from conftest import tiny_llama  # noqa: E402
from test_loss import UNEVEN_LENGTHS, padded_batch  # noqa: E402

out_dir = sys.argv[1]
rt = setup("cpu")
ids, mask = padded_batch(UNEVEN_LENGTHS)
mine = slice(4 * rt.rank, 4 * rt.rank + 4)
results = {}
for batch_size in (1, 2, 4):
    model = tiny_llama()
    loss_fn = NextTokenLoss(model)
    net = parallelize(loss_fn, world_size=rt.world_size, device=rt.device)
    rows = range(mine.start, mine.stop)
    micro = [loss_fn.inputs(ids[i:i + batch_size], mask[i:i + batch_size], rt.device)
             for i in rows[::batch_size]]
    loss_sum, learned = accumulate_gradients(net, micro, rt)
    loss, _, _ = agree_across_ranks(loss_sum, 0, False, rt)
    results[f"{batch_size}x{len(micro)}"] = {"loss": loss, "learned": int(learned),
                                              "grads": {k: p.grad.clone() for k, p in model.named_parameters()}}
torch.save(results, os.path.join(out_dir, f"rank{rt.rank}.pt"))
teardown()
