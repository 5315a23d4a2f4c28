"""Padding dialogues into batches.

A batch holds ``B`` dialogues padded at the end to the longest one, ``N`` utterances. The
padding mask is explicit (True = real utterance); padded labels are :data:`IGNORE_LABEL`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from redifu.data.dialogue import IGNORE_LABEL, Dialogue


@dataclass
class DialogueBatch:
    """A padded batch of dialogues.

    Attributes:
        features: per modality ``(B, N, D_m)`` float32.
        speakers: ``(B, N)`` long (0 at padding).
        labels: ``(B, N)`` long (:data:`IGNORE_LABEL` at padding and unlabelled utterances).
        mask: ``(B, N)`` bool, True = real utterance.
        dialogue_ids: the ``B`` dialogue ids, in batch order.
    """

    features: dict[str, Tensor]
    speakers: Tensor
    labels: Tensor
    mask: Tensor
    dialogue_ids: list[str]

    def to(self, device: torch.device | str) -> "DialogueBatch":
        return DialogueBatch(
            features={m: x.to(device) for m, x in self.features.items()},
            speakers=self.speakers.to(device),
            labels=self.labels.to(device),
            mask=self.mask.to(device),
            dialogue_ids=self.dialogue_ids,
        )

    @property
    def num_utterances(self) -> int:
        return int(self.mask.sum())


@dataclass(frozen=True)
class DialogueTensors:
    """One dialogue as tensors (what :class:`DialogueDataset` yields)."""

    dialogue_id: str
    features: dict[str, Tensor]
    speakers: Tensor
    labels: Tensor


class DialogueDataset(Dataset):
    """Map-style dataset over dialogues; converts arrays to tensors once, up front.

    Args:
        dialogues: The dialogues of one split.
        modalities: Which modalities to keep (in model order).
    """

    def __init__(self, dialogues: Sequence[Dialogue], modalities: Sequence[str]) -> None:
        self.items = [
            DialogueTensors(
                dialogue_id=d.dialogue_id,
                features={m: torch.from_numpy(np.ascontiguousarray(d.features[m], dtype=np.float32)) for m in modalities},
                speakers=torch.from_numpy(np.asarray(d.speakers, dtype=np.int64)),
                labels=torch.from_numpy(np.asarray(d.labels, dtype=np.int64)),
            )
            for d in dialogues
        ]
        self.modalities = tuple(modalities)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> DialogueTensors:
        return self.items[index]


def collate_dialogues(items: Sequence[DialogueTensors]) -> DialogueBatch:
    """Pad a list of dialogues at the end into a :class:`DialogueBatch`."""
    if not items:
        raise ValueError("cannot collate an empty list of dialogues")
    lengths = torch.tensor([len(item.speakers) for item in items])
    b, n = len(items), int(lengths.max())
    mask = torch.arange(n)[None, :] < lengths[:, None]  # (B, N)
    speakers = torch.zeros(b, n, dtype=torch.long)
    labels = torch.full((b, n), IGNORE_LABEL, dtype=torch.long)
    features = {m: torch.zeros(b, n, x.shape[-1], dtype=torch.float32) for m, x in items[0].features.items()}
    for row, item in enumerate(items):
        length = len(item.speakers)
        speakers[row, :length] = item.speakers
        labels[row, :length] = item.labels
        for m, x in item.features.items():
            features[m][row, :length] = x
    return DialogueBatch(
        features=features, speakers=speakers, labels=labels, mask=mask,
        dialogue_ids=[item.dialogue_id for item in items],
    )


def feature_statistics(dialogues: Sequence[Dialogue], modalities: Sequence[str]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-modality feature mean and standard deviation over all utterances of ``dialogues``."""
    statistics = {}
    for m in modalities:
        stacked = np.concatenate([d.features[m] for d in dialogues], axis=0).astype(np.float64)
        statistics[m] = (
            torch.from_numpy(stacked.mean(0)).float(),
            torch.from_numpy(stacked.std(0)).float(),
        )
    return statistics
