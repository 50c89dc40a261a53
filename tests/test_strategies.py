"""Weight-decay strategies: groups, the paper's mapping, cadence, state round-trip, robustness."""
import math

import pytest
import torch

import alphadecay
from alphadecay.assign import layerwise_sigmoid, tb_linear_map, tb_log2, tb_sqrt
from alphadecay.strategies import AWD, AdaDecay, AlphaDecay, NoDecay, Uniform, build_strategy

from conftest import tiny_llama

WD = 1e-5


def group_param_ids(groups):
    ids = [id(p) for g in groups for p in g["params"]]
    return ids


@pytest.mark.parametrize("name", ["none", "uniform", "alphadecay", "awd", "adadecay"])
def test_every_parameter_in_exactly_one_group(name):
    model = tiny_llama()
    groups = build_strategy(name, model, WD).param_groups()
    ids = group_param_ids(groups)
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert all("name" in g for g in groups)


def assigned(policy):
    """The decays per group after the two calls every strategy takes: param_groups, initial_assignment."""
    opt = torch.optim.AdamW(policy.param_groups(), lr=1e-3)
    policy.initial_assignment(opt)
    return {g["name"]: g["weight_decay"] for g in opt.param_groups}


@pytest.mark.parametrize("name", ["none", "uniform", "alphadecay", "awd", "adadecay"])
def test_param_groups_only_group_and_initial_assignment_is_explicit(name, monkeypatch):
    import alphadecay.strategies as strategies
    model = tiny_llama()
    policy = build_strategy(name, model, WD)

    def no_analysis(*a, **k):
        raise AssertionError("param_groups ran an analysis")
    monkeypatch.setattr(strategies, "score_modules", no_analysis)
    opt = torch.optim.AdamW(policy.param_groups(), lr=1e-3)
    assert policy.last is None
    monkeypatch.undo()
    a = policy.initial_assignment(opt)
    assert a.step == 0 and policy.last is a and set(a.module_weight_decay) == {n for n, _ in policy.linears}
    assert len(a.module_alpha) == (0 if name == "adadecay" else len(policy.linears))   # AdaDecay: gradient norms
    assert policy.step(opt, 0) is None            # step 0 is the initial assignment, not repeated
    by_name = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    if name in ("alphadecay",):
        assert len(set(by_name.values())) > 2 and by_name == {**a.module_weight_decay, "other": WD}


def test_alphadecay_mapping_endpoints_match_the_paper():
    model = tiny_llama(layers=3, hidden=96, inter=256)
    policy = alphadecay.AlphaDecay(model, weight_decay=WD, wd_min_ratio=0.6666, wd_max_ratio=3.0, update_every=500)
    groups = assigned(policy)
    stats = alphadecay.analyze(model)
    names = list(stats)
    balanced = names[1:-1]   # first Linear (layers.0 q_proj) and lm_head are left out
    alphas = {n: stats[n]["alpha"] for n in balanced}
    hi, lo = max(alphas, key=alphas.get), min(alphas, key=alphas.get)
    assert groups[hi] == 3.0 * WD
    assert groups[lo] == 0.6666 * WD
    assert groups[names[0]] == WD and groups[names[-1]] == WD and groups["other"] == WD
    # Monotone: a larger alpha never gets a smaller decay.
    order = sorted(balanced, key=alphas.get)
    assert all(groups[a] <= groups[b] for a, b in zip(order, order[1:]))
    # Every balanced module got an interpolated value inside the range.
    assert all(0.6666 * WD <= groups[n] <= 3.0 * WD for n in balanced)


def test_step_cadence_and_optimizer_writes():
    model = tiny_llama()
    policy = AlphaDecay(model, WD, update_every=3)
    opt = torch.optim.AdamW(policy.param_groups(), lr=1e-3)
    policy.initial_assignment(opt)
    assert policy.last.step == 0
    seen = []
    for step in range(7):
        model(torch.randint(0, 500, (2, 16)), labels=torch.randint(0, 500, (2, 16))).loss.backward()
        if policy.step(opt, step) is not None:
            seen.append(step)
        opt.step(); opt.zero_grad()
    assert seen == [3, 6]      # step 0 was the initial assignment
    by_name = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert by_name == {**policy.decays, "other": WD}


def test_uniform_and_none():
    model = tiny_llama()
    u = Uniform(model, WD)
    assert [g["weight_decay"] for g in u.param_groups()] == [WD]
    n = NoDecay(model, WD)
    assert [g["weight_decay"] for g in n.param_groups()] == [0.0]
    a = u.initial_assignment()
    assert set(a.module_weight_decay.values()) == {WD} and len(a.module_alpha) == len(u.linears)


def test_awd_follows_the_release():
    model = tiny_llama()
    awd = AWD(model, WD)
    opt = torch.optim.Adam(awd.param_groups(), lr=1e-3)
    awd.initial_assignment(opt)
    assert opt.param_groups[0]["weight_decay"] == 100 * WD     # the release's 100x scaling
    model(torch.randint(0, 500, (2, 16)), labels=torch.randint(0, 500, (2, 16))).loss.backward()
    g = math.sqrt(sum(p.grad.double().norm() ** 2 for p in model.parameters()))
    w = math.sqrt(sum(p.detach().double().norm() ** 2 for p in model.parameters()))
    awd.step(opt, 0)
    expected = 0.9 * (100 * WD * g / (w + 1e-8))
    assert math.isclose(opt.param_groups[0]["weight_decay"], expected, rel_tol=1e-6)
    awd.step(opt, 1)
    assert math.isclose(awd.lambda_bar, 0.1 * expected + 0.9 * (100 * WD * g / (w + 1e-8)), rel_tol=1e-6)


