"""The defects of the LLR release (LLR.md section 8): a test for each one that no other file targets, which fails
if this code had the defect.

Defects tested elsewhere (named in README's LLR table): 2 and 6 (tests/test_llr.py), 7 (tests/test_llr.py,
tests/test_llr_train.py), 9 (tests/test_muon.py), 11 and 12 (tests/test_llr.py). Defect 10 does not apply: LLR here
has no gradient or momentum score (``LR_METRICS`` are weight metrics only).
"""
import math
from pathlib import Path

import pytest
import torch

import alphadecay
from alphadecay import LLR
from alphadecay.training.optim import build_optimizer, build_scheduler, lr_schedule

from conftest import DATA_DIR, tiny_llama
from trainutil import data_flags, records, run_main, tiny_run_flags

LR = 1e-3
Q = "model.layers.0.self_attn.q_proj"


def moving_scores(llr):
    """Scores whose order moves by one module at every assignment k, so every tuned module's base changes."""
    return lambda k: {n: {"alpha": 1.0 + (j + k) % 5, "num_eigs": 64} for j, (n, _) in enumerate(llr.linears)}


def drive(llr, steps):
    """Step a policy from its initial assignment to ``steps - 1``: ({step: group lrs}, assignment steps,
    {assignment step: (bases, the groups it ramps)})."""
    opt = torch.optim.AdamW(llr.param_groups(), lr=LR)
    scores, seen, assigned, state = moving_scores(llr), {}, [], {}
    for t in range(steps):
        if t == 0:
            llr.initial_assignment(opt, scores=scores(0))
        elif llr.step(opt, t, scores=scores(len(assigned)) if llr.needs_esd(t) else None) is None:
            seen[t] = {g["name"]: g["lr"] for g in opt.param_groups}
            continue
        assigned.append(t)
        state[t] = (dict(llr.bases), set(llr.ramp))
        seen[t] = {g["name"]: g["lr"] for g in opt.param_groups}
    return seen, assigned, state


def check_ramps(llr, seen, assigned, state, steps):
    """Every reassignment t0 > 0: for each group it ramps and t0 <= t <= t0 + L the LR is l_i + (tau_i - l_i)
    (t - t0 + 1) / (L + 1), l_i the LR at t0 - 1 and tau_i = b_i' S(t0 + L), exactly tau_i at t0 + L, then exactly
    b_i' S(t) up to the next assignment; any other group b_i' S(t) throughout. Returns the ramp ends checked."""
    L, S, ends = llr.linear_steps, llr.s, 0
    for k, t0 in enumerate(assigned):
        nxt = assigned[k + 1] if k + 1 < len(assigned) else steps
        bases, ramped = state[t0]
        for name, b in {**bases, "other": LR}.items():
            if name not in ramped:
                assert all(seen[t][name] == b * S(t) for t in range(t0, nxt)), (name, t0)
                continue
            start, target = seen[t0 - 1][name], b * S(t0 + L)
            for t in range(t0, min(t0 + L, nxt)):
                assert math.isclose(seen[t][name], start + (target - start) * (t - t0 + 1) / (L + 1),
                                    rel_tol=1e-12, abs_tol=1e-18), (name, t0, t)
            if t0 + L < nxt:
                ends += 1
                assert seen[t0 + L][name] == target, (name, t0)            # the ramp's last step is its target
                assert all(seen[t][name] == b * S(t) for t in range(t0 + L, nxt)), (name, t0)
    return ends


@pytest.mark.parametrize("every,L", [(7, 3), (5, 4), (6, 1), (3, 0)])
def test_defect_3_ramp_length_and_its_end_are_one_length(every, L):
    """Defect 3: "The gradient-phase ramp length and the end-of-ramp test use different lengths and `<=` vs `<`."
    Here one length L: the ramp has L + 1 points t0 .. t0 + L, reaches tau_i = b_i' S(t0 + L) exactly at t0 + L
    (not one step early or late) and is b_i' S(t) from there on, with equal increments up to the last one."""
    total = 60
    llr = LLR(tiny_llama(), LR, total_steps=total, schedule=lr_schedule("cosine", total=total, warmup=4,
                                                                         min_ratio=0.1),
              update_every=every, linear_steps=L, llr_ratio=0.5)
    seen, assigned, state = drive(llr, total)
    assert assigned == list(range(0, 31, every))
    assert all(Q in state[t0][1] for t0 in assigned[1:])
    assert check_ramps(llr, seen, assigned, state, total) >= 14 * (len(assigned) - 1)
    if L >= 1:   # constant slope, the step onto the target included: no ramp of L or L + 2 points
        t0 = assigned[1]
        steps = [seen[t][Q] - seen[t - 1][Q] for t in range(t0, t0 + L + 1)]
        assert seen[t0 - 1][Q] != seen[t0 + L][Q]
        assert all(math.isclose(d, steps[0], rel_tol=1e-9) for d in steps), steps
        assert seen[t0 + L - 1][Q] != state[t0][0][Q] * llr.s(t0 + L - 1)    # one step before the end: ramping


