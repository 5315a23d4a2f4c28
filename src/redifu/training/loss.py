"""The training objective: cross-entropy on the fused prediction plus auxiliary modality losses."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from redifu.data.dialogue import IGNORE_LABEL, Dialogue, label_counts
from redifu.model import ReDiFuOutput


def inverse_frequency_weights(dialogues: Sequence[Dialogue], num_classes: int) -> Tensor:
    """Class weights ``N / (C * n_c)`` from the training split (classes absent get weight 0)."""
    counts = label_counts(dialogues, num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def redifu_loss(
    output: ReDiFuOutput,
    labels: Tensor,
    *,
    aux_weight: float = 0.0,
    class_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""``CE(fused) + aux_weight * mean_m CE(modality m)`` over labelled utterances.

    Returns the total loss and its parts (``fused`` and ``aux_<modality>``) for logging.
    """
    valid = labels != IGNORE_LABEL  # (B, N)
    target = labels[valid]
    parts = {"fused": F.cross_entropy(output.logits[valid], target, weight=class_weights)}
    total = parts["fused"]
    if aux_weight > 0 and output.modality_logits:
        aux = [
            F.cross_entropy(logits[valid], target, weight=class_weights)
            for logits in output.modality_logits.values()
        ]
        for name, value in zip(output.modality_logits, aux):
            parts[f"aux_{name}"] = value
        total = total + aux_weight * torch.stack(aux).mean()
    return total, parts
