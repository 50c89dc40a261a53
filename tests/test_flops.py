"""MFU by PaLM's formula: the output layer counted when tied, computed tokens (pads included) apart from
learned ones, and the peak of the exact device."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from alphadecay.training.flops import Throughput, matmul_params, peak_bf16, training_flops_per_token
from conftest import REPO


def _on_meta(stem):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(REPO / "configs" / f"{stem}.json"))


def test_tied_output_layer_is_counted():
    gpt = _on_meta("gpt_nano")          # 12 x 768, vocabulary 32,000, lm_head tied to the token embedding
    blocks = 12 * (12 * 768 ** 2 + 13 * 768) + 2 * 768       # attention + MLP with biases and norms, final norm
    assert matmul_params(gpt) == blocks + 32000 * 768
    flops = training_flops_per_token(gpt, 256)
    assert flops == 6 * (blocks + 32000 * 768) + 12 * 12 * 768 * 256
    without_head = 6 * blocks + 12 * 12 * 768 * 256
    assert round(1 - without_head / flops, 3) == 0.215       # what leaving the tied head out undercounted
    llama = _on_meta("llama_9m")        # untied: lm_head is a parameter of its own, counted once
    assert matmul_params(llama) == sum(p.numel() for p in llama.parameters()) - 32000 * 128


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA A100-SXM4-40GB", 312e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100-PCIE-40GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12), ("NVIDIA H200", 989e12), ("NVIDIA H200 NVL", 835e12), ("NVIDIA GH200 480GB", 989e12),
    ("NVIDIA H800", 989e12), ("NVIDIA H800 PCIe", 756e12), ("NVIDIA H20", 148e12), ("NVIDIA L40S", 362e12),
    ("NVIDIA L40", 181e12), ("NVIDIA L4", 121e12), ("NVIDIA A10G", 70e12), ("NVIDIA A10", 125e12),
    ("NVIDIA RTX A6000", 155e12), ("NVIDIA GeForce RTX 4090", 165e12), ("NVIDIA B200", 2250e12),
    ("Tesla V100-SXM2-32GB", None), ("NVIDIA T4", None)])
def test_peak_by_exact_device_name(name, peak):
    assert peak_bf16(name) == peak


def test_mfu_counts_computed_tokens_and_learned_tokens_are_reported_apart(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    speed = Throughput(1e9, torch.device("cuda", 0), world_size=2)
    times = iter([10.0, 12.0])
    monkeypatch.setattr("alphadecay.training.flops.time.perf_counter", lambda: next(times))
    speed.start()
    rate = speed.measure(3000, computed=4096, learned=2900)          # 2 s for the update
    assert rate["throughput_tokens"] == 1500 and rate["throughput_learned_tokens"] == 1450
    assert rate["mfu"] == pytest.approx(1e9 * 4096 / 2 / (989e12 * 2))
    cpu = Throughput(1e9, torch.device("cpu"))
    cpu._t0 = 0.0
    monkeypatch.setattr("alphadecay.training.flops.time.perf_counter", lambda: 1.0)
    assert "mfu" not in cpu.measure(10, computed=16, learned=9)


def test_mfu_is_over_the_logging_interval_and_the_output_layer_counts_predicted_positions(monkeypatch):
    from alphadecay.training.flops import output_layer_flops_per_token
    from conftest import tiny_llama

    model = tiny_llama()
    head = output_layer_flops_per_token(model)
    assert head == 6 * model.lm_head.weight.numel()
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    speed = Throughput(1e9, torch.device("cuda", 0), world_size=1, head_flops_per_token=4e8)
    assert speed.flops(computed=1000, learned=700) == 6e8 * 1000 + 4e8 * 700
    times = iter([0.0, 1.0, 1.0, 4.0])          # a 1 s update, then a 3 s one
    monkeypatch.setattr("alphadecay.training.flops.time.perf_counter", lambda: next(times))
    for _ in range(2):
        speed.start()
        last = speed.measure(1000, computed=1000, learned=700)
    per_update = 6e8 * 1000 + 4e8 * 700
    assert last["mfu"] == pytest.approx(per_update / 3 / 989e12)             # the last update alone
    assert speed.interval()["mfu"] == pytest.approx(2 * per_update / 4 / 989e12)   # both, by their time
    assert speed.interval() == {}                                             # a new interval
