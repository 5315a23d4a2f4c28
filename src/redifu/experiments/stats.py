"""Paired bootstrap confidence intervals of weighted-F1 differences over test utterances."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import bootstrap


def weighted_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Support-weighted F1 in percent, vectorised over leading axes.

    ``labels`` and ``predictions`` have shape ``(..., U)``; the result has shape ``(...)``.
    Equal to :func:`sklearn.metrics.f1_score` with ``average="weighted"`` (a class without
    predictions or support scores 0).
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    labels, predictions = np.broadcast_arrays(labels, predictions)
    lead = labels.shape[:-1]
    flat_l = labels.reshape(-1, labels.shape[-1])
    flat_p = predictions.reshape(-1, labels.shape[-1])
    count = flat_l.shape[0]
    offset = (np.arange(count) * num_classes)[:, None]

    def per_class(index: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
        flat = np.bincount((offset + index).ravel(), weights=None if weight is None else weight.ravel(),
                           minlength=count * num_classes)
        return flat.reshape(count, num_classes)

    support = per_class(flat_l)
    predicted = per_class(flat_p)
    true_pos = per_class(flat_l, (flat_l == flat_p).astype(np.float64))
    denominator = support + predicted
    f1 = np.divide(2 * true_pos, denominator, out=np.zeros_like(true_pos), where=denominator > 0)
    total = support.sum(-1)
    score = 100.0 * (f1 * support).sum(-1) / np.maximum(total, 1)
    return score.reshape(lead)


@dataclass(frozen=True)
class Difference:
    """Mean weighted-F1 difference (a - b, over seeds) and its bootstrap confidence interval."""

    mean: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no clear difference"

    def __str__(self) -> str:
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def paired_difference(
    labels: np.ndarray,
    predictions_a: np.ndarray,
    predictions_b: np.ndarray,
    num_classes: int,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Difference:
    """Paired bootstrap CI of ``mean_s wF1(a_s) - mean_s wF1(b_s)`` over test utterances.

    ``predictions_a`` and ``predictions_b`` are ``(S, U)`` (one row per seed, the same ``U``
    utterances in the same order as ``labels``); each resample draws utterances with
    replacement and keeps them paired across labels, both variants and all seeds, so the
    interval reflects the test set's sampling noise given the trained models.
    """
    labels = np.asarray(labels, dtype=np.int64)
    a = np.atleast_2d(np.asarray(predictions_a, dtype=np.int64))
    b = np.atleast_2d(np.asarray(predictions_b, dtype=np.int64))
    if a.shape[-1] != labels.shape[0] or b.shape[-1] != labels.shape[0]:
        raise ValueError(f"predictions cover {a.shape[-1]} and {b.shape[-1]} utterances, labels {labels.shape[0]}")

    def statistic(y: np.ndarray, pa: np.ndarray, pb: np.ndarray, axis: int = -1) -> np.ndarray:
        # y: (..., U'), pa/pb: (S, ..., U') -> (...)
        return (weighted_f1(y, pa, num_classes) - weighted_f1(y, pb, num_classes)).mean(0)

    observed = float(statistic(labels, a, b))
    if np.all(a == b):
        return Difference(observed, observed, observed)
    result = bootstrap(
        (labels, a, b), statistic, paired=True, vectorized=True, axis=-1, n_resamples=n_resamples,
        confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed), batch=200,
    )
    interval = result.confidence_interval
    return Difference(observed, float(interval.low), float(interval.high))
