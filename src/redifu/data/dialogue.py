"""In-memory containers for multimodal dialogues.

Every dataset that redifu reads (the built-in synthetic generator, feature pickles, CSV
transcripts) is turned into a :class:`DialogueCorpus`: named splits of :class:`Dialogue`
objects plus the :class:`DatasetMetadata` that the model is built from (class names, speaker
count, feature size per modality). Model code never sees a dataset's name, only this metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from redifu.errors import IGNORE_LABEL, MODALITIES, SPLITS, DataError

__all__ = ["IGNORE_LABEL", "MODALITIES", "SPLITS", "DataError", "DatasetMetadata", "Dialogue", "DialogueCorpus",
           "label_counts", "validate_dialogue"]


@dataclass(frozen=True)
class DatasetMetadata:
    """What the model needs to know about a dataset.

    Args:
        name: Human-readable dataset name (for reports only; model code never branches on it).
        classes: Emotion class names, in label-index order.
        num_speakers: Number of speaker slots; speaker indices are in ``[0, num_speakers)``.
        modality_dims: Feature size per modality, in canonical modality order.
        description: Free text (provenance, whether the data is synthetic, ...).
    """

    name: str
    classes: tuple[str, ...]
    num_speakers: int
    modality_dims: Mapping[str, int]
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise DataError(f"{self.name}: field 'classes' needs at least 2 classes")
        if self.num_speakers < 1:
            raise DataError(f"{self.name}: field 'num_speakers' must be >= 1")
        unknown = [m for m in self.modality_dims if m not in MODALITIES]
        if unknown:
            raise DataError(f"{self.name}: unknown modality {unknown[0]!r}; known: {MODALITIES}")
        if "text" not in self.modality_dims:
            raise DataError(f"{self.name}: field 'modality_dims' must contain 'text'")
        ordered = {m: int(self.modality_dims[m]) for m in MODALITIES if m in self.modality_dims}
        object.__setattr__(self, "modality_dims", ordered)
        object.__setattr__(self, "classes", tuple(self.classes))

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.modality_dims)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "num_speakers": self.num_speakers,
            "modality_dims": dict(self.modality_dims),
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "DatasetMetadata":
        return cls(
            name=data["name"],
            classes=tuple(data["classes"]),
            num_speakers=int(data["num_speakers"]),
            modality_dims=dict(data["modality_dims"]),
            description=data.get("description", ""),
        )


@dataclass(frozen=True)
class Dialogue:
    """One dialogue: ``N`` utterances, each with a speaker, features per modality and a label.

    Args:
        dialogue_id: Identifier, unique within its corpus.
        speakers: Speaker index per utterance, ``int64`` of shape ``(N,)``.
        labels: Emotion index per utterance, ``int64`` of shape ``(N,)``;
            :data:`IGNORE_LABEL` where unknown.
        features: Per modality a ``float32`` array of shape ``(N, D_m)``.
        speaker_names: The speakers' names per utterance, where the dialogue comes from
            transcripts (``None`` for feature files and synthetic data).
        texts: The transcript per utterance, where known (what text encoders are fine-tuned on).
    """

    dialogue_id: str
    speakers: np.ndarray
    labels: np.ndarray
    features: Mapping[str, np.ndarray] = field(default_factory=dict)
    speaker_names: tuple[str, ...] | None = None
    texts: tuple[str, ...] | None = None

    @property
    def transcript(self) -> list[tuple[str, str]] | None:
        """``(speaker name, text)`` per utterance, or ``None`` without transcripts."""
        if self.texts is None or self.speaker_names is None:
            return None
        return list(zip(self.speaker_names, self.texts))

    def __len__(self) -> int:
        return int(self.speakers.shape[0])


@dataclass
class DialogueCorpus:
    """A dataset: metadata plus its dialogues per split (``train``, ``dev``, ``test``).

    ``provenance`` records where the data came from (source files and their SHA-256, the reader,
    and per modality the feature extractor that produced the features).
    """

    metadata: DatasetMetadata
    splits: dict[str, list[Dialogue]]
    provenance: dict = field(default_factory=dict)

    def validate(self, source: str = "<memory>") -> None:
        """Check every dialogue against the metadata; raise :class:`DataError` naming the culprit."""
        for split, dialogues in self.splits.items():
            if split not in SPLITS:
                raise DataError(f"{source}: unknown split {split!r}; expected one of {SPLITS}")
            seen: set[str] = set()
            for dialogue in dialogues:
                validate_dialogue(dialogue, self.metadata, source=source)
                if dialogue.dialogue_id in seen:
                    raise DataError(
                        f"{source}: dialogue {dialogue.dialogue_id}: duplicate id in split {split!r}"
                    )
                seen.add(dialogue.dialogue_id)

    def num_utterances(self, split: str) -> int:
        return sum(len(d) for d in self.splits.get(split, []))


def validate_dialogue(dialogue: Dialogue, metadata: DatasetMetadata, *, source: str) -> None:
    """Raise :class:`DataError` with a one-line message if ``dialogue`` is malformed."""
    where = f"{source}: dialogue {dialogue.dialogue_id}"
    speakers = np.asarray(dialogue.speakers)
    if speakers.ndim != 1:
        raise DataError(f"{where}: field 'speakers': expected one speaker id per utterance, got shape {speakers.shape}")
    n = len(speakers)
    if n == 0:
        raise DataError(f"{where}: field 'speakers': dialogue is empty")
    if speakers.dtype.kind not in "iu":
        raise DataError(f"{where}: field 'speakers': speaker ids must be integers, got {speakers.dtype} values")
    # Refused, never clamped: a model would silently merge the extra speakers into one slot.
    outside = (speakers < 0) | (speakers >= metadata.num_speakers)
    if outside.any():
        position = int(np.flatnonzero(outside)[0])
        raise DataError(
            f"{where}: field 'speakers': speaker id {int(speakers[position])} at utterance {position} "
            f"out of range [0, {metadata.num_speakers})"
        )
    if dialogue.labels.shape != (n,):
        raise DataError(f"{where}: field 'labels': {dialogue.labels.shape[0]} labels for {n} utterances")
    labels = dialogue.labels
    bad = (labels != IGNORE_LABEL) & ((labels < 0) | (labels >= metadata.num_classes))
    if bad.any():
        raise DataError(
            f"{where}: field 'labels': value {int(labels[bad][0])} out of range "
            f"[0, {metadata.num_classes})"
        )
    for modality, dim in metadata.modality_dims.items():
        if modality not in dialogue.features:
            raise DataError(f"{where}: field '{modality}': missing")
        array = dialogue.features[modality]
        if array.ndim != 2 or array.shape[0] != n:
            raise DataError(
                f"{where}: field '{modality}': shape {tuple(array.shape)}, expected ({n}, {dim})"
            )
        if array.shape[1] != dim:
            raise DataError(
                f"{where}: field '{modality}': feature size {array.shape[1]}, expected {dim}"
            )
        if not np.isfinite(array).all():
            raise DataError(f"{where}: field '{modality}': contains NaN or Inf")
    for name in ("speaker_names", "texts"):
        values = getattr(dialogue, name)
        if values is not None and (len(values) != n or not all(isinstance(v, str) for v in values)):
            raise DataError(f"{where}: field {name!r}: expected {n} strings, got {len(values)} values")


def label_counts(dialogues: Sequence[Dialogue], num_classes: int) -> np.ndarray:
    """Number of labelled utterances per class."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for dialogue in dialogues:
        valid = dialogue.labels[dialogue.labels != IGNORE_LABEL]
        counts += np.bincount(valid, minlength=num_classes)[:num_classes]
    return counts