def test_adadecay_uses_gradnorm_within_blocks():
    model = tiny_llama(layers=2)
    ada = AdaDecay(model, WD, update_every=1)
    opt = torch.optim.Adam(ada.param_groups(), lr=1e-3)
    ada.initial_assignment(opt)
    assert {g["weight_decay"] for g in opt.param_groups} == {WD}     # no gradients yet: uniform
    model(torch.randint(0, 500, (2, 16)), labels=torch.randint(0, 500, (2, 16))).loss.backward()
    a = ada.step(opt, 1)
    block1 = [n for n in a.module_weight_decay if ".layers.1." in n]
    grads = [a.module_score[n] for n in block1]
    expected = layerwise_sigmoid(grads, ["1"] * len(grads), WD)
    assert [a.module_weight_decay[n] for n in block1] == expected
    assert len(set(expected)) > 1


def test_state_round_trip_restores_decays_and_awd():
    model = tiny_llama()
    policy = AlphaDecay(model, WD)
    policy.initial_assignment()
    state = policy.state_dict()
    torch.save(state, "/tmp/_ad_state.pt")
    loaded = torch.load("/tmp/_ad_state.pt", weights_only=True)
    fresh = AlphaDecay(model, WD)
    fresh.load_state_dict(loaded)
    assert fresh.decays == policy.decays and fresh.last_step == 0
    groups = fresh.param_groups()          # no recomputation: the restored decays are used
    assert {g["name"]: g["weight_decay"] for g in groups if g["name"] != "other"} == policy.decays
    awd = AWD(model, WD); awd.lambda_bar = 0.123
    awd2 = AWD(model, WD); awd2.load_state_dict(awd.state_dict())
    assert awd2.lambda_bar == 0.123
    with pytest.raises(ValueError, match="strategy"):
        Uniform(model, WD).load_state_dict(state)


# -- mapping functions and robustness ------------------------------------------------------------

def test_all_equal_scores_give_base_decay():
    assert tb_linear_map([2.0, 2.0, 2.0], WD, 0.67, 3) == [WD] * 3
    assert all(math.isclose(v, WD, rel_tol=1e-6) for v in tb_sqrt([4.0, 4.0], WD))
    assert all(math.isclose(v, WD, rel_tol=1e-6) for v in tb_log2([4.0, 4.0], WD))
    assert all(math.isclose(v, WD) for v in layerwise_sigmoid([1.0, 1.0], ["0", "0"], WD))


def test_negative_direction_swaps_endpoints():
    assert tb_linear_map([1.0, 2.0], WD, 0.5, 2.0, positive=False) == [2.0 * WD, 0.5 * WD]


def test_nan_and_small_modules_keep_base_decay():
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.weight.fill_(float("nan"))
        model.model.layers[1].mlp.up_proj.weight.zero_()
    policy = AlphaDecay(model, WD)
    decays = assigned(policy)
    assert decays["model.layers.1.self_attn.k_proj"] == WD
    assert decays["model.layers.1.mlp.up_proj"] == WD
    assert all(math.isfinite(v) for v in decays.values())
    # eigs_thresh: with 64-dim modules and a threshold of 100 nothing is balanced.
    strict = AlphaDecay(model, WD, eigs_thresh=100)
    assert set(assigned(strict).values()) == {WD}


@pytest.mark.parametrize("assign_func", ["tb_sqrt", "tb_log2"])
def test_other_assign_funcs_average_to_base(assign_func):
    model = tiny_llama()
    policy = AlphaDecay(model, WD, assign_func=assign_func)
    policy.initial_assignment()
    balanced = [policy.decays[n] for n, _ in policy.linears[1:-1]]
    assert math.isclose(sum(balanced) / len(balanced), WD, rel_tol=1e-6)


def test_bf16_model():
    model = tiny_llama().to(torch.bfloat16)
    decays = list(assigned(AlphaDecay(model, WD)).values())
    assert max(decays) == 3.0 * WD and all(math.isfinite(d) for d in decays)


def test_unknown_options_raise():
    model = tiny_llama()
    with pytest.raises(ValueError, match="assign_func"):
        AlphaDecay(model, WD, assign_func="nope")
    with pytest.raises(ValueError, match="esd_metric_for_tb"):
        AlphaDecay(model, WD, metric="nope")
    with pytest.raises(ValueError, match="strategy"):
        build_strategy("nope", model, WD)


def test_gpt2_fused_qkv_is_counted_as_its_own_type():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=300, n_positions=64))
    a = AlphaDecay(model, WD).initial_assignment()
    assert {"qkv", "o", "up", "down"} <= set(a.type_mean_alpha())


def test_layerwise_sigmoid_needs_blocks():
    flat = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    with pytest.raises(ValueError, match="no linear module name holds a block index"):
        AdaDecay(flat, WD)
    AdaDecay(tiny_llama(), WD)    # LLaMA's layers.N. names are blocks


def test_frozen_modules_are_left_out_of_the_balancing():
    model = tiny_llama()
    frozen = "model.layers.1.mlp.up_proj"
    model.get_submodule(frozen).weight.requires_grad_(False)
    policy = AlphaDecay(model, WD)
    groups = policy.param_groups()
    assert frozen not in {g["name"] for g in groups}
    assert all(p.requires_grad for g in groups for p in g["params"])
    policy.initial_assignment()
    assert policy.decays[frozen] == WD
    assert frozen not in policy.balanced({n: {"alpha": 2.0, "num_eigs": 64} for n, _ in policy.linears})
