"""A user's own policy (examples/spectral_norm_policy.py, README's "Your own policy") trains, resumes and logs
through the loop's own path, as the built-in ones do; every built-in policy declares the interface."""
import importlib.util

import pytest
import torch
from safetensors.torch import load_file

import alphadecay
from alphadecay.llr import LLR, FixedRatioLR
from alphadecay.policy import Policy
from alphadecay.strategies import STRATEGIES
from alphadecay.training.loop import main
from conftest import DATA_DIR
from faults import StopAfter
from trainutil import REPO, data_flags, records, tiny_run_flags

spec = importlib.util.spec_from_file_location("spectral_norm_policy", REPO / "examples" / "spectral_norm_policy.py")
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)
WD = 0.01


def test_every_built_in_policy_declares_the_interface_and_combined_composes_a_users():
    assert all(issubclass(cls, Policy) for cls in (*STRATEGIES.values(), LLR, FixedRatioLR, alphadecay.Combined))
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 4))
    mine = example.SpectralNormDecay(model, WD, every=2)
    both = alphadecay.Combined(mine, LLR(model, 1e-3, total_steps=10, eigs_thresh=1))
    optimizer = torch.optim.AdamW(both.param_groups(), lr=1e-3)
    record = both.initial_assignment(optimizer).to_record()
    assert record["module_weight_decay"] == mine.decays and set(record["module_lr"]) == {"0", "2"}
    assert {g["name"]: g["weight_decay"] for g in optimizer.param_groups} == {**mine.decays, "other": WD}
    with pytest.raises(TypeError, match="alphadecay.policy.Policy"):
        alphadecay.Combined(mine, object())


def test_the_readme_shows_the_example_as_it_runs():
    source = (REPO / "examples" / "spectral_norm_policy.py").read_text()
    cls = source[source.index("class SpectralNormDecay"):source.index("\n\n\ndef build")]
    assert cls in (REPO / "README.md").read_text() and len(cls.splitlines()) < 30


def spectral_decays(checkpoint) -> dict[str, float]:
    """What the policy must have assigned from these weights: WD x sigma_max / the mean sigma_max."""
    weights = load_file(str(checkpoint / "model.safetensors"))
    norms = {k[:-len(".weight")]: torch.linalg.matrix_norm(w.double(), ord=2).item() for k, w in weights.items()
             if w.dim() == 2 and "embed_tokens" not in k}
    mean = sum(norms.values()) / len(norms)
    return {n: WD * s / mean for n, s in norms.items()}


class Watched(example.SpectralNormDecay):
    """The example's policy, keeping the optimizer it writes into and the state it is resumed from."""
    optimizer = loaded = None

    def reassign(self, optimizer, step, scores=None):
        self.optimizer = optimizer
        return super().reassign(optimizer, step, scores)

    def load_state_dict(self, state):
        self.loaded = state
        super().load_state_dict(state)


@pytest.mark.usefixtures("c4_dir", "t5_dir")
def test_a_users_policy_trains_resumes_and_logs_like_the_built_in_ones(tmp_path):
    built = []

    def factory(args, model):
        built.append(Watched(model, args.weight_decay, every=args.unbalancedWD_every))
        return built[-1]

    argv = tiny_run_flags(tmp_path, steps=8, save_every=3, unbalancedWD_every=3, weight_decay=WD,
                          use_modulewise_wd="") + data_flags(DATA_DIR)
    assert main(argv, [StopAfter(4)], policy=factory) == 0          # stopped at 4: model_3, model_4
    first = built[0]
    stopped_with = first.state_dict()
    assert main(argv + ["--continue_from", "latest"], policy=factory) == 0
    resumed = built[1]

    # Resume restores the state the stopped run saved (model_4), and the run reassigns where it would have.
    assert resumed.loaded == stopped_with and stopped_with["last_step"] == 3
    decays = {r["step"]: r for r in records(tmp_path, "decay")}
    assert sorted(decays) == [0, 3, 6] and {r["strategy"] for r in decays.values()} == {"spectral_norm"}
    # The decays logged are the policy's own computation from the weights it saw (the checkpoint at that step).
    for step in (3, 6):
        expected = spectral_decays(tmp_path / f"model_{step}")
        logged = decays[step]["module_weight_decay"]
        assert logged.keys() == expected.keys()
        assert all(logged[n] == pytest.approx(expected[n], rel=1e-4) for n in expected), step
        assert decays[step]["esd_metric_for_tb"] == "spectral_norm"
    assert len(set(decays[6]["module_weight_decay"].values())) > 1      # per module, not one decay
    # ...and what it wrote into the optimizer's groups (the rest keeps --weight_decay).
    groups = {g["name"]: g["weight_decay"] for g in resumed.optimizer.param_groups}
    assert groups == {**decays[6]["module_weight_decay"], "other": WD}
    assert [r["step"] for r in records(tmp_path, "train")][-1] == 8
