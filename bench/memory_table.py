"""Memory per GPU for LLaMA 1B/3B/7B under DDP and FSDP2, computed (not measured) from the shapes.

    python bench/memory_table.py [--gpus 8] [--max_length 256]     # prints the README's Markdown table
    nice python bench/memory_table.py --measure [--measure_config configs/llama_1b.json] [--measure_strategy uniform]
        # measured on the CPU: the peak memory per rank of a 2-rank --fsdp float32 start (gloo, up to the
        # first update), beside half the model plus the runtime (the same start of the 9M model)

Bytes per GPU, N parameters, W GPUs, L layers, hidden h, MLP width i, vocabulary v, micro-batch b,
sequence T:
  DDP, the paper's pure bf16 (--dtype bfloat16): weights 2N, gradients 2N, AdamW moments 4N (bf16, the
      optimizer state follows the weights).
  FSDP2 (--fsdp --dtype bfloat16: float32 shards, bf16 compute, float32 reduction): weights 4N/W,
      gradients 4N/W, AdamW moments 8N/W, plus the gathered bf16 parameters in flight: two decoder layers
      (the current one and the prefetched one) and the root unit (embedding and output layer, 2 x 2vh).
  Activations (both, bf16, SDPA without a T x T matrix): per layer and token about 20h + 8i bytes (the
      inputs autograd keeps for the norms, q/k/v/o, attention, gate/up/SiLU/product/down); with
      --activation_checkpointing only the layer input, 2h, plus one layer's activations while it is
      recomputed. The fused loss adds its float32 output-layer gradient (4vh) and one 64 MB logits chunk.
Not counted: the CUDA context and allocator fragmentation (typically 1-3 GB), communication buffers.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

GB = 1024 ** 3
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
MICRO = {"llama_1b": 16, "llama_3b": 8, "llama_7b": 4}   # 1B: the paper's recipe; larger: halved per size


def shapes(stem: str) -> dict:
    with open(os.path.join(CONFIGS, f"{stem}.json")) as f:
        c = json.load(f)
    h, i, L, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    layer = 4 * h * h + 3 * h * i + 2 * h
    return {"h": h, "i": i, "L": L, "v": v, "layer": layer, "N": L * layer + 2 * v * h + h}


def rows(stem: str, gpus: int, T: int, b: int, checkpointing: bool) -> list[dict]:
    s = shapes(stem)
    N, h, i, L, v = s["N"], s["h"], s["i"], s["L"], s["v"]
    per_token_layer = 2 * h if checkpointing else 20 * h + 8 * i
    activations = b * T * (L * per_token_layer + (20 * h + 8 * i if checkpointing else 0)) + 4 * v * h + 64 * 2 ** 20
    ddp = {"weights": 2 * N, "gradients": 2 * N, "optimizer": 4 * N}
    fsdp = {"weights": 4 * N / gpus + 2 * (2 * s["layer"]) + 2 * 2 * v * h, "gradients": 4 * N / gpus,
            "optimizer": 8 * N / gpus}
    out = []
    for name, parts in (("DDP (pure bf16)", ddp), (f"FSDP2 over {gpus}", fsdp)):
        total = sum(parts.values()) + activations
        out.append({"model": stem, "params_B": N / 1e9, "micro_batch": b, "setup": name,
                    **{k: v_ / GB for k, v_ in parts.items()}, "activations": activations / GB, "total": total / GB})
    return out


def measure_start(config: str, ranks: int = 2, strategy: str = "alphadecay") -> list[dict]:
    """Peak resident memory of each rank of a CPU --fsdp float32 start of ``config`` (bench/fsdp_start_memory.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import data_paths

    data = data_paths()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "peaks.json")
        flags = ["--fsdp", "--model_config", config, "--dtype", "float32", "--device", "cpu", "--batch_size", "1",
                 "--max_length", "64", "--num_training_steps", "1", "--warmup_steps", "0", "--workers", "0",
                 "--strategy", strategy, "--weight_decay", "1e-5", "--target_eval_tokens", "2000", "--no_wandb",
                 "--save_dir", os.path.join(tmp, "run"), "--dataset_path", data["train"],
                 "--eval_dataset_path", data["eval"], "--tokenizer", data["tokenizer"]]
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                        os.path.join(os.path.dirname(os.path.abspath(__file__)), "fsdp_start_memory.py"), out, "--",
                        *flags], check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"})
        with open(out) as f:
            return json.load(f)


def print_measured(config: str, ranks: int = 2, strategy: str = "alphadecay") -> None:
    stem = os.path.splitext(os.path.basename(config))[0]
    runtime = max(r["peak_rss_gib"] for r in measure_start(os.path.join(CONFIGS, "llama_9m.json"), ranks, strategy))
    half = 4 * shapes(stem)["N"] / ranks / GB
    print(f"| model | strategy | ranks | float32 shard (computed) | + runtime (9M start, measured) | bound | "
          f"peak RSS after the sharded init | peak RSS before the first update |")
    print("|---|---|---|---|---|---|---|---|")
    for r in measure_start(config, ranks, strategy):
        print(f"| {stem[6:].upper()} rank {r['rank']} | {strategy} | {ranks} | {half:.2f} | {runtime:.2f} | "
              f"{half + runtime:.2f} | **{r['after_init_gib']:.2f}** | **{r['peak_rss_gib']:.2f}** |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--activation_checkpointing", action="store_true")
    p.add_argument("--measure", action="store_true", help="measure a 2-rank CPU --fsdp start instead (heavy)")
    p.add_argument("--measure_config", default=os.path.join(CONFIGS, "llama_1b.json"))
    p.add_argument("--measure_strategy", default="alphadecay",
                   help="uniform: no ESD pass at the start (the model's part alone)")
    args = p.parse_args()
    if args.measure:
        print_measured(args.measure_config, strategy=args.measure_strategy)
        return
    print("| model | params | micro-batch | setup | weights | gradients | optimizer | activations | total GiB/GPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for stem, b in MICRO.items():
        for r in rows(stem, args.gpus, args.max_length, b, args.activation_checkpointing):
            print(f"| {stem[6:].upper()} | {r['params_B']:.2f}B | {b} x {args.max_length} | {r['setup']} | "
                  f"{r['weights']:.1f} | {r['gradients']:.1f} | {r['optimizer']:.1f} | {r['activations']:.1f} | "
                  f"**{r['total']:.1f}** |")


if __name__ == "__main__":
    main()
