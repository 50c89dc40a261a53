"""Training throughput: our loop against the release's loop, and what AlphaDecay costs over Uniform.

    python bench/train_step.py                                   # llama_20m, 8 x 128 tokens, accumulation 2, CPU
    python bench/train_step.py --updates 10 --direct_intervals 1,10
    python bench/train_step.py --model_config configs/llama_130m.json --batch_size 32 --max_length 256 --dtype bfloat16
    torchrun --standalone --nproc_per_node=2 bench/train_step.py  # DDP: all-reduce every micro-step vs no_sync

Sides. Each side is a process of its own, started together; after its first update (start-up, run by all at
once) the sides take turns, one update at a time, in a fixed order (baseline, ours, AlphaDecay at each direct
interval), so that update k of every side runs within seconds of update k of the others. Load from other jobs
only ever adds time, so each side is represented by its best (fastest) measured update (``speedup``); the median
over updates of the paired per-update ratio (``speedup_median_paired``), the ratio of run-long throughputs (all
measured tokens / all measured seconds, ``speedup_total``) and every per-update ratio are printed too. The first
``--warmup`` updates are dropped (worker start, the shuffle buffer filling, the first two Adam steps allocating
and first touching the optimizer state).

  ours      the real loop: ``alphadecay.training.loop.train`` (Uniform, ``--eval_every 0``, one evaluation
            batch at the end) on the local C4 sample with ``--workers`` DataLoader workers. Per update it logs
            ``throughput_tokens`` = non-pad tokens / seconds from the top of the update to the end of the
            optimizer and scheduler step: waiting for data, the micro-steps, clipping, the one host sync, the
            strategy's step. Those records are what is used; start-up and the final save and evaluation are
            outside them. The loop's progress bar is replaced by the turn-taking hook (its ``update`` comes
            after the timed part of every update), and on CUDA the hook waits for the GPU and adds that wait to
            the update, since the loop's timer stops before the asynchronous optimizer step has finished.
  baseline  the release's loop, written out in ``baseline_run``: documents tokenized one by one and stacked
            (``bench/common.py: ReleaseBatches``) in ``--workers`` workers, labels cloned with pad set to
            -100 and the model's own ``labels`` loss (attention mask passed), ``(input_ids != pad).sum().item()``
            every micro-step and ``loss.item()`` after the step, DDP without ``no_sync`` under torchrun,
            ``torch.optim.Adam`` with torch's defaults (on CPU that resolves to the per-tensor for-loop, on CUDA
            to foreach), no clipping (the release's default).
Both use the same model config, initialisation, dtype, batch, accumulation, device and tokenizer, and the same
vocabulary guard (ids the model has no row for map to <unk>; the release had none, it costs nothing). They read
the same files in their own shuffled orders, so batches hold slightly different numbers of non-pad tokens:
``tokens_per_s`` counts non-pad tokens, and ``update_s`` (seconds per update) is printed too.

AlphaDecay overhead. At interval T the cost per update is one ESD pass (``strategy.reassign``, the call the loop
makes) divided by T, plus what AlphaDecay's per-module parameter groups (about 30, against Uniform's one) cost
the optimizer on every update. Both are timed on their own, interleaved, and reported as
``(esd_s / T + groups_extra_s) / update_s`` (best of ``--esd_repeat`` timings each, and the Uniform side's best
``update_s``); ``esd_only_pct`` leaves the groups out. For the intervals in ``--direct_intervals`` that divide
``--updates`` the real loop also runs with AlphaDecay as a side of its own: overhead = the median, over windows
of T consecutive updates (each holds exactly one ESD pass), of its time / Uniform's time over the same updates,
minus 1 (``total_time_pct`` is the plain ratio of totals, ``best_update_pct`` compares best updates, meaningful
for T = 1). The direct figure is only as good as the machine is quiet; interval 500 can only be resolved
amortised, its cost being far below any run-to-run noise.

Under torchrun every rank starts its own sides; side i uses port MASTER_PORT + 1 + i for its process group.
On a GPU all sides stay resident at once: for large models pass ``--direct_intervals ''`` (two sides).
"""
from __future__ import annotations