def test_defect_4_assignments_and_ramp_ends_never_drift_apart():
    """Defect 4: "Assignment fires on `t % every`; the end-of-ramp test uses a shifted offset: they drift apart."
    Over 20 assignments at multiples of ``every`` that are not multiples of L + 1, each ramp starts at its own
    assignment and ends L updates later, the last as exactly as the first."""
    total, every, L = 300, 7, 4
    llr = LLR(tiny_llama(), LR, total_steps=total, schedule=lr_schedule("cosine", total=total, warmup=10,
                                                                         min_ratio=0.1),
              update_every=every, linear_steps=L, llr_ratio=0.5)
    seen, assigned, state = drive(llr, total)
    assert assigned == list(range(0, 151, every)) and len(assigned) == 22
    assert check_ramps(llr, seen, assigned, state, total) == 21 * 14     # every tuned module, every assignment
    assert llr.ramp_from == assigned[-1] == llr.last_step


@pytest.mark.parametrize("every,L", [(4, 4), (4, 9)])
def test_defect_5_a_ramp_as_long_as_the_interval_ends_and_a_zero_target_divides_nothing(every, L):
    """Defect 5: "If `linear_steps >= every` the ramp never ends and extrapolates past its target (unclamped); a
    target of 0 divides by zero." Here a ramp cut by the next assignment restarts from the LR reached, never
    leaves [start, target], and the last one ends on b_i' S(t); a schedule at 0 gives LR 0, never NaN."""
    total = 80
    S = lr_schedule("cosine", total=total, warmup=2, min_ratio=0.1)
    llr = LLR(tiny_llama(), LR, total_steps=total, schedule=S, update_every=every, linear_steps=L, llr_ratio=0.25)
    seen, assigned, state = drive(llr, total)
    assert assigned == list(range(0, 21, every))
    for k, t0 in enumerate(assigned[1:], 1):
        end = assigned[k + 1] if k + 1 < len(assigned) else t0 + L + 1
        bases, ramped = state[t0]
        assert len(ramped) == 14
        for name in ramped:
            lo, hi = sorted((seen[t0 - 1][name], bases[name] * S(t0 + L)))
            assert all(lo * (1 - 1e-12) <= seen[t][name] <= hi * (1 + 1e-12) for t in range(t0, end)), (name, t0)
    last = assigned[-1]
    assert all(seen[t][n] == b * S(t) for t in range(last + L, total) for n, b in state[last][0].items())

    zero = LLR(tiny_llama(), LR, total_steps=total, schedule=lambda t: 0.0 if t >= 8 else 1.0, update_every=every,
               linear_steps=L, llr_ratio=0.25)
    seen, assigned, _ = drive(zero, 30)
    values = [v for lrs in seen.values() for v in lrs.values()]
    assert all(math.isfinite(v) and v >= 0 for v in values)
    assert all(v == 0.0 for t in range(assigned[-1] + L, 30) for v in seen[t].values())


class FakeWandbRun:
    """The calls RunLogger makes on a wandb run, recorded: {step: merged data}."""

    def __init__(self):
        self.id, self.logged = "fake", {}

    def log(self, data, step):
        self.logged.setdefault(step, {}).update(data)

    def finish(self, exit_code=0):
        pass


