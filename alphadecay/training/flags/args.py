"""Command-line flags: the release's (as switches that mean what they say), GaLore's, and ours."""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

from ...cli import parse_bool
from ...assign import ASSIGN_FUNCS
from ...powerlaw import PL_FITTINGS
from ...strategies import ESD_METRICS, STRATEGIES
from ...errors import ConfigError, one_line
from .checks import check_numbers, require as _require
from .features import check_feature_flags, non_default_flags, passed_flags, print_warnings
from .lr import add_lr_flags, check_lr_flags
from .muon import add_muon_flags, check_muon_flags
from ..parallel.precision import ALIASES


def _token_count(text: str) -> int:
    """'100M', '1.5B', '2e9' or an integer number of tokens."""
    t = str(text).strip().upper()
    scale = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a token count such as 100M or 1B, got {text!r}") from None
    return int(value)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line instead of the usage block: the message names the flag; --help has the rest.
        self.exit(2, f"error: {message}; see python torchrun_main.py --help\n")


def add_weight_decay_flags(p: argparse.ArgumentParser, *, weight_decay: float) -> None:
    """The strategy flags (the release's names), shared by pretraining, GLUE and ViT: read back by
    ``resolve_strategy``, ``check_weight_decay_flags`` and ``optim.strategy_from_args``."""
    w = p.add_argument_group("weight decay")
    w.add_argument("--weight_decay", type=float, default=weight_decay, help="base decay wd (0 gives the WD=0 baseline)")
    w.add_argument("--strategy", default=None, choices=sorted(STRATEGIES),
                   help="weight-decay strategy; derived from the release's flags when omitted: "
                        "--use_modulewise_wd -> alphadecay (adadecay with --esd_metric_for_tb gradnorm), "
                        "--use_AWD_NeurIPS2023 -> awd, neither -> uniform (none when --weight_decay 0)")
    w.add_argument("--use_modulewise_wd", action="store_true", help="module-wise decay (AlphaDecay); without it "
                   "the run is Uniform")
    w.add_argument("--alpha_positively_with_WD", action="store_true",
                   help="larger score -> larger decay (AlphaDecay's direction); without it the mapping is reversed")
    w.add_argument("--use_AWD_NeurIPS2023", action="store_true", help="the AWD baseline (decay scaled 100x, as the release)")
    w.add_argument("--unbalancedWD_every", type=int, default=500, help="reassign module-wise decays every N updates")
    w.add_argument("--esd_metric_for_tb", default="alpha", choices=ESD_METRICS, help="score that drives the decays")
    w.add_argument("--assign_func", default="tb_linear_map", choices=ASSIGN_FUNCS, help="score -> decay map")
    w.add_argument("--wd_min_ratio", type=float, default=0.6666, help="decay of the smallest score, x wd")
    w.add_argument("--wd_max_ratio", type=float, default=3.0, help="decay of the largest score, x wd")
    w.add_argument("--pl_fitting", default="median", choices=PL_FITTINGS, help="xmin selection for the Hill fit")
    w.add_argument("--xmin_pos", type=float, default=2, help="xmin index = N / xmin_pos (median fitting)")
    w.add_argument("--filter_zeros", type=parse_bool, default=False, help="drop eigenvalues <= 1e-5 before fitting")
    w.add_argument("--eigs_thresh", type=int, default=50, help="modules with fewer eigenvalues keep wd")
    w.add_argument("--remove_first_layer", type=parse_bool, default=True, help="first linear module keeps wd")
    w.add_argument("--remove_last_layer", type=parse_bool, default=True, help="last linear module (lm_head) keeps wd")
    w.add_argument("--farms", action="store_true", help="fit alpha on square sub-windows (FARMS aspect-ratio fix)")
    w.add_argument("--esd_float64", action="store_true", help="compute eigenvalues in float64")
    w.add_argument("--alpha_every", type=int, default=None,
                   help="log module alphas every N updates (default: --unbalancedWD_every for module-wise "
                        "strategies, only at the start otherwise; 0 = only at the start)")
    w.add_argument("--batchnorm", type=parse_bool, default=True, help="accepted for the release's scripts (no BatchNorm in LLaMA)")
    w.add_argument("--batchnorm_type", default="name", help="accepted for the release's scripts")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="torchrun_main.py",
        allow_abbrev=False,  # a typo like --use_modulewise must fail, not silently mean --use_modulewise_wd
        description="Pretrain LLaMA on C4 with module-wise weight decay (AlphaDecay) or a baseline. "
                    "Runs under torchrun --nproc_per_node=N or as plain python on one CPU/GPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument_group("model and optimisation")
    a.add_argument("--model_config", default="configs/llama_60m.json", help="JSON model config (see configs/)")
    a.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "muon"], type=str.lower,
                   help="adam: coupled L2 decay (the paper's Table 2); adamw: decoupled decay (Table 12); muon: "
                        "Muon for the hidden 2-D matrices (q, k, v, o, gate, up, down of every block), AdamW for "
                        "embeddings, the output layer, norms and any non-2-D parameter, one schedule for both")
    a.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    a.add_argument("--batch_size", type=int, default=32, help="sequences per GPU/process per micro-step")
    a.add_argument("--total_batch_size", type=int, default=None,
                   help="sequences per optimizer update over all ranks; sets --gradient_accumulation")
    a.add_argument("--gradient_accumulation", type=int, default=None,
                   help="micro-steps per update (derived from --total_batch_size when omitted)")
    a.add_argument("--num_training_steps", type=int, default=20000, help="optimizer updates to train for")
    a.add_argument("--max_train_tokens", type=_token_count, default=None,
                   help="train on this many tokens (e.g. 100M, 1B) instead of --num_training_steps: "
                        "updates = ceil(tokens / (total_batch_size * max_length))")
    a.add_argument("--warmup_steps", type=int, default=2000, help="linear warm-up updates")
    a.add_argument("--scheduler", default="cosine", choices=["linear", "cosine", "cosine_restarts"],
                   help="learning-rate schedule after warm-up")
    a.add_argument("--min_lr_ratio", type=float, default=0.1,
                   help="the schedule's final value (its cosine/linear floor) as a fraction of --lr; not LLR's "
                        "per-module --lr_min_ratio")
    a.add_argument("--grad_clipping", type=float, default=0.0, help="clip the global grad norm (0 = off)")
    # The LLR release's YAML says betas (0.9, 0.95) but never passes them: its runs used torch's (0.9, 0.999).
    a.add_argument("--beta1", type=float, default=0.9, help="Adam/AdamW beta1 (also Muon's AdamW half)")
    a.add_argument("--beta2", type=float, default=0.999,
                   help="Adam/AdamW beta2 (also Muon's AdamW half); 0.999 is what the AlphaDecay and LLR releases ran")
    a.add_argument("--dtype", default=None, choices=["bfloat16", "bf16", "bf16-mixed", "bf16_mixed", "float32",
                                                    "fp32"],
                   help="bfloat16: pure bf16 weights and optimizer state (the paper's runs); bf16-mixed: float32 "
                        "weights and optimizer state, bf16 compute; float32. Default bf16-mixed on a bf16-capable "
                        "GPU, else float32 (the same weights and optimizer state under DDP and --fsdp; README Precision says how "
                        "bf16-mixed computes under each)")
    a.add_argument("--max_length", type=int, default=256, help="tokens per sequence")
    a.add_argument("--seed", type=int, default=0, help="model init and dropout seed (data order is fixed by seed 42)")
    a.add_argument("--activation_checkpointing", action="store_true", help="recompute activations in backward")
    a.add_argument("--compile", action="store_true",
                   help="torch.compile the decoder (the whole model for types other than llama and gpt2; under "
                        "--fsdp each decoder layer, before it is sharded)")
    a.add_argument("--fsdp", action="store_true",
                   help="shard parameters, gradients and optimizer state over the ranks with FSDP2 (each decoder "
                        "layer, then the root), shards in the weights' dtype of --dtype; default: DDP")
    a.add_argument("--dp_replicate", type=int, default=1,
                   help="HSDP under --fsdp: R replicas, each FSDP2-sharded over world/R ranks (a 2-D device mesh, "
                        "replicate x shard: gradients reduce-scattered inside a replica, all-reduced across "
                        "replicas); R must divide the number of ranks; default 1: plain --fsdp over every rank")
    a.add_argument("--use_hf_model", action="store_true", help="accepted for the release's scripts; models always "
                   "come from transformers here")

    add_weight_decay_flags(p, weight_decay=1e-5)
    add_lr_flags(p)
    add_muon_flags(p)

    d = p.add_argument_group("data")
    d.add_argument("--dataset_path", default=None,
                   help="local training text: a file, glob or folder of json/jsonl/json.gz/parquet/txt, or a folder "
                        "written by alphadecay prepare-data (default: stream allenai/c4 'en' from the hub)")
    d.add_argument("--eval_dataset_path", default=None,
                   help="local validation text or a prepared folder (default: a prepared --dataset_path's "
                        "validation split, else the hub dataset's --eval_split)")
    d.add_argument("--dataset_name", default="allenai/c4",
                   help="hub dataset streamed without --dataset_path, e.g. HuggingFaceFW/fineweb")
    d.add_argument("--dataset_config", default="en",
                   help="its configuration, e.g. sample-10BT for FineWeb ('' for none)")
    d.add_argument("--text_field", default="text", help="the hub dataset's column holding the documents")
    d.add_argument("--eval_split", default="validation",
                   help="the hub split evaluated without --eval_dataset_path; 'train' holds out the train split's "
                        "first shard for validation and trains on the others (FineWeb has only a train split)")
    d.add_argument("--tokenizer", default="t5-base", help="tokenizer: a hub name or a local folder")
    d.add_argument("--packing", action="store_true",
                   help="concatenate documents into full sequences (default: truncate and pad each, as the paper)")
    d.add_argument("--workers", type=int, default=8, help="DataLoader worker processes per rank")

    e = p.add_argument_group("evaluation, checkpoints, logging")
    e.add_argument("--eval_every", type=int, default=1000, help="evaluate every N updates (0 = only at the end)")
    e.add_argument("--target_eval_tokens", type=_token_count, default=10_000_000,
                   help="validation tokens per evaluation")
    e.add_argument("--eval_batch_size", type=int, default=None, help="sequences per eval batch (default --batch_size)")
    e.add_argument("--save_every", type=int, default=10000, help="checkpoint every N updates (plus one at the end)")
    e.add_argument("--save_dir", default=None, help="run folder: checkpoints and metrics.jsonl "
                   "(default checkpoints/<name>)")
    e.add_argument("--keep_last_checkpoints", type=int, default=0, help="keep only the newest K checkpoints (0 = all)")
    e.add_argument("--overwrite", action="store_true",
                   help="start afresh in a --save_dir that holds another run: that run is moved aside to "
                        "<save_dir>.replaced-<time>, not deleted (without it such a start is an error)")
    e.add_argument("--continue_from", default=None,
                   help="resume the full training state from a checkpoint folder, or 'latest' for the newest "
                        "complete checkpoint in --save_dir")
    e.add_argument("--eval_only", action="store_true",
                   help="evaluate the weights of --continue_from (any number of ranks) and exit")
    e.add_argument("--on_nonfinite", default="stop", choices=["stop", "skip"],
                   help="on a NaN/Inf loss or gradient: stop with an error, or skip that update")
    e.add_argument("--log_every", type=int, default=1, help="write a training record every N updates")
    e.add_argument("--wandb_name", default=None, help="wandb run name (default --name)")
    e.add_argument("--wandb_project", default=os.environ.get("WANDB_PROJECT", "AlphaDecay"), help="wandb project")
    e.add_argument("--name", default="test", help="run name")
    e.add_argument("--tags", default=None, help="comma-separated wandb tags")
    e.add_argument("--no_wandb", action="store_true", help="do not use wandb (same as WANDB_MODE=disabled)")
    e.add_argument("--single_cuda", action="store_true", help="one process, no DDP (the release's flag)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--dist_timeout_minutes", type=float, default=30.0,
                   help="how long a collective waits for the other ranks before the run fails (torch's default, "
                        "10, is shorter than rank 0 writing a 7B checkpoint while the others wait)")
    return p


