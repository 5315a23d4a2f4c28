"""Plots of a run: the test (or dev) confusion matrix and the per-epoch learning curves."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from redifu.files import atomic_file


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Save a figure atomically (a complete PNG or no file)."""
    with atomic_file(path, "wb") as stream:
        fig.savefig(stream, format="png", dpi=120, bbox_inches="tight")


def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: Path, *, split: str = "test") -> None:
    """Row-normalised confusion matrix (gold rows, predicted columns) of ``split``, with counts."""
    plt = _figure()
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, np.maximum(totals, 1))
    size = max(4.0, 0.8 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(classes)), labels=classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    for i in range(len(classes)):
        for j in range(len(classes)):
            colour = "white" if normalised[i, j] > 0.5 else "black"
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", color=colour, fontsize=8)
    ax.set_title(f"{split} confusion matrix (row-normalised colour, counts)")
    _save(fig, path)
    plt.close(fig)


def plot_curves(history: Sequence[dict], selected_epoch: int, path: Path) -> None:
    """Training and dev loss, and dev weighted F1, per epoch; the selected epoch is marked."""
    plt = _figure()
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, f1_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train/loss", "train loss"), ("dev/loss", "dev loss")):
        values = [row.get(key, np.nan) for row in history]
        loss_ax.plot(epochs, values, marker="o", markersize=3, label=label)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    f1_ax.plot(epochs, [row.get("dev/weighted_f1", np.nan) for row in history], marker="o", markersize=3)
    f1_ax.axvline(selected_epoch, color="grey", linestyle="--", label=f"selected (epoch {selected_epoch})")
    f1_ax.set_xlabel("epoch")
    f1_ax.set_ylabel("dev weighted F1 (%)")
    f1_ax.legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
