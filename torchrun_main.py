"""Pretrain LLaMA on C4 with AlphaDecay or a baseline.

    torchrun --standalone --nproc_per_node=2 torchrun_main.py --model_config configs/llama_130m.json ...
    python torchrun_main.py --model_config configs/llama_9m.json ...        (one CPU or GPU)

Every flag: python torchrun_main.py --help
"""
import sys

from alphadecay.training.loop import main

if __name__ == "__main__":
    sys.exit(main())