def resolve_strategy(args) -> str:
    derived = "awd" if args.use_AWD_NeurIPS2023 else (
        ("adadecay" if args.esd_metric_for_tb == "gradnorm" else "alphadecay") if args.use_modulewise_wd
        else ("none" if args.weight_decay == 0 else "uniform"))
    _require(not (args.use_AWD_NeurIPS2023 and args.use_modulewise_wd),
             "--use_AWD_NeurIPS2023 and --use_modulewise_wd are two different methods; pass only one")
    if args.strategy is None:
        return derived
    _require(not (args.use_AWD_NeurIPS2023 or args.use_modulewise_wd) or args.strategy == derived,
             f"--strategy {args.strategy} contradicts the release flags (which mean {derived}); drop one of them")
    return args.strategy


# (flag, test, what it must be). 0 means "off" only where the flag's help says so.
_NUMBER_RULES = [
    ("lr", lambda v: v > 0, "positive"), ("batch_size", lambda v: v > 0, "positive"),
    ("max_length", lambda v: v > 1, "at least 2 (a sequence must predict a token)"),
    ("num_training_steps", lambda v: v > 0, "positive"), ("weight_decay", lambda v: v >= 0, ">= 0"),
    ("warmup_steps", lambda v: v >= 0, ">= 0"),
    ("min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("grad_clipping", lambda v: v >= 0, ">= 0 (0 = off)"), ("workers", lambda v: v >= 0, ">= 0"),
    ("beta1", lambda v: 0 <= v < 1, "in [0, 1)"), ("beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("target_eval_tokens", lambda v: v > 0, "positive"),
    ("eval_every", lambda v: v >= 0, ">= 0 (0 = only at the end)"),
    ("save_every", lambda v: v >= 0, ">= 0 (0 = only at the end)"),
    ("keep_last_checkpoints", lambda v: v >= 0, ">= 0 (0 = keep all)"),
    ("dist_timeout_minutes", lambda v: v > 0, "> 0"), ("log_every", lambda v: v >= 1, ">= 1"),
    ("eval_batch_size", lambda v: v is None or v > 0, "positive"),
    ("total_batch_size", lambda v: v is None or v > 0, "positive"),
    ("gradient_accumulation", lambda v: v is None or v >= 1, ">= 1"),
]
_WEIGHT_DECAY_RULES = [
    ("weight_decay", lambda v: v >= 0, ">= 0"), ("unbalancedWD_every", lambda v: v >= 1, ">= 1"),
    ("xmin_pos", lambda v: v >= 1, ">= 1"), ("eigs_thresh", lambda v: v >= 0, ">= 0"),
    ("alpha_every", lambda v: v is None or v >= 0, ">= 0 (0 = only at the start)"),
    ("wd_min_ratio", lambda v: v >= 0, ">= 0"), ("wd_max_ratio", lambda v: v >= 0, ">= 0"),
]


def check_weight_decay_flags(args) -> None:
    """Validates the strategy flags and sets ``args.strategy`` from them (see resolve_strategy)."""
    check_numbers(args, _WEIGHT_DECAY_RULES)
    _require(args.wd_min_ratio <= args.wd_max_ratio,
             f"need 0 <= --wd_min_ratio <= --wd_max_ratio, got {args.wd_min_ratio} and {args.wd_max_ratio}")
    args.strategy = resolve_strategy(args)


def _check_numbers(args) -> None:
    check_numbers(args, _NUMBER_RULES)
    check_weight_decay_flags(args)
    check_lr_flags(args)
    check_muon_flags(args)
    _require(args.warmup_steps <= args.num_training_steps,
             f"--warmup_steps {args.warmup_steps} is beyond --num_training_steps {args.num_training_steps}; "
             f"warm up for fewer updates")
    _require(re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device or "") is not None,
             f"--device {args.device!r} is not one of auto, cpu, cuda, cuda:N; pass one of them")


# Keys every transformers config may carry beyond its class's own attributes.
_GENERIC_CONFIG_KEYS = {"architectures", "model_type", "transformers_version", "_name_or_path", "torch_dtype", "dtype"}


def check_model_config(path: str, max_length: int | None = None):
    """The transformers config of a model file, or a ConfigError naming what is wrong with it."""
    _require(os.path.isfile(path), f"model config {path!r} not found; pass --model_config configs/llama_60m.json "
                                   f"or another file")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"model config {path!r} is not valid JSON ({e}); fix the file") from None
    _require(isinstance(cfg, dict) and "model_type" in cfg, f"model config {path!r} has no 'model_type'; copy one "
                                                            f"from configs/")
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    from ..model import config_from_dict, release_keys_read
    cfg = release_keys_read(cfg, path)   # the release's max_sequence_length and LLaMAForCausalLM
    # Encoders (bert, roberta, ...) have a causal head too, but only as decoders (is_decoder=True).
    encoder = cfg["model_type"] in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not cfg.get("is_decoder")
    _require(cfg["model_type"] in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not encoder,
             f"model config {path!r} has model_type {cfg['model_type']!r}, which is not a causal language model; "
             f"use a causal type such as llama or gpt2")
    try:
        config = config_from_dict(cfg, path)
    except Exception as e:  # noqa: BLE001 - transformers raises ValueError, its own validation errors, OSError
        raise ConfigError(f"model config {path!r} is rejected by transformers ({one_line(e, 200)}); fix the file") \
            from None
    known = set(type(config)().to_dict()) | set(getattr(type(config), "attribute_map", {})) | _GENERIC_CONFIG_KEYS
    unknown = sorted(set(cfg) - known)
    _require(not unknown, f"model config {path!r} has unknown key(s) {', '.join(unknown)} (a typo?); "
                          f"use the names of configs/llama_60m.json")
    layers = getattr(config, "num_hidden_layers", None)
    _require(layers is None or layers >= 1,
             f"model config {path!r} has {'n_layer' if 'n_layer' in cfg else 'num_hidden_layers'} {layers}; a model "
             f"needs at least one layer (configs/llama_9m.json has 4)")
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    _require(max_length is None or positions is None or max_length <= positions,
             f"--max_length {max_length} is beyond the model's {positions} positions; lower --max_length or raise "
             f"max_position_embeddings in {path}")
    return config


