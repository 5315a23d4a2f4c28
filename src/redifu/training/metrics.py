"""Classification metrics over utterances: weighted F1 (primary), accuracy, macro F1, per class."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Metrics in percent (0..100), plus per-class figures and the confusion matrix (counts).

    Args:
        labels: gold class indices of the labelled utterances, ``(U,)``.
        predictions: predicted class indices, ``(U,)``.
        classes: class names in index order.
    """
    indices = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=indices, zero_division=0
    )
    return {
        "weighted_f1": 100.0 * f1_score(labels, predictions, labels=indices, average="weighted", zero_division=0),
        "accuracy": 100.0 * accuracy_score(labels, predictions),
        "macro_f1": 100.0 * f1_score(labels, predictions, labels=indices, average="macro", zero_division=0),
        "num_utterances": int(len(labels)),
        "per_class": {
            name: {
                "precision": 100.0 * float(precision[i]),
                "recall": 100.0 * float(recall[i]),
                "f1": 100.0 * float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(labels, predictions, labels=indices).tolist(),
    }


def format_report(metrics: dict[str, Any], classes: Sequence[str]) -> str:
    """A plain-text classification report (per class and overall)."""
    width = max(12, max(len(c) for c in classes) + 2)
    lines = [f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name in classes:
        row = metrics["per_class"][name]
        lines.append(
            f"{name:<{width}}{row['precision']:>10.2f}{row['recall']:>10.2f}{row['f1']:>10.2f}{row['support']:>10d}"
        )
    lines.append("")
    lines.append(f"{'accuracy':<{width}}{metrics['accuracy']:>40.2f}")
    lines.append(f"{'macro f1':<{width}}{metrics['macro_f1']:>40.2f}")
    lines.append(f"{'weighted f1':<{width}}{metrics['weighted_f1']:>40.2f}")
    lines.append(f"{'utterances':<{width}}{metrics['num_utterances']:>40d}")
    return "\n".join(lines) + "\n"
