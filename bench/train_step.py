"""Training throughput: our loop against the release's loop, and what AlphaDecay costs over Uniform.

    python bench/train_step.py                                   # llama_20m, 8 x 128 tokens, accumulation 2, CPU
    python bench/train_step.py --updates 10 --repeat 3 --direct_intervals 1,10
    python bench/train_step.py --model_config configs/llama_130m.json --batch_size 32 --max_length 256 --dtype bfloat16
    torchrun --standalone --nproc_per_node=2 bench/train_step.py  # DDP: all-reduce every micro-step vs no_sync

Ours is the real thing: ``alphadecay.training.loop.train`` run in-process (Uniform, ``--eval_every 0``, one
evaluation batch) on the local C4 sample. Its per-update ``throughput_tokens`` records in metrics.jsonl time one
update from the top of the loop to the end of the optimizer and scheduler step: waiting for data, the
micro-steps, clipping, the one host sync, the strategy's step. Start-up (model, tokenizer, workers, the initial
ESD) and the final save and evaluation are outside those records, and the first ``--warmup`` updates are dropped
(worker start, the shuffle buffer filling, the optimizer state being allocated).

The baseline is the release's loop written out here (``baseline_run``): documents tokenized one by one and
stacked (``bench/common.py: ReleaseBatches``) in ``--workers`` DataLoader workers, labels cloned and pad
positions set to -100, ``(input_ids != pad).sum().item()`` on every micro-step and ``loss.item()`` after the
step, DDP without ``no_sync`` when run under torchrun, ``torch.optim.Adam`` with torch's defaults (on CPU that
resolves to the per-tensor for-loop; on CUDA to foreach). Both use the same model config, initialisation,
dtype, batch, accumulation, device and tokenizer, and the same vocabulary guard (ids the model has no row for
are mapped to <unk>; the release had none, it is too cheap to matter). The two sides read the same files but in
their own shuffled order, so their batches hold slightly different numbers of non-pad tokens: the figures
report non-pad tokens per second (``tokens``) and also the time per update (``update_s``), which does not
depend on padding.

Runs alternate (baseline, ours, AlphaDecay at each direct interval) ``--repeat`` times so that background load
hurts every side alike; each side keeps its best run (its lowest mean seconds per update).

AlphaDecay overhead. At interval T the cost per update is one ESD pass (``strategy.reassign``, the exact call
the loop makes) divided by T, plus what per-module parameter groups cost the optimizer on every update
(AlphaDecay's ~30 groups against Uniform's one). Both are timed on their own, interleaved, and reported as
``(esd_s / T + groups_extra_s) / update_s`` with Uniform's ``update_s`` from the runs above. For the intervals
in ``--direct_intervals`` that fit inside ``--updates`` the real loop is also run with AlphaDecay and compared
with the Uniform runs directly; that is only resolvable when the overhead exceeds the run-to-run noise, so
interval 500 can only be reported amortised.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, Report, data_paths, machine, median, note, release_loader, timed  # noqa: E402

from alphadecay.training.args import parse_args  # noqa: E402
from alphadecay.training.data import load_tokenizer  # noqa: E402
from alphadecay.training.model import build_model, vocab_guard  # noqa: E402
from alphadecay.training.optim import build_optimizer, build_scheduler, strategy_from_args  # noqa: E402
from alphadecay.training.runtime import setup, world_size_from_env  # noqa: E402

AMORTISED_INTERVALS = (500, 100, 10, 1)


def loop_argv(args, paths, save_dir, strategy="uniform", interval=500, updates=None) -> list[str]:
    """The training command line both sides are built from (ours runs it; the baseline borrows its settings)."""
    argv = ["--model_config", args.model_config, "--batch_size", str(args.batch_size),
            "--max_length", str(args.max_length), "--gradient_accumulation", str(args.accum),
            "--num_training_steps", str(updates or args.warmup + args.updates), "--warmup_steps", "1",
            "--lr", "1e-3", "--weight_decay", "1e-5", "--strategy", strategy, "--unbalancedWD_every", str(interval),
            "--eval_every", "0", "--target_eval_tokens", "1", "--save_every", str(10 ** 9), "--log_every", "1",
            "--workers", str(args.workers), "--save_dir", save_dir, "--dataset_path", paths["train"],
            "--eval_dataset_path", paths["eval"], "--tokenizer", paths["tokenizer"], "--device", args.device,
            "--dtype", args.dtype, "--no_wandb"]
    if strategy == "alphadecay":
        argv.append("--alpha_positively_with_WD")
    if args.compile:
        argv.append("--compile")
    return argv


def ours_run(args, paths, save_dir, strategy="uniform", interval=500) -> list[tuple[float, float]] | None:
    """(non-pad tokens, seconds) of every update of one in-process ``train()`` run (rank 0; None elsewhere)."""
    from alphadecay.training import loop

    argv = loop_argv(args, paths, save_dir, strategy, interval)
    # train() destroys the process group when it ends, and a second init_process_group in the same torchrun
    # job hangs: keep the bench's one group alive for all its runs.
    with mock.patch.object(loop, "teardown", lambda: None):
        result = loop.train(parse_args(argv, world_size=world_size_from_env()))
    del result
    gc.collect()
    metrics = Path(save_dir) / "metrics.jsonl"
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return None  # rank 0 alone writes metrics.jsonl (and removes the folder)
    out, seen = [], 0
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if rec["type"] == "train":
            tokens = rec["tokens_seen"] - seen
            seen = rec["tokens_seen"]
            out.append((tokens, tokens / rec["throughput_tokens"]))
    shutil.rmtree(save_dir, ignore_errors=True)
    return out


def baseline_run(args, paths, rt, dtype, tokenizer) -> list[tuple[float, float]]:
    """The release's training loop (see the module docstring), (non-pad tokens, seconds) per update."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    settings = parse_args(loop_argv(args, paths, tempfile.gettempdir()), world_size=rt.world_size)
    model = build_model(args.model_config, dtype=dtype, device=rt.device, seed=settings.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = build_scheduler(settings, optimizer)
    net = model
    if rt.distributed:
        net = DDP(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None, broadcast_buffers=False)
    guard, pad, accum = vocab_guard(model, tokenizer), tokenizer.pad_token_id, args.accum
    batches = release_loader(paths["train"], tokenizer, batch_size=args.batch_size, max_length=args.max_length,
                             workers=args.workers, rank=rt.rank, world_size=rt.world_size)
    out, tokens_seen = [], 0
    for _ in range(settings.num_training_steps):
        start, before = time.perf_counter(), tokens_seen
        for _ in range(accum):
            batch = next(batches)
            batch["input_ids"] = guard(batch["input_ids"])
            batch = {k: v.to(rt.device) for k, v in batch.items()}
            labels = batch["input_ids"].clone()
            labels[labels == pad] = -100
            tokens_seen += (batch["input_ids"] != pad).sum().item() * rt.world_size
            loss = net(**batch, labels=labels).loss
            (loss / accum).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        loss.item()  # the release logs the loss of every update: a host sync
        out.append((tokens_seen - before, time.perf_counter() - start))
    del net, model, optimizer, batches
    gc.collect()
    return out


def adam_kind(optimizer: torch.optim.Optimizer) -> str:
    """What torch will actually run for this optimizer: fused, foreach or the per-tensor for-loop."""
    d = optimizer.defaults
    if d.get("fused"):
        return "fused"
    if d.get("foreach") is None:
        from torch.optim.optimizer import _default_to_fused_or_foreach
        params = [p for g in optimizer.param_groups for p in g["params"]]
        fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
        return "fused" if fused else "foreach" if foreach else "for-loop"
    return "foreach" if d["foreach"] else "for-loop"


def esd_and_group_costs(args, paths, rt, dtype, repeat: int) -> dict:
    """Seconds of one ESD reassignment, and of an optimizer step with AlphaDecay's groups beyond Uniform's one."""
    ad = parse_args(loop_argv(args, paths, tempfile.gettempdir(), "alphadecay", 1), world_size=rt.world_size)
    uni = parse_args(loop_argv(args, paths, tempfile.gettempdir(), "uniform"), world_size=rt.world_size)
    model = build_model(args.model_config, dtype=dtype, device=rt.device, seed=ad.seed)
    strategy = strategy_from_args(ad, model)
    opt_ad = build_optimizer(ad, strategy.param_groups(), rt.device)
    opt_uni = build_optimizer(uni, strategy_from_args(uni, model).param_groups(), rt.device)
    g = torch.Generator(device=rt.device).manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, device=rt.device, dtype=p.dtype) * 1e-3
    for _ in range(2):  # allocate both optimizers' state first
        opt_ad.step()
        opt_uni.step()
    esd, extra, ad_s, uni_s = [], [], [], []
    for i in range(repeat):
        esd.append(timed(lambda: strategy.reassign(opt_ad, i + 1), rt.device)[0])
        a = timed(opt_ad.step, rt.device)[0]
        u = timed(opt_uni.step, rt.device)[0]
        ad_s.append(a)
        uni_s.append(u)
        extra.append(a - u)
    costs = {"esd_s": median(esd), "groups_extra_s": median(extra), "optimizer_step_alphadecay_s": median(ad_s),
             "optimizer_step_uniform_s": median(uni_s), "groups": len(opt_ad.param_groups),
             "optimizer": adam_kind(opt_ad)}
    del model, strategy, opt_ad, opt_uni
    gc.collect()
    return costs


