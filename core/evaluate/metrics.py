"""Classification metrics of the fine-tuning loop: top-k hits (single-label) and mean average precision
(multi-label tagging, the AudioSet metric)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["average_precision", "mean_average_precision", "topk_correct"]


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many of the rows of ``logits (N, K)`` have their label among the top k scores, for each k
    (k is capped at K, so top-5 of a 3-class problem counts every row). Multi-hot ``labels (N, K)`` count a
    row when any of its top k classes is a positive."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (N, k_max)
    multi_hot = labels.ndim == 2
    hits = torch.gather(labels > 0.5, 1, top) if multi_hot else top == labels[:, None]  # (N, k_max)
    return [int(hits[:, : min(k, logits.shape[1])].any(dim=1).sum()) for k in ks]


def average_precision(scores: Tensor, positives: Tensor) -> float:
    """Average precision of one class: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds,
    highest first (scikit-learn's ``average_precision_score``; tied scores form one threshold).

    ``scores (N,)`` are any monotone scores (logits or probabilities), ``positives (N,)`` 0/1 (values above
    0.5 count as positive, so mixed soft labels do not reach evaluation unnoticed). NaN without positives."""
    truth = (positives > 0.5).double()
    order = torch.argsort(scores.double(), descending=True, stable=True)
    sorted_scores, truth = scores.double()[order], truth[order]
    true_pos = torch.cumsum(truth, 0)
    if true_pos[-1] == 0:
        return float("nan")
    # The last position of each run of equal scores is where that threshold's counts are complete.
    last = torch.ones_like(sorted_scores, dtype=torch.bool)
    last[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    true_pos = true_pos[last]
    seen = torch.arange(1, len(order) + 1, dtype=torch.float64)[last]
    precision, recall = true_pos / seen, true_pos / true_pos[-1]
    steps = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
    return float((steps * precision).sum())


def mean_average_precision(scores: Tensor, labels: Tensor) -> float:
    """mAP over the classes of ``scores (N, K)`` / multi-hot ``labels (N, K)`` that have at least one positive
    (a class without positives has no defined AP; scikit-learn would count it as 0)."""
    values = [average_precision(scores[:, k], labels[:, k]) for k in range(scores.shape[1])]
    defined = [v for v in values if v == v]
    if not defined:
        raise ValueError("mAP: no class has a positive label in the evaluated samples")
    return sum(defined) / len(defined)
