"""Data path: tokens/s our training loader delivers, the release's per-document path, and what the model eats.

    python bench/data.py                                  # llama_20m at 8 x 256, loaders with 0/1/2 workers
    python bench/data.py --models llama_20m,llama_60m --repeat 3
    python bench/data.py --device cuda --dtype bfloat16 --models llama_60m,llama_130m,llama_350m,llama_1b

Pipelines (always on the CPU, since that is where data is made):
  ours     ``TrainBatches`` + ``make_train_loader`` exactly as the training loop builds them (batched fast
           tokenizer, one call per batch, in ``W`` DataLoader workers; W = 0 tokenizes in this process)
  prepared a folder written by ``alphadecay prepare-data`` from the same text (``--prepared``, else made in a
           temporary folder first and timed apart): ``TokenBatches`` + ``TokenLoader``, no tokenizer at all
  release  the release's ``PreprocessedIterableDataset`` (``bench/common.py: ReleaseBatches``): one tokenizer
           call per document, padded to ``max_length``, stacked, in ``W`` workers
Each is read for ``--warmup_batches`` (worker start, the 1000-document shuffle buffer filling) plus the batches
the DataLoader has prefetched (2 per worker), and then timed
over ``--batches`` batches; the best of ``--repeat`` alternating runs is kept. Model: forward + backward of the
model at the same batch shape (no optimizer: the highest rate at which it could take data), median of
``--model_repeat`` after one warm-up.

Tokens here are sequence positions (batch_size x max_length), because both the model's cost and the loader's
output are per position whatever the padding; non-pad tokens/s of each pipeline are printed too.
``ratio = pipeline_tokens_per_s / model_tokens_per_s``: above 1 the loader keeps up with the model (as long
as it has a core of its own: on a CPU-only machine its work also takes time from the model).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, Report, data_paths, machine, median, note, release_loader, timed  # noqa: E402

from alphadecay.training.data.batches import TrainBatches, load_tokenizer, make_train_loader  # noqa: E402
from alphadecay.training.data.prepare import PrepareSettings, prepare  # noqa: E402
from alphadecay.training.data.prepared import open_prepared  # noqa: E402
from alphadecay.training.data.tokens import TokenBatches, TokenLoader  # noqa: E402
from alphadecay.training.loss import NextTokenLoss  # noqa: E402
from alphadecay.training.model import build_model  # noqa: E402
from alphadecay.training.parallel.runtime import pick_device  # noqa: E402

_PARALLELISM = os.environ.get("TOKENIZERS_PARALLELISM")


def _tokenizer_threads(workers: int) -> None:
    """The environment the training loop would give the tokenizer for this many workers.

    make_train_loader turns the Rust thread pool off when there are workers; with none it stays as the user
    set it (on by default). Restored per pipeline so that the order of the runs does not matter.
    """
    if workers > 0:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    elif _PARALLELISM is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = _PARALLELISM


def our_batches(path, tokenizer, batch_size, max_length, workers):
    _tokenizer_threads(workers)
    dataset = TrainBatches(path, tokenizer, batch_size=batch_size, max_length=max_length, num_workers=workers)
    return iter(make_train_loader(dataset, workers))


def release_batches(path, tokenizer, batch_size, max_length, workers):
    _tokenizer_threads(workers)
    return release_loader(path, tokenizer, batch_size=batch_size, max_length=max_length, workers=workers)


def prepared_batches(path, tokenizer, batch_size, max_length, workers):
    """The prepared-folder path as the loop builds it: ``TokenBatches`` + ``TokenLoader`` (no tokenizer at all)."""
    _tokenizer_threads(workers)
    dataset = TokenBatches(open_prepared(path, tokenizer), batch_size=batch_size, total_batch_size=batch_size,
                           max_length=max_length, num_workers=workers)
    return iter(TokenLoader(dataset, workers, announce=False))


def _cpu_seconds() -> dict:
    """CPU seconds of this process and of each child process alive now (the DataLoader workers), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {"self": time.process_time()}
    children = set()
    for task in glob.glob("/proc/self/task/*/children"):
        with contextlib.suppress(OSError):
            children |= set(open(task).read().split())
    for pid in children:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / ticks   # utime + stime
    return out


def pipeline_rate(make, warmup: int, count: int, workers: int) -> dict:
    batches = make()
    # The DataLoader prefetches 2 batches per worker: drain those too, or they would be counted as free.
    for batch in itertools.islice(batches, warmup + 2 * workers):
        pass
    cpu_start = _cpu_seconds()
    start, positions, nonpad = time.perf_counter(), 0, 0
    for batch in itertools.islice(batches, count):
        positions += batch["input_ids"].numel()
        nonpad += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - start
    cpu_end = _cpu_seconds()
    del batches  # stops the DataLoader's workers before the next pipeline starts its own
    # CPU of the timed window only (this process and the workers): what the data path takes from the model per token
    cpu = sum(cpu_end[key] - cpu_start[key] for key in cpu_end if key in cpu_start)
    return {"tokens_per_s": positions / seconds, "nonpad_tokens_per_s": nonpad / seconds,
            "cpu_us_per_token": 1e6 * cpu / positions}


