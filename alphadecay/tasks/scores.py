"""Evaluation metrics computed locally (no metric scripts to download): GLUE's and top-k accuracy."""
from __future__ import annotations

import numpy as np


def accuracy(pred, label) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(label)))


def f1(pred, label) -> float:
    """F1 of the positive class (label 1), as GLUE scores MRPC and QQP."""
    pred, label = np.asarray(pred) == 1, np.asarray(label) == 1
    tp = float(np.sum(pred & label))
    denom = float(np.sum(pred) + np.sum(label))
    return 2 * tp / denom if denom else 0.0


def matthews(pred, label) -> float:
    """Matthews correlation (CoLA); 0 when a row or column of the confusion matrix is empty."""
    pred, label = np.asarray(pred) == 1, np.asarray(label) == 1
    tp, tn = float(np.sum(pred & label)), float(np.sum(~pred & ~label))
    fp, fn = float(np.sum(pred & ~label)), float(np.sum(~pred & label))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom else 0.0


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denom) if denom else 0.0


def _ranks(x) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank (as Spearman's definition needs)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    return pearson(_ranks(x), _ranks(y))


def topk_correct(logits, target, ks=(1, 5)):
    """How many rows have their target among the k largest logits, for each k (k clipped to the classes): a
    tensor on the logits' device, so that evaluation adds it up without a host sync per batch."""
    import torch
    k_max = min(max(ks), logits.shape[-1])
    hit = logits.topk(k_max, dim=-1).indices == target.unsqueeze(-1)
    return torch.stack([hit[:, :min(k, k_max)].any(dim=-1).sum() for k in ks])
