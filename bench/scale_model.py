"""A performance model of one update per rank, computed from the real code (not measured): FLOPs, the bytes of
every collective, peak memory and the MFU ceiling of a torchrun_main.py command on N GPUs.

    python bench/scale_model.py --fsdp --model_config configs/llama_7b.json --batch_size 4 --total_batch_size 512 \
        --dtype bf16-mixed --gpus_per_node 8 --nodes 4 --gpu h100 --json
    python bench/scale_model.py --recipes [--json]      # the shipped recipes (scripts' DRY_RUN commands)

The training flags are read by the trainer's own parser and validation (alphadecay.training.flags.args); the shapes
come from the model built on the meta device (training.model.build_model_on_meta), FSDP2's units from
parallel.wrap.decoder_layers, Muon's matrices from muon.hidden_matrices, the ESD's from esd.linear_modules, their
owners from distributed.assign_owners, the FLOPs per token from training.flops.

What is counted, per update and rank, as the bytes of the tensors a rank passes in (all-gather: its input shard;
reduce-scatter: the full input; all-reduce: the tensor; point-to-point: the tensors it sends):
- FSDP2 (wrap.py: fully_shard per decoder layer, then the root): every micro-batch all-gathers each decoder layer
  twice (forward, and again for backward: reshard_after_forward=True) and the root once (FSDP2 does not reshard
  the root after forward); it reduce-scatters every unit once (the trainer syncs every micro-batch). Each
  parameter padded to a multiple of the shard count in dim 0, as FSDP2 pads. Gathers in MixedPrecisionPolicy's
  param_dtype, reductions in its reduce_dtype.
- HSDP (--dp_replicate R: an R x S mesh, S = world / R, shard groups of consecutive ranks): the above inside a
  shard group, plus an all-reduce of each unit's reduce-scatter output across the R replicas, every micro-batch
  (FSDP2's default). On that 2-D mesh today's ESD and Muon take DTensor's generic path (full_tensor: an all-gather
  of every matrix over the shard group, on every rank; Muon then runs Newton-Schulz for every matrix on every rank).
- DDP: one all-reduce of every gradient on the last micro-batch (no_sync before).
- Muon under FSDP2 (muon_fsdp.ShardedMuon): each matrix's rows sent to its owner and the result's rows sent back.
- The ESD pass (distributed.sharded_weight_rows; sharded_rows under DDP): each matrix's rows sent to its owner,
  then one float64 all-reduce of the metric table; amortised over the updates that run it.
- Evaluation (training.evaluate) every --eval_every updates, amortised: each forward all-gathers every layer (the
  root once: it stays gathered until the next backward), one flag all-reduce per forward (idle ranks run a forward
  too), one of the sums.
- The loop's own small all-reduces: the token count (int64) and the loss/tokens/stop stats (3 x float32).
Not counted: gradient clipping's norm (a scalar through DTensor's functional collectives), checkpoints, start-up.

The time of an update (the overlap model):
- Matmuls run at 60% of the datasheet dense bf16 peak; float32 matmuls (the ESD's Gram matrices, float32
  Newton-Schulz) at 60% of the float32 peak; eigensolves at EIGH_FLOPS (an assumption: cuSOLVER's syevd is far
  from peak); the optimizer step streams its state at HBM bandwidth. Activation checkpointing adds each decoder
  layer's forward once more.
- FSDP2's prefetch: the all-gather of the next unit overlaps this unit's compute; the reduce-scatter (and HSDP's
  all-reduce, on the inter-node link, at the same time) of a unit overlaps the backward of the next one. A stage
  exposes max(0, its communication - its compute). Exposed in full: the first gathers of a forward, the last
  reduce-scatters of a backward, the Muon exchange and Newton-Schulz (after backward), the ESD pass and the eval.
- DDP: the bucketed all-reduce overlaps the last micro-batch's backward, the last 25 MB bucket exposed.
- A collective of n ranks takes (n-1)/n x its output (all-gather), its input (reduce-scatter), or twice its tensor
  (all-reduce) over the bus bandwidth (nccl-tests' busbw); intra-node when the group fits in a node, else the
  inter-node figure. A point-to-point exchange takes the busiest rank's sent or received bytes over it.
- The sharded ESD pass today runs one matrix at a time across ranks (the owner computes while the others wait):
  its time is the sum over all matrices. Under DDP each rank analyses its share at once.
MFU ceiling = training.flops' count for the update / (the update's modelled time x peak).
Peak memory: bench/memory_table.py's activation estimate (per layer and token 20h + 8i bytes at 2-byte compute,
2h with --activation_checkpointing plus one layer recomputed, the fused loss's float32 output-layer gradient and
a 64 MB logits chunk) plus the weights, gradients, optimizer state and FSDP2's gathered units in flight (the root,
the current and the prefetched layer, one layer's unsharded gradient). Not counted: the CUDA context and allocator
fragmentation (typically 1-3 GB), communication buffers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Datasheet and assumed figures, per GPU. peak: dense bf16 tensor-core FLOP/s (SXM); fp32: non-tensor float32
# FLOP/s (torch's default for float32 matmuls, no TF32); intra: effective NVLink bus bandwidth; inter: one NIC per
# GPU (400 Gb/s NDR, 200 Gb/s HDR); hbm: memory bandwidth; eigh: float32 symmetric eigensolver FLOP/s (assumed).
HARDWARE = {"h100": {"peak": 989e12, "fp32": 67e12, "intra": 360e9, "inter": 45e9, "hbm": 3.35e12, "eigh": 0.5e12,
                     "memory_gb": 80},
            "a100": {"peak": 312e12, "fp32": 19.5e12, "intra": 240e9, "inter": 22e9, "hbm": 2.04e12, "eigh": 0.3e12,
                     "memory_gb": 80}}
MATMUL_EFFICIENCY = 0.6
DDP_BUCKET_BYTES = 25 * 2 ** 20
ESD_METRICS = 8          # len(esd.METRICS): the width of the float64 table the ESD pass all-reduces
GB = 1024 ** 3


def _ceil(a, b):
    return -(-a // b)


class Shapes:
    """The parameter shapes of the model of ``config``, grouped as the trainer groups them."""

    def __init__(self, config: str, seq_len: int):
        import torch

        from alphadecay.esd import linear_modules
        from alphadecay.muon import hidden_matrices
        from alphadecay.training.flops import matmul_params, training_flops_per_token
        from alphadecay.training.model import build_model_on_meta
        from alphadecay.training.parallel.wrap import decoder_layers

        model, _ = build_model_on_meta(config, dtype=torch.float32, seed=0)
        c = model.config
        self.hidden, self.layers_n = c.hidden_size, c.num_hidden_layers
        self.inter = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * c.hidden_size
        self.vocab = c.vocab_size
        layers = decoder_layers(model)
        in_layer = {id(p) for m in layers for p in m.parameters()}
        self.layers = [[tuple(p.shape) for p in m.parameters()] for m in layers]
        self.root = [tuple(p.shape) for p in model.parameters() if id(p) not in in_layer]
        self.params = sum(p.numel() for p in model.parameters())
        self.hidden_matrices = [tuple(p.shape) for p in hidden_matrices(model)]
        self.linears = [tuple(m.weight.shape) for _, m in linear_modules(model)]
        self.matmul_params = matmul_params(model)
        self.flops_per_token = training_flops_per_token(model, seq_len)
        layer_matmul = sum(math.prod(s) for s in self.layers[0] if len(s) == 2)
        self.layer_flops_per_token = 6 * layer_matmul + 12 * self.hidden * seq_len   # one layer, fwd + bwd


def parse(argv):
    """(trainer args validated by the trainer, this model's own flags)."""
    from alphadecay.training.flags.args import build_parser, validate

    own = argparse.ArgumentParser(prog="bench/scale_model.py", add_help=False)
    own.add_argument("--gpus_per_node", type=int, default=8)
    own.add_argument("--nodes", type=int, default=1)
    own.add_argument("--gpu", choices=sorted(HARDWARE), default="h100")
    own.add_argument("--eval_fill", type=float, default=1.0,
                     help="mean fraction of an eval sequence holding tokens (1: full sequences, fewest batches)")
    own.add_argument("--json", action="store_true")
    mine, rest = own.parse_known_args(argv)
    from alphadecay.errors import ConfigError
    if mine.gpus_per_node < 1 or mine.nodes < 1:
        raise ConfigError(f"--gpus_per_node {mine.gpus_per_node} and --nodes {mine.nodes} must be at least 1")
    world = mine.gpus_per_node * mine.nodes
    args = validate(build_parser().parse_args(rest), world)
    replicate = args.dp_replicate                     # the trainer's flag, validated against the world above
    if replicate > 1 and not args.fsdp:
        raise ConfigError(f"--dp_replicate {replicate} needs --fsdp (HSDP shards inside each replica)")
    if world % replicate or world // replicate < 2 and replicate > 1:
        raise ConfigError(f"--dp_replicate {replicate} must divide the {world} GPUs into shard groups of at least 2")
    mine.world, mine.replicate = world, replicate
    return args, mine


class Comm:
    """Bytes passed in per rank, by item, and the link time of the busiest rank."""

    def __init__(self, world):
        self.world, self.items = world, {}

    def add(self, name, per_rank, count=1.0):
        """``per_rank``: one number (every rank alike) or one per rank."""
        vec = per_rank if isinstance(per_rank, list) else [per_rank] * self.world
        old = self.items.get(name, [0.0] * self.world)
        self.items[name] = [o + count * v for o, v in zip(old, vec)]

    def by_rank(self):
        return [sum(v[r] for v in self.items.values()) for r in range(self.world)]


def collective_time(kind, nbytes, n, bw):
    if n <= 1:
        return 0.0
    return {"all_gather": nbytes * (n - 1), "reduce_scatter": nbytes * (n - 1) / n,
            "all_reduce": 2 * nbytes * (n - 1) / n}[kind] / bw


def unit_bytes(shapes, n, gather_elem, reduce_elem):
    """(all-gather input, reduce-scatter input) bytes of one FSDP2 unit sharded over n ranks (dim 0 padded)."""
    shard = sum(_ceil(s[0], n) * math.prod(s[1:]) for s in shapes)
    return shard * gather_elem, shard * n * reduce_elem


def p2p_to_owners(shapes, owners, n, elem, both_ways):
    """Bytes each of n ranks sends when every matrix's rows go to its owner (and, ``both_ways``, come back);
    and each rank's received bytes."""
    from alphadecay.distributed import chunk_rows

    sent, recv = [0.0] * n, [0.0] * n
    for shape, o in zip(shapes, owners):
        _, count = chunk_rows(shape[0], n)
        row = math.prod(shape[1:]) * elem
        for r in range(n):
            if r != o:
                sent[r] += count[r] * row
                recv[o] += count[r] * row
                if both_ways:
                    sent[o] += count[r] * row
                    recv[r] += count[r] * row
    return sent, recv


def esd_passes_per_update(args) -> float:
    """The fraction of updates whose strategy step runs the ESD (strategies.py, llr.py), counted over the run."""
    total = args.num_training_steps
    # Module-wise strategies reassign every --unbalancedWD_every (AdaDecay from gradient norms, no ESD); the
    # others analyse only for monitoring, every --alpha_every (default 0: only at the start).
    every = args.alpha_every or 0
    decay_esd = lambda s: s % args.unbalancedWD_every == 0 if args.strategy == "alphadecay" else \
        every > 0 and s % every == 0
    llr_end = math.floor(args.LLR_ratio * total)
    llr_esd = lambda s: args.lr_strategy == "llr" and s % args.unbalancedlr_every == 0 and s <= llr_end
    return sum(1 for s in range(1, total) if decay_esd(s) or llr_esd(s)) / total


def model_update(args, hw_name="h100", gpus_per_node=8, nodes=1, replicate=1, eval_fill=1.0,
                 eval_forwards_per_rank=None, shapes=None) -> dict:
    from alphadecay.analysis import _cost as esd_cost
    from alphadecay.distributed import assign_owners
    from alphadecay.muon_fsdp import newton_schulz_cost
    from alphadecay.training.parallel.precision import Precision

    hw = HARDWARE[hw_name]
    world = gpus_per_node * nodes
    s = shapes or Shapes(args.model_config, args.max_length)
    prec = Precision(args.dtype or "bf16-mixed")
    w_elem = prec.weights.itemsize
    mm_rate, fp32_rate = MATMUL_EFFICIENCY * hw["peak"], MATMUL_EFFICIENCY * hw["fp32"]
    compute_rate = mm_rate if prec.compute.itemsize == 2 else fp32_rate
    fsdp, accum, T = args.fsdp, args.gradient_accumulation, args.max_length
    shard_n = world // replicate if fsdp else 1
    shard_bw = hw["intra"] if shard_n <= gpus_per_node else hw["inter"]
    world_bw = hw["intra"] if nodes == 1 else hw["inter"]
    comm = Comm(world)
    L = s.layers_n
    tokens = args.batch_size * T * accum
    ac = args.activation_checkpointing
    recompute = 1 + (s.layer_flops_per_token * L / 3 / s.flops_per_token if ac else 0)   # one more layer forward
    t_layer_fwd = s.layer_flops_per_token / 3 * args.batch_size * T / compute_rate
    head_fwd = (s.flops_per_token - L * s.layer_flops_per_token) / 3 * args.batch_size * T / compute_rate
    model_flops = s.flops_per_token * tokens
    t_compute = model_flops * recompute / compute_rate
    exposed = {}

    # Eval: forwards per rank per evaluation (evaluate.py: every rank runs max(batches per rank) forwards).
    if eval_forwards_per_rank is None:
        total_batches = _ceil(args.target_eval_tokens, max(1, int(args.eval_batch_size * T * eval_fill)))
        eval_forwards_per_rank = _ceil(total_batches, world)
    evals = 1 / args.eval_every if args.eval_every else 0.0
    t_eval_fwd = s.layer_flops_per_token / 3 * args.eval_batch_size * T / compute_rate

    if fsdp:
        g_elem = (prec.fsdp_param_dtype() or prec.weights).itemsize
        r_elem = 4 if prec.mixed else w_elem
        layer_ag, layer_rs = unit_bytes(s.layers[0], shard_n, g_elem, r_elem)
        root_ag, root_rs = unit_bytes(s.root, shard_n, g_elem, r_elem)
        comm.add("fsdp_all_gather_layers", layer_ag, 2 * L * accum)
        comm.add("fsdp_all_gather_root", root_ag, accum)
        comm.add("fsdp_reduce_scatter", layer_rs * L + root_rs, accum)
        t_ag = collective_time("all_gather", layer_ag, shard_n, shard_bw)
        t_rs = collective_time("reduce_scatter", layer_rs, shard_n, shard_bw)
        t_ag_root = collective_time("all_gather", root_ag, shard_n, shard_bw)
        t_rs_root = collective_time("reduce_scatter", root_rs, shard_n, shard_bw)
        t_ar = t_ar_root = 0.0
        if replicate > 1:
            comm.add("hsdp_all_reduce", (layer_rs * L + root_rs) / shard_n, accum)
            t_ar = collective_time("all_reduce", layer_rs / shard_n, replicate, hw["inter"])
            t_ar_root = collective_time("all_reduce", root_rs / shard_n, replicate, hw["inter"])
        bwd = 2 + (1 if ac else 0)
        fwd_exposed = t_ag_root + t_ag + (L - 1) * max(0.0, t_ag - t_layer_fwd)
        bwd_exposed = (max(0.0, t_ag - 2 * head_fwd) + (L - 1) * max(0.0, max(t_ag + t_rs, t_ar) - bwd * t_layer_fwd)
                       + max(t_rs, t_ar) + max(t_rs_root, t_ar_root))
        exposed["fsdp"] = accum * (fwd_exposed + bwd_exposed)
        comm.add("eval_all_gather", layer_ag * L * eval_forwards_per_rank + root_ag, evals)
        comm.add("fsdp_all_gather_root", -root_ag, evals)    # the update after an eval finds the root gathered
        comm.add("eval_flags", 8, evals * (eval_forwards_per_rank + 1))
        exposed["eval"] = evals * eval_forwards_per_rank * (t_ag + (L - 1) * max(0.0, t_ag - t_eval_fwd))
    else:
        grads = s.params * w_elem
        if world > 1:
            comm.add("ddp_all_reduce", grads)
            t_ar = collective_time("all_reduce", grads, world, world_bw)
            t_bwd_last = 2 * model_flops / 3 / accum / compute_rate
            exposed["ddp"] = max(t_ar - t_bwd_last, collective_time("all_reduce", DDP_BUCKET_BYTES, world, world_bw))
        exposed["eval"] = 0.0
    if world > 1:
        comm.add("eval_sums", 16, evals)
        comm.add("loop_stats", 8 + 12)
    eval_flops = s.flops_per_token / 3 * eval_forwards_per_rank * args.eval_batch_size * T * evals
    exposed["eval"] += eval_flops / compute_rate

    # Muon: Newton-Schulz (ns_steps x (4 m^2 n + 2 m^3), m <= n) on the owners, and the exchange.
    ns_flops, t_ns = 0.0, 0.0
    if args.optimizer == "muon":
        ns_elem = 4 if args.muon_ns_dtype == "float32" else 2
        ns_rate = fp32_rate if ns_elem == 4 else mm_rate
        cost = lambda sh: args.muon_ns_steps * (4 * min(sh) ** 2 * max(sh) + 2 * min(sh) ** 3)
        mats = s.hidden_matrices
        if fsdp and replicate == 1:
            owner = assign_owners([newton_schulz_cost(m) for m in mats], shard_n)
            sent, recv = p2p_to_owners(mats, owner, shard_n, ns_elem, both_ways=True)
            comm.add("muon_exchange", sent)
            ns_flops = max(sum(cost(m) for m, o in zip(mats, owner) if o == r) for r in range(shard_n))
            rounds = max(owner.count(r) for r in range(shard_n))
            owned = [[m for m, o in zip(mats, owner) if o == r] for r in range(shard_n)]
            t_ns = sum(max(cost(own[k]) if k < len(own) else 0 for own in owned) for k in range(rounds)) / ns_rate
            t_ns += max(max(sent), max(recv)) / shard_bw
        else:
            ns_flops = sum(cost(m) for m in mats)
            t_ns = ns_flops / ns_rate
            if fsdp:   # the 2-D mesh's generic path: every matrix all-gathered on every rank
                ag = sum(_ceil(m[0], shard_n) * m[1] for m in mats) * ns_elem
                comm.add("muon_all_gather", ag)
                t_ns += collective_time("all_gather", ag, shard_n, shard_bw)

    # ESD: float32 Gram (2 m^2 n) and eigensolve (about 4/3 m^3, eigenvalues only).
    passes = esd_passes_per_update(args)
    esd_flops_each = [2 * min(m) ** 2 * max(m) + 4 / 3 * min(m) ** 3 for m in s.linears]
    esd_time_each = [2 * min(m) ** 2 * max(m) / fp32_rate + 4 / 3 * min(m) ** 3 / hw["eigh"] for m in s.linears]
    table = len(s.linears) * ESD_METRICS * 8
    owner = assign_owners([esd_cost(_Shape(m)) for m in s.linears], world)
    esd_flops = max(sum(f for f, o in zip(esd_flops_each, owner) if o == r) for r in range(world)) * passes
    if fsdp and replicate == 1:
        sent, recv = p2p_to_owners(s.linears, owner, shard_n, w_elem, both_ways=False)
        comm.add("esd_gathers", sent, passes)
        t_esd = sum(esd_time_each) + max(max(sent), max(recv)) / shard_bw
    else:
        t_esd = max(sum(t for t, o in zip(esd_time_each, owner) if o == r) for r in range(world))
        if fsdp:
            ag = sum(_ceil(m[0], shard_n) * math.prod(m[1:]) for m in s.linears) * w_elem
            comm.add("esd_all_gather", ag, passes)
            t_esd += collective_time("all_gather", ag, shard_n, shard_bw)
    if world > 1:
        comm.add("esd_table", table, passes)
    exposed["esd"] = t_esd * passes
    exposed["newton_schulz"] = t_ns

    # The optimizer step streams weights, gradients and state (read and written) at HBM bandwidth.
    states = 2 if args.optimizer in ("adam", "adamw") else 1.5
    local = s.params / (shard_n if fsdp else 1)
    exposed["optimizer_step"] = local * w_elem * (1 + 1 + 2 * (1 + states)) / hw["hbm"]

    t_update = t_compute + sum(exposed.values())
    memory = peak_memory(args, s, prec, shard_n if fsdp else 1)
    by_rank = comm.by_rank()
    return {"world": world, "parallel": ("hsdp" if replicate > 1 else "fsdp") if fsdp else "ddp",
            "gpu": hw_name, "nodes": nodes, "gpus_per_node": gpus_per_node, "replicate": replicate,
            "shard": shard_n, "gradient_accumulation": accum, "params": s.params,
            "flops_per_update_per_rank": model_flops + ns_flops + esd_flops,
            "flops_breakdown": {"model": model_flops, "newton_schulz": ns_flops, "esd": esd_flops,
                                "eval (not in the total)": eval_flops},
            "comm_bytes_per_update_per_rank": max(by_rank), "comm_bytes_by_rank": by_rank,
            "comm_breakdown": {k: max(v) for k, v in comm.items.items()},
            "seconds_per_update": t_update, "compute_seconds": t_compute,
            "exposed_seconds": exposed, "esd_passes_per_update": passes,
            "peak_memory_gb": memory, "fits": memory <= hw["memory_gb"],
            "mfu_ceiling": model_flops / (t_update * hw["peak"])}


class _Shape:
    """A weight-like object with ``.shape`` for analysis._cost."""

    def __init__(self, shape):
        self.shape = shape


def peak_memory(args, s, prec, shard_n) -> float:
    h, i, v, L, T, b = s.hidden, s.inter, s.vocab, s.layers_n, args.max_length, args.batch_size
    c = prec.compute.itemsize / 2      # memory_table's activation bytes are for a 2-byte compute dtype
    per_layer_token = 2 * h if args.activation_checkpointing else 20 * h + 8 * i
    acts = c * b * T * (L * per_layer_token + (20 * h + 8 * i if args.activation_checkpointing else 0))
    acts += 4 * v * h + 64 * 2 ** 20
    w = prec.weights.itemsize
    states = {"adam": 2, "adamw": 2}.get(args.optimizer)
    if states is None:   # Muon: one momentum for the hidden matrices, Adam's two for the rest
        hidden = sum(math.prod(m) for m in s.hidden_matrices)
        state_elems = hidden + 2 * (s.params - hidden)
    else:
        state_elems = states * s.params
    if shard_n == 1:   # DDP: the gradients once more in its buckets; bf16-mixed: autocast's bf16 weight copies
        persistent = s.params * w * 3 + state_elems * w + (2 * s.params if prec.mixed else 0)
    else:
        g = (prec.fsdp_param_dtype() or prec.weights).itemsize
        r = 4 if prec.mixed else w
        layer = sum(math.prod(x) for x in s.layers[0])
        root = sum(math.prod(x) for x in s.root)
        persistent = (s.params * 2 * w + state_elems * w) / shard_n + (2 * layer + root) * g + layer * r
    return (persistent + acts) / GB


def main(argv=None) -> int:
    from alphadecay.errors import ConfigError, print_error

    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(__doc__ + "\nFlags: torchrun_main.py's (python torchrun_main.py --help) plus --gpus_per_node N, --nodes N, "
              "--gpu {a100,h100}, --eval_fill F, --json, --recipes (--dp_replicate R is the trainer's).")
        return 0
    try:
        if "--recipes" in argv:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from scale_recipes import print_recipes
            print_recipes(as_json="--json" in argv)
            return 0
        args, mine = parse(argv)
        r = model_update(args, mine.gpu, mine.gpus_per_node, mine.nodes, mine.replicate, mine.eval_fill)
    except ConfigError as e:
        print_error(str(e))
        return 2
    if not mine.json:
        for k, v in r.items():
            print(f"{k}: {v}")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
