"""A torchvision whose compiled ops cannot load must not break everything that imports it.

Hugging Face transformers and timm import torchvision when it is installed. A torchvision wheel built for a
different torch (typically the CUDA wheel from the package index next to a CPU build of torch) cannot load
its C++ ops; torchvision is written to go on without them (``torchvision.extension._has_ops()`` is False and
its detection ops raise a clear error when called), but version 0.28 registers fake kernels for ``nms`` and
``qnms`` unconditionally, so ``import torchvision`` itself raises ``operator torchvision::nms does not exist``,
and transformers then fails to import even ``LlamaConfig``. Declaring those two schemas lets the import
finish; nothing here runs unless the ops failed to load, and image classification needs none of them.
The real fix on such a machine is the torchvision build that matches torch (for a CPU torch: the CPU wheel
from PyTorch's own index).
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys

_SCHEMAS = {"nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"}
_LIBRARY = None   # kept alive: the schemas live as long as this object


def make_importable() -> bool:
    """Declares the ops torchvision needs to import when its compiled library cannot load. True if it did."""
    global _LIBRARY
    if _LIBRARY is not None or "torchvision" in sys.modules:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    libs = glob.glob(os.path.join(next(iter(spec.submodule_search_locations)), "_C*.so"))
    import torch
    try:
        if libs:
            torch.ops.load_library(libs[0])   # what torchvision does first; loading twice is harmless
            return False
    except (OSError, RuntimeError):
        pass
    if all(torch._C._dispatch_has_kernel(f"torchvision::{op}") for op in _SCHEMAS):
        return False
    _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
    for op, schema in _SCHEMAS.items():
        try:
            _LIBRARY.define(schema)
        except RuntimeError:   # already declared by someone else
            pass
    return True
