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
    with pytest.raises(ConfigError, match="--muon_lr needs --optimizer muon; add it or drop the flag"):
        parse_args(argv)
    with pytest.raises(SystemExit) as e:
        parse_args(_flags("--muon_adjust_lr_fn", "bogus"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--muon_adjust_lr_fn" in err and "match_rms_adamw" in err and len(err.splitlines()) == 1
    args = parse_args(_flags())
    assert (args.muon_lr, args.muon_momentum, args.muon_nesterov, args.muon_ns_steps, args.muon_adjust_lr_fn) == \
        (None, 0.95, True, 5, "match_rms_adamw")


COEFFS = (3.4445, -4.7750, 2.0315)   # torch.optim.Muon's defaults, as its ns_steps 5 and eps 1e-7


def textbook_newton_schulz_float32(g, steps=5, eps=1e-7):
    """Keller Jordan's quintic iteration written out in float32, without addmm."""
    a, b, c = COEFFS
    x = g.detach().clone().to(torch.float32)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / torch.clamp(torch.linalg.matrix_norm(x), min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(48, 20), (20, 48)])   # tall (transposed inside) and wide
def test_float32_newton_schulz_is_torchs_iteration_in_float32(shape):
    from torch.optim._muon import _zeropower_via_newtonschulz
    from alphadecay.newton_schulz import newton_schulz
    g = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    before = g.clone()
    ours = newton_schulz(g, COEFFS, 5, 1e-7, torch.float32)
    reference = textbook_newton_schulz_float32(g)
    bf16 = _zeropower_via_newtonschulz(g, COEFFS, 5, 1e-7)
    assert ours.dtype == torch.float32 and ours.shape == g.shape and torch.equal(g, before)   # not in place
    assert (ours - reference).abs().max().item() < 1e-5
    assert (bf16.float() - reference).abs().max().item() > 1e-3     # what float32 is for: bf16 is that far off
    assert torch.equal(newton_schulz(g, COEFFS, 5, 1e-7, torch.bfloat16), bf16)   # bfloat16: torch's own
    with pytest.raises(ValueError, match="bfloat16 or float32"):
        newton_schulz(g, COEFFS, 5, 1e-7, torch.float16)


def _muon_reference_step(params, grads, bufs, *, lr, weight_decay, nesterov, momentum=0.95):
    """torch's Muon step (momentum, Nesterov, decoupled decay, match_rms_adamw) with the float32 iteration above."""
    for p, g, buf in zip(params, grads, bufs):
        buf.lerp_(g, 1 - momentum)
        update = g.lerp(buf, momentum) if nesterov else buf
        ortho = textbook_newton_schulz_float32(update)
        p.mul_(1 - lr * weight_decay)
        p.add_(ortho, alpha=-lr * 0.2 * max(p.shape) ** 0.5)


@pytest.mark.parametrize("nesterov", [True, False])   # without Nesterov the update is the momentum buffer itself
def test_float32_ns_steps_as_a_float32_reference(nesterov):
    lr = 1e-2
    runs = {}
    for ns in ("float32", "bfloat16"):
        model = tiny_llama()
        opt = build_optimizer("muon", alphadecay.Uniform(model, 0.1).param_groups(), lr=lr, device=CPU, model=model,
                              muon={"ns_dtype": ns, "nesterov": nesterov})
        runs[ns] = (model, opt)
    assert type(runs["float32"][1].muon) is alphadecay.muon_fsdp.ShardedMuon
    assert type(runs["bfloat16"][1].muon) is torch.optim.Muon and "ns_dtype" not in runs["bfloat16"][1].muon.defaults
    assert all(g["ns_dtype"] == "float32" for g in runs["float32"][1].muon.param_groups)
    ref = tiny_llama()
    matrices = hidden_matrices(ref)
    bufs = [torch.zeros_like(p) for p in matrices]
    for _ in range(3):
        x = batch()
        for model, opt in runs.values():
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
        ref(input_ids=x, labels=x).loss.backward()
        with torch.no_grad():
            _muon_reference_step(matrices, [p.grad for p in matrices], bufs, lr=lr, weight_decay=0.1,
                                 nesterov=nesterov)
        ref.zero_grad()
        with torch.no_grad():   # the reference steps only the Muon half: the AdamW half is the float32 run's
            for p, q in zip(runs["float32"][0].parameters(), ref.parameters()):
                if not any(q is m for m in matrices):
                    q.copy_(p)
    gap = {ns: max((p - q).abs().max().item() for p, q in zip(hidden_matrices(m), matrices))
           for ns, (m, _) in runs.items()}
    assert gap["float32"] < 1e-6 < gap["bfloat16"], gap
    momentum = [runs["float32"][1].state[p]["momentum_buffer"] for p in hidden_matrices(runs["float32"][0])]
    assert max((a - b).abs().max().item() for a, b in zip(momentum, bufs)) < 1e-6


def test_ns_dtype_is_in_the_state_and_another_is_refused_on_load():
    def built(ns):
        model = tiny_llama()
        opt = build_optimizer("muon", alphadecay.Uniform(model, 0.1).param_groups(), lr=1e-3, device=CPU,
                              model=model, muon={"ns_dtype": ns})
        update(model, opt, alphadecay.Uniform(model, 0.1), 0)
        return model, opt
    (m32, o32), (m16, o16) = built("float32"), built("bfloat16")
    state = copy.deepcopy(o32.state_dict())
    assert {g["ns_dtype"] for g in state["muon"]["param_groups"]} == {"float32"}
    twin = built("float32")[1]
    twin.load_state_dict(state)
    assert all(g["ns_dtype"] == "float32" for g in twin.muon.param_groups)
    with pytest.raises(ValueError, match="ran Newton-Schulz in float32, this optimizer in bfloat16; resume with "
                                         "--muon_ns_dtype float32"):
        o16.load_state_dict(state)
    with pytest.raises(ValueError, match="in bfloat16, this optimizer in float32; resume with --muon_ns_dtype "
                                         "bfloat16"):
        twin.load_state_dict(o16.state_dict())     # torch's Muon's state: no ns_dtype key, bfloat16
    with pytest.raises(ValueError, match="in bfloat16, this optimizer in float32"):
        twin.muon.load_state_dict(o16.muon.state_dict())   # DCP loads the halves directly
    with pytest.raises(ValueError, match="unknown ns_dtype 'float16'"):
        MuonWithAdamW(*split_muon_groups(alphadecay.Uniform(m16, 0.1).param_groups(), m16), lr=1e-3,
                      ns_dtype="float16")


def test_muon_ns_dtype_flag(monkeypatch, capsys):
    from alphadecay.training.flags.muon import muon_options
    monkeypatch.chdir(alphadecay.__file__.rsplit("/alphadecay/", 1)[0])
    assert muon_options(parse_args(_flags()))["ns_dtype"] == "bfloat16"
    assert muon_options(parse_args(_flags("--muon_ns_dtype", "float32")))["ns_dtype"] == "float32"
    argv = _flags("--muon_ns_dtype", "float32")
    argv[argv.index("muon")] = "adamw"
    with pytest.raises(ConfigError) as e:
        parse_args(argv)
    assert "--muon_ns_dtype needs --optimizer muon" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SystemExit) as e:
        parse_args(_flags("--muon_ns_dtype", "float16"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--muon_ns_dtype" in err and "float32" in err and len(err.splitlines()) == 1
