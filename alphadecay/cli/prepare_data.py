"""``alphadecay prepare-data``: tokenize a source once into a folder that training reads by global index.

    alphadecay prepare-data --tokenizer t5-base --output data/c4-t5 --dataset_path c4/en/ --holdout_docs 10000
    alphadecay prepare-data --tokenizer t5-base --output data/fineweb-t5 --dataset_name HuggingFaceFW/fineweb \
        --dataset_config sample-10BT --eval_split train --workers 8

Running the same command again after a crash keeps the shards already written and writes the rest.
"""
from __future__ import annotations

from ..errors import ConfigError
from . import OneLineParser


def _holdout(text: str) -> float:
    value = float(text)
    if value < 0 or (value >= 1 and value != int(value)):
        raise ValueError(text)
    return value


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="alphadecay prepare-data", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, help="tokenizer: a local folder or a hub name (as training's)")
    p.add_argument("--output", required=True, help="the folder to write (new, empty, or an unfinished one)")
    p.add_argument("--dataset_path", default=None,
                   help="local text: a file, glob or folder of json/jsonl/json.gz/parquet/txt")
    p.add_argument("--eval_dataset_path", default=None, help="local validation text for the validation split")
    p.add_argument("--dataset_name", default=None, help="a hub dataset to stream instead, e.g. allenai/c4")
    p.add_argument("--dataset_config", default="", help="its configuration, e.g. en or sample-10BT")
    p.add_argument("--text_field", default="text", help="the hub dataset's column holding the documents")
    p.add_argument("--eval_split", default="validation",
                   help="the hub split for the validation split ('train' holds out the train split's first shard)")
    p.add_argument("--holdout_docs", type=_holdout, default=0,
                   help="validation held out of the source by document: N (the first N) or a fraction (every "
                        "1/fraction-th document); replaces the source's validation split")
    p.add_argument("--docs_per_shard", type=int, default=50_000, help="documents per shard file")
    p.add_argument("--max_documents", type=int, default=None, help="read only the source's first N documents")
    p.add_argument("--workers", type=int, default=0, help="tokenizer processes (0: this process)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if (args.dataset_path is None) == (args.dataset_name is None):
        raise ConfigError("pass exactly one source: --dataset_path (local files) or --dataset_name (a hub dataset)")
    if args.docs_per_shard < 1 or args.workers < 0 or (args.max_documents is not None and args.max_documents < 1):
        raise ConfigError("--docs_per_shard and --max_documents must be positive and --workers 0 or more")
    from ..training.data.batches import load_tokenizer
    from ..training.data.prepare import PrepareSettings, prepare
    from ..training.data.text_sources import HubSource
    hub = HubSource(args.dataset_name, args.dataset_config or None, args.text_field, args.eval_split) \
        if args.dataset_name else None
    settings = PrepareSettings(tokenizer=args.tokenizer, output=args.output, dataset_path=args.dataset_path,
                               eval_dataset_path=args.eval_dataset_path, hub=hub, holdout_docs=args.holdout_docs,
                               docs_per_shard=args.docs_per_shard, max_documents=args.max_documents,
                               workers=args.workers)
    tokenizer = load_tokenizer(args.tokenizer, 10 ** 12)
    manifest = prepare(settings, tokenizer, progress=not args.no_progress)
    counts = ", ".join(f"{split}: {c['documents']:,} documents, {c['tokens']:,} tokens in {c['shards']} shards"
                       for split, c in manifest["counts"].items())
    print(f"prepared '{args.output}' ({manifest['dtype']}): {counts}")
    return 0
