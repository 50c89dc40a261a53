"""Model FLOP utilisation (MFU) as in PaLM (Chowdhery et al. 2022, appendix B).

Training FLOPs per token = 6 N + 12 L H T, with N the parameters multiplied with every token (all but the
embedding lookups, and the output layer even when it shares the embedding's weight: the matmul is done
either way), L layers, H the hidden size and T the sequence length (the attention score and value products).
The decoder runs over every position of a batch, pads included, so its FLOPs count the computed tokens
(batch x length); the fused loss (``loss.NextTokenLoss`` on LLaMA and GPT-2) runs the output layer only on the
positions that predict a real token, so the output layer's 6 x its parameters count the predicted tokens there
(every computed position for other models, whose logits are computed whole).
MFU = achieved FLOP/s / (peak dense bf16 FLOP/s per GPU x GPUs), over the updates of a logging interval (the
FLOPs and the wall time summed, so one slow update counts by its time). Recomputation from activation
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


def output_layer_flops_per_token(model: torch.nn.Module) -> float:
    """6 x the output layer's parameters: the part of ``training_flops_per_token`` that the fused loss spends only
    on predicted positions."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return 0.0 if head is None else 6.0 * sum(p.numel() for p in head.parameters())


class Throughput:
    """Tokens/s of each update (wall time from ``start()``), and MFU on CUDA over a logging interval.

    ``flops_per_token``: PaLM's count at every computed position; ``head_flops_per_token``: the part of it that
    runs only on predicted positions (``output_layer_flops_per_token`` with the fused loss; 0: none)."""

    def __init__(self, flops_per_token: float, device: torch.device, world_size: int = 1,
                 head_flops_per_token: float = 0.0):
        self.flops_per_token, self.device, self.world_size = flops_per_token, device, world_size
        self.head_flops_per_token = head_flops_per_token
        self._t0 = 0.0
        self._flops = self._seconds = 0.0     # since the last ``interval()``

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def flops(self, computed: float, learned: float | None) -> float:
        """The update's model FLOPs: the decoder at every computed position, the output layer at the predicted ones
        (at every computed one without ``learned``)."""
        head_at = computed if learned is None else learned
        return (self.flops_per_token - self.head_flops_per_token) * computed + self.head_flops_per_token * head_at

    def measure(self, tokens: float, *, computed: float | None = None, learned: float | None = None) -> dict:
        """This update's rates. ``tokens``: non-pad tokens; ``computed``: positions the model ran over, all ranks
        (default ``tokens``); ``learned``: predicted positions. Also adds the update to the interval."""
        elapsed = time.perf_counter() - self._t0
        computed = tokens if computed is None else computed
        flops = self.flops(computed, learned)
        self._flops += flops
        self._seconds += elapsed
        out = {"throughput_tokens": tokens / elapsed}
        if learned is not None:
            out["throughput_learned_tokens"] = learned / elapsed
        value = mfu(flops / elapsed, self.device, self.world_size) if self.device.type == "cuda" else None
        if value is not None:
            out["mfu"] = value
        return out

    def interval(self) -> dict:
        """``{"mfu": ...}`` over every update measured since the last call (empty off CUDA or with none), then
        starts a new interval: the logged MFU is the interval's, not its last update's."""
        flops, seconds = self._flops, self._seconds
        self._flops = self._seconds = 0.0
        value = mfu(flops / seconds, self.device, self.world_size) if seconds > 0 and self.device.type == "cuda" \
            else None
        return {} if value is None else {"mfu": value}
