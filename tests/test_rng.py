"""Checkpoint RNG: only the current device's CUDA generator is saved and restored on the current device, so a
resume that sees another number of GPUs works; old checkpoints with one state per device still load."""
import torch

from alphadecay.training.checkpointing import rng


class FakeCuda:
    """torch.cuda's generator functions for ``count`` devices, the current one ``current``."""

    def __init__(self, count: int, current: int):
        self.count, self.current = count, current
        self.states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(count)}

    def install(self, monkeypatch):
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(cuda, "get_rng_state", lambda device="cuda": self.states[self._index(device)].clone())
        monkeypatch.setattr(cuda, "set_rng_state", self._set)
        monkeypatch.setattr(cuda, "get_rng_state_all", lambda: [self.states[i].clone() for i in range(self.count)])

    def _index(self, device):
        if isinstance(device, int):
            return device
        device = torch.device(device)
        return self.current if device.index is None else device.index

    def _set(self, state, device="cuda"):
        index = self._index(device)
        assert index < self.count, f"device {index} is not visible"
        self.states[index] = state.clone()


def test_saves_only_the_current_device_and_restores_it_with_fewer_devices(monkeypatch):
    four = FakeCuda(count=4, current=2)
    four.install(monkeypatch)
    saved = rng.rng_state()
    assert isinstance(saved["cuda"], torch.Tensor) and saved["cuda"].tolist() == [2] * 16

    one = FakeCuda(count=1, current=0)          # the resume sees a single GPU
    one.install(monkeypatch)
    rng.set_rng_state(saved)
    assert one.states[0].tolist() == [2] * 16


def test_old_per_device_lists_still_load(monkeypatch):
    old = {**rng.rng_state(), "cuda": [torch.full((16,), 10 + i, dtype=torch.uint8) for i in range(4)]}
    fake = FakeCuda(count=8, current=3)
    fake.install(monkeypatch)
    rng.set_rng_state(old)
    assert fake.states[3].tolist() == [13] * 16            # the entry of the current device index
    fake = FakeCuda(count=8, current=6)
    fake.install(monkeypatch)
    rng.set_rng_state(old)
    assert fake.states[6].tolist() == [10] * 16 and fake.states[0].tolist() == [0] * 16   # past the list: the first
