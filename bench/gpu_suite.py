"""What only a GPU can show, in one command (bench/gpu_suite.sh runs it): CUDA tests, training throughput,
MFU and peak memory per size with and without torch.compile, the ESD pass per size (ours vs the release's
per-matrix loop), a short Uniform vs AlphaDecay run, and the same short run in --dtype bfloat16 against
bf16-mixed (final perplexity and step time). Results: OUT/gpu_suite.json and OUT/gpu_suite.md,
with the device, the versions and the commands.

SMOKE=1 (or --smoke) runs every part on the CPU at toy sizes: the CUDA tests on the CPU, compile with the
``aot_eager`` backend, LLaMA-9M for throughput and the comparison, 60M shapes for the ESD.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]
from common import machine, median  # noqa: E402
# The paper's micro-batches (scripts/common.sh) at 256 tokens.
SIZES = {"llama_60m": 256, "llama_130m": 256, "llama_350m": 128, "llama_1b": 16}


def run(cmd: list[str], env: dict | None = None, timeout: int = 600, keep_stdout: bool = False) -> dict:
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    tail = (proc.stdout + proc.stderr)[-3000:]
    result = {"command": " ".join(cmd), "rc": proc.returncode, "seconds": round(time.time() - start, 1), "tail": tail}
    return {**result, "stdout": proc.stdout[-3000:]} if keep_stdout else result


def part_tests(smoke: bool) -> dict:
    env = {"ALPHADECAY_TEST_DEVICE": "cpu", "ALPHADECAY_COMPILE_BACKEND": "aot_eager"} if smoke else {}
    result = run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py"], env, keep_stdout=True)
    # pytest's closing line is the last of its stdout; plugins (pytest-benchmark under xdist) warn on stderr after it.
    lines = result.pop("stdout").strip().splitlines()
    result["summary"] = lines[-1] if lines else ""
    return result


def part_throughput(device: torch.device, sizes: dict, steps: int, compile_backend: str) -> list[dict]:
    from alphadecay.training.flops import Throughput, training_flops_per_token
    from alphadecay.training.loss import NextTokenLoss
    from alphadecay.training.model import build_model
    from alphadecay.training.optim import build_optimizer
    from alphadecay.strategies import AlphaDecay

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for stem, micro in sizes.items():
        for compiled in (False, True):
            model = build_model(str(REPO / "configs" / f"{stem}.json"), dtype=dtype, device=device, seed=0)
            loss_fn = NextTokenLoss(model)
            if compiled:
                loss_fn.compile(backend=compile_backend)
            policy = AlphaDecay(model, weight_decay=1e-5)
            optimizer = build_optimizer("adam", policy.param_groups(), lr=1e-4, device=device)
            gen = torch.Generator().manual_seed(0)
            length = 256 if device.type == "cuda" else 64
            ids = torch.randint(2, model.config.vocab_size, (micro, length), generator=gen)
            mask = torch.ones_like(ids)
            mask[:, int(length * 0.77):] = 0          # the C4 pad share at 256 tokens (23%)
            inputs = loss_fn.inputs(ids.masked_fill(mask == 0, 0), mask, device)
            tokens = int(mask.sum())
            speed = Throughput(training_flops_per_token(model, length), device, 1)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            rates, first = [], None
            for step in range(steps + 3):
                t = time.perf_counter()
                speed.start()
                loss_fn(**inputs).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                rate = speed.measure(tokens, computed=ids.numel())
                if step == 0:
                    first = time.perf_counter() - t
                if step >= 3:
                    rates.append(rate)
            tok_s = median([r["throughput_tokens"] for r in rates])
            mfu = [r["mfu"] for r in rates if "mfu" in r]
            rows.append({"model": stem, "micro_batch": micro, "tokens": length, "compile": compiled,
                         "dtype": str(dtype).replace("torch.", ""), "tokens_per_s": round(tok_s),
                         "mfu": round(median(mfu), 4) if mfu else None,
                         "first_step_s": round(first, 2),
                         "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
                         if device.type == "cuda" else None})
            print(json.dumps(rows[-1]), flush=True)
            del model, loss_fn, optimizer
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def part_esd(sizes: str) -> dict:
    return run([sys.executable, "bench/esd.py", "--sizes", sizes, "--repeat", "1"])


def _local_c4() -> tuple[Path, Path] | str:
    """(data folder, C4 folder), or why the training parts cannot run."""
    data = Path(os.environ.get("ALPHADECAY_DATA_DIR", REPO.parent / "shared" / "data"))
    c4 = data / "c4" / "en"
    if not any(c4.glob("*.json.gz")):
        return f"no local C4 sample under {c4}: set ALPHADECAY_DATA_DIR (carry it to the GPU machine)"
    try:
        import datasets  # noqa: F401
    except ImportError:
        return "the training loop needs 'datasets': carry its wheels (bench/gpu_suite.sh --help)"
    return data, c4


def _train(save: Path, model: str, steps: int, micro: int, length: int, flags: list[str]) -> dict:
    """One short AdamW 0.1 run of the loop on the local C4 sample (seed 5): its command, time and records."""
    data, c4 = _local_c4()
    cmd = [sys.executable, "torchrun_main.py", "--model_config", f"configs/{model}.json", "--optimizer", "adamw",
           "--weight_decay", "0.1", "--lr", "1e-3", "--batch_size", str(micro), "--total_batch_size", str(micro),
           "--max_length", str(length), "--num_training_steps", str(steps), "--warmup_steps", str(steps // 10),
           "--eval_every", "0", "--save_every", "0", "--target_eval_tokens", "100000", "--workers", "2",
           "--packing", "--seed", "5", "--no_wandb", "--overwrite", "--save_dir", str(save),
           "--dataset_path", str(c4 / "c4-dev.00000-of-00002.json.gz"),
           "--eval_dataset_path", str(c4 / "c4-dev.00001-of-00002.json.gz"),
           "--tokenizer", str(data / "tokenizers" / "t5-base"), *flags]
    done = run(cmd, {"WANDB_MODE": "disabled"})
    records = []
    if (save / "metrics.jsonl").exists():
        records = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines() if line]
    final = next((r for r in records if r["type"] == "final"), None)
    train = [r for r in records if r["type"] == "train"]
    return {"rc": done["rc"], "seconds": done["seconds"], "command": done["command"],
            "eval_ppl": final and final["eval_ppl"], "train": train, "tail": done["tail"] if done["rc"] else ""}


def part_comparison(smoke: bool, out: Path) -> dict:
    """Uniform vs AlphaDecay: same seed, same data, same schedule; the local C4 sample (ALPHADECAY_DATA_DIR)."""
    problem = _local_c4()
    if isinstance(problem, str):
        return {"error": problem}
    model, steps, micro, length = ("llama_9m", 4, 4, 64) if smoke else ("llama_60m", 300, 64, 256)
    evaluation = ["--target_eval_tokens", "2000"] if smoke else []   # SMOKE: the part runs, its numbers mean nothing
    results = {}
    for method, flags in {"uniform": [], "alphadecay": ["--use_modulewise_wd", "--alpha_positively_with_WD",
                                                        "--unbalancedWD_every", str(max(steps // 10, 1))]}.items():
        result = _train(out / f"compare-{method}", model, steps, micro, length, flags + evaluation)
        del result["train"]
        results[method] = result
    return results


def part_precision(smoke: bool, out: Path) -> dict:
    """--dtype bfloat16 (pure bf16 weights and Adam moments) vs bf16-mixed (float32 master copies, bf16
    autocast): the same short Uniform AdamW run; final validation perplexity, last loss, median step time."""
    problem = _local_c4()
    if isinstance(problem, str):
        return {"error": problem}
    model, steps, micro, length = ("llama_9m", 4, 2, 32) if smoke else ("llama_60m", 300, 64, 256)
    # A CPU without bf16 units runs bf16 matmuls some 20 times slower than float32: a small evaluation in SMOKE.
    evaluation = ["--target_eval_tokens", "2000"] if smoke else []
    results = {}
    for dtype in ("bfloat16", "bf16-mixed"):
        result = _train(out / f"precision-{dtype}", model, steps, micro, length, ["--dtype", dtype, *evaluation])
        rates = [r["throughput_tokens"] for r in result.pop("train")[1:] if r.get("throughput_tokens")]
        result["step_s"] = round(micro * length / median(rates), 4) if rates else None
        results[dtype] = result
    return results


def markdown(summary: dict) -> str:
    lines = [f"# GPU suite, {summary['date']}", "", f"Command: `{summary['command']}`", "",
             f"Device: {summary['device']}; torch {summary['torch']}, transformers {summary['transformers']}, "
             f"smoke: {summary['smoke']}", "", f"Tests: {summary['tests'].get('summary')}", "",
             "| model | micro-batch x tokens | dtype | compile | tokens/s | MFU | first step s | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary["throughput"]:
        lines.append(f"| {r['model']} | {r['micro_batch']} x {r['tokens']} | {r['dtype']} | {r['compile']} | "
                     f"{r['tokens_per_s']:,} | {r['mfu'] if r['mfu'] is not None else 'n/a'} | {r['first_step_s']} | "
                     f"{r['peak_memory_gib'] if r['peak_memory_gib'] is not None else 'n/a'} |")
    lines += ["", "ESD pass (bench/esd.py):", "", "```", summary["esd"].get("tail", "").strip(), "```", "",
              "Uniform vs AlphaDecay (AdamW 0.1, seed 5):", ""]
    for method, r in summary["comparison"].items():
        lines.append(f"- {method}: {r if isinstance(r, str) else r.get('eval_ppl')}")
    lines += ["", "Precision (Uniform AdamW 0.1, seed 5): --dtype, final val. ppl, s per update (median):", ""]
    for dtype, r in summary.get("precision", {}).items():
        lines.append(f"- {dtype}: " + (r if isinstance(r, str) else f"{r.get('eval_ppl')}, {r.get('step_s')}"))
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", default=os.environ.get("SMOKE") == "1")
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "out" / "gpu_suite"))
    p.add_argument("--parts", default="tests,throughput,esd,comparison,precision")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.smoke and not torch.cuda.is_available():
        print("error: no CUDA device is visible; run on a GPU machine, or SMOKE=1 for the CPU smoke run", file=sys.stderr)
        return 2
    import transformers
    device = torch.device("cpu" if args.smoke else "cuda")
    summary = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["bench/gpu_suite.sh"] + sys.argv[1:])
               + (" (SMOKE=1)" if args.smoke else ""), "smoke": args.smoke, "torch": torch.__version__,
               "transformers": transformers.__version__,
               "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "machine": machine(device),
               "tests": {}, "throughput": [], "esd": {}, "comparison": {}, "precision": {}}
    parts = args.parts.split(",")
    failed = []
    for part in parts:
        print(f"== {part}", flush=True)
        try:
            if part == "tests":
                summary["tests"] = part_tests(args.smoke)
                failed += ["tests"] if summary["tests"]["rc"] else []
            elif part == "throughput":
                sizes = {"llama_9m": 4} if args.smoke else SIZES
                summary["throughput"] = part_throughput(device, sizes, steps=3 if args.smoke else 10,
                                                        compile_backend="aot_eager" if args.smoke else "inductor")
            elif part == "esd":
                summary["esd"] = part_esd("60m" if args.smoke else "60m,130m,350m,1b")
                failed += ["esd"] if summary["esd"]["rc"] else []
            elif part == "comparison":
                summary["comparison"] = part_comparison(args.smoke, out)
                bad = "error" in summary["comparison"] or any(r["rc"] for r in summary["comparison"].values())
                failed += ["comparison"] if bad else []
            elif part == "precision":
                summary["precision"] = part_precision(args.smoke, out)
                bad = "error" in summary["precision"] or any(r["rc"] for r in summary["precision"].values())
                failed += ["precision"] if bad else []
        except Exception as error:  # noqa: BLE001 - one part failing must not lose the others' figures
            summary[part] = {"error": f"{type(error).__name__}: {error}"}
            failed.append(part)
        with open(out / "gpu_suite.json", "w") as f:      # after every part: a time-out keeps what was done
            json.dump(summary, f, indent=1, default=str)
    (out / "gpu_suite.md").write_text(markdown(summary))
    print((out / "gpu_suite.md").read_text())
    if failed:
        print(f"error: these parts failed: {', '.join(failed)} (details in {out / 'gpu_suite.json'})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