import argparse
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
from common import REPO, Report, data_paths, machine, median, note, release_loader, sync, timed  # noqa: E402

from alphadecay.training.flags.args import parse_args  # noqa: E402
from alphadecay.training.data.batches import load_tokenizer  # noqa: E402
from alphadecay.training.model import build_model, vocab_guard  # noqa: E402
from alphadecay.training.optim import build_optimizer, build_scheduler, strategy_from_args  # noqa: E402
from alphadecay.training.parallel.runtime import pick_device, setup, teardown, world_size_from_env  # noqa: E402

AMORTISED_INTERVALS = (500, 100, 10, 1)


def loop_argv(args, paths, save_dir, strategy="uniform", interval=500) -> list[str]:
    """The training command line both sides are built from (ours runs it; the baseline borrows its settings)."""
    argv = ["--model_config", args.model_config, "--batch_size", str(args.batch_size),
            "--max_length", str(args.max_length), "--gradient_accumulation", str(args.accum),
            "--num_training_steps", str(args.warmup + args.updates), "--warmup_steps", "1",
            "--lr", "1e-3", "--weight_decay", "1e-5", "--strategy", strategy,
            "--eval_every", "0", "--target_eval_tokens", "1", "--save_every", str(10 ** 9), "--log_every", "1",
            "--workers", str(args.workers), "--save_dir", save_dir, "--dataset_path", paths["train"],
            "--eval_dataset_path", paths["eval"], "--tokenizer", paths["tokenizer"], "--device", args.device,
            "--dtype", args.dtype, "--no_wandb"]
    if strategy == "alphadecay":   # module-wise flags only with module-wise decay (features.NEEDS)
        argv += ["--alpha_positively_with_WD", "--unbalancedWD_every", str(interval)]
    if args.compile:
        argv.append("--compile")
    return argv


class Baton:
    """Called after every update: waits for the GPU, reports to the conductor, waits for the next turn."""

    def __init__(self, conn, device):
        self.conn, self.device, self.tails, self.count = conn, device, [], 0

    def __call__(self):
        start = time.perf_counter()
        sync(self.device)  # the GPU work this update queued and the loop's timer did not wait for
        self.tails.append(time.perf_counter() - start)
        self.count += 1
        self.conn.send(self.count)
        self.conn.recv()


