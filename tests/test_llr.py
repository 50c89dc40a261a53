"""LLR (He et al., ICML 2026): groups, the map, the ramp, the phase end, state, composition with AlphaDecay."""
import json
import math

import pytest
import torch

import alphadecay
import alphadecay.analysis
import alphadecay.combined
import alphadecay.llr
import alphadecay.strategies
from alphadecay import LLR, AlphaDecay, Combined, Uniform

from conftest import tiny_llama

LR = 1e-3


def cosine(total=1000, warmup=10):
    from alphadecay.training.optim import lr_schedule
    return lr_schedule("cosine", total=total, warmup=warmup, min_ratio=0.1)


def group_lrs(opt):
    return {g["name"]: g["lr"] for g in opt.param_groups}


def fake_scores(policy, alphas):
    """A score table where module k of the analysed ones has alpha alphas[k % len(alphas)]."""
    return {n: {"alpha": alphas[k % len(alphas)], "num_eigs": 64} for k, (n, _) in enumerate(policy.linears)}


def test_groups_are_every_linear_every_embedding_and_the_rest():
    model = tiny_llama()
    llr = LLR(model, LR, total_steps=100)
    groups = llr.param_groups()
    names = [g["name"] for g in groups]
    linears = [n for n, _ in alphadecay.linear_modules(model)]
    assert names == ["model.embed_tokens", *linears, "other"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert all(p.dim() == 1 for p in groups[-1]["params"])      # the rest: norm weights
    assert {g["lr"] for g in groups} == {LR}


def test_the_map_against_a_hand_computation():
    model = tiny_llama(layers=3, hidden=96, inter=256)
    schedule = cosine()
    llr = LLR(model, LR, total_steps=1000, schedule=schedule, eigs_thresh=50)
    opt = torch.optim.AdamW(llr.param_groups(), lr=LR)
    a = llr.initial_assignment(opt)
    stats = alphadecay.analyze(model)
    tuned = [n for n in stats if n != "lm_head"]
    lo, hi = min(stats[n]["alpha"] for n in tuned), max(stats[n]["alpha"] for n in tuned)
    for n in tuned:    # b_i = lr * [r_min + (r_max - r_min) (alpha_i - alpha_min) / (alpha_max - alpha_min)]
        expected = LR * (1 + 4 * (stats[n]["alpha"] - lo) / (hi - lo))
        assert math.isclose(a.module_lr[n], expected, rel_tol=1e-12), n
    assert a.module_lr["lm_head"] == a.module_lr["model.embed_tokens"] == 5 * LR
    assert min(a.module_lr[n] for n in tuned) == LR and max(a.module_lr[n] for n in tuned) == 5 * LR
    assert "lm_head" not in a.module_alpha               # the output layer is not analysed
    lrs = group_lrs(opt)
    assert lrs == {**{n: b * schedule(0) for n, b in a.module_lr.items()}, "other": LR * schedule(0)}
    rec = a.to_record()
    assert rec["module_lr"] == a.module_lr and rec["type_mean_lr"]["lm_head"] == 5 * LR


def test_reversed_direction_small_modules_and_remove_flags():
    model = tiny_llama()
    rev = LLR(model, LR, total_steps=10, positive=False)
    a = rev.initial_assignment(scores=fake_scores(rev, [1.0, 2.0, 3.0]))
    assert a.module_lr["model.layers.0.self_attn.q_proj"] == 5 * LR      # smallest alpha, largest LR
    strict = LLR(model, LR, total_steps=10, eigs_thresh=100)              # 64 eigenvalues: nothing tuned
    b = strict.initial_assignment()
    assert {v for n, v in b.module_lr.items() if n not in strict.explicit} == {LR}
    ends = LLR(model, LR, total_steps=10, remove_first_layer=True, remove_last_layer=True)
    c = ends.initial_assignment(scores=fake_scores(ends, [1.0, 2.0, 3.0]))
    assert c.module_lr["model.layers.0.self_attn.q_proj"] == LR and c.module_lr["lm_head"] == LR


def run_steps(llr, opt, steps, scores_at):
    """Step the policy from 0 (the initial assignment) to steps - 1; returns {step: group lrs}."""
    seen = {}
    for t in range(steps):
        if t == 0:
            llr.initial_assignment(opt, scores=scores_at(0))
        else:
            llr.step(opt, t, scores=scores_at(t) if llr.needs_esd(t) else None)
        seen[t] = group_lrs(opt)
    return seen


def test_the_ramp_step_by_step():
    model = tiny_llama()
    schedule = cosine(total=1000, warmup=10)
    llr = LLR(model, LR, total_steps=1000, schedule=schedule, update_every=100, linear_steps=50)
    opt = torch.optim.AdamW(llr.param_groups(), lr=LR)
    table = {0: [1.0, 2.0, 3.0], 100: [3.0, 2.0, 1.0]}
    seen = run_steps(llr, opt, 200, lambda t: fake_scores(llr, table[t]))
    q = "model.layers.0.self_attn.q_proj"
    b0, b1 = LR, 5 * LR                              # q's alpha goes from the smallest to the largest
    assert all(seen[t][q] == b0 * schedule(t) for t in range(100))   # the warm-up is the first ramp
    start, target = b0 * schedule(99), b1 * schedule(150)
    for t in range(100, 151):
        assert math.isclose(seen[t][q], start + (target - start) * (t - 100 + 1) / 51, rel_tol=1e-12), t
    assert seen[150][q] == target                    # the endpoint exactly
    assert all(seen[t][q] == b1 * schedule(t) for t in range(151, 200))
    middle = "model.layers.0.self_attn.k_proj"       # alpha 2.0 both times: same base, no ramp
    assert all(seen[t][middle] == 3 * LR * schedule(t) for t in range(200))
    assert all(seen[t]["other"] == LR * schedule(t) for t in range(200))   # not the release's min target


def test_a_ramp_longer_than_the_interval_ends_and_never_overshoots():
    model = tiny_llama()
    schedule = cosine(total=1000, warmup=10)
    llr = LLR(model, LR, total_steps=1000, schedule=schedule, update_every=100, linear_steps=150, llr_ratio=0.2)
    opt = torch.optim.AdamW(llr.param_groups(), lr=LR)
    table = {0: [1.0, 2.0, 3.0], 100: [3.0, 2.0, 1.0], 200: [1.0, 3.0, 2.0]}
    seen = run_steps(llr, opt, 400, lambda t: fake_scores(llr, table[t]))
    q = "model.layers.0.self_attn.q_proj"
    # At 200 a new ramp starts from the mid-ramp value at 199 and ends at 350 on the new base.
    start, target = seen[199][q], LR * schedule(350)
    for t in range(200, 351):
        assert math.isclose(seen[t][q], start + (target - start) * (t - 199) / 151, rel_tol=1e-12)
        assert min(start, target) <= seen[t][q] <= max(start, target)
    assert all(seen[t][q] == LR * schedule(t) for t in range(351, 400))
    for name in seen[0]:                              # every group ends on its base x S(t)
        assert seen[399][name] == llr.bases.get(name, LR) * schedule(399)


def test_zero_length_ramp_and_a_zero_target():
    model = tiny_llama()
    zero_at = lambda t: 0.0 if t >= 100 else 1.0   # noqa: E731 - S reaches 0: the release divides by it
    llr = LLR(model, LR, total_steps=1000, schedule=zero_at, update_every=100, linear_steps=0)
    opt = torch.optim.AdamW(llr.param_groups(), lr=LR)
    table = {0: [1.0, 2.0, 3.0], 100: [3.0, 2.0, 1.0]}
    seen = run_steps(llr, opt, 102, lambda t: fake_scores(llr, table[t]))
    assert all(v == 0.0 for v in seen[100].values())


def test_the_phase_end_assignment_stays():
    model = tiny_llama()
    schedule = cosine(total=1000, warmup=10)
    llr = LLR(model, LR, total_steps=1000, schedule=schedule, update_every=100, linear_steps=50, llr_ratio=0.2)
    opt = torch.optim.AdamW(llr.param_groups(), lr=LR)
    calls = []

    def scores_at(t):
        calls.append(t)
        return fake_scores(llr, {0: [1.0, 2.0, 3.0], 100: [3.0, 2.0, 1.0], 200: [2.0, 3.0, 1.0]}[t])
    seen = run_steps(llr, opt, 1000, scores_at)
    assert calls == [0, 100, 200]                     # nothing after 0.2 x 1000
    at_phase_end = dict(llr.bases)
    q = "model.layers.0.self_attn.q_proj"
    assert at_phase_end[q] == 3 * LR
    assert all(seen[t][q] == 3 * LR * schedule(t) for t in range(251, 1000))   # not dropped after one step
    assert LLR(model, LR, total_steps=100, llr_ratio=0.29).phase_end == 29     # not 28 (0.29 * 100 = 28.999...)


def test_state_round_trip_mid_ramp(tmp_path):
    model = tiny_llama()
    schedule = cosine(total=1000, warmup=10)
    kw = dict(total_steps=1000, schedule=schedule, update_every=100, linear_steps=50)
    llr = LLR(model, LR, **kw)
    opt = torch.optim.AdamW(llr.param_groups(), lr=LR)
    table = {0: [1.0, 2.0, 3.0], 100: [3.0, 2.0, 1.0]}
    run_steps(llr, opt, 120, lambda t: fake_scores(llr, table[t]))
    torch.save(llr.state_dict(), tmp_path / "s.pt")
    for state in (torch.load(tmp_path / "s.pt", weights_only=True), json.loads(json.dumps(llr.state_dict()))):
        fresh = LLR(model, LR, **kw)
        fresh.load_state_dict(state)
        assert fresh.bases == llr.bases and fresh.ramp == llr.ramp and fresh.last_step == 100
        assert all(fresh.lr_at(n, t) == llr.lr_at(n, t) for n in llr.bases for t in range(120, 400))
        assert fresh.step(None, 120) is None           # no reassignment repeated or lost
    with pytest.raises(ValueError, match="same lr"):
        LLR(model, 2 * LR, **kw).load_state_dict(llr.state_dict())
    with pytest.raises(ValueError, match="no LLR state"):
        LLR(model, LR, **kw).load_state_dict(AlphaDecay(model, 0.1).state_dict())


def count_score_calls(monkeypatch):
    calls = []
    real = alphadecay.analysis.score_modules

    def counted(*a, **k):
        calls.append([n for n, _ in a[2]])
        return real(*a, **k)
    for module in (alphadecay.strategies, alphadecay.llr, alphadecay.combined):
        monkeypatch.setattr(module, "score_modules", counted)
    return calls


def test_composition_with_alphadecay_runs_one_esd_per_step(monkeypatch):
    model = tiny_llama()
    decay = AlphaDecay(model, 0.1, update_every=4)
    llr = LLR(model, LR, total_steps=100, update_every=2, linear_steps=1, llr_ratio=1.0)
    policy = Combined(decay, llr)
    opt = torch.optim.AdamW(policy.param_groups(), lr=LR)
    assert [g["name"] for g in opt.param_groups] == [g["name"] for g in llr.param_groups()]
    calls = count_score_calls(monkeypatch)
    a = policy.initial_assignment(opt)
    assert len(calls) == 1 and "lm_head" in calls[0]              # AlphaDecay records the head's alpha
    alone = AlphaDecay(tiny_llama(), 0.1)
    assert a.module_weight_decay == alone.initial_assignment().module_weight_decay
    alone_llr = LLR(tiny_llama(), LR, total_steps=100)
    assert a.module_lr == alone_llr.initial_assignment().module_lr
    by_name = {g["name"]: (g["weight_decay"], g["lr"]) for g in opt.param_groups}
    assert by_name["model.embed_tokens"] == (0.1, 5 * LR) and by_name["other"] == (0.1, LR)
    assert all(by_name[n] == (decay.decays[n], llr.bases[n]) for n, _ in decay.linears)
    del calls[:]
    due = []
    for t in range(1, 9):
        model(torch.randint(0, 500, (2, 16)), labels=torch.randint(0, 500, (2, 16))).loss.backward()
        if policy.step(opt, t) is not None:
            due.append(t)
        opt.step(); opt.zero_grad()
    assert due == [2, 4, 6, 8] and len(calls) == 4                # one ESD at 4 and 8, where both reassign
    assert "lm_head" not in calls[0] and "lm_head" in calls[1]     # LLR alone never analyses the output layer
    rec = policy.last.to_record()
    assert rec["module_weight_decay"] == decay.decays and rec["module_lr"] == llr.bases


def test_alphadecay_alone_keeps_its_groups():
    model = tiny_llama()
    groups = AlphaDecay(model, 0.1).param_groups()
    assert [g["name"] for g in groups] == [n for n, _ in alphadecay.linear_modules(model)] + ["other"]
    assert all(set(g) == {"params", "weight_decay", "name"} for g in groups)


def test_combined_state_round_trip_and_mismatch():
    model = tiny_llama()
    policy = Combined(Uniform(model, 0.1), LLR(model, LR, total_steps=10))
    policy.initial_assignment()
    state = json.loads(json.dumps(policy.state_dict()))
    again = Combined(Uniform(model, 0.1), LLR(model, LR, total_steps=10))
    again.load_state_dict(state)
    assert again.policies[1].bases == policy.policies[1].bases
    with pytest.raises(ValueError, match="uniform\\+llr"):
        Uniform(model, 0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="flags it was trained with"):
        again.load_state_dict(Uniform(model, 0.1).state_dict())


def test_bad_options_raise():
    model = tiny_llama()
    for kw, match in [({"lr_min_ratio": 6.0}, "lr_min_ratio"), ({"linear_steps": -1}, "linear_steps"),
                      ({"llr_ratio": 1.5}, "llr_ratio"), ({"assign_func": "nope"}, "assign_func"),
                      ({"metric": "gradnorm"}, "metric")]:
        with pytest.raises(ValueError, match=match):
            LLR(model, LR, total_steps=10, **kw)
    with pytest.raises(ValueError, match="different hyper-parameter"):
        Combined(Uniform(model, 0.1), AlphaDecay(model, 0.1))


def test_trainer_callback_runs_llr_with_alphadecay_on_trainers_schedule(tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    from transformers import Trainer, TrainingArguments
    from alphadecay.integrations import AlphaDecayCallback, create_optimizer

    model = tiny_llama(layers=2, hidden=64, vocab=500)
    ids = torch.randint(0, 500, (24, 32), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": x, "labels": x.clone()} for x in ids]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=LR,
                             warmup_steps=2, logging_steps=3, save_strategy="no", report_to="none", use_cpu=True,
                             disable_tqdm=True)
    llr = LLR(model, LR, total_steps=6, update_every=3, linear_steps=0, llr_ratio=1.0)
    policy = Combined(AlphaDecay(model, weight_decay=0.1, update_every=2), llr)
    optimizer = create_optimizer(policy, args)
    seen = []
    optimizer.register_step_pre_hook(lambda o, a, k: seen.append({g["name"]: g["lr"] for g in o.param_groups}))
    callback = AlphaDecayCallback(policy)
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None), callbacks=[callback])
    trainer.train()
    assert [a.step for a in callback.assignments] == [0, 2, 3, 4]
    S = trainer.lr_scheduler.lr_lambdas[0]
    assert llr.schedule is S and S(0) < S(2)                            # Trainer's warm-up, read by LLR
    bases = {a.step: a.module_lr for a in callback.assignments}
    assert len(seen) == 6
    for t, lrs in enumerate(seen):
        b = bases[0] if t < 3 else bases[3]
        assert lrs == {**{n: b[n] * S(t) for n in b}, "other": LR * S(t)}, t
    logged = [h for h in trainer.state.log_history if "alphadecay/lr_q" in h]
    assert logged and logged[-1]["alphadecay/lr_lm_head"] == 5 * LR


