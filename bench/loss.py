"""Where the training step's speed-up comes from: the loss path, one change at a time.

    python bench/loss.py                                      # llama_20m, 8 x 256 real C4 rows, CPU
    python bench/loss.py --max_length 128 --rounds 8
    python bench/loss.py --device cuda --dtype bfloat16 --model_config configs/llama_60m.json --batch_size 64

Forward + backward of one micro-batch, same model and the same real batches (``TrainBatches`` on the local
C4 sample, right-padded rows as the loop gets them), four ways:

  labels           ``model(input_ids, attention_mask, labels).loss``: transformers' loss, as the release
  no_mask          the same without the attention mask (right padding: causal attention never looks ahead)
  no_mask_select   also the output layer and softmax on predicting positions only (pads skipped), plain
                   ``F.cross_entropy`` on those logits
  ours             ``NextTokenLoss``: the above with the chunked fused linear cross-entropy (the loop's path)

The variants take turns batch by batch for ``--rounds`` rounds (after one warm-up round), so machine load
hits all alike; each prints its best and median seconds, non-pad tokens/s, ``speedup`` (best time of labels /
best time of the variant) and, on CUDA, peak memory. Loss values are printed to show all four agree.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, Report, data_paths, machine, median, timed  # noqa: E402

from alphadecay.training.data.batches import TrainBatches, load_tokenizer  # noqa: E402
from alphadecay.training.loss import NextTokenLoss, prediction_targets  # noqa: E402
from alphadecay.training.model import build_model, vocab_guard  # noqa: E402
from alphadecay.training.parallel.runtime import pick_device  # noqa: E402


def variants(model, device):
    loss_fn = NextTokenLoss(model)
    head = model.get_output_embeddings()

    def labels(ids, mask):
        ids, mask = ids.to(device), mask.to(device)
        return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss

    def no_mask(ids, mask):
        ids, mask = ids.to(device), mask.to(device)
        return model(input_ids=ids, labels=ids.masked_fill(mask == 0, -100)).loss

    def no_mask_select(ids, mask):
        positions, targets, _ = prediction_targets(ids, mask)
        hidden = model.base_model(input_ids=ids.to(device)).last_hidden_state
        hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, positions.to(device))
        return F.cross_entropy(head(hidden).float(), targets.to(device))

    def ours(ids, mask):
        return loss_fn(**loss_fn.inputs(ids, mask, device))

    return {"labels": labels, "no_mask": no_mask, "no_mask_select": no_mask_select, "ours": ours}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_config", default=str(REPO / "configs" / "llama_20m.json"))
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_length", type=int, default=256, help="the paper's sequence length by default")
    p.add_argument("--batches", type=int, default=4, help="distinct real batches, cycled")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds; each variant runs every batch per round")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)

    device = pick_device(args.device, 0)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    paths = data_paths()
    tokenizer = load_tokenizer(paths["tokenizer"], args.max_length)
    model = build_model(args.model_config, dtype=dtype, device=device, seed=0)
    guard = vocab_guard(model, tokenizer)
    rows = iter(TrainBatches(paths["train"], tokenizer, batch_size=args.batch_size, max_length=args.max_length))
    batches = [(guard(b["input_ids"]), b["attention_mask"]) for b in (next(rows) for _ in range(args.batches))]
    runs = variants(model, device)
    times = {name: [] for name in runs}
    losses = {name: [] for name in runs}
    peak = {}

    def step(name, ids, mask):
        model.zero_grad(set_to_none=True)
        loss = runs[name](ids, mask)
        loss.backward()
        return float(loss.detach())

    for round_ in range(args.rounds + 1):
        for ids, mask in batches:
            for name in runs:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds, loss = timed(lambda: step(name, ids, mask), device)
                if device.type == "cuda":
                    peak[name] = max(peak.get(name, 0), torch.cuda.max_memory_allocated(device))
                if round_:      # round 0 warms up
                    times[name].append(seconds)
                    losses[name].append(loss)

    tokens = sum(int(mask.sum()) for _, mask in batches) / len(batches)
    report = Report()
    base = min(times["labels"])
    for name in runs:
        row = {"bench": "loss", "variant": name, "model": os.path.splitext(os.path.basename(args.model_config))[0],
               "device": device.type, "dtype": str(dtype).removeprefix("torch."), "batch_size": args.batch_size,
               "max_length": args.max_length, "nonpad_fraction": round(tokens / (args.batch_size * args.max_length), 3),
               "best_s": round(min(times[name]), 4), "median_s": round(median(times[name]), 4),
               "tokens_per_s": round(tokens / min(times[name]), 1), "speedup": round(base / min(times[name]), 3),
               "mean_loss": round(sum(losses[name]) / len(losses[name]), 5)}
        if name in peak:
            row["peak_memory_gib"] = round(peak[name] / 2 ** 30, 3)
        report.emit({**row, **machine(device)})
    report.save(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
