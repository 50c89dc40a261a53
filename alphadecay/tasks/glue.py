"""GLUE fine-tuning with every weight-decay strategy (the paper's Table 4): transformers' ``Trainer`` on
``AutoModelForSequenceClassification`` (roberta-base by default, any HF encoder by flag), the strategy as the
plug-in (``integrations.create_optimizer`` + ``AlphaDecayCallback``), logs as pretraining's metrics.jsonl.

    python -m alphadecay.tasks.glue --task rte --strategy alphadecay --weight_decay 0.1 --output_dir runs/rte
    python -m alphadecay.tasks.glue --task mrpc --data_dir my_glue/mrpc ...   # local train/validation files

The paper gives no fine-tuning hyper-parameters; the defaults are the RoBERTa paper's GLUE recipe (its
fairseq README): AdamW betas (0.9, 0.98), eps 1e-6, weight decay 0.1, 10 epochs, linear decay after a 6%
warm-up, no clipping, and per task lr 1e-5 (2e-5 for RTE, STS-B) and batch 32 (16 for RTE, MRPC, CoLA,
STS-B). Every one is a flag. The score of a task is its standard metric (x100): CoLA Matthews correlation,
STS-B Pearson, MNLI matched accuracy, the others accuracy; F1 (MRPC, QQP), Spearman (STS-B) and MNLI
mismatched accuracy are logged beside it. The dev sets are scored after every epoch; the final record holds the
best epoch (by the task's metric, what fairseq reports and Table 4 shows) and the last one.

One process per GPU, as fairseq: on several visible GPUs run it under torchrun (Trainer then runs DDP) or give
it one GPU with CUDA_VISIBLE_DEVICES; --batch_size is the recipe's batch per update, split over the ranks and
--gradient_accumulation.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from ..errors import ConfigError, one_line

@dataclass(frozen=True)
class Task:
    """A GLUE task: its text columns (the hub's names), classes (1 = regression), main metric, RoBERTa's lr and
    batch for it, and its evaluation splits."""
    keys: tuple[str, str | None]
    num_labels: int
    metric: str
    lr: float
    batch_size: int
    eval_splits: tuple[str, ...] = ("validation",)


TASKS = {
    "cola": Task(("sentence", None), 2, "matthews", 1e-5, 16),
    "sst2": Task(("sentence", None), 2, "accuracy", 1e-5, 32),
    "mrpc": Task(("sentence1", "sentence2"), 2, "accuracy", 1e-5, 16),
    "qqp": Task(("question1", "question2"), 2, "accuracy", 1e-5, 32),
    "stsb": Task(("sentence1", "sentence2"), 1, "pearson", 2e-5, 16),
    "mnli": Task(("premise", "hypothesis"), 3, "matched_accuracy", 1e-5, 32,
                 ("validation_matched", "validation_mismatched")),
    "qnli": Task(("question", "sentence"), 2, "accuracy", 1e-5, 32),
    "rte": Task(("sentence1", "sentence2"), 2, "accuracy", 2e-5, 16),
}
HUB_DATASET = "nyu-mll/glue"
_TIMINGS = ("_runtime", "_samples_per_second", "_steps_per_second")
_EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv"}


def task_metrics(task: str, predictions, labels) -> dict[str, float]:
    """The task's metrics from the model's outputs (logits, or scores for STS-B)."""
    import numpy as np

    from . import scores
    predictions = np.asarray(predictions)
    if TASKS[task].num_labels == 1:
        pred = predictions.reshape(-1)
        return {"pearson": scores.pearson(pred, labels), "spearman": scores.spearman(pred, labels)}
    pred = predictions.argmax(-1)
    out = {"accuracy": scores.accuracy(pred, labels)}
    if task in ("mrpc", "qqp"):
        out["f1"] = scores.f1(pred, labels)
    if task == "cola":
        out["matthews"] = scores.matthews(pred, labels)
    return out


def _local_files(data_dir: str, splits: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    found = {}
    for split in splits:
        names = [f"{split}{ext}" for ext in _EXTENSIONS if os.path.isfile(os.path.join(data_dir, f"{split}{ext}"))]
        if not names:
            raise ConfigError(f"--data_dir {data_dir!r} has no {split} file ({split}.jsonl, .json, .csv or .tsv with "
                              f"the GLUE columns of the hub's {HUB_DATASET}); add it or drop --data_dir")
        found[split] = os.path.join(data_dir, names[0])
    kinds = {_EXTENSIONS[os.path.splitext(f)[1]] for f in found.values()}
    if len(kinds) > 1:
        raise ConfigError(f"--data_dir {data_dir!r} mixes json and csv files; use one format for every split")
    return kinds.pop(), found


def load_splits(task: str, data_dir: str | None, *, cache_dir: str | None = None):
    """{'train': Dataset, <eval split>: Dataset, ...} from local files, else from the hub (or its cache)."""
    import datasets
    spec = TASKS[task]
    splits = ("train",) + spec.eval_splits
    if data_dir is not None:
        kind, files = _local_files(data_dir, splits)
        extra = {"delimiter": "\t"} if any(f.endswith(".tsv") for f in files.values()) else {}
        data = datasets.load_dataset(kind, data_files=files, cache_dir=cache_dir, **extra)
    else:
        try:
            data = datasets.load_dataset(HUB_DATASET, task, cache_dir=cache_dir)
        except Exception as e:  # noqa: BLE001 - no network, no cache: the hub client raises many types
            raise ConfigError(f"cannot load {HUB_DATASET}/{task} ({one_line(e, 150)}); connect to the hub once "
                              f"(it is cached), or pass --data_dir with local train/validation files") from None
    needed = [k for k in spec.keys if k] + ["label"]
    for split in splits:
        missing = [c for c in needed if c not in data[split].column_names]
        if missing:
            raise ConfigError(f"the {split} data of {task} lacks column(s) {', '.join(missing)} (has "
                              f"{', '.join(data[split].column_names)}); use the column names of {HUB_DATASET}")
    return {s: data[s] for s in splits}


def tokenize(splits: dict, task: str, tokenizer, max_length: int) -> dict:
    first, second = TASKS[task].keys
    regression = TASKS[task].num_labels == 1

    def encode(batch):
        texts = (batch[first],) if second is None else (batch[first], batch[second])
        out = tokenizer(*texts, truncation=True, max_length=max_length)
        out["labels"] = [float(v) for v in batch["label"]] if regression else batch["label"]
        return out

    return {name: ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenizing {name}")
            for name, ds in splits.items()}


def task_score(task: str, metrics: dict[str, float]) -> float:
    """The number Table 4 reports for the task, in percent."""
    return 100 * metrics[TASKS[task].metric]


def per_device_batch(batch_size: int, accumulation: int, *, cuda: bool) -> int:
    """The per-device batch that makes ``batch_size`` sequences per update over the ranks and micro-steps.

    Refuses several visible GPUs in a process not started by torchrun: Trainer would then wrap the model in
    nn.DataParallel over all of them (its n_gpu > 1 path), a batch split fairseq's recipe never used.
    """
    import torch
    launched = "LOCAL_RANK" in os.environ   # what Trainer (accelerate) reads to choose DDP
    visible = torch.cuda.device_count() if cuda else 0
    if visible > 1 and not launched:
        raise ConfigError(f"{visible} GPUs are visible to one process (Trainer would use nn.DataParallel); run one "
                          f"process per GPU: torchrun --nproc_per_node={visible} -m alphadecay.tasks.glue ..., or "
                          f"CUDA_VISIBLE_DEVICES=0 for one GPU")
    world = int(os.environ.get("WORLD_SIZE", "1")) if launched else 1
    if batch_size % (world * accumulation):
        raise ConfigError(f"--batch_size {batch_size} (sequences per update) is not divisible by {world} rank(s) x "
                          f"--gradient_accumulation {accumulation}; pass a batch size or accumulation that divides")
    return batch_size // (world * accumulation)


def usable_positions(model) -> int | None:
    """Tokens the model's learned position table can take: RoBERTa-style tables (with a padding index) number
    positions from padding_idx + 1, so 514 rows hold 512 tokens; None when the model has no such table."""
    import torch
    for name, module in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(module, torch.nn.Embedding):
            offset = 0 if module.padding_idx is None else module.padding_idx + 1
            return module.num_embeddings - offset
    return None


def check_max_length(max_length: int, model) -> int:
    """``max_length`` (0 = as many as the model takes, at most 512 as RoBERTa's recipe), checked before training."""
    usable = usable_positions(model)
    if max_length == 0:
        return min(512, usable) if usable else 512
    if usable is not None and max_length > usable:
        raise ConfigError(f"--max_length {max_length} exceeds the {usable} positions of the model "
                          f"({model.config.model_type}, max_position_embeddings "
                          f"{model.config.max_position_embeddings}); pass --max_length {usable} or less")
    return max_length


def dev_evaluations(log_history: list[dict], task: str) -> list[dict]:
    """One entry per evaluated step from Trainer's log history ({step, epoch, score, metrics...}), MNLI's matched
    and mismatched logs of a step merged, in step order."""
    by_step: dict[int, dict] = {}
    for log in log_history:
        metrics = {k[len("eval_"):]: v for k, v in log.items() if k.startswith("eval_") and not k.endswith(_TIMINGS)}
        if metrics:
            entry = by_step.setdefault(log["step"], {"step": log["step"], "epoch": log.get("epoch")})
            entry.update(metrics)
    out = [by_step[s] for s in sorted(by_step)]
    for entry in out:
        entry["score"] = task_score(task, entry)
    return out


def best_and_last(evaluations: list[dict]) -> dict:
    """The best dev evaluation (highest score, the earliest on ties: every GLUE metric grows with quality) and
    the last."""
    if not evaluations:
        raise ValueError("no dev evaluation was logged")
    best = max(evaluations, key=lambda e: e["score"])   # max keeps the first of equal scores
    return {"best": best, "last": evaluations[-1]}


def run(args) -> dict:
    """Fine-tunes and evaluates one (task, strategy, seed); writes metrics.jsonl in ``args.output_dir``."""
    import torch
    import transformers
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from ..integrations import AlphaDecayCallback, RunLoggerCallback, create_optimizer
    from ..training.checkpointing.checkpoint import Checkpointer
    from ..training.logger import RunLogger, WandbSettings
    from ..training.update import count_params
    from ..training.optim import strategy_from_args

    spec = TASKS[args.task]
    rank = int(os.environ.get("RANK", "0"))
    resuming = args.continue_from is not None
    Checkpointer(args.output_dir, rank=rank, world_size=1, flag="--output_dir").prepare(
        resuming=resuming, overwrite=args.overwrite)
    resume_from = _checkpoint(args.output_dir) if resuming else None
    cuda = torch.cuda.is_available() and args.device != "cpu"
    per_device = per_device_batch(args.batch_size or spec.batch_size, args.gradient_accumulation, cuda=cuda)
    transformers.set_seed(args.seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
        model = AutoModelForSequenceClassification.from_pretrained(
            args.model_name_or_path, num_labels=spec.num_labels,
            problem_type="regression" if spec.num_labels == 1 else "single_label_classification")
    except OSError as e:
        raise ConfigError(f"cannot load --model_name_or_path {args.model_name_or_path!r} ({one_line(e, 150)}); pass "
                          f"a local model folder or connect to the hub once") from None
    max_length = check_max_length(args.max_length, model)
    data = tokenize(load_splits(args.task, args.data_dir, cache_dir=args.cache_dir), args.task, tokenizer,
                    max_length)
    if args.max_train_samples:
        data["train"] = data["train"].select(range(min(args.max_train_samples, len(data["train"]))))

    bf16 = cuda and torch.cuda.is_bf16_supported() and args.dtype != "float32"
    training_args = TrainingArguments(
        output_dir=args.output_dir, seed=args.seed, learning_rate=args.lr or spec.lr,
        per_device_train_batch_size=per_device, gradient_accumulation_steps=args.gradient_accumulation,
        per_device_eval_batch_size=args.eval_batch_size, num_train_epochs=args.epochs,
        max_steps=args.max_steps or -1, warmup_steps=args.warmup_ratio, lr_scheduler_type="linear",
        adam_beta1=0.9, adam_beta2=0.98, adam_epsilon=1e-6, max_grad_norm=args.grad_clipping,
        eval_strategy="epoch" if not args.max_steps else "no", logging_steps=args.log_every,
        save_strategy="epoch" if args.save_each_epoch else "no", save_total_limit=2, save_only_model=False,
        report_to="none", use_cpu=not cuda, bf16=bf16, disable_tqdm=not sys.stderr.isatty(),
        dataloader_num_workers=args.workers)
    strategy = strategy_from_args(args, model)
    with RunLogger(args.output_dir, enabled=rank == 0, resumed=resuming,
                   run_config={"args": vars(args), "model": {**count_params(model), **model.config.to_dict()}},
                   wandb=None if args.no_wandb else WandbSettings(args.wandb_project, args.name)) as log:
        optimizer = create_optimizer(strategy, training_args, model)
        eval_sets = {s.removeprefix("validation_"): data[s] for s in spec.eval_splits}
        trainer = Trainer(model=model, args=training_args, train_dataset=data["train"],
                          eval_dataset=eval_sets if len(eval_sets) > 1 else next(iter(eval_sets.values())),
                          data_collator=DataCollatorWithPadding(tokenizer), optimizers=(optimizer, None),
                          compute_metrics=lambda p: task_metrics(args.task, p.predictions, p.label_ids),
                          callbacks=[AlphaDecayCallback(strategy, on_assignment=lambda a: log.decay(a, args.strategy)),
                                     RunLoggerCallback(log)])
        trainer.train(resume_from_checkpoint=resume_from)
        evaluations = dev_evaluations(trainer.state.log_history, args.task)
        if not evaluations or evaluations[-1]["step"] != trainer.state.global_step:   # --max_steps: no epoch ends
            for name, ds in eval_sets.items():
                trainer.evaluate(ds, metric_key_prefix="eval" if len(eval_sets) == 1 else f"eval_{name}")
            evaluations = dev_evaluations(trainer.state.log_history, args.task)
        chosen = best_and_last(evaluations)
        # "score" is the best epoch's, as fairseq reports it and Table 4 shows it (make_tables --glue_epoch last).
        result = {"task": args.task, "metric": spec.metric, "score": chosen["best"]["score"], **chosen}
        log.write({"type": "final", "step": trainer.state.global_step, **result})
    if rank == 0:
        best, last = chosen["best"], chosen["last"]
        print(f"{args.task} {args.strategy} seed {args.seed}: best {best['score']:.2f} (epoch {best['epoch']}), last "
              f"{last['score']:.2f} ({spec.metric})", file=sys.stderr)
    return result


def _checkpoint(output_dir: str) -> str:
    from transformers.trainer_utils import get_last_checkpoint
    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if last is None:
        raise ConfigError(f"--continue_from latest: no checkpoint-<step> folder in {output_dir!r}; train with "
                          f"--save_each_epoch first, or start afresh without --continue_from")
    return last


def build_parser():
    from ..cli import OneLineParser
    from ..training.flags.args import add_weight_decay_flags

    p = OneLineParser(prog="python -m alphadecay.tasks.glue", description=__doc__.splitlines()[0],
                      formatter_class=__import__("argparse").ArgumentDefaultsHelpFormatter)
    a = p.add_argument_group("task and model")
    a.add_argument("--task", required=True, choices=sorted(TASKS), help="GLUE task")
    a.add_argument("--model_name_or_path", default="roberta-base", help="a hub name or a local model folder")
    a.add_argument("--data_dir", default=None, help="local train/validation files (.jsonl/.json/.csv/.tsv with the "
                   f"columns of {HUB_DATASET}; MNLI: validation_matched, validation_mismatched); default: the hub")
    a.add_argument("--cache_dir", default=None, help="datasets cache folder (default: the datasets library's)")
    a.add_argument("--output_dir", required=True, help="run folder: metrics.jsonl (and wandb files)")
    a.add_argument("--overwrite", action="store_true", help="move a previous run in --output_dir aside")
    a.add_argument("--save_each_epoch", action="store_true", help="checkpoint at the end of every epoch (Trainer's "
                   "checkpoint-<step> folders, the newest two kept, with the strategy's state)")
    a.add_argument("--continue_from", default=None, choices=["latest"], help="resume from the newest checkpoint in "
                   "--output_dir (written with --save_each_epoch)")
    o = p.add_argument_group("fine-tuning (RoBERTa's GLUE recipe)")
    o.add_argument("--lr", type=float, default=None, help="peak lr (default per task: 1e-5, RTE/STS-B 2e-5)")
    o.add_argument("--batch_size", type=int, default=None, help="sequences per update over all ranks and "
                   "micro-steps (default per task: 32, RTE/MRPC/CoLA/STS-B 16)")
    o.add_argument("--gradient_accumulation", type=int, default=1, help="micro-steps per update (the per-device "
                   "batch is --batch_size / (ranks x this))")
    o.add_argument("--eval_batch_size", type=int, default=64, help="sequences per evaluation batch")
    o.add_argument("--epochs", type=float, default=10, help="training epochs")
    o.add_argument("--max_steps", type=int, default=0, help="stop after N updates instead (0 = use --epochs)")
    o.add_argument("--warmup_ratio", type=float, default=0.06, help="warm-up as a fraction of the updates")
    o.add_argument("--max_length", type=int, default=0, help="tokens per example, longer pairs truncated (0 = "
                   "the model's positions, at most 512: roberta-base's 514-row table holds 512)")
    o.add_argument("--max_train_samples", type=int, default=0, help="use only the first N training rows (0 = all)")
    o.add_argument("--grad_clipping", type=float, default=0.0, help="max grad norm (0 = off, as RoBERTa)")
    o.add_argument("--seed", type=int, default=1, help="classifier-head init and data order")
    o.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="default bfloat16 on a "
                   "bf16-capable GPU, else float32")
    o.add_argument("--device", default="auto", choices=["auto", "cpu"], help="auto: a GPU when there is one")
    o.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    add_weight_decay_flags(p, weight_decay=0.1)
    g = p.add_argument_group("logging")
    g.add_argument("--log_every", type=int, default=50, help="a train record every N updates")
    g.add_argument("--name", default=None, help="wandb run name (default <task>-<strategy>-s<seed>)")
    g.add_argument("--wandb_project", default=os.environ.get("WANDB_PROJECT", "AlphaDecay-GLUE"))
    g.add_argument("--no_wandb", action="store_true", help="metrics.jsonl only")
    return p


def parse_args(argv=None):
    from ..training.flags.args import check_numbers, check_weight_decay_flags
    args = build_parser().parse_args(argv)
    check_numbers(args, [("eval_batch_size", lambda v: v > 0, "positive"), ("epochs", lambda v: v > 0, "positive"),
                         ("max_steps", lambda v: v >= 0, ">= 0"), ("warmup_ratio", lambda v: 0 <= v < 1, "in [0, 1)"),
                         ("max_length", lambda v: v == 0 or v > 1, "0 or at least 2"),
                         ("gradient_accumulation", lambda v: v > 0, "positive"),
                         ("log_every", lambda v: v >= 1, ">= 1"),
                         ("lr", lambda v: v is None or v > 0, "positive"), ("workers", lambda v: v >= 0, ">= 0"),
                         ("batch_size", lambda v: v is None or v > 0, "positive"),
                         ("grad_clipping", lambda v: v >= 0, ">= 0"), ("max_train_samples", lambda v: v >= 0, ">= 0")])
    check_weight_decay_flags(args)
    if args.overwrite and args.continue_from is not None:
        raise ConfigError("--overwrite starts a new run and --continue_from continues one; pass only one of them")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise ConfigError(f"--data_dir {args.data_dir!r} is not a folder; pass the folder of the task's train and "
                          f"validation files, or drop it to use the hub")
    args.name = args.name or f"{args.task}-{args.strategy}-s{args.seed}"
    return args


def _run_cli(fn, args) -> int:
    fn(args)
    return 0


def main(argv=None) -> int:
    """Bad input: one line on stderr, exit code 2."""
    from ..cli import run_tool
    return run_tool(lambda a: _run_cli(run, parse_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