class _BatonBar:
    """Stands in for the loop's progress bar, whose ``update`` is called once per update, after its timing."""

    def __init__(self, baton):
        self.baton = baton

    def update(self, n=1):
        self.baton()

    def set_postfix(self, *a, **k):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def ours_run(args, paths, save_dir, baton, strategy="uniform", interval=500) -> list[tuple[float, float]] | None:
    """(non-pad tokens, seconds) of every update of one ``train()`` run (rank 0; None elsewhere)."""
    from alphadecay.training import loop

    argv = loop_argv(args, paths, save_dir, strategy, interval)
    with mock.patch.object(loop, "progress_bar", lambda *a, **k: _BatonBar(baton)):
        loop.train(parse_args(argv, world_size=world_size_from_env()))
    if int(os.environ.get("RANK", "0")) != 0:
        return None  # rank 0 alone writes metrics.jsonl
    out, seen = [], 0
    for line in (Path(save_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["type"] == "train":
            tokens = rec["tokens_seen"] - seen
            seen = rec["tokens_seen"]
            out.append((tokens, tokens / rec["throughput_tokens"]))
    shutil.rmtree(save_dir, ignore_errors=True)
    return [(tokens, seconds + tail) for (tokens, seconds), tail in zip(out, baton.tails)]


def baseline_run(args, paths, baton) -> list[tuple[float, float]] | None:
    """The release's training loop (see the module docstring), (non-pad tokens, seconds) per update."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    rt = setup(args.device)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    settings = parse_args(loop_argv(args, paths, tempfile.gettempdir()), world_size=rt.world_size)
    tokenizer = load_tokenizer(paths["tokenizer"], args.max_length)
    model = build_model(args.model_config, dtype=dtype, device=rt.device, seed=settings.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = build_scheduler(optimizer, settings.scheduler, total=settings.num_training_steps,
                                warmup=settings.warmup_steps, min_ratio=settings.min_lr_ratio)
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
        baton()
    teardown()
    return [(tokens, seconds + tail) for (tokens, seconds), tail in zip(out, baton.tails)] if rt.is_main else None


def side_main(side: dict, args: argparse.Namespace, paths: dict, conn, result: str, env: dict) -> None:
    """Entry point of one side's process: run it, write its per-update figures to ``result`` (rank 0)."""
    sys.stdout = sys.stderr  # the conductor's stdout carries JSON lines only
    os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)  # each side hosts its own store on its own port
    os.environ.update(env)
    baton = Baton(conn, torch.device(args.device))
    if side["kind"] == "baseline":
        out = baseline_run(args, paths, baton)
    else:
        out = ours_run(args, paths, side["save_dir"], baton, side["strategy"], side["interval"])
    if out is not None:
        Path(result).write_text(json.dumps(out))


def _receive(proc, conn, name):
    while not conn.poll(0.5):
        if not proc.is_alive():
            raise RuntimeError(f"the {name} side stopped (exit code {proc.exitcode}); its error is above")
    return conn.recv()


def run_sides(sides: list[dict], args, paths, scratch: Path) -> dict[str, list]:
    """Run every side in its own process, one update at a time in turn; per-update figures by side name."""
    import multiprocessing as mp

    # fork saves every side its imports (seconds each); the conductor has run no torch work by then. CUDA
    # cannot be forked once initialised, so GPU sides are spawned.
    ctx = mp.get_context("spawn" if torch.device(args.device).type == "cuda" else "fork")
    port = int(os.environ.get("MASTER_PORT", "29500"))
    procs = []
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        for i, side in enumerate(sides):
            side = {**side, "save_dir": str(scratch / side["name"])}
            env = {"MASTER_PORT": str(port + 1 + i)} if world_size_from_env() > 1 else {}
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=side_main, args=(side, args, paths, child, str(scratch / f"{side['name']}.json"),
                                                       env), daemon=False)
            proc.start()
            procs.append((proc, parent, side["name"]))
        for proc, conn, name in procs:  # first update: start-up, all at once
            _receive(proc, conn, name)
        for _ in range(1, args.warmup + args.updates):
            for proc, conn, name in procs:
                conn.send("go")
                _receive(proc, conn, name)
        for proc, conn, name in procs:  # final save and evaluation: untimed, all at once
            conn.send("go")
        for proc, conn, name in procs:
            proc.join()
            if proc.exitcode != 0:
                raise RuntimeError(f"the {name} side failed (exit code {proc.exitcode}); its error is above")
    finally:
        for proc, _, _ in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join()
    results = {}
    for side in sides:
        path = scratch / f"{side['name']}.json"
        if path.exists():
            results[side["name"]] = [tuple(x) for x in json.loads(path.read_text())]
    return results


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
    scratch = tempfile.gettempdir()
    ad = parse_args(loop_argv(args, paths, scratch, "alphadecay", 1), world_size=rt.world_size)
    uni = parse_args(loop_argv(args, paths, scratch, "uniform"), world_size=rt.world_size)
    model = build_model(args.model_config, dtype=dtype, device=rt.device, seed=ad.seed)
    strategy = strategy_from_args(ad, model)
    opt_ad = build_optimizer(ad.optimizer, strategy.param_groups(), lr=ad.lr, device=rt.device)
    strategy.initial_assignment(opt_ad)
    opt_uni = build_optimizer(uni.optimizer, strategy_from_args(uni, model).param_groups(), lr=uni.lr,
                              device=rt.device)
    g = torch.Generator(device=rt.device).manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, device=rt.device, dtype=p.dtype) * 1e-3
    for _ in range(2):  # allocate and first-touch both optimizers' state
        opt_ad.step()
        opt_uni.step()
    esd, ad_s, uni_s = [], [], []
    for i in range(repeat):
        esd.append(timed(lambda: strategy.reassign(opt_ad, i + 1), rt.device)[0])
        order = [(opt_ad, ad_s), (opt_uni, uni_s)]
        for optimizer, times in order if i % 2 == 0 else order[::-1]:  # neither always runs first
            times.append(timed(optimizer.step, rt.device)[0])
    # Best of the repeats: load from other jobs only ever adds time.
    return {"esd_s": min(esd), "groups_extra_s": min(ad_s) - min(uni_s), "optimizer_step_alphadecay_s": min(ad_s),
            "optimizer_step_uniform_s": min(uni_s), "groups": len(opt_ad.param_groups),
            "optimizer": adam_kind(opt_ad)}