def summary(runs: list[list[tuple[float, float]]], warmup: int) -> dict:
    """Best run (lowest mean seconds per update over the measured updates) and per-run figures."""
    per_run = []
    for run in runs:
        kept = run[warmup:]
        tokens, seconds = sum(t for t, _ in kept), sum(s for _, s in kept)
        per_run.append({"tokens_per_s": tokens / seconds, "update_s": seconds / len(kept),
                        "tokens_per_update": tokens / len(kept)})
    best = min(per_run, key=lambda r: r["update_s"])
    return {**best, "runs": per_run}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_config", default=str(REPO / "configs" / "llama_20m.json"))
    p.add_argument("--batch_size", type=int, default=8, help="sequences per micro-step (per rank)")
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--accum", type=int, default=2, help="micro-steps per update")
    p.add_argument("--updates", type=int, default=3, help="measured updates per run (after --warmup)")
    p.add_argument("--warmup", type=int, default=2,
                   help="updates dropped at the start of every run (the first two Adam steps are slow: state allocation)")
    p.add_argument("--repeat", type=int, default=2, help="alternating runs per side; the best is kept")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers, both sides")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="weights and compute; default bfloat16 on a bf16 GPU, float32 on CPU")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--compile", action="store_true", help="torch.compile our side (the release did not)")
    p.add_argument("--direct_intervals", default="1",
                   help="AlphaDecay intervals to also time in the real loop (those <= --updates); '' for none")
    p.add_argument("--esd_repeat", type=int, default=3, help="timings of the ESD pass and the optimizer step")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()

    paths = data_paths()
    rt = setup(args.device)
    args.device = str(rt.device)
    if args.dtype is None:
        args.dtype = "bfloat16" if rt.device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    direct = [int(x) for x in args.direct_intervals.split(",") if x.strip()]
    skipped = [i for i in direct if i > args.updates]
    direct = [i for i in direct if i <= args.updates]
    if skipped and rt.is_main:
        note(f"direct measurement skipped for intervals {skipped}: they need --updates >= the interval")
    report = Report(enabled=rt.is_main)
    tokenizer = load_tokenizer(paths["tokenizer"], args.max_length)
    # Ranks of one torchrun job share the parent process: one scratch folder for all of them.
    scratch = Path(tempfile.gettempdir()) / f"alphadecay-bench-{os.getppid() if rt.distributed else os.getpid()}"

    base_runs, our_runs, ad_runs = [], [], {i: [] for i in direct}
    for r in range(args.repeat):
        base_runs.append(baseline_run(args, paths, rt, dtype, tokenizer))
        our_runs.append(ours_run(args, paths, str(scratch / f"ours-{r}")))
        for interval in direct:
            ad_runs[interval].append(ours_run(args, paths, str(scratch / f"ad{interval}-{r}"), "alphadecay", interval))
        if rt.is_main:
            note(f"repeat {r + 1}/{args.repeat}: baseline {summary([base_runs[-1]], args.warmup)['update_s']:.3f} "
                 f"s/update, ours {summary([our_runs[-1]], args.warmup)['update_s']:.3f} s/update")
    model_name = Path(args.model_config).stem
    costs = esd_and_group_costs(args, paths, rt, dtype, args.esd_repeat)
    common = {"model": model_name, "device": str(rt.device), "dtype": args.dtype, "world_size": rt.world_size,
              "batch_size": args.batch_size, "max_length": args.max_length, "accum": args.accum}
    if rt.is_main:
        base, ours = summary(base_runs, args.warmup), summary(our_runs, args.warmup)
        probe = torch.optim.Adam([torch.zeros(1, device=rt.device)])
        report.emit({"bench": "train_step", **common, "workers": args.workers, "updates": args.updates,
                     "repeat": args.repeat, "tokens": "non-pad",
                     "baseline_tokens_per_s": round(base["tokens_per_s"], 1),
                     "ours_tokens_per_s": round(ours["tokens_per_s"], 1),
                     "speedup": round(ours["tokens_per_s"] / base["tokens_per_s"], 3),
                     "baseline_update_s": round(base["update_s"], 4), "ours_update_s": round(ours["update_s"], 4),
                     "update_time_speedup": round(base["update_s"] / ours["update_s"], 3),
                     "speedup_per_repeat": [round(o["tokens_per_s"] / b["tokens_per_s"], 3)
                                            for b, o in zip(base["runs"], ours["runs"])],
                     "baseline_adam": adam_kind(probe), "ours_adam": costs["optimizer"],
                     **machine(rt.device)})
        update_s = ours["update_s"]
        for interval in AMORTISED_INTERVALS:
            per_update = costs["esd_s"] / interval + costs["groups_extra_s"]
            report.emit({"bench": "alphadecay_overhead", **common, "interval": interval, "method": "amortised",
                         "overhead_pct": round(100 * per_update / update_s, 3),
                         "esd_only_pct": round(100 * costs["esd_s"] / (interval * update_s), 3),
                         "esd_s": round(costs["esd_s"], 4), "groups_extra_s": round(costs["groups_extra_s"], 4),
                         "groups": costs["groups"], "uniform_update_s": round(update_s, 4)})
        for interval in direct:
            ad = summary(ad_runs[interval], args.warmup)
            predicted = costs["esd_s"] / interval + costs["groups_extra_s"]
            report.emit({"bench": "alphadecay_overhead", **common, "interval": interval, "method": "direct",
                         "overhead_pct": round(100 * (ad["update_s"] / update_s - 1), 3),
                         "predicted_pct": round(100 * predicted / update_s, 3),
                         "alphadecay_update_s": round(ad["update_s"], 4), "uniform_update_s": round(update_s, 4),
                         "updates": args.updates, "repeat": args.repeat})
        report.save(args.json)
    shutil.rmtree(scratch, ignore_errors=True)
    if rt.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
