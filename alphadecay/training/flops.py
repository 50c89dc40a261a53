"""Model FLOP utilisation (MFU) as in PaLM (Chowdhery et al. 2022, appendix B).

Training FLOPs per token = 6 N + 12 L H T, with N the parameters multiplied with every token (all but the
embedding lookups, and the output layer even when it shares the embedding's weight: the matmul is done
either way), L layers, H the hidden size and T the sequence length (the attention score and value products).
The model runs over every position of a batch, pads included, so MFU counts the computed tokens
(batch x length); the tokens the loss learns from (predicted positions) are reported apart.
MFU = achieved FLOP/s / (peak dense bf16 FLOP/s per GPU x GPUs). Recomputation from activation
checkpointing is not counted (that would be hardware FLOP utilisation).
"""
from __future__ import annotations

import re
import time

import torch

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, from the vendors' data sheets, by the device name
# torch reports ('NVIDIA H100 80GB HBM3' is the SXM part, 'NVIDIA H100 PCIe', 'NVIDIA A100-PCIE-40GB', ...).
# First match wins: the PCIe and NVL variants come before their family. No entry (e.g. V100, which has no
# bf16 tensor cores): no MFU.
PEAK_BF16 = [
    (r"H100.*NVL", 835e12), (r"H100.*PCIE", 756e12), (r"H100", 989e12),
    (r"H200.*NVL", 835e12), (r"H200", 989e12),             # GH200 included
    (r"H800.*PCIE", 756e12), (r"H800", 989e12), (r"\bH20\b", 148e12),
    (r"A100|A800", 312e12),                                  # 40GB/80GB, SXM and PCIe alike
    (r"B200", 2250e12), (r"L40S", 362e12), (r"\bL40\b", 181e12), (r"\bL4\b", 121e12),
    (r"A10G", 70e12), (r"\bA10\b", 125e12), (r"A6000", 155e12), (r"4090", 165e12), (r"3090", 71e12),
    (r"MI300X", 1307e12),
]


def matmul_params(model: torch.nn.Module) -> int:
    """N of PaLM's formula: every parameter but the embedding tables, plus the output layer when tied."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    n = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and id(head.weight) in embeddings:
        n += head.weight.numel()
    return n


def training_flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    return 6 * matmul_params(model) + 12 * layers * hidden * seq_len


def peak_bf16(name: str) -> float | None:
    return next((peak for pattern, peak in PEAK_BF16 if re.search(pattern, name, re.IGNORECASE)), None)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return peak_bf16(torch.cuda.get_device_name(device))


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

    def measure(self, tokens: float, *, computed: float | None = None, learned: float | None = None) -> dict:
        """``tokens``: non-pad tokens; ``computed``: positions the model ran over, all ranks (default ``tokens``);
        ``learned``: predicted positions."""
        elapsed = time.perf_counter() - self._t0
        computed = tokens if computed is None else computed
        out = {"throughput_tokens": tokens / elapsed}
        if learned is not None:
            out["throughput_learned_tokens"] = learned / elapsed
        if self.device.type == "cuda":
            value = mfu(self.flops_per_token * computed / elapsed, self.device, self.world_size)
            if value is not None:
                out["mfu"] = value
        return out
