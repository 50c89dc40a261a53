"""--optimizer muon: Muon over the hidden matrices, AdamW over the rest, every strategy writing into both."""
import copy

import pytest
import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM

import alphadecay
from alphadecay import Combined, LLR, MuonWithAdamW, split_muon_groups
from alphadecay.errors import ConfigError
from alphadecay.muon import hidden_matrices
from alphadecay.training.flags.args import parse_args
from alphadecay.training.optim import build_optimizer, build_scheduler, lr_schedule

CPU = torch.device("cpu")
HIDDEN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny_llama(**over):
    torch.manual_seed(0)
    cfg = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4, max_position_embeddings=32)
    return LlamaForCausalLM(LlamaConfig(**{**cfg, **over}))


def batch():
    return torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(3))


def update(model, optimizer, policy, step, scheduler=None):
    x = batch()
    model(input_ids=x, labels=x).loss.backward()
    policy.step(optimizer, step)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("tied", [False, True])
def test_routing_is_the_usual_split(tied):
    model = tiny_llama(tie_word_embeddings=tied)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for p in hidden_matrices(model)}
    assert muon == {n for n, _ in model.named_parameters() if n.split(".")[-2] in HIDDEN and n.endswith("weight")}
    assert len(muon) == 7 * 2
    policy = alphadecay.Uniform(model, 0.1)
    muon_groups, adamw_groups = split_muon_groups(policy.param_groups(), model)
    rest = {names[id(p)] for g in adamw_groups for p in g["params"]}
    assert "model.embed_tokens.weight" in rest and "model.norm.weight" in rest
    assert ("lm_head.weight" in rest) != tied     # tied: the head is the embedding, already on AdamW
    assert not muon & rest and len(muon | rest) == len(list(model.parameters()))