@pytest.mark.usefixtures("c4_dir", "t5_dir")
def test_defect_1_module_lrs_are_logged_at_every_assignment_and_every_log_interval(tmp_path, monkeypatch):
    """Defect 1: "LR logging condition `global_step-1 % every == 0` parses as `global_step - 1 == 0` (logs once)."
    Here, over a run with four LLR assignments: a decay record with every module's base LR (and wandb lr/<type>) at
    each assignment, and a train record with the global lr and each module type's applied LR (wandb
    lr_applied/<type>) at every --log_every interval, equal to what the optimizer stepped with."""
    import alphadecay.training.loop as loop
    from alphadecay.training.logger import RunLogger
    fake = FakeWandbRun()
    monkeypatch.setattr(RunLogger, "_start_wandb", lambda self, *a: setattr(self, "wandb", fake))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    stepped, build = {}, loop.build_optimizer

    def hooked(*a, **k):
        opt = build(*a, **k)
        opt.register_step_pre_hook(lambda o, args, kw: stepped.__setitem__(
            len(stepped) + 1, {g["name"]: g["lr"] for g in o.param_groups}))
        return opt
    monkeypatch.setattr(loop, "build_optimizer", hooked)
    steps = 8
    flags = tiny_run_flags(tmp_path, steps=steps, use_modulewise_lr="", alpha_positively_with_lr="",
                           unbalancedlr_every=2, linear_steps=1, LLR_ratio=1.0, log_every=2)
    flags.remove("--no_wandb")
    assert run_main(flags + data_flags(DATA_DIR)) == 0

    decays = {r["step"]: r for r in records(tmp_path, "decay")}
    assert sorted(decays) == [0, 2, 4, 6]
    assert all(len(set(r["module_lr"].values())) > 2 for r in decays.values())
    assert all(any(k.startswith("lr/") for k in fake.logged[s]) for s in decays)
    trains = {r["step"]: r for r in records(tmp_path, "train")}
    assert sorted(trains) == [2, 4, 6, 8]
    S = lr_schedule("cosine", total=steps, warmup=2, min_ratio=0.1)
    for step, rec in trains.items():
        assert math.isclose(rec["lr"], 3e-3 * S(step), rel_tol=1e-12)
        applied = stepped[step]
        for kind, value in rec["type_lr"].items():
            mine = [v for n, v in applied.items() if alphadecay.analysis.module_type(n) == kind]
            assert mine and math.isclose(value, sum(mine) / len(mine), rel_tol=1e-12), (step, kind)
            assert fake.logged[step][f"lr_applied/{kind}"] == value
        assert {"q", "lm_head", "other"} <= set(rec["type_lr"])
    assert trains[4]["type_lr"] != trains[2]["type_lr"]


@pytest.mark.usefixtures("c4_dir", "t5_dir")
def test_defect_8_betas_and_gradient_clipping_reach_the_optimizer(tmp_path, monkeypatch):
    """Defect 8: "Config values silently ignored: the YAML's betas (0.9, 0.95), no-decay grouping and max_grad_norm
    1.0 never reach the optimizer (reproduce what ran; expose the choice)." Here --beta1/--beta2 are the betas of
    every group torch steps (AdamW, Adam, Muon's AdamW half) and --grad_clipping is the max_norm torch clips with;
    the defaults are what the release ran (0.9, 0.999, no clipping)."""
    import alphadecay.training.loop as loop
    built, build = [], loop.build_optimizer
    monkeypatch.setattr(loop, "build_optimizer", lambda *a, **k: built.append(build(*a, **k)) or built[-1])
    clipped, clip = [], torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm, *a, **k: clipped.append(max_norm) or clip(params, max_norm, *a, **k))
    flags = tiny_run_flags(tmp_path, steps=2, optimizer="adamw", beta1=0.8, beta2=0.95, grad_clipping=1.0,
                           use_modulewise_lr="", alpha_positively_with_lr="")
    assert run_main(flags + data_flags(DATA_DIR)) == 0
    assert isinstance(built[0], torch.optim.AdamW)
    assert {tuple(g["betas"]) for g in built[0].param_groups} == {(0.8, 0.95)}
    assert clipped == [1.0, 1.0]

    from alphadecay.training.flags.args import parse_args
    from alphadecay.errors import ConfigError
    base = tiny_run_flags(tmp_path / "x", steps=2) + data_flags(DATA_DIR)
    defaults = parse_args(base)
    assert (defaults.beta1, defaults.beta2, defaults.grad_clipping) == (0.9, 0.999, 0.0)
    with pytest.raises(ConfigError, match="--beta2"):
        parse_args(base + ["--beta2", "1.0"])
    model = tiny_llama()
    cpu = torch.device("cpu")
    groups = alphadecay.Uniform(model, 0.1).param_groups
    adam = build_optimizer("adam", groups(), lr=LR, device=cpu, betas=(0.7, 0.9))
    muon = build_optimizer("muon", groups(), lr=LR, device=cpu, model=model, betas=(0.7, 0.9))
    assert {tuple(g["betas"]) for g in adam.param_groups + muon.adamw.param_groups} == {(0.7, 0.9)}


def test_defect_13_the_estimator_runs_on_the_weights_device(monkeypatch):
    """Defect 13: "CUDA hard-coded in the estimator." Here the ESD runs where the weights are: no 'cuda' in the
    estimator's source (distributed.py names it only for NCCL, whose collectives need CUDA tensors), and LLR's assignment from CPU weights allocates nothing on a GPU (or, without one, works
    while torch claims a GPU exists)."""
    src = Path(alphadecay.__file__).parent
    for name in ("esd.py", "powerlaw.py", "analysis.py", "llr.py", "assign.py"):
        text = (src / name).read_text()
        assert '"cuda"' not in text and "'cuda'" not in text and ".cuda(" not in text, name
    model = tiny_llama()
    llr = LLR(model, LR, total_steps=10, eigs_thresh=1)
    if torch.cuda.is_available():
        before = torch.cuda.memory_allocated()
        bases = llr.initial_assignment().module_lr
        assert torch.cuda.memory_allocated() == before
    else:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        bases = llr.initial_assignment().module_lr
    assert len(set(bases.values())) > 3


