"""Image-folder data for ViT training: timm's dataset and transforms, an epoch order every rank agrees on, and
batches that resume mid-epoch exactly.

A folder holds ``train/<class>/*.jpg`` and ``val/<class>/*.jpg`` (ImageNet's usual layout; class folders sorted
give the labels). Every training sample is augmented with its random generators seeded from (seed, epoch,
position in the epoch), so an image gets the same augmentation whichever worker loads it and whether or not
the run was interrupted: a resumed run sees exactly the batches the uninterrupted one would have.
"""
from __future__ import annotations

import os
import random

import torch

from ..errors import ConfigError


def image_folder(root: str, split: str, transform):
    """timm's folder dataset for ``root/split`` (one sub-folder per class)."""
    from timm.data import create_dataset
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise ConfigError(f"no {split}/ folder in --data_dir {root!r}; lay the images out as {split}/<class>/<image>")
    try:
        dataset = create_dataset("", root=root, split=split, transform=transform)
    except Exception as e:  # noqa: BLE001 - timm raises RuntimeError or FileNotFoundError for an empty folder
        raise ConfigError(f"cannot read images from {folder!r} ({' '.join(str(e).split())[:150]}); it needs "
                          f"one sub-folder per class holding images") from None
    if len(dataset) == 0:
        raise ConfigError(f"no images in {folder!r}; it needs one sub-folder per class holding images")
    return dataset


class _SeededSamples(torch.utils.data.Dataset):
    """Reads keys (index, seed): seeds python, numpy and torch from the key, then loads and augments."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        import numpy as np
        index, seed = key
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        return self.dataset[index]


class TrainImages:
    """Endless training batches for one rank, over epochs; ``state_dict`` is the position (epoch, batch).

    Each epoch is one permutation of the dataset (from ``seed`` and the epoch) cut into ``world_size`` equal
    parts, the last incomplete global batch dropped; rank r reads part r, ``batch_size`` images at a time.
    ``repeats`` > 1 is DeiT's repeated augmentation (its RASampler, timm's ``RepeatAugSampler``): each image
    of the permutation ``repeats`` times in a row, dealt out so that its copies land on different ranks, each
    rank keeping as many images per epoch as without repeats (so an epoch shows about 1/repeats of the images).
    """

    def __init__(self, dataset, *, batch_size: int, rank: int, world_size: int, seed: int, workers: int,
                 repeats: int = 1):
        self.dataset, self.batch_size = _SeededSamples(dataset), batch_size
        self.rank, self.world_size, self.seed, self.workers = rank, world_size, seed, workers
        self.sampler = None
        if repeats > 1:
            from timm.data.distributed_sampler import RepeatAugSampler
            self.sampler = RepeatAugSampler(self.dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                            num_repeats=repeats)
        per_rank = len(self.sampler) if self.sampler is not None else len(dataset) // world_size
        self.batches_per_epoch = per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise ConfigError(f"{len(dataset)} training images are fewer than one batch of {batch_size} x "
                              f"{world_size} ranks; lower --batch_size or add images")
        self.epoch, self.batch = 0, 0

    def _order(self, epoch: int) -> list[int]:
        """This rank's image indices for the epoch, a function of (seed, epoch) only: resume replays them."""
        per_rank = self.batches_per_epoch * self.batch_size
        if self.sampler is not None:
            # RepeatAugSampler seeds its permutation with the value given to set_epoch alone (DeiT's too);
            # folding the seed in keeps the data order a function of --seed as without repeats.
            self.sampler.set_epoch(self.seed * 100_003 + epoch)
            return list(self.sampler)[:per_rank]
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.dataset), generator=g).tolist()
        return order[self.rank * per_rank:(self.rank + 1) * per_rank]

    def _keys(self, epoch: int) -> list[list[tuple[int, int]]]:
        per_rank = self.batches_per_epoch * self.batch_size
        mine = self._order(epoch)
        base = (self.seed * 1_000_003 + epoch) * 10_000_019
        keys = [(index, base + self.rank * per_rank + i) for i, index in enumerate(mine)]
        return [keys[i:i + self.batch_size] for i in range(0, per_rank, self.batch_size)]

    def __iter__(self):
        while True:
            batches = self._keys(self.epoch)[self.batch:]
            # Its own generator: starting an epoch must not draw from the global RNG (dropout, drop path,
            # Mixup use it), or a run resumed at an epoch boundary would diverge from the uninterrupted one.
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers,
                                                 pin_memory=torch.cuda.is_available(),
                                                 generator=torch.Generator().manual_seed(self.seed + self.epoch))
            for images, targets in loader:
                self.batch += 1
                yield images, targets
            self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


def eval_batches(dataset, *, batch_size: int, rank: int, world_size: int, workers: int):
    """This rank's share of the validation images (every image on exactly one rank, none repeated)."""
    indices = list(range(rank, len(dataset), world_size))
    return torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                                       num_workers=workers, shuffle=False)


def transforms(args, training: bool):
    """The DeiT recipe through timm: RandAugment, color jitter, random erasing for training; resize and center
    crop (crop_pct 0.875) for evaluation; bicubic, ImageNet mean/std."""
    from timm.data import create_transform
    if training:
        return create_transform(args.img_size, is_training=True, auto_augment=args.aa or None,
                                color_jitter=args.color_jitter, re_prob=args.reprob, re_mode="pixel", re_count=1,
                                interpolation="bicubic")
    return create_transform(args.img_size, is_training=False, interpolation="bicubic", crop_pct=args.crop_pct)