def model_rate(config: str, batch_size: int, max_length: int, device, dtype, repeat: int) -> float:
    """Sequence positions per second through forward + backward of ``config``, with the loop's loss."""
    model = build_model(config, dtype=dtype, device=device, seed=0)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch_size, max_length), generator=torch.Generator().manual_seed(0))
    loss_fn = NextTokenLoss(model)
    inputs = loss_fn.inputs(ids, torch.ones_like(ids), device)   # no padding: the model's busiest case

    def step():
        loss_fn(**inputs).backward()
        model.zero_grad(set_to_none=True)

    step()
    seconds = median([timed(step, device)[0] for _ in range(repeat)])
    del model
    return batch_size * max_length / seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="llama_20m",
                   help="comma-separated names in configs/ (llama_20m) or paths to model configs")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--workers", default="0,1,2", help="DataLoader worker counts to try")
    p.add_argument("--batches", type=int, default=60, help="timed batches per pipeline run")
    p.add_argument("--warmup_batches", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3, help="alternating runs per pipeline; the best is kept")
    p.add_argument("--model_repeat", type=int, default=2, help="timed forward+backward passes per model")
    p.add_argument("--device", default="auto", help="where the model runs: auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="model dtype; default bfloat16 on a bf16 GPU, float32 on CPU")
    p.add_argument("--data", default=None, help="training text (default: the local C4 sample folder)")
    p.add_argument("--prepared", default=None,
                   help="a folder written by prepare-data from the same text (default: prepare it in a temp folder)")
    p.add_argument("--prepare_documents", type=int, default=None,
                   help="prepare only the first N documents into the temp folder (a quick run)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()

    paths = data_paths()
    data = args.data or paths["train"]
    device = pick_device(args.device, 0)
    if args.dtype is None:
        args.dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    tokenizer = load_tokenizer(paths["tokenizer"], args.max_length)
    workers = [int(w) for w in args.workers.split(",")]
    report = Report()
    shape = {"batch_size": args.batch_size, "max_length": args.max_length}

    models = {}
    for name in args.models.split(","):
        config = name if name.endswith(".json") else str(REPO / "configs" / f"{name}.json")
        label = Path(config).stem
        models[label] = model_rate(config, args.batch_size, args.max_length, device, dtype, args.model_repeat)
        report.emit({"bench": "data_model", "model": label, "device": str(device), "dtype": args.dtype, **shape,
                     "model_tokens_per_s": round(models[label], 1), "pass": "forward+backward"})

    scratch = tempfile.TemporaryDirectory(prefix="bench-prepared-")
    prepared = args.prepared
    if prepared is None:   # tokenized once, as a long run would: timed apart, it is not the per-batch cost
        prepared = os.path.join(scratch.name, "data")
        start = time.perf_counter()
        manifest = prepare(PrepareSettings(paths["tokenizer"], prepared, data, max_documents=args.prepare_documents),
                           tokenizer, progress=False)
        seconds = time.perf_counter() - start
        report.emit({"bench": "data_prepare", "workers": 0, "documents": manifest["counts"]["train"]["documents"],
                     "tokens": manifest["counts"]["train"]["tokens"], "seconds": round(seconds, 2),
                     "tokens_per_s": round(manifest["counts"]["train"]["tokens"] / seconds, 1)})
    makers = {"ours": our_batches, "release": release_batches, "prepared": prepared_batches}
    sources = {"ours": data, "release": data, "prepared": prepared}
    best = {}
    for r in range(args.repeat):
        for w in workers:
            for name, make in makers.items():
                rate = pipeline_rate(lambda: make(sources[name], tokenizer, args.batch_size, args.max_length, w),
                                     args.warmup_batches, args.batches, w)
                key = (name, w)
                if key not in best or rate["tokens_per_s"] > best[key]["tokens_per_s"]:
                    best[key] = rate
                note(f"repeat {r + 1}: {name} workers={w}: {rate['tokens_per_s']:,.0f} tokens/s")
    _tokenizer_threads(0)

    for (name, w), rate in best.items():
        for label, model_tps in models.items():
            report.emit({"bench": "data", "pipeline": name, "workers": w, "model": label, **shape,
                         "tokens": "positions", "pipeline_tokens_per_s": round(rate["tokens_per_s"], 1),
                         "pipeline_nonpad_tokens_per_s": round(rate["nonpad_tokens_per_s"], 1),
                         "cpu_us_per_token": round(rate["cpu_us_per_token"], 3),
                         "model_tokens_per_s": round(model_tps, 1),
                         "ratio": round(rate["tokens_per_s"] / model_tps, 2)})
    for w in workers:
        ours, release = best[("ours", w)], best[("release", w)]
        report.emit({"bench": "data_speedup", "workers": w, **shape, "tokens": "positions",
                     "ours_tokens_per_s": round(ours["tokens_per_s"], 1),
                     "release_tokens_per_s": round(release["tokens_per_s"], 1),
                     "speedup": round(ours["tokens_per_s"] / release["tokens_per_s"], 2), **machine(device)})
        tokens = best[("prepared", w)]
        # headroom: how many times less CPU per token the prepared path takes than today's streamed path
        report.emit({"bench": "data_prepared", "workers": w, **shape, "tokens": "positions",
                     "prepared_tokens_per_s": round(tokens["tokens_per_s"], 1),
                     "ours_tokens_per_s": round(ours["tokens_per_s"], 1),
                     "prepared_cpu_us_per_token": round(tokens["cpu_us_per_token"], 3),
                     "ours_cpu_us_per_token": round(ours["cpu_us_per_token"], 3),
                     "speedup": round(tokens["tokens_per_s"] / ours["tokens_per_s"], 2),
                     "cpu_headroom": round(ours["cpu_us_per_token"] / tokens["cpu_us_per_token"], 2)})
    scratch.cleanup()
    report.save(args.json)


if __name__ == "__main__":
    main()