def _check_data_paths(args) -> None:
    from ..data.text_sources import resolve_data_files
    from ..data.prepared import is_prepared
    for flag in ("dataset_path", "eval_dataset_path"):
        if getattr(args, flag) is not None and not is_prepared(getattr(args, flag)):   # opened (and checked) later
            try:
                resolve_data_files(getattr(args, flag))
            except ConfigError as e:
                raise ConfigError(f"--{flag}: {e}") from None
    for flag in ("dataset_name", "text_field", "eval_split"):
        _require(bool(str(getattr(args, flag)).strip()), f"--{flag} is empty; pass a hub dataset name, column or split "
                 f"(defaults: allenai/c4, text, validation)")


def check_flags(args, passed: frozenset[str] | None = None) -> list[str]:
    """The flags' own checks, in-process and without files: values, then the rule for the flags of a feature that
    is off (``features``; ``passed``: the dests on the command line, default: those that differ from the defaults).
    Returns the warnings to print."""
    _check_numbers(args)
    parser = build_parser()
    if passed is None:
        passed = non_default_flags(parser, args)
    return check_feature_flags(args, passed, order=[a.dest for a in parser._actions])


def validate(args, world_size: int = 1, passed: frozenset[str] | None = None):
    """Check everything that can be checked before any work; raise ConfigError with a one-line fix."""
    print_warnings(check_flags(args, passed))
    if not args.eval_only:
        check_model_config(args.model_config, args.max_length)
    _check_data_paths(args)
    _require(not (args.single_cuda and world_size > 1),
             "--single_cuda runs one process; launch with --nproc_per_node=1 or drop --single_cuda")
    if args.total_batch_size is not None:
        per_update = args.batch_size * world_size
        _require(args.total_batch_size % per_update == 0,
                 f"--total_batch_size {args.total_batch_size} is not a multiple of --batch_size x ranks "
                 f"({args.batch_size} x {world_size}); pick sizes that divide")
        accum = args.total_batch_size // per_update
        _require(args.gradient_accumulation in (None, accum),
                 f"--gradient_accumulation {args.gradient_accumulation} contradicts --total_batch_size "
                 f"(which needs {accum}); pass only one of them")
        args.gradient_accumulation = accum
    else:
        args.gradient_accumulation = args.gradient_accumulation or 1
        args.total_batch_size = args.batch_size * world_size * args.gradient_accumulation
    if args.max_train_tokens is not None:
        _require(args.max_train_tokens > 0, "--max_train_tokens must be positive")
        args.num_training_steps = math.ceil(args.max_train_tokens / (args.total_batch_size * args.max_length))
    args.dtype = ALIASES.get(args.dtype, args.dtype)
    args.eval_batch_size = args.eval_batch_size or args.batch_size
    args.wandb_name = args.wandb_name or args.name
    args.save_dir = args.save_dir or os.path.join("checkpoints", args.name)
    _require(not (args.overwrite and args.continue_from is not None),
             "--overwrite starts a new run and --continue_from continues one; pass only one of them")
    _require(not args.fsdp or world_size > 1,
             "--fsdp shards over torchrun's ranks; launch with torchrun --nproc_per_node=N (N >= 2) or drop --fsdp")
    _require(args.dp_replicate >= 1, f"--dp_replicate {args.dp_replicate} is below 1; pass the number of replicas "
             f"(1: plain --fsdp)")
    _require(args.dp_replicate == 1 or args.fsdp, "--dp_replicate replicates FSDP2 shards (HSDP); add --fsdp or drop "
             "--dp_replicate (DDP already replicates the whole model on every rank)")
    _require(world_size % args.dp_replicate == 0, f"--dp_replicate {args.dp_replicate} does not divide the "
             f"{world_size} ranks; pass a divisor of the world size (each replica shards over world/R ranks)")
    _require(not args.eval_only or args.continue_from is not None,
             "--eval_only needs --continue_from <checkpoint folder> (the weights to evaluate)")
    if args.continue_from == "latest":
        pass  # resolved against --save_dir by the checkpoint module
    elif args.continue_from is not None:
        _require(os.path.isdir(args.continue_from),
                 f"--continue_from {args.continue_from!r} is not a folder; pass a checkpoint folder "
                 f"(<save_dir>/model_<step>) or 'latest'")
    return args


def parse_args(argv=None, world_size: int = 1):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    return validate(args, world_size, passed=passed_flags(parser, argv))