def test_container_steps_as_its_two_optimizers():
    """Bit for bit the same as torch.optim.Muon + torch.optim.AdamW stepped by hand, under one LambdaLR."""
    a, b = tiny_llama(), tiny_llama()
    pa, pb = alphadecay.Uniform(a, 0.1), alphadecay.Uniform(b, 0.1)
    opt = build_optimizer("muon", pa.param_groups(), lr=1e-3, device=CPU, model=a)
    sched = build_scheduler(opt, "cosine", total=8, warmup=2, min_ratio=0.1)
    mg, ag = split_muon_groups(pb.param_groups(), b)
    muon = torch.optim.Muon(mg, lr=1e-3, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW(ag, lr=1e-3, fused=True)
    s = lr_schedule("cosine", total=8, warmup=2, min_ratio=0.1)
    for t in range(4):
        for opt_b in (muon, adamw):
            for g in opt_b.param_groups:
                g["lr"] = 1e-3 * s(t)
        x = batch()
        a(input_ids=x, labels=x).loss.backward()
        b(input_ids=x, labels=x).loss.backward()
        opt.step(); sched.step(); opt.zero_grad()
        muon.step(); adamw.step(); muon.zero_grad(); adamw.zero_grad()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("name", ["alphadecay", "adadecay", "awd", "uniform", "none"])
def test_every_strategy_writes_both_optimizers(name):
    model = tiny_llama(attention_bias=True)   # biases: each q/k/v/o group has a Muon half and an AdamW half
    kw = {"update_every": 1, "eigs_thresh": 1} if name in ("alphadecay", "adadecay") else {}
    policy = alphadecay.build_strategy(name, model, 0.1, **kw)
    opt = build_optimizer("muon", policy.param_groups(), lr=1e-3, device=CPU, model=model)
    policy.initial_assignment(opt)
    for t in range(2):
        update(model, opt, policy, t)
    split = [g for g in opt.adamw.param_groups if g["name"].endswith("q_proj")]
    assert split or name in ("awd", "uniform", "none")   # one group "all" there
    for optimizer in (opt.muon, opt.adamw):
        for g in optimizer.param_groups:
            assert g["weight_decay"] == policy.decays.get(g["name"], policy.weight_decay) or (
                name == "awd" and g["weight_decay"] == policy.lambda_bar)
    if name == "alphadecay":   # module-wise decays on the Muon-held modules, the same on their AdamW biases
        muon_wd = {g["name"]: g["weight_decay"] for g in opt.muon.param_groups}
        assert len(set(muon_wd.values())) > 3
        assert all(muon_wd[g["name"]] == g["weight_decay"] for g in split)
    if name == "awd":
        assert policy.lambda_bar > 0 and all(g["weight_decay"] == policy.lambda_bar for g in opt.param_groups)


@pytest.mark.parametrize("muon_lr", [None, 2e-3])
def test_llr_drives_the_muon_groups(muon_lr):
    """LLR's b_i * S(t) lands in the Muon groups (in --lr's units); --muon_lr scales Muon's step by muon_lr / lr."""
    model = tiny_llama()
    s = lr_schedule("cosine", total=10, warmup=2, min_ratio=0.1)
    llr = LLR(model, 1e-3, total_steps=10, schedule=s, eigs_thresh=1, update_every=1, llr_ratio=1.0)
    policy = Combined(alphadecay.Uniform(model, 0.1), llr)
    opt = build_optimizer("muon", policy.param_groups(), lr=1e-3, device=CPU, model=model,
                          muon={"muon_lr": muon_lr})
    policy.initial_assignment(opt)
    ref = copy.deepcopy(model)
    x = batch()
    model(input_ids=x, labels=x).loss.backward()
    policy.step(opt, 0)
    written = {g["name"]: g["lr"] for g in opt.muon.param_groups}
    assert written == {n: llr.lr_at(n, 0) for n in written}
    assert len(set(written.values())) > 3    # per-module bases on the Muon-held modules
    # The same Muon step by hand, at the written LRs x muon_lr / lr.
    ratio = 1.0 if muon_lr is None else muon_lr / 1e-3
    ref(input_ids=x, labels=x).loss.backward()
    ref_params = dict(ref.named_parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    by_hand = torch.optim.Muon([{"params": [ref_params[names[id(p)]] for p in g["params"]], "lr": g["lr"] * ratio,
                                 "weight_decay": g["weight_decay"]} for g in opt.muon.param_groups],
                               adjust_lr_fn="match_rms_adamw")
    opt.step()
    by_hand.step()
    assert {g["name"]: g["lr"] for g in opt.muon.param_groups} == written    # restored exactly after the step
    for p in hidden_matrices(model):
        assert torch.equal(p, ref_params[names[id(p)]])


def test_state_dict_round_trip_and_wrong_state():
    model = tiny_llama()
    policy = alphadecay.Uniform(model, 0.1)
    opt = build_optimizer("muon", policy.param_groups(), lr=1e-3, device=CPU, model=model)
    update(model, opt, policy, 0)
    state = copy.deepcopy(opt.state_dict())
    twin = tiny_llama()
    twin.load_state_dict(model.state_dict())
    opt2 = build_optimizer("muon", alphadecay.Uniform(twin, 0.1).param_groups(), lr=1e-3, device=CPU, model=twin)
    opt2.load_state_dict(state)
    assert opt2.param_groups[0] is opt2.muon.param_groups[0] and len(opt2.state) == len(opt.state)
    update(model, opt, policy, 1)
    update(twin, opt2, alphadecay.Uniform(twin, 0.1), 1)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
    with pytest.raises(ValueError, match="not a Muon"):
        opt2.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())


def test_a_model_without_hidden_matrices_is_one_line():
    model = nn.Sequential(nn.Embedding(10, 8), nn.LayerNorm(8))
    with pytest.raises(ConfigError, match="no hidden 2-D linear weight") as e:
        build_optimizer("muon", alphadecay.Uniform(model, 0.1).param_groups(), lr=1e-3, device=CPU, model=model)
    assert "\n" not in str(e.value) and "--optimizer adamw" in str(e.value)


def _flags(*extra):
    return ["--model_config", "configs/llama_9m.json", "--num_training_steps", "10", "--warmup_steps", "1",
            "--optimizer", "muon", "--no_wandb", *extra]


@pytest.mark.parametrize("extra, world, message", [
    (["--muon_lr", "0"], 1, "--muon_lr must be positive"),
    (["--muon_lr=-1e-3"], 1, "--muon_lr must be positive"),
    (["--muon_momentum", "1"], 1, "--muon_momentum must be in [0, 1)"),
    (["--muon_ns_steps", "0"], 1, "--muon_ns_steps must be in [1, 99]"),
    (["--fsdp", "--muon_momentum", "1"], 2, "--muon_momentum must be in [0, 1)"),
])
def test_bad_muon_flags_are_one_line(extra, world, message, monkeypatch):
    monkeypatch.chdir(alphadecay.__file__.rsplit("/alphadecay/", 1)[0])
    with pytest.raises(ConfigError) as e:
        parse_args(_flags(*extra), world_size=world)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_muon_with_fsdp_parses(monkeypatch):
    """--optimizer muon --fsdp is a run (ShardedMuon, tests/test_muon_fsdp.py), no longer a refusal."""
    monkeypatch.chdir(alphadecay.__file__.rsplit("/alphadecay/", 1)[0])
    args = parse_args(_flags("--fsdp"), world_size=2)
    assert args.fsdp and args.optimizer == "muon"


def test_state_lookup_stays_in_the_half_that_holds_the_parameter():
    model = tiny_llama()
    opt = build_optimizer("muon", alphadecay.Uniform(model, 0.1).param_groups(), lr=1e-3, device=CPU, model=model)
    update(model, opt, alphadecay.Uniform(model, 0.1), 0)
    embedding = model.model.embed_tokens.weight
    assert set(opt.state[embedding]) == {"step", "exp_avg", "exp_avg_sq"}
    assert len(opt.muon.state) == len(hidden_matrices(model)) and embedding not in opt.muon.state
    with pytest.raises(KeyError):
        opt.state[torch.nn.Parameter(torch.zeros(2))]


def test_muon_lr_without_muon_and_unknown_adjust_fn(monkeypatch, capsys):
    monkeypatch.chdir(alphadecay.__file__.rsplit("/alphadecay/", 1)[0])
    argv = _flags("--muon_lr", "1e-3")
    argv[argv.index("muon")] = "adamw"
    with pytest.raises(ConfigError, match="--muon_lr 0.001 needs --optimizer muon"):
        parse_args(argv)
    with pytest.raises(SystemExit) as e:
        parse_args(_flags("--muon_adjust_lr_fn", "bogus"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--muon_adjust_lr_fn" in err and "match_rms_adamw" in err and len(err.splitlines()) == 1
    args = parse_args(_flags())
    assert (args.muon_lr, args.muon_momentum, args.muon_nesterov, args.muon_ns_steps, args.muon_adjust_lr_fn) == \
        (None, 0.95, True, 5, "match_rms_adamw")
