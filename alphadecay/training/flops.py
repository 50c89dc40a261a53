"""Model FLOP utilisation (MFU) as in PaLM (Chowdhery et al. 2022, appendix B).

Training FLOPs per token = 6 N + 12 L H T, with N the non-embedding parameters (lm_head included),
L layers, H the hidden size and T the sequence length (the attention score and value products).
MFU = achieved FLOP/s / (peak dense bf16 FLOP/s per GPU x GPUs). Recomputation from activation
checkpointing is not counted (that would be hardware FLOP utilisation).
"""
from __future__ import annotations

import time

import torch

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, matched on the device-name substring.
PEAK_BF16 = [("H200", 989e12), ("H100", 989e12), ("H800", 989e12), ("A100", 312e12), ("A800", 312e12),
             ("L40S", 362e12), ("L40", 181e12), ("A6000", 155e12), ("L4", 121e12), ("A10", 125e12),
             ("4090", 165e12), ("3090", 71e12), ("V100", 125e12)]


def training_flops_per_token(config, non_embedding_params: int, seq_len: int) -> float:
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    return 6 * non_embedding_params + 12 * layers * hidden * seq_len


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def mfu(flops_per_second: float, device: torch.device, world_size: int = 1) -> float | None:
    peak = peak_flops(device)
    return None if peak is None else flops_per_second / (peak * world_size)


class Throughput:
    """Tokens/s of each update (wall time from ``start()``), and MFU on CUDA."""

    def __init__(self, flops_per_token: float, device: torch.device, world_size: int = 1):
        self.flops_per_token, self.device, self.world_size = flops_per_token, device, world_size
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def measure(self, tokens: float) -> dict:
        elapsed = time.perf_counter() - self._t0
        out = {"throughput_tokens": tokens / elapsed}
        if self.device.type == "cuda":
            out["mfu"] = mfu(self.flops_per_token * tokens / elapsed, self.device, self.world_size)
        return out
