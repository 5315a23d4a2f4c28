"""Evaluation of a model on a split, outside any training loop (no autograd, fixed batching)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from redifu.data.batching import DialogueDataset, collate_dialogues
from redifu.data.dialogue import IGNORE_LABEL, Dialogue
from redifu.errors import DataError
from redifu.model import ReDiFu
from redifu.training.metrics import classification_metrics


@dataclass
class SplitPredictions:
    """Predictions over labelled utterances of a split, in dialogue order."""

    labels: np.ndarray  # (U,)
    predictions: np.ndarray  # (U,)
    probabilities: np.ndarray  # (U, C)
    dialogue_ids: list[str]  # (U,) the dialogue of each utterance
    utterance_index: np.ndarray  # (U,) position within its dialogue


@torch.no_grad()
def predict_split(
    model: ReDiFu,
    dialogues: Sequence[Dialogue],
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> SplitPredictions:
    """Run ``model`` in eval mode over ``dialogues`` in order, ``batch_size`` dialogues at a time.

    Raises :class:`~redifu.errors.DataError` (one line, naming the dialogue) when a dialogue has
    a speaker id beyond the model's speaker slots, e.g. data with more speakers than the
    checkpoint was trained for."""
    slots = model.config.num_speakers
    for dialogue in dialogues:
        if len(dialogue) and int(dialogue.speakers.max()) >= slots:
            raise DataError(f"dialogue {dialogue.dialogue_id}: field 'speakers': speaker id "
                            f"{int(dialogue.speakers.max())} is beyond the model's {slots} speaker slots")
    was_training = model.training
    model.eval()
    dataset = DialogueDataset(dialogues, model.config.modalities)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_dialogues)
    labels, predictions, probabilities, ids, positions = [], [], [], [], []
    for batch in loader:
        batch = batch.to(device)
        output = model(batch.features, batch.speakers, batch.mask)
        keep = batch.mask & (batch.labels != IGNORE_LABEL)  # (B, N)
        probs = output.logits.float().softmax(-1)
        labels.append(batch.labels[keep].cpu())
        probabilities.append(probs[keep].cpu())
        predictions.append(probs[keep].argmax(-1).cpu())
        rows, cols = keep.nonzero(as_tuple=True)
        ids.extend(batch.dialogue_ids[r] for r in rows.tolist())
        positions.append(cols.cpu())
    model.train(was_training)
    return SplitPredictions(
        labels=torch.cat(labels).numpy(),
        predictions=torch.cat(predictions).numpy(),
        probabilities=torch.cat(probabilities).numpy(),
        dialogue_ids=ids,
        utterance_index=torch.cat(positions).numpy(),
    )


def evaluate_split(
    model: ReDiFu,
    dialogues: Sequence[Dialogue],
    classes: Sequence[str],
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Metrics of ``model`` on ``dialogues`` (see :func:`classification_metrics`)."""
    result = predict_split(model, dialogues, batch_size=batch_size, device=device)
    return classification_metrics(result.labels, result.predictions, classes)
