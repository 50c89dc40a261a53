"""A small generated image folder for SMOKE=1 runs and tests: OUT/train/<class>/*.png and OUT/val/<class>/*.png.

    python scripts/table5_vit_tiny/make_images.py OUT [--classes 4 --train 24 --val 8 --size 32]

Each class is a colour with a stripe orientation, plus noise, so a tiny ViT can learn it in a few updates.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 200, 40), (200, 60, 200), (40, 200, 200)]


def write_folder(root: str, *, classes: int = 4, train: int = 24, val: int = 8, size: int = 32, seed: int = 0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = os.path.join(root, split, f"class_{c}")
            os.makedirs(folder, exist_ok=True)
            stripes = ((xx if c % 2 else yy) // 4) % 2
            for i in range(n):
                base = np.array(COLOURS[c % len(COLOURS)], dtype=np.float64)
                img = base * (0.6 + 0.4 * stripes[..., None]) + rng.normal(0, 90, (size, size, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i:04d}.png"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--train", type=int, default=24, help="images per class in train/")
    p.add_argument("--val", type=int, default=8, help="images per class in val/")
    p.add_argument("--size", type=int, default=32)
    a = p.parse_args(argv)
    write_folder(a.out, classes=a.classes, train=a.train, val=a.val, size=a.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