def window_ratios(side, reference, interval):
    """Time ratios over consecutive windows of ``interval`` updates, each holding exactly one ESD pass.

    The median of these resists an update slowed by another job on the machine, which a ratio of totals does not.
    """
    return [sum(side[i:i + interval]) / sum(reference[i:i + interval]) for i in range(0, len(side), interval)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_config", default=str(REPO / "configs" / "llama_20m.json"))
    p.add_argument("--batch_size", type=int, default=8, help="sequences per micro-step (per rank)")
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--accum", type=int, default=2, help="micro-steps per update")
    p.add_argument("--updates", type=int, default=8, help="measured updates per side (after --warmup)")
    p.add_argument("--warmup", type=int, default=2,
                   help="updates dropped at the start (start-up; the first two Adam steps allocate the state)")
    p.add_argument("--repeat", type=int, default=1, help="sessions of all sides; their updates are pooled")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers, both sides")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="weights and compute; default bfloat16 on a bf16 GPU, float32 on CPU")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--compile", action="store_true", help="torch.compile our side (the release did not)")
    p.add_argument("--direct_intervals", default="1",
                   help="AlphaDecay intervals also run as sides of their own (those dividing --updates); '' none")
    p.add_argument("--esd_repeat", type=int, default=5, help="timings of the ESD pass and of the optimizer step")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()

    paths = data_paths()
    # No process group and no torch work here before the sides are forked (see run_sides); setup() comes after.
    is_main, distributed = int(os.environ.get("RANK", "0")) == 0, world_size_from_env() > 1
    device = pick_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    args.device = str(device)
    if args.dtype is None:
        args.dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    requested = [int(x) for x in args.direct_intervals.split(",") if x.strip()]
    direct = [i for i in requested if args.updates % i == 0]
    if len(direct) < len(requested) and is_main:
        note(f"direct measurement skipped for intervals {sorted(set(requested) - set(direct))}: "
             f"--updates ({args.updates}) must be a multiple of the interval")
    report = Report(enabled=is_main)
    # Ranks of one torchrun job share their parent process: one scratch folder for all of them.
    scratch = Path(tempfile.gettempdir()) / f"alphadecay-bench-{os.getppid() if distributed else os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)

    sides = [{"name": "baseline", "kind": "baseline"},
             {"name": "ours", "kind": "ours", "strategy": "uniform", "interval": 500}]
    sides += [{"name": f"alphadecay_{i}", "kind": "ours", "strategy": "alphadecay", "interval": i} for i in direct]
    pooled = {side["name"]: [] for side in sides}
    try:
        for r in range(args.repeat):
            results = run_sides(sides, args, paths, scratch / f"session-{r}")
            kept = {name: run[args.warmup:] for name, run in results.items()}   # start-up updates dropped
            for name, run in kept.items():
                pooled[name].extend(run)
            if is_main:
                note(f"session {r + 1}/{args.repeat}: " + ", ".join(
                    f"{name} {median([s for _, s in run]):.3f} s/update" for name, run in kept.items()))
        rt = setup(args.device)
        costs = esd_and_group_costs(args, paths, rt, dtype, args.esd_repeat)
    finally:
        if is_main:
            shutil.rmtree(scratch, ignore_errors=True)

    common = {"model": Path(args.model_config).stem, "device": str(rt.device), "dtype": args.dtype,
              "world_size": rt.world_size, "batch_size": args.batch_size, "max_length": args.max_length,
              "accum": args.accum}
    if rt.is_main:
        base, ours = pooled["baseline"], pooled["ours"]
        tps = lambda run: [t / s for t, s in run]  # noqa: E731
        secs = lambda run: [s for _, s in run]  # noqa: E731
        total_tps = lambda run: sum(t for t, _ in run) / sum(secs(run))  # noqa: E731
        probe = torch.optim.Adam([torch.zeros(1, device=rt.device)])
        update_s = min(secs(ours))
        report.emit({"bench": "train_step", **common, "workers": args.workers, "updates": len(ours),
                     "tokens": "non-pad", "statistic": "best update of each side",
                     "baseline_tokens_per_s": round(max(tps(base)), 1), "ours_tokens_per_s": round(max(tps(ours)), 1),
                     "speedup": round(max(tps(ours)) / max(tps(base)), 3),
                     "baseline_update_s": round(min(secs(base)), 4), "ours_update_s": round(update_s, 4),
                     "update_time_speedup": round(min(secs(base)) / update_s, 3),
                     "speedup_median_paired": round(median([o / b for o, b in zip(tps(ours), tps(base))]), 3),
                     # all measured tokens over all measured seconds, each side: the run-long throughput
                     "speedup_total": round(total_tps(ours) / total_tps(base), 3),
                     "speedup_per_update": [round(o / b, 3) for o, b in zip(tps(ours), tps(base))],
                     "baseline_adam": adam_kind(probe), "ours_adam": costs["optimizer"], **machine(rt.device)})
        for interval in AMORTISED_INTERVALS:
            per_update = costs["esd_s"] / interval + costs["groups_extra_s"]
            report.emit({"bench": "alphadecay_overhead", **common, "interval": interval, "method": "amortised",
                         "overhead_pct": round(100 * per_update / update_s, 3),
                         "esd_only_pct": round(100 * costs["esd_s"] / (interval * update_s), 3),
                         "esd_s": round(costs["esd_s"], 4), "groups_extra_s": round(costs["groups_extra_s"], 4),
                         "optimizer_step_uniform_s": round(costs["optimizer_step_uniform_s"], 4),
                         "groups": costs["groups"], "uniform_update_s": round(update_s, 4)})
        for interval in direct:
            ad = pooled[f"alphadecay_{interval}"]
            predicted = costs["esd_s"] / interval + costs["groups_extra_s"]
            report.emit({"bench": "alphadecay_overhead", **common, "interval": interval, "method": "direct",
                         "overhead_pct": round(100 * (median(window_ratios(secs(ad), secs(ours), interval)) - 1), 3),
                         "total_time_pct": round(100 * (sum(secs(ad)) / sum(secs(ours)) - 1), 3),
                         "best_update_pct": round(100 * (min(secs(ad)) / update_s - 1), 3),
                         "median_paired_pct": round(100 * (median([a / o for a, o in zip(secs(ad), secs(ours))]) - 1),
                                                    3),
                         "predicted_pct": round(100 * predicted / update_s, 3),
                         "alphadecay_update_s": round(min(secs(ad)), 4), "uniform_update_s": round(update_s, 4),
                         "updates": len(ad)})
        # The raw material, to re-analyse without re-running.
        report.emit({"bench": "train_step_updates", **common,
                     "seconds": {name: [round(x, 4) for x in secs(run)] for name, run in pooled.items()},
                     "tokens": {name: [t for t, _ in run] for name, run in pooled.items()}})
        report.save(args.json)
    teardown()


if __name__ == "__main__":
    main()
