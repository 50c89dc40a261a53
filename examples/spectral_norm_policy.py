"""A user's own per-module policy, trained, resumed and logged by the pretraining loop like the built-in ones.

    python examples/spectral_norm_policy.py <the flags of torchrun_main.py>            # e.g. README's quick start
    python examples/spectral_norm_policy.py <the same flags> --continue_from latest     # resume it

Each linear module's weight decay is ``--weight_decay`` times its spectral norm over the mean spectral norm of all
linear modules, reassigned every ``--unbalancedWD_every`` updates (with ``--use_modulewise_wd``, which the flags
rule asks for beside it); the rest keep ``--weight_decay``. Its decay
records (``metrics.jsonl``, ``"strategy": "spectral_norm"``) and its state in every checkpoint are the loop's own.
README's "Your own policy" shows the class; ``tests/test_user_policy.py`` runs it.
"""
import sys

import alphadecay
from alphadecay.policy import Assignment, Policy, find_groups


class SpectralNormDecay(Policy):
    name = "spectral_norm"   # its hyperparameter is the interface's default, "weight_decay"
    def __init__(self, model, weight_decay, every=500):
        self.model, self.weight_decay, self.every, self.decays = model, weight_decay, every, {}
        self.linears = alphadecay.linear_modules(model)

    def grouped_modules(self):
        return self.linears

    def group_values(self, name):
        return {"weight_decay": self.decays.get(name, self.weight_decay)}

    def due(self, step):
        return step % self.every == 0

    def reassign(self, optimizer, step, scores=None):
        eigs = alphadecay.score_modules(self.model, "spectral_norm", self.linears)   # largest eigenvalue of W^T W
        norms = {n: eigs[n]["spectral_norm"] ** 0.5 for n, _ in self.linears}
        mean = sum(norms.values()) / len(norms)
        self.decays = {n: self.weight_decay * s / mean for n, s in norms.items()}
        for name, group in find_groups(optimizer) if optimizer is not None else ():
            group.update(self.group_values(name))
        return Assignment(step, dict(self.decays), module_score=norms, metric="spectral_norm")

    def state_dict(self):
        return {"policy": self.name, "decays": dict(self.decays), "last_step": self.last_step}

    def load_state_dict(self, state):
        self.decays, self.last_step = dict(state["decays"]), state["last_step"]


def build(args, model):
    """The factory ``train(args, policy=...)`` calls once the model is built."""
    return SpectralNormDecay(model, args.weight_decay, every=args.unbalancedWD_every)


if __name__ == "__main__":
    from alphadecay.training.loop import main
    sys.exit(main(sys.argv[1:], policy=build))