class CharTokenizer:
    """What Evaluator reads of a tokenizer (vocab_guard): a vocabulary that fits the model."""
    unk_token_id = 0

    def __len__(self):
        return 500


def test_defect_14_evaluation_is_the_per_token_mean(monkeypatch):
    """Defect 14: "Evaluation divides by (batches + 1) and averages per-batch losses (perplexity slightly low, not
    per token)." Here: total loss / total predicted tokens over batches of very unequal token counts, against a
    hand computation; it differs from the mean of the batch means and from their sum / (batches + 1)."""
    from alphadecay.training.evaluate import Evaluator
    from alphadecay.training.loss import NextTokenLoss
    model = tiny_llama(vocab=500).double()
    g = torch.Generator().manual_seed(0)
    full = torch.ones(2, 16, dtype=torch.long)
    short = torch.zeros(2, 16, dtype=torch.long)
    short[:, :3] = 1                                          # 2 predicted tokens per row against 15
    batches = [{"input_ids": torch.randint(1, 500, (2, 16), generator=g), "attention_mask": m}
               for m in (full, short, short)]
    evaluator = Evaluator(None, CharTokenizer(), batch_size=2, max_length=16, target_tokens=100)
    monkeypatch.setattr(evaluator, "_batches", lambda: batches)
    result = evaluator(NextTokenLoss(model))

    sums, counts, means = 0.0, 0, []
    with torch.no_grad():
        for b in batches:
            logp = torch.log_softmax(model(input_ids=b["input_ids"]).logits[:, :-1], -1)
            nll = -logp.gather(2, b["input_ids"][:, 1:, None]).squeeze(2)
            keep = b["attention_mask"][:, 1:].bool() & b["attention_mask"][:, :-1].bool()
            sums, counts = sums + float(nll[keep].sum()), counts + int(keep.sum())
            means.append(float(nll[keep].mean()))
    assert result["eval_tokens"] == counts == 30 + 4 + 4
    assert math.isclose(result["eval_loss"], sums / counts, rel_tol=1e-9)
    assert math.isclose(result["eval_ppl"], math.exp(sums / counts), rel_tol=1e-9)
    for wrong in (sum(means) / len(means), sum(means) / (len(means) + 1)):
        assert abs(wrong - result["eval_loss"]) > 1e-3


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_defect_15_the_schedule_ends_at_min_lr_ratio_not_near_zero(kind):
    """Defect 15: "The cosine reaches ~1e-7 at the last step." Here the LR of the last update is min_lr_ratio * lr
    plus the schedule's own last increment (S reaches min_lr_ratio at t = total, one past the last update: cosine
    (1 - m)/2 (1 + cos(pi (T-1-w)/(T-w))), 2.3e-5 relative at 1000 updates; linear (1 - m)/(T - w)), never below
    it after the warm-up, and the per-module LRs of LLR end at b_i * S(T - 1)."""
    total, warmup, m = 1000, 10, 0.1
    model = tiny_llama()
    S = lr_schedule(kind, total=total, warmup=warmup, min_ratio=m)
    llr = alphadecay.Combined(alphadecay.Uniform(model, 0.1), LLR(model, LR, total_steps=total, schedule=S))
    opt = build_optimizer("adamw", llr.param_groups(), lr=LR, device=torch.device("cpu"))
    sched = build_scheduler(opt, kind, total=total, warmup=warmup, min_ratio=m)
    llr.initial_assignment(opt)
    lowest = math.inf
    for t in range(total):
        llr.step(opt, t)
        if t >= warmup:    # the warm-up starts near 0 by design
            lowest = min(lowest, sched.get_last_lr()[0])
        if t < total - 1:
            sched.step()
    last = sched.get_last_lr()[0]
    step = (1 - m) / (total - warmup) if kind == "linear" else (1 - m) * (math.pi / (total - warmup)) ** 2 / 4
    assert m * LR < last <= (m + step * (1 + 1e-6)) * LR and lowest == last
    if kind == "cosine":
        assert last / (m * LR) - 1 < 3e-5
    assert S(total) == m
    bases = llr.policy("lr").bases
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert all(math.isclose(lrs[n], bases[n] * S(total - 1), rel_tol=1e-12) for n in bases)
    assert min(lrs.values()) >= m * LR
