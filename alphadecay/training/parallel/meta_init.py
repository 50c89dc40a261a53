"""A transformers model built on the meta device whose FSDP2 shards get exactly the unsharded build's weights.

transformers initialises a model from the global CPU generator in three passes: the constructors' own
inits (nn.Linear's kaiming_uniform_, nn.Embedding's normal_), then ``initialize_weights`` (``_init_weights``
on every module, children first), then the tied embeddings. No draw is shard-local: each fills a whole
tensor from one stream, and later draws depend on how much earlier ones consumed. So the meta build
records every write to a tensor (the init call, its target parameter or buffer, its other arguments), and
``DeferredInit.materialize`` replays the writes in order on one full CPU tensor at a time, copying only this
rank's rows into its shard. The generator advances exactly as in the unsharded build, each shard holds bit
for bit the unsharded build's rows, and no rank holds more than one full matrix (the largest, the embedding)
beside its shards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

from ...distributed import is_sharded, local_part
from ...errors import ConfigError

# In-place calls that write every element of their target (the init functions, the in-place random fills):
# the replay starts them on a fresh tensor. Any other in-place call reads the target's current value.
_OVERWRITE = {"normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
              "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "orthogonal_", "sparse_", "fill_",
              "zero_", "copy_", "random_", "bernoulli_", "exponential_", "geometric_", "log_normal_", "cauchy_"}
_NOT_WRITES = {"requires_grad_", "share_memory_", "retain_grad"}
_RANDOM_FACTORIES = {torch.randn, torch.rand, torch.randint, torch.randperm, torch.normal, torch.bernoulli,
                     torch.multinomial, torch.rand_like, torch.randn_like, torch.randint_like, torch.poisson}
_DATA = torch._C.TensorBase.__dict__["data"]   # the descriptor behind tensor.data
_TARGET = object()   # where the written tensor sits in a recorded call's arguments


@dataclass
class _Write:
    func: Callable
    name: str | None            # the parameter or buffer, None for a tensor the model dropped (the untied head)
    shape: tuple
    dtype: torch.dtype
    index: Any                  # None: the whole tensor; else the __getitem__ key of the view written
    args: tuple
    kwargs: dict


def _target(args, kwargs):
    if isinstance(kwargs.get("tensor"), torch.Tensor):   # torch.nn.init's functions pass it by keyword
        return kwargs["tensor"], "kw"
    if args and isinstance(args[0], torch.Tensor):
        return args[0], 0
    return None, None


class _Recorder(TorchFunctionMode):
    """Sees every torch call while the model is built and initialised on the meta device (the handler runs
    with the mode off, so an init function's own inner calls are not seen: replaying it repeats them)."""

    def __init__(self):
        super().__init__()
        self.writes: list[tuple] = []         # (func, tensor written, its base, index in the base, args, kwargs)
        self.views: dict[int, tuple] = {}     # id(view) -> (base tensor, index, view)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RANDOM_FACTORIES:
            raise ConfigError(f"--fsdp builds the model on the meta device, and this model draws a tensor with "
                              f"torch.{func.__name__} while it is built, which cannot be replayed; train it without "
                              f"--fsdp")
        out = func(*args, **kwargs)
        target, where = _target(args, kwargs)
        if target is None or target.device.type != "meta":
            return out
        name = getattr(func, "__name__", "")
        base, index, _ = self.views.get(id(target), (target, None, None))
        if getattr(func, "__self__", None) is _DATA or name in ("detach", "__getitem__"):
            if name == "__getitem__":
                if index is not None:
                    raise ConfigError("--fsdp cannot replay this model's initialisation on the meta device (it "
                                      "writes into a view of a view); train it without --fsdp")
                index = args[1]
            self.views[id(out)] = (base, index, out)     # the view is kept alive: its id stays its own
        elif name == "__setitem__" or (name.endswith("_") and not name.startswith("__") and name not in _NOT_WRITES):
            if base._base is not None or any(isinstance(a, torch.Tensor) and a.device.type == "meta"
                                             for a in (*args[1:], *(v for k, v in kwargs.items() if k != "tensor"))):
                raise ConfigError(f"--fsdp cannot replay this model's initialisation on the meta device ({name} on a "
                                  f"view or from another meta tensor); train it without --fsdp")
            rest = (tuple(_TARGET if i == 0 else a for i, a in enumerate(args)) if where == 0 else args,
                    {k: (_TARGET if k == "tensor" else v) for k, v in kwargs.items()})
            self.writes.append((func, target, base, index, *rest))
        return out


@dataclass
class DeferredInit:
    """The recorded initialisation of a meta model, replayed by ``materialize`` once the model is sharded."""
    writes: list[_Write]
    seed: int
    buffers: set[str] = field(default_factory=set)
    tied: list[list[str]] = field(default_factory=list)    # names of one parameter (GPT-2's wte and lm_head)

    def materialize(self, root: torch.nn.Module, model: torch.nn.Module, device: torch.device, *,
                    weights: bool = True) -> None:
        """Allocate ``root`` (the FSDP2 root, which holds ``model``) on ``device`` and fill every parameter and
        buffer of ``model``. ``weights=False`` (a resume, whose checkpoint then overwrites every parameter):
        only the buffers, and nothing is drawn. Collective where a write reads back a sharded parameter."""
        root.to_empty(device=device)
        if not weights:   # zeros, not whatever memory to_empty found, until the checkpoint is read
            with torch.no_grad():
                for p in model.parameters():
                    local_part(p).zero_()
        for names in self.tied:   # to_empty gave each name its own tensor; FSDP2 keeps the first one's
            shared = model.get_parameter(names[0])
            for name in names[1:]:
                prefix, _, leaf = name.rpartition(".")
                model.get_submodule(prefix)._parameters[leaf] = shared
        torch.manual_seed(self.seed)
        held: tuple[str | None, torch.Tensor] | None = None

        def store(name, full):
            if name is None:
                return
            own = model.get_buffer(name) if name in self.buffers else model.get_parameter(name)
            with torch.no_grad():
                local_part(own).copy_(shard_rows(full, own) if is_sharded(own) else full)

        for w in self.writes:
            if not weights and w.name not in self.buffers:
                continue
            if held is None or held[0] != w.name or w.name is None:
                if held is not None:
                    store(*held)
                whole = w.index is None and getattr(w.func, "__name__", "") in _OVERWRITE
                held = (w.name, torch.empty(w.shape, dtype=w.dtype) if whole or w.name is None
                        else self._current(model, w.name, w.dtype))
            full = held[1]
            target = full if w.index is None else full[w.index]
            args = tuple(target if a is _TARGET else a for a in w.args)
            kwargs = {k: (target if v is _TARGET else v) for k, v in w.kwargs.items()}
            with torch.no_grad():
                w.func(*args, **kwargs)
        if held is not None:
            store(*held)

    def _current(self, model, name: str, dtype) -> torch.Tensor:
        if name in self.buffers:
            return model.get_buffer(name).detach().to("cpu", dtype, copy=True)
        p = model.get_parameter(name)
        return (p.full_tensor() if is_sharded(p) else p).detach().to("cpu", dtype, copy=True)


def shard_rows(full: torch.Tensor, param) -> torch.Tensor:
    """This rank's piece of ``full`` for the DTensor ``param`` (FSDP2's row chunks, HSDP's too, or any other
    layout)."""
    from torch.distributed.tensor import distribute_tensor

    if row_mesh_dim(param) is not None:
        start, stop = shard_row_range(param)
        return full[start:stop]
    return distribute_tensor(full.to(param.device), param.device_mesh, param.placements,
                             src_data_rank=None).to_local()


def row_mesh_dim(param) -> int | None:
    """The mesh dimension over whose ranks FSDP2 splits ``param``'s rows: Shard(0) there, Replicate() on every
    other (0 for plain FSDP2's 1-D mesh, 1 for HSDP's (replicate, shard)); None for any other layout."""
    from torch.distributed.tensor import Replicate, Shard

    placements = tuple(param.placements)
    rows = [i for i, p in enumerate(placements) if p == Shard(0)]
    if len(rows) == 1 and all(isinstance(p, Replicate) for i, p in enumerate(placements) if i != rows[0]):
        return rows[0]
    return None


def shard_row_range(param) -> tuple[int, int]:
    """The rows [start, stop) of a row-sharded DTensor (``row_mesh_dim``) on this rank: torch.chunk's split over
    that mesh dimension, as FSDP2 shards (every replica of HSDP holds the same rows)."""
    mesh, dim = param.device_mesh, row_mesh_dim(param)
    world, me = mesh.size(dim), mesh.get_local_rank(dim)
    rows = -(-param.shape[0] // world)
    start = min(me * rows, param.shape[0])
    return start, min(start + rows, param.shape[0])


def record_init(build: Callable[[], torch.nn.Module], seed: int) -> tuple[torch.nn.Module, DeferredInit]:
    """``build()`` (a transformers ``from_config``) on the meta device, every write recorded.

    On meta, transformers' ``post_init`` skips the init; here every ``post_init`` runs it where it would on
    the CPU (a sub-model such as LlamaModel initialises itself before its parent builds the output layer),
    with the rotary tables computed on the CPU so that the replay can copy them."""
    from transformers import PreTrainedModel

    def init_weights(self):
        with torch.device("cpu"):
            self.initialize_weights()
        self.tie_weights(recompute_mapping=False)

    rec = _Recorder()
    original = PreTrainedModel.init_weights
    PreTrainedModel.init_weights = init_weights
    try:
        with rec, torch.device("meta"):
            model = build()
    finally:
        PreTrainedModel.init_weights = original
    params: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        params.setdefault(id(p), []).append(n)
    buffers = {id(b): n for n, b in model.named_buffers()}
    names = {**{k: v[0] for k, v in params.items()}, **buffers}
    writes = []
    for func, target, base, index, args, kwargs in rec.writes:
        if id(target) in names:   # an alias that became the parameter or buffer (nn.Buffer detaches its tensor)
            base, index = target, None
        writes.append(_Write(func, names.get(id(base)), tuple(base.shape), base.dtype, index, args, kwargs))
    first = {}
    for w in writes:
        if w.name is not None:
            first.setdefault(w.name, w)
    for name in names.values():
        w = first.get(name)
        if w is None or w.index is not None or getattr(w.func, "__name__", "") not in _OVERWRITE:
            raise ConfigError(f"--fsdp builds the model on the meta device and cannot tell the initial value of "
                              f"{name} (set when it is created, not by an init function); train it without --fsdp")
    return model, DeferredInit(writes, seed, set(buffers.values()), [n for n in params.values() if len(n) > 1])
