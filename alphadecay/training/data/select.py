"""What a run reads from a prepared folder (tokens by global index) instead of text (streamed, per rank)."""
from __future__ import annotations

from .prepared import is_prepared, open_prepared
from .tokens import TokenBatches, TokenLoader


def token_loader(args, tokenizer, rank: int, world_size: int) -> TokenLoader:
    """The training loader of a run from a prepared --dataset_path (a context manager that stops its workers)."""
    data = open_prepared(args.dataset_path, tokenizer, args.tokenizer)
    batches = TokenBatches(data, batch_size=args.batch_size, total_batch_size=args.total_batch_size,
                           max_length=args.max_length, rank=rank, world_size=world_size, packing=args.packing,
                           num_workers=args.workers)
    return TokenLoader(batches, args.workers, announce=rank == 0)


def eval_path(args):
    """--eval_dataset_path, else a prepared training folder's own validation split when it has one."""
    if args.eval_dataset_path is None and is_prepared(args.dataset_path):
        data = open_prepared(args.dataset_path)
        if "validation" in data.splits:
            return args.dataset_path
    return args.eval_dataset_path