def test_analyze_prints_the_lrs_llr_would_assign(tmp_path, capsys):
    from alphadecay.cli import main as cli_main
    model = tiny_llama(layers=2, hidden=64, vocab=500)
    model.save_pretrained(tmp_path / "m")
    assert cli_main(["analyze", str(tmp_path / "m"), "--json", str(tmp_path / "r.json"), "--lr", "2e-3"]) == 0
    table = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    expected = LLR(model, 2e-3, total_steps=1).initial_assignment().module_lr
    assert {n: r["lr"] for n, r in report["modules"].items()} == {n: v for n, v in expected.items()
                                                                   if n != "model.embed_tokens"}
    assert report["embedding_lr"] == {"model.embed_tokens": 1e-2} and report["modules"]["lm_head"]["lr_from"] == "max"
    assert "1.000e-02^" in table and "LLR embeddings: model.embed_tokens 1.000e-02" in table


def test_plot_runs_draws_the_assigned_lrs(tmp_path):
    from alphadecay.cli import plot_runs
    names = [n for n, _ in alphadecay.linear_modules(tiny_llama())]
    recs = [{"type": "config", "step": 0, "config": {}}]
    for step in (0, 100, 200):
        recs.append({"type": "train", "step": step + 1, "loss": 3.0, "lr": LR})
        recs.append({"type": "decay", "step": step, "module_alpha": {n: 2.0 for n in names},
                     "type_mean_alpha": {"q": 2.0}, "module_weight_decay": {n: 0.1 for n in names},
                     "module_lr": {n: LR * (1 + k % 5 + step / 100) for k, n in enumerate(names)}})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    series = plot_runs.type_series(plot_runs.read_run(str(tmp_path / "run")), "module_lr")
    assert set(series) == {"q", "k", "v", "o", "gate", "up", "down"} and list(series["q"][0]) == [0, 100, 200]
    assert plot_runs.main([str(tmp_path / "run"), "--out", str(tmp_path / "figs")]) == 0
    png = tmp_path / "figs" / "learning_rate.png"
    assert png.is_file() and png.stat().st_size > 1000


def test_block_wise_and_reversed_log_maps_on_names_without_a_block():
    """Release defects 11 and 12: layerwise_sigmoid must not crash on embed_tokens/lm_head (they are not mapped
    here), and the reversed tb_log2 keeps the mean base at lr (the release scales it by n^2)."""
    model = tiny_llama()
    sig = LLR(model, LR, total_steps=10, assign_func="layerwise_sigmoid")
    a = sig.initial_assignment()
    assert a.module_lr["lm_head"] == a.module_lr["model.embed_tokens"] == 5 * LR
    block0 = [a.module_lr[n] for n, _ in sig.score_linears if ".layers.0." in n]
    assert len(set(block0)) > 2 and all(0 < v < 2 * LR for v in block0)
    rev = LLR(model, LR, total_steps=10, assign_func="tb_log2", positive=False)
    b = rev.initial_assignment()
    tuned = [b.module_lr[n] for n in rev.tuned(alphadecay.analyze(model))]
    assert len(tuned) == 14 and math.isclose(sum(tuned) / len(tuned), LR, rel_tol=1e-6)
